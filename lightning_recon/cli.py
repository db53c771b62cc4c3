"""LightningCLI of lightning_recon: ``train.py`` (fit / validate / test / predict).

    python train.py fit --config configs/experiment/ellipses30_fbp_unet.yaml
    python train.py fit --config configs/data/ellipses-small.yaml --config configs/model/learned_pd.yaml \\
        --config configs/trainer/cpu.yaml --config configs/logger/csv.yaml
    python train.py test --config <same configs> --ckpt_path <run>/checkpoints/last.ckpt

The model's geometry is linked from the data module, so the two never disagree (links whose source
or target a chosen class lacks are skipped); the full resolved config is saved next to the run and
sent to the logger.

A config file may start from others: a top-level ``compose:`` list of config files (relative to its
own folder) is read first, in order, and the file then overrides them (``expand_compose``).
"""
from __future__ import annotations

import itertools
import netrc
import os
import re
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpointing import AtomicCheckpointIO
from .data.files import DataFileError
from .locks import FolderInUse, OutputLock, OutputUnwritable, check_writable
from .messages import exit_with_error
from .methods.callbacks import LearningRateLogger, ReconstructionPanels

__all__ = ["ReconCLI", "cli_main", "default_wandb_mode", "expand_compose"]


def default_wandb_mode(probe_seconds: float = 3.0) -> str:
    """The W&B mode a run uses: ``offline``/``disabled`` when ``WANDB_MODE`` says so; ``online``
    (``WANDB_MODE=online``, or unset with W&B credentials) only when the W&B server answers a TCP
    connection within ``probe_seconds``, otherwise ``offline`` with one warning, so that a run on a
    machine without network never waits on the server; ``offline`` without credentials."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode != "online":
        return mode
    if mode != "online" and not _wandb_credentials():
        return "offline"
    if _wandb_server_reachable(probe_seconds):
        return "online"
    warnings.warn("W&B server unreachable: logging offline instead (upload later with `wandb sync`)", stacklevel=2)
    return "offline"


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators(urlparse(_wandb_url()).hostname or "api.wandb.ai"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_server_reachable(timeout: float) -> bool:
    """A TCP connection to the W&B server (``WANDB_BASE_URL``) within ``timeout`` seconds."""
    url = urlparse(_wandb_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run folder and sends the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = self.parser.dump(self.config, skip_none=False)
            trainer.logger.log_hyperparams({"config": config})


# --ckpt_path: settings the command line decides over the checkpoint's, and settings that only
# matter while training (the checkpoint's are kept outside `fit` without comparison).
HONOURED_SETTINGS = ("results_dir", "method_name", "ray_transform_backend")
REPORT_SETTINGS = ("results_dir", "method_name")  # honoured only when a config or flag sets them
LINKED_SETTINGS = ("geometry", "data_range", "fbp_filter", "fbp_frequency_scaling")


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

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, LightningCLI replaces the model config by the checkpoint's
        hyperparameters. Here a model class or a setting that differs from the checkpoint's is refused
        (one line naming each), except the settings of where and how to run and report, which the
        configs and flags clearly mean and which win: ``results_dir`` and ``method_name`` when set
        (else the checkpoint's stay), ``ray_transform_backend`` (a GPU checkpoint on a CPU) and,
        outside ``fit``, the training-only settings. Settings the data module links (geometry, FBP,
        data range) come from the data."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or "://" in str(ckpt_path):
            return super()._parse_ckpt_path()
        if not Path(ckpt_path).is_file():
            exit_with_error("train.py", f"--ckpt_path {ckpt_path} " + ("is a folder, not a checkpoint file"
                                                                       if Path(ckpt_path).is_dir() else "does not exist"))
        try:
            # memory-mapped: only the hyperparameters are read here; Lightning reads the checkpoint next
            checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        except Exception as error:
            exit_with_error("train.py", f"checkpoint {ckpt_path} is unreadable ({type(error).__name__}); it may be truncated: "
                       "resume from another checkpoint of the run")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            exit_with_error("train.py", f"--ckpt_path {ckpt_path} is not a Lightning checkpoint (no state_dict): "
                                        "it resumes runs of train.py only")
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        asked = self.config[subcommand].get("model")
        asked_args = dict(vars(asked.get("init_args") or {})) if asked is not None else {}
        saved_class = hparams.get("_class_path")
        if asked is not None and saved_class and asked.get("class_path") != saved_class:
            exit_with_error("train.py", f"--ckpt_path holds a {saved_class.rsplit('.', 1)[-1]}, the config asks for "
                       f"{str(asked.get('class_path')).rsplit('.', 1)[-1]}; to start a new model from other "
                       "weights use its pretrained-weights argument, not --ckpt_path")
        model_class = (asked.get("class_path") if asked is not None else None) or saved_class or ""
        honoured = set(HONOURED_SETTINGS) | (set() if subcommand == "fit" else training_only_settings(model_class))
        differing = [f"{key}: config {asked_args[key]!r}, checkpoint {hparams[key]!r}"
                     for key in sorted(asked_args)
                     if key in hparams and key not in honoured and key not in LINKED_SETTINGS
                     and not _same_setting(asked_args[key], hparams[key])]
        if differing:
            exit_with_error("train.py", "the model config differs from --ckpt_path's (" + "; ".join(differing) + "); drop the "
                       "setting to use the checkpoint's, or train a new model")
        super()._parse_ckpt_path()
        if subcommand == "fit":
            self._continue_logger_version(Path(ckpt_path))
        model_args = self.config[subcommand].model.init_args
        class_path = str(asked.get("class_path")) if asked is not None else ""
        for key in honoured & set(asked_args):
            if key in REPORT_SETTINGS and _same_setting(asked_args[key], _class_default(class_path, key)):
                continue  # not set by any config or flag: the checkpoint's row name and folder stay
            if not _same_setting(model_args.get(key), asked_args[key]):
                rank_zero_info(f"--ckpt_path: {key} = {asked_args[key]!r} from the command line "
                               f"(the checkpoint had {model_args.get(key)!r})")
                model_args[key] = asked_args[key]

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
        trainer, model = self.trainer, self.model
        folders = []
        if subcommand == "fit":
            folders.append(("checkpoint folder", getattr(trainer.checkpoint_callback, "dirpath", None)))
            folders.append(("log folder", getattr(trainer.logger, "save_dir", None) if trainer.logger else None))
            folders.append(("default_root_dir", trainer.default_root_dir))
        if subcommand == "test":
            folders.append(("results_dir", getattr(model, "hparams", {}).get("results_dir")))
        for what, folder in folders:
            if folder:
                check_writable(folder, what)
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None) if subcommand == "fit" else None
        if dirpath and trainer.is_global_zero:
            self._lock = OutputLock(dirpath, "train.py fit").acquire()

    def before_fit(self) -> None:
        self._check_outputs("fit")

    def after_fit(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def before_test(self) -> None:
        self._check_outputs("test")

    def instantiate_trainer(self, **kwargs):
        """The trainer, writing checkpoints atomically unless a config chose another checkpoint IO."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_instantiate_classes(self) -> None:
        os.environ["WANDB_MODE"] = default_wandb_mode()
        # TF32 for float32 matrix products on GPUs that have it (convolutions already use it by
        # default); the ray transform's sparse products are unaffected and stay float32.
        torch.set_float32_matmul_precision("high")


