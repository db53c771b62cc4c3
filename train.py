"""Train, validate, test or predict with a LightningCLI: ``python train.py --help``."""
from lightning_recon.usage import train_main

if __name__ == "__main__":
    train_main()
