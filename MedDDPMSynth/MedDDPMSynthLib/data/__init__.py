"""Data sets: the synthetic nnU-Net dataset, training pairs, demo data."""
