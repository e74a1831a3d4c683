"""Vision Transformer fine-tuning example on imbalanced images."""
