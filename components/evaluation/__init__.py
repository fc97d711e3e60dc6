"""Evaluation: metrics, robustness, efficiency, GAN metrics, the comparison report."""
