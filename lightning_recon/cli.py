"""LightningCLI of lightning_recon: ``train.py`` (fit / validate / test / predict).

    python train.py fit --config configs/experiment/ellipses30_fbp_unet.yaml
    python train.py fit --config configs/data/ellipses-small.yaml --config configs/model/learned_pd.yaml \\
        --config configs/trainer/cpu.yaml --config configs/logger/csv.yaml
    python train.py test --config <same configs> --ckpt_path <run>/checkpoints/last.ckpt

The model's geometry is linked from the data module, so the two never disagree; the full resolved
config is saved next to the run and sent to the logger.
"""
from __future__ import annotations

import netrc
import os
from typing import List, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger

from .data import SimulatedCTDataModule
from .methods import ReconstructionModule
from .methods.callbacks import LearningRateLogger, ReconstructionPanels

__all__ = ["ReconCLI", "cli_main", "default_wandb_mode"]


def default_wandb_mode() -> str:
    """``WANDB_MODE`` if set; else ``online`` only when W&B credentials exist, otherwise ``offline``,
    so that a run without network or account never waits on the W&B server."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run folder and sends the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = self.parser.dump(self.config, skip_none=False)
            trainer.logger.log_hyperparams({"config": config})


class ReconCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.geometry_dict", "model.init_args.geometry", apply_on="instantiate")
        parser.link_arguments("data.fixed_data_range", "model.init_args.data_range", apply_on="instantiate")
        # the model's own FBP (used by forward(measurement)) is the one its training inputs were made with
        parser.link_arguments("data.init_args.fbp_filter", "model.init_args.fbp_filter")
        parser.link_arguments("data.init_args.fbp_frequency_scaling", "model.init_args.fbp_frequency_scaling")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/psnr",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-psnr{val/psnr:.2f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ReconstructionPanels, "panels")

    def before_instantiate_classes(self) -> None:
        os.environ["WANDB_MODE"] = default_wandb_mode()


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> ReconCLI:
    """Entry point of ``train.py``; ``args`` as on the command line (``None``: ``sys.argv``)."""
    return ReconCLI(
        ReconstructionModule,
        SimulatedCTDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedSaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [LearningRateLogger(logging_interval="step")], "default_root_dir": "outputs"},
        args=args,
        run=run,
    )

