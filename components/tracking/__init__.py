"""MLflow 3 tracking and registry (aliases, not stages), and best-method selection."""
