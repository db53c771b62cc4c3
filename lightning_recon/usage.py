"""``train.py``'s entry point and its short ``--help``, printed without importing torch or
Lightning (they take seconds to import); every other command line goes to the LightningCLI
(:func:`lightning_recon.cli.cli_main`), whose ``train.py <subcommand> --help`` lists every option."""
from __future__ import annotations

import sys
from typing import List, Optional

__all__ = ["SUBCOMMANDS", "TRAIN_USAGE", "train_main"]

SUBCOMMANDS = {
    "fit": "train a model (--ckpt_path resumes a run where it stopped)",
    "validate": "one pass over the validation split",
    "test": "the test split: metrics, and a row in the results table",
    "predict": "reconstructions of new measurements, written as files",
}

TRAIN_USAGE = f"""usage: train.py [-h] [-c CONFIG] {{{','.join(SUBCOMMANDS)}}} ...

Train, validate, test or apply a reconstruction model (a LightningCLI).

subcommands:
{chr(10).join(f'  {name:<10}{text}' for name, text in SUBCOMMANDS.items())}

common options (after the subcommand):
  -c, --config CONFIG   a YAML file (configs/experiment/*.yaml compose data, model, trainer, logger)
  --data CLASS, --model CLASS
                        the data module and the method, with --data.init_args.NAME / --model.init_args.NAME
  --trainer.NAME VALUE  any Lightning Trainer setting (max_steps, accelerator, precision, ...)
  --out DIR             one folder for every output: checkpoints, logs, results table, predictions
  --threads N           torch CPU threads (default: the cores free to this run, or OMP_NUM_THREADS)
  --ckpt_path PATH      resume a run (fit), or the weights to test / predict with; also the name of
                        shipped weights (ellipses-small-learned-gd)
  --print_config        print the resolved configuration and exit

examples:
  python train.py fit --config configs/experiment/demo_cpu.yaml
  python train.py test --config configs/experiment/demo_cpu.yaml --ckpt_path ellipses-small-learned-gd
  python train.py predict --ckpt_path ellipses-small-learned-gd \\
      --data lightning_recon.data.MeasurementsDataModule --data.path 'scans/*.npy' --out outputs/scans

every option of a subcommand: python train.py fit --help"""


def train_main(argv: Optional[List[str]] = None):
    """``train.py``: the short usage for ``-h`` / ``--help`` alone, else the LightningCLI
    (``argv`` as on the command line; ``None``: ``sys.argv``)."""
    given = sys.argv[1:] if argv is None else argv
    if list(given) in (["-h"], ["--help"]):
        print(TRAIN_USAGE)
        return None
    from .threads import prefer_passive_waiting, threads_argument

    prefer_passive_waiting(threads_argument(given))  # before torch is imported (lightning_recon.threads)
    from .cli import cli_main

    return cli_main(argv)
