"""Checkpoints that cannot rot: written atomically on any filesystem, reported by path when unreadable.

Lightning writes a checkpoint into a temporary file and moves it over the old one; when the
temporary file lives on another filesystem (tmpfs ``/tmp``, cluster scratch, NFS) the move becomes
a copy over the existing ``last.ckpt``, and a kill during it leaves a truncated file with the good
one already gone. ``AtomicCheckpointIO`` writes the new checkpoint beside its target, flushes it to
disk and renames it into place: until the rename the previous checkpoint is intact, after it the
new one is complete. Temporary files carry the writer's PID (``<name>.<pid>.partial``): a save
removes its own and those of processes no longer running on this host, never a file another live
run is still writing. Loading a truncated or corrupt checkpoint names the file and the way out.
Checkpoints of earlier versions load too: ``upgrade_hyperparameters`` renames what was renamed since.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .locks import process_alive

__all__ = ["AtomicCheckpointIO", "CheckpointUnreadable", "LastAndBestCheckpoint", "read_lightning_checkpoint", "upgrade_hyperparameters",
           "weights_only_copy"]

PARTIAL_SUFFIX = ".partial"


# Hyperparameters renamed since checkpoints were first written: old name -> new name.
RENAMED_HYPERPARAMETERS = {"geometry": "forward_model"}


def upgrade_hyperparameters(hparams: Dict[str, Any]) -> Dict[str, Any]:
    """A method's saved hyperparameters (``checkpoint["hyper_parameters"]``) under the names of this
    version (``geometry``, the forward model's numbers, became ``forward_model``): a new dict, or
    ``hparams`` itself when nothing was renamed."""
    renamed = {old: new for old, new in RENAMED_HYPERPARAMETERS.items() if old in hparams and new not in hparams}
    if not renamed:
        return hparams
    return {renamed.get(key, key): value for key, value in hparams.items()}


class CheckpointUnreadable(RuntimeError):
    """A checkpoint file that exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def read_lightning_checkpoint(path: _PATH, mmap: bool = False) -> Dict[str, Any]:
    """A ``train.py`` checkpoint read with ``weights_only=True`` (``mmap``: tensors mapped, not read,
    for its hyperparameters alone). ``ValueError``, one line starting with the path, for a missing
    file or a folder, an unreadable file (truncated, empty, text) or a file without ``state_dict``."""
    if not Path(path).is_file():
        raise ValueError(f"{path} " + ("is a folder, not a checkpoint file" if Path(path).is_dir() else "does not exist"))
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as error:  # truncated zip, empty or text file, a pickle weights_only refuses
        raise ValueError(f"{path} is unreadable ({type(error).__name__}): truncated, empty, or not a checkpoint?"
                         ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if isinstance(checkpoint.get("hyper_parameters"), dict):
        checkpoint["hyper_parameters"] = upgrade_hyperparameters(checkpoint["hyper_parameters"])
    return checkpoint


SHARED_KEYS = ("state_dict", "hyper_parameters", "global_step", "epoch", "pytorch-lightning_version")


def weights_only_copy(source: _PATH, destination: _PATH) -> int:
    """Writes the weights, hyperparameters and step of a ``train.py`` checkpoint to ``destination``,
    without optimiser and callback state: a file to share or ship (it loads by ``--ckpt_path`` for
    test / predict and by ``init_from``, not to resume). Returns its size in bytes.

    ``python -c "from lightning_recon.checkpointing import weights_only_copy as c; c('last.ckpt', 'w.ckpt')"``
    """
    checkpoint = read_lightning_checkpoint(source)
    torch.save({key: checkpoint[key] for key in SHARED_KEYS if key in checkpoint}, destination)
    return Path(destination).stat().st_size


def remove_stale_partials(folder: Path) -> None:
    """Remove ``*.<pid>.partial`` files whose writer no longer runs (a run killed mid-write); files of
    running processes and of unknown form stay."""
    for partial in folder.glob(f"*{PARTIAL_SUFFIX}"):
        pid = partial.name[: -len(PARTIAL_SUFFIX)].rpartition(".")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            partial.unlink(missing_ok=True)


class LastAndBestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is the last validated step whether or not
    that step is among the best: Lightning 2.6 writes ``last`` only at a step that also saved a
    top-k checkpoint, so a run whose final validation was not its best ended with a stale
    ``last.ckpt`` (the 6,000-step demo tested and resumed from step 5,750)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        skipped = self._should_skip_saving_checkpoint(trainer) or self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not skipped and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<name>.<pid>.partial`` in the target folder, ``fsync``, ``os.replace`` (local paths)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        target = Path(path)
        if "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target.parent)
        partial = target.with_name(f"{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)  # atomic within the folder's filesystem
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError:
            pass

    def load_checkpoint(self, path: _PATH, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as error:  # truncated zip, not a checkpoint, a pickle weights_only refuses
            folder = Path(path).parent
            others = sorted(p.name for p in folder.glob("*.ckpt") if p.name != Path(path).name)
            hint = (f"resume from another checkpoint in {folder} ({', '.join(others[:4])})" if others
                    else "start the run again")
            raise CheckpointUnreadable(f"checkpoint {path} is unreadable ({type(error).__name__}: "
                                       f"{str(error).splitlines()[0][:200]}); it may be truncated: {hint}") from None
