"""The Med-DDPM model: U-Net, noise schedule, diffusion wrapper, samplers, checkpoints, loading."""
