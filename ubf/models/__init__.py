"""torch.nn code only: the unmixing autoencoder, the SR3 UNet, Gaussian diffusion, losses."""
