"""Deep Image Prior fine-tuning on a real measurement: ``python finetune.py --help``."""
from lightning_recon.finetuning import finetune_main

if __name__ == "__main__":
    finetune_main()
