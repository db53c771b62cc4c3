"""Train, validate, test or predict with a LightningCLI: ``python train.py --help``."""
from lightning_recon.cli import cli_main

if __name__ == "__main__":
    cli_main()
