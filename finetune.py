"""Deep Image Prior fine-tuning on a real measurement: ``python finetune.py --help``."""
from lightning_recon.finetune import main

if __name__ == "__main__":
    main()