CONFIG_OPTIONS = ("--config", "-c")  # LightningCLI's config-file option (on the top level and per subcommand)
_COMPOSE_KEY = re.compile(r"compose\s*:")


def _read_config(path: Path):
    """The YAML mapping in ``path`` (None if unreadable or not a mapping: jsonargparse reports it)."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


def _without_compose(path: Path, content: dict) -> Optional[str]:
    """The text of ``path`` with its top-level ``compose:`` entry blanked out (other lines, comments
    and line numbers as they were); None when nothing else is left."""
    import yaml

    lines, skipping = [], False
    for line in path.read_text().splitlines(keepends=True):
        if skipping and (not line.strip() or line[0] in " \t-#"):
            lines.append("\n")  # the entry's items, continuation lines and the comments among them
            continue
        skipping = bool(_COMPOSE_KEY.match(line))
        lines.append("\n" if skipping else line)
    text = "".join(lines)
    rest = {key: value for key, value in content.items() if key != "compose"}
    if (yaml.safe_load(text) or {}) != rest:  # any spelling the line edit does not handle
        exit_with_error("train.py", f"{path}: write compose: as a top-level YAML list (compose: [a.yaml, b.yaml] or "
                          "one '- path' per line)")
    return text if rest else None


def expand_compose(args: List[str], folder: Path) -> List[str]:
    """``args`` with every ``--config FILE`` (``--config=FILE``, ``-c FILE``) whose YAML has a
    top-level ``compose:`` list replaced by ``--config`` arguments for the composed files (paths
    relative to ``FILE``'s folder, each expanded the same way, in order) followed by ``FILE``
    without its ``compose:`` entry, written into ``folder``: a later file overrides the earlier
    ones, so ``FILE`` overrides what it composes and a later ``--config`` or flag overrides ``FILE``.
    A file composed twice below one ``--config`` is read once, where first composed; a cycle or a
    missing file ends ``train.py`` with one line. Arguments without ``compose:`` stay as they are."""
    copies = itertools.count()

    def expand(path: Path, chain: List[Path], seen: set) -> List[str]:
        key = path.resolve()
        if key in chain:
            cycle = " -> ".join(str(p) for p in [*chain[chain.index(key):], key])
            exit_with_error("train.py", f"compose cycle: {cycle}")
        if key in seen:
            return []
        seen.add(key)
        content = _read_config(path)
        if content is None or "compose" not in content:
            return [str(path)]
        composed = content["compose"]
        composed = [composed] if isinstance(composed, str) else composed
        if not isinstance(composed, list) or not all(isinstance(entry, str) for entry in composed):
            exit_with_error("train.py", f"{path}: compose: must be a list of config file paths, got {content['compose']!r}")
        out = []
        for entry in composed:
            target = path.parent / Path(entry).expanduser()
            if not target.is_file():
                where = "" if str(target) == entry else f" ({target})"
                exit_with_error("train.py", f"{path}: composed config {entry} not found{where}")
            out += expand(target, [*chain, key], seen)
        text = _without_compose(path, content)
        if text is not None:  # the file's own settings, after those it composes
            copy = folder / str(next(copies)) / path.name
            copy.parent.mkdir()
            copy.write_text(text)
            out.append(str(copy))
        return out

    def files(value: str) -> List[str]:
        path = Path(value)
        return expand(path, [], set()) if path.is_file() else [value]  # a YAML string stays as it is

    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in CONFIG_OPTIONS and i + 1 < len(args):
            out += [item for path in files(args[i + 1]) for item in (arg, path)]
            i += 2
            continue
        option, equals, value = arg.partition("=")
        if equals and option == "--config":
            out += [f"--config={path}" for path in files(value)]
        else:
            out.append(arg)
        i += 1
    return out


DEFAULT_DATA_MODULE = "lightning_recon.data.SimulatedCTDataModule"


def _names_data_module(args: List[str]) -> bool:
    """Whether ``args`` choose a data class: ``--data CLASS``, ``--data.class_path``, or a config file
    (or YAML string) with ``data: class_path:``."""
    for i, arg in enumerate(args):
        option = arg.partition("=")[0]
        if option in ("--data", "--data.class_path"):
            return True
        if option in CONFIG_OPTIONS:
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            import yaml

            try:
                content = _read_config(Path(value)) if Path(value).is_file() else yaml.safe_load(value)
            except (yaml.YAMLError, OSError, ValueError):
                content = None
            data = content.get("data") if isinstance(content, dict) else None
            if isinstance(data, str) or (isinstance(data, dict) and "class_path" in data):
                return True
    return False


def with_default_data(args: List[str], subcommands: bool = True) -> List[str]:
    """``args`` choosing simulated CT data (``SimulatedCTDataModule``) when they name no data class
    (after the subcommand, or first without subcommands). A parser default would carry its settings
    (batch size 32, workers) into a data class a config names; so a data module's defaults stay its own."""
    if _names_data_module(args) or any(a in ("-h", "--help") for a in args):
        return args
    position = next((i for i, a in enumerate(args) if a in ("fit", "validate", "test", "predict")), None)
    if position is None and subcommands:
        return args
    position = -1 if position is None else position
    return [*args[: position + 1], f"--data={DEFAULT_DATA_MODULE}", *args[position + 1:]]


def cli_main(args: Optional[List[str]] = None, run: bool = True) -> ReconCLI:
    """Entry point of ``train.py``; ``args`` as on the command line (``None``: ``sys.argv``). Config
    files with a ``compose:`` list are expanded first (``expand_compose``); the copies without the
    key live in a temporary folder while the CLI parses (and runs)."""
    given = sys.argv[1:] if args is None else args
    with tempfile.TemporaryDirectory(prefix="lightning_recon-compose-") as folder:
        if isinstance(given, (list, tuple)):  # (LightningCLI also takes a dict or Namespace: as it is)
            expanded = with_default_data(expand_compose(list(given), Path(folder)), subcommands=run)
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
                    trainer_defaults={"callbacks": [LearningRateLogger(logging_interval="step")],
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
