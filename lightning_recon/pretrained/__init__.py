"""Pretrained weights shipped with the package, loaded by name wherever a checkpoint path goes
(``--ckpt_path``, ``--model.init_args.init_from``):

    python train.py test --config configs/experiment/demo_cpu.yaml --ckpt_path ellipses-small-learned-gd
    python train.py predict --ckpt_path ellipses-small-learned-gd \\
        --data lightning_recon.data.MeasurementsDataModule --data.path 'scans/*.npy'
    python finetune.py scan.h5 --binning 4 --num-angles 30 --init ellipses-edip   # Deep Image Prior from EDIP

Each entry names the committed config and command that trained it and its measured test result
(docs/results.md); ``tests/test_pretrained.py`` reproduces that result from the shipped file.
The files hold weights and hyperparameters only (no optimiser state), so ``torch.load(...,
weights_only=True)`` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

__all__ = ["PRETRAINED", "PretrainedWeights", "resolve_checkpoint"]

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped checkpoint: its file, what it is, how it was made and what it measured."""

    file: str
    method: str
    data: str
    trained_by: str
    test_config: str  # the config (relative to the repository) whose test split gives ``test_psnr``
    test_psnr: float  # dB, per-image data range, on the data's fixed test set

    @property
    def path(self) -> Path:
        return FOLDER / self.file


PRETRAINED: Dict[str, PretrainedWeights] = {
    "ellipses-small-learned-gd": PretrainedWeights(
        file="ellipses-small-learned-gd.ckpt", method="LearnedGD", data="ellipses-small (64², 30 angles, 2.5 % noise)",
        trained_by="OMP_NUM_THREADS=1 make demo (6,000 steps)", test_config="configs/experiment/demo_cpu.yaml",
        test_psnr=28.99),
    "ellipses-edip": PretrainedWeights(
        file="ellipses-edip.ckpt", method="EDIPPretrain",
        data="random ellipses cut to random object outlines, tooth-sparse-30 geometry (160², 30 angles, 2 % noise)",
        trained_by="OMP_NUM_THREADS=1 python train.py fit --config configs/experiment/edip_pretrain_tooth.yaml "
                   "--trainer.max_steps=2000 --data.init_args.num_workers=1 (2,000 steps, 55 min on 2 CPU cores)",
        test_config="configs/experiment/edip_pretrain_tooth.yaml", test_psnr=35.35),
}


def resolve_checkpoint(name_or_path: str) -> str:
    """The file of a shipped checkpoint's name; anything else unchanged (a path)."""
    entry = PRETRAINED.get(str(name_or_path))
    return str(entry.path) if entry is not None else str(name_or_path)
