"""Training engine: classifier loop, GAN loop, device/precision selection, checkpoints."""
