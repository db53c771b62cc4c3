"""LightningCLI of lightning_recon: ``train.py`` (fit / validate / test / predict).

    python train.py fit --config configs/experiment/ellipses30_fbp_unet.yaml
    python train.py fit --config configs/data/ellipses-small.yaml --config configs/model/learned_pd.yaml \\
        --config configs/trainer/cpu.yaml --config configs/logger/csv.yaml
    python train.py test --config <same configs> --ckpt_path <run>/checkpoints/last.ckpt

The model's forward model (the data's geometry, ``forward_model``) is linked from the data module,
so the two never disagree (links whose source or target a chosen class lacks are skipped); the full
resolved config is saved next to the run and sent to the logger.

Config files may compose others (``compose.expand_compose``); without a named data class the
simulated ellipses are used (``compose.with_default_data``); the W&B mode never waits on an
unreachable server (``wandb_mode``). Here: the CLI itself and its reconciliation of ``--ckpt_path``
with the configs.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpointing import AtomicCheckpointIO, LastAndBestCheckpoint, read_lightning_checkpoint
from .compose import expand_compose, with_checkpoint_model, with_default_data, with_pretrained_paths
from .data.files import DataFileError
from .locks import FolderInUse, OutputLock, OutputUnwritable, check_writable
from .messages import exit_with_error, quiet_library_notes
from .threads import apply_thread_policy
from .methods.callbacks import (LearningRateLogger, ReconstructionPanels, ReconstructionWriter, ValidateAtEnd,
                                count_steps_in_progress_bar)
from .wandb_mode import default_wandb_mode

__all__ = ["ReconCLI", "cli_main", "move_outputs", "training_only_settings"]


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run folder and sends the resolved config to the logger, for
    ``fit`` only: a later ``test`` or ``predict`` of the run never overwrites the training record
    (its settings are in the results table's row and on its command line)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = self.parser.dump(self.config, skip_none=False)
            trainer.logger.log_hyperparams({"config": config})


# --ckpt_path: settings the command line decides over the checkpoint's, and settings that only
# matter while training (the checkpoint's are kept outside `fit` without comparison).
HONOURED_SETTINGS = ("results_dir", "method_name", "ray_transform_backend")
REPORT_SETTINGS = ("results_dir", "method_name")  # honoured only when a config or flag sets them
LINKED_SETTINGS = ("forward_model", "data_range", "fbp_filter", "fbp_frequency_scaling")


def _model_class(class_path: str):
    """The class named by ``class_path`` (``None`` if it cannot be imported)."""
    import importlib

    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def training_only_settings(class_path: str) -> set:
    """The settings that matter only while training, as the model class and its bases (and mixins)
    declare them in ``training_only_settings`` (:class:`~lightning_recon.methods.base.ReconstructionModule`'s
    if the class cannot be imported)."""
    from .methods.base import ReconstructionModule

    cls = _model_class(class_path) or ReconstructionModule
    return {name for base in cls.__mro__ for name in vars(base).get("training_only_settings", ())}


def _class_default(class_path: str, key: str):
    """The default of ``__init__`` argument ``key`` of ``class_path`` or of a base class (None if none)."""
    import inspect

    cls = _model_class(class_path)
    if cls is None:
        return None
    for base in cls.__mro__:
        parameter = inspect.signature(base.__init__).parameters.get(key) if "__init__" in vars(base) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def _same_setting(a, b) -> bool:
    """Equal up to list/tuple and int/float spelling (YAML lists, checkpoint tuples)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


DEFAULT_OUTPUT_FOLDERS = (None, "", "outputs", "outputs/results")  # the defaults of the folders below


def move_outputs(config) -> None:
    """``out: DIR`` (``--out DIR``) sets every output folder of the run that is left at its
    default from one setting: the trainer's ``default_root_dir`` and the logger's ``save_dir``
    (DIR), the checkpoint folder (DIR/checkpoints), the model's results table (DIR/results) and
    ``predict``'s files (DIR/predictions). A folder set on its own (``--checkpoint.dirpath``,
    ``--model.init_args.results_dir``, ...) stays where it is set. ``config``: one subcommand's
    parsed config (a jsonargparse Namespace, or the same as nested dicts)."""
    out = config.get("out")
    if not out:
        return
    out = Path(out)

    def fill(settings, key: str, folder: Path) -> None:
        if settings is not None and key in settings and settings[key] in DEFAULT_OUTPUT_FOLDERS:
            settings[key] = str(folder)

    fill(config["trainer"], "default_root_dir", out)
    loggers = config["trainer"].get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        fill(logger.get("init_args") if hasattr(logger, "get") else None, "save_dir", out)
    fill(config["checkpoint"], "dirpath", out / "checkpoints")
    fill(config["writer"], "output_dir", out / "predictions")
    fill(config["model"].get("init_args") if config.get("model") is not None else None, "results_dir", out / "results")


class ReconCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.forward_model_dict", "model.init_args.forward_model", apply_on="instantiate")
        parser.link_arguments("data.fixed_data_range", "model.init_args.data_range", apply_on="instantiate")
        # the model's own FBP (used by forward(measurement)) is the one its training inputs were made with
        parser.link_arguments("data.init_args.fbp_filter", "model.init_args.fbp_filter")
        parser.link_arguments("data.init_args.fbp_frequency_scaling", "model.init_args.fbp_frequency_scaling")
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/psnr",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-psnr{val/psnr:.2f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ReconstructionPanels, "panels")
        parser.add_lightning_class_args(ReconstructionWriter, "writer")  # the files of `predict`
        parser.add_argument("--out", type=Optional[str], default=None,
                            help="folder of every output of this run: checkpoints (OUT/checkpoints), logs (OUT), the "
                            "results table (OUT/results) and predictions (OUT/predictions), except those set on "
                            "their own (--checkpoint.dirpath, --model.init_args.results_dir, ...)")
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch CPU threads (default: the cores free to this run less its loader workers, "
                            "or OMP_NUM_THREADS; lightning_recon.threads)")

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, LightningCLI replaces the model config by the checkpoint's
        hyperparameters. Here a model class or a setting that differs from the checkpoint's is refused
        (one line naming each), except the settings of where and how to run and report, which the
        configs and flags clearly mean and which win: ``results_dir`` and ``method_name`` when set
        (else the checkpoint's stay), ``ray_transform_backend`` (a GPU checkpoint on a CPU) and,
        outside ``fit``, the training-only settings. Settings the data module links (forward model, FBP,
        data range) come from the data."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or "://" in str(ckpt_path):
            return super()._parse_ckpt_path()
        try:  # memory-mapped: only the hyperparameters are read here; Lightning reads the checkpoint next
            checkpoint = read_lightning_checkpoint(ckpt_path, mmap=True)
        except ValueError as error:
            exit_with_error("train.py", f"--ckpt_path {error} (it resumes a run of train.py from one of that "
                                        "run's checkpoints)")
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        self._measurements_take_the_checkpoint_geometry(subcommand, hparams)
        asked = self.config[subcommand].get("model")
        asked_args = dict(vars(asked.get("init_args") or {})) if asked is not None else {}
        saved_class = hparams.get("_class_path")
        if asked is not None and saved_class and asked.get("class_path") != saved_class:
            exit_with_error("train.py", f"--ckpt_path holds a {saved_class.rsplit('.', 1)[-1]}, the config asks for "
                       f"{str(asked.get('class_path')).rsplit('.', 1)[-1]}; to start a new model from other "
                       "weights use its pretrained-weights argument, not --ckpt_path")
        model_class = (asked.get("class_path") if asked is not None else None) or saved_class or ""
        honoured = set(HONOURED_SETTINGS) | (set() if subcommand == "fit" else training_only_settings(model_class))
        # a setting left at its class default was not asked for: the checkpoint's stays
        differing = [f"{key}: config {asked_args[key]!r}, checkpoint {hparams[key]!r}"
                     for key in sorted(asked_args)
                     if key in hparams and key not in honoured and key not in LINKED_SETTINGS
                     and not _same_setting(asked_args[key], hparams[key])
                     and not _same_setting(asked_args[key], _class_default(model_class, key))]
        if differing:
            exit_with_error("train.py", "the model config differs from --ckpt_path's (" + "; ".join(differing) + "); drop the "
                       "setting to use the checkpoint's, or train a new model")
        self._parse_checkpoint_hyperparameters(subcommand, hparams)
        if subcommand == "fit":
            self._continue_logger_version(Path(ckpt_path))
        model_args = self.config[subcommand].model.init_args
        class_path = str(asked.get("class_path")) if asked is not None else ""
        for key in honoured & set(asked_args):
            if key in REPORT_SETTINGS and _same_setting(asked_args[key], _class_default(class_path, key)):
                if key == "results_dir" and self.config[subcommand].get("out"):
                    model_args[key] = None  # --out places this run's table (move_outputs), not the training run's
                continue  # not set by any config or flag: the checkpoint's row name and folder stay
            if not _same_setting(model_args.get(key), asked_args[key]):
                rank_zero_info(f"--ckpt_path: {key} = {asked_args[key]!r} from the command line "
                               f"(the checkpoint had {model_args.get(key)!r})")
                model_args[key] = asked_args[key]

    def _parse_checkpoint_hyperparameters(self, subcommand: str, hparams: dict) -> None:
        """Lightning's ``_parse_ckpt_path`` on the hyperparameters already read (and renamed to this
        version's names by ``read_lightning_checkpoint``): the checkpoint's model settings under the config."""
        hparams = {key: value for key, value in hparams.items() if key != "_instantiator"}
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _measurements_take_the_checkpoint_geometry(self, subcommand: str, hparams: dict) -> None:
        """Measurements without a geometry (``MeasurementsDataModule``) are those the checkpoint's model
        was trained on; a given geometry other than the checkpoint's is used as given, with a note."""
        data = self.config[subcommand].get("data")
        if data is None or not str(data.get("class_path", "")).endswith("MeasurementsDataModule"):
            return
        saved = hparams.get("forward_model")
        if data.init_args.get("geometry") is None:
            data.init_args["geometry"] = saved
        elif saved is not None and not _same_setting(dict(data.init_args["geometry"]), saved):
            rank_zero_info("the measurements' geometry differs from the checkpoint's: the model is applied in the "
                           "measurements' geometry")

    def instantiate_classes(self) -> None:
        """Build data, model and trainer; a ValueError of ours (a bad setting) ends in one line
        naming it instead of jsonargparse's chained tracebacks (``LIGHTNING_RECON_DEBUG=1``: all)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            if os.environ.get("LIGHTNING_RECON_DEBUG"):
                raise
            root = error
            while root.__cause__ is not None:
                root = root.__cause__
            exit_with_error("train.py", str(root).splitlines()[0] if str(root) else type(root).__name__)

    def _continue_logger_version(self, ckpt_path: Path) -> None:
        """Resuming ``<save_dir>/<name>/version_N/checkpoints/*.ckpt`` with a CSV or TensorBoard logger
        logs into that same ``version_N`` (not a new one), which also keeps the checkpoint folder and
        with it the best-checkpoint record. The CSV logger would delete the earlier ``metrics.csv``
        there: it is kept as ``metrics.until-<checkpoint name>.csv`` (``…-2.csv``, ``…-3.csv`` when
        that name is taken: an earlier part of the log is never overwritten)."""
        folder = ckpt_path.resolve().parent
        logger = self.config.fit.trainer.get("logger")
        if folder.name != "checkpoints" or not folder.parent.name.startswith("version_") or logger is None:
            return
        if not hasattr(logger, "class_path") or not str(logger.class_path).endswith(("CSVLogger", "TensorBoardLogger")):
            return
        init_args = logger.get("init_args")
        if init_args is not None and init_args.get("version") is None:
            init_args["version"] = folder.parent.name
            earlier = folder.parent / "metrics.csv"
            kept = earlier.with_name(f"metrics.until-{ckpt_path.stem}.csv")
            number = 1
            while kept.exists():
                number += 1
                kept = earlier.with_name(f"metrics.until-{ckpt_path.stem}-{number}.csv")
            try:
                earlier.rename(kept)
            except FileNotFoundError:  # no CSV log, or another process moved it already
                pass
            rank_zero_info(f"--ckpt_path: logging on in {folder.parent}")

    def _check_outputs(self, subcommand: str) -> None:
        """Before any work: every folder the run writes accepts files (checkpoints and logs in
        ``fit``, the results table in ``test``), and a checkpoint folder set by the config is locked
        for this run (a second run writing there is refused, naming the first)."""
        trainer = self.trainer
        checkpoints = getattr(trainer.checkpoint_callback, "dirpath", None) if subcommand == "fit" else None
        if subcommand == "fit":
            folders = [("checkpoint folder", checkpoints), ("default_root_dir", trainer.default_root_dir),
                       ("log folder", getattr(trainer.logger, "save_dir", None))]
        else:
            folders = [("results_dir", getattr(self.model, "hparams", {}).get("results_dir"))]
        for what, folder in folders:
            if folder:
                check_writable(folder, what)
        if checkpoints and trainer.is_global_zero:
            self._lock = OutputLock(checkpoints, "train.py fit").acquire()

    def before_fit(self) -> None:
        self._check_outputs("fit")
        if getattr(self.datamodule, "train_ground_truth", True) is False and \
                self.model.hparams.get("loss", "supervised") == "supervised":
            exit_with_error("train.py", f"{type(self.model).__name__} trains supervised (loss: supervised), and the data "
                            "leaves the ground truth out of training (train_ground_truth: false); choose "
                            "--model.init_args.loss noise2inverse or equivariant (FBPUNet, LearnedGD, LearnedPD)")
        try:  # init_from's weights load here, before any work, so that a bad file ends in one line
            load = getattr(self.model, "load_initial_weights", None)
            if load is not None:
                load()
        except ValueError as error:
            exit_with_error("train.py", str(error))

    def after_fit(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def before_test(self) -> None:
        self._check_outputs("test")

    def instantiate_trainer(self, **kwargs):
        """The trainer, writing checkpoints atomically unless a config chose another checkpoint IO, its
        progress bar counting optimiser steps (``StepProgressBar``)."""
        trainer = super().instantiate_trainer(**kwargs)
        count_steps_in_progress_bar(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_instantiate_classes(self) -> None:
        os.environ["WANDB_MODE"] = default_wandb_mode()
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        move_outputs(config)
        data_args = (config["data"].get("init_args") if config.get("data") is not None else None) or {}
        # workers of a cached data module simulate the first epoch only, then sleep: no core kept for them
        busy_workers = 0 if data_args.get("cache_samples") else int(data_args.get("num_workers") or 0)
        try:
            threads = apply_thread_policy(config.get("threads"), num_workers=busy_workers)
        except ValueError as error:
            exit_with_error("train.py", f"--{error}")
        rank_zero_info(f"torch CPU threads: {threads}")
        # TF32 for float32 matrix products on GPUs that have it (convolutions already use it by
        # default); the ray transform's sparse products are unaffected and stay float32.
        torch.set_float32_matmul_precision("high")


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> ReconCLI:
    """Entry point of ``train.py``; ``args`` as on the command line (``None``: ``sys.argv``). Config
    files with a ``compose:`` list are expanded first (``expand_compose``); the copies without the
    key live in a temporary folder while the CLI parses (and runs)."""
    given = sys.argv[1:] if args is None else args
    quiet_library_notes()
    with tempfile.TemporaryDirectory(prefix="lightning_recon-compose-") as folder:
        if isinstance(given, (list, tuple)):  # (LightningCLI also takes a dict or Namespace: as it is)
            expanded = with_pretrained_paths(expand_compose(list(given), Path(folder)))
            expanded = with_checkpoint_model(with_default_data(expanded, subcommands=run), subcommands=run)
            args = args if expanded == list(given) else expanded
        try:
            with warnings.catch_warnings():
                # our own rewritten arguments (compose:, the default data class) are meant, not a mistake
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                return ReconCLI(
                    L.LightningModule,  # any method: CT, light field, sparse coding (ReconstructionModule)
                    L.LightningDataModule,
                    subclass_mode_model=True,
                    subclass_mode_data=True,
                    save_config_callback=LoggedSaveConfig,
                    save_config_kwargs={"overwrite": True},
                    trainer_defaults={"callbacks": [LearningRateLogger(logging_interval="step"), ValidateAtEnd()],
                                      "default_root_dir": "outputs"},
                    args=args,
                    run=run,
                )
        except DataFileError as error:  # a user's file found bad during the run (also in a loader worker)
            if os.environ.get("LIGHTNING_RECON_DEBUG"):
                raise
            exit_with_error("train.py", str(error).rpartition("DataFileError: ")[2])
        except (FolderInUse, OutputUnwritable) as error:  # found before any work
            exit_with_error("train.py", str(error))
