"""``--slices``: the prior on each chosen detector row in turn, each warm-started from the previous
slice's network (``--independent``: each from ``--init``).

Each finished slice is committed to ``OUT/slices/`` (its image, its loss/PSNR curves, the network
weights and ``state.json``, renamed into place last), so an interrupted run (Ctrl-C, SIGTERM, even
SIGKILL) continues from the last finished slice when the same command is run again with the same
``--out``; a rerun with other settings is refused rather than mixed in. A damaged slice image is
computed again and a damaged network lets the next slice start from ``--init`` (one warning line
each); an unfinished rerun never replaces a longer ``recon.npy``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from ..messages import exit_with_error
from .arguments import PROGRAM, slice_indices
from .fitting import NETWORK_LABELS, fit_slice, interrupts_as_keyboard_interrupt, returned_iterate, run_logger
from .inputs import (as_reference, center_offset, input_errors_end_the_run, measurement_problems, read_slice, scan_rows,
                     uncut_fbp)
from .outputs import reference_metrics, save_preview, save_stack, write_atomically, write_summary

__all__ = ["finetune_slices"]

STATE_FILE = "state.json"
LIGHTNING_FIT_NOTICES = (r".*`validation_step` but have no `val_dataloader`", r".*is smaller than the logging interval",
                         r".*LeafSpec.*is deprecated")
PREVIEW_SLICES = 4


def finetune_slices(opts) -> dict:
    """The chosen rows in turn, warm-started, committed slice by slice, resumable; returns the summary."""
    offset = center_offset(opts)
    out = Path(opts.out)
    slices_dir = out / "slices"
    # every input is read and checked (the first row to do in full) before any folder is created
    with input_errors_end_the_run(opts.debug):
        rows = scan_rows(opts.input)
        indices = slice_indices(opts.slices, rows)
        reference_volume = None
        if opts.reference not in (None, "full-fbp"):
            reference_volume = np.load(opts.reference, mmap_mode="r")
        state = _load_state(slices_dir / STATE_FILE, _settings(opts))
        pending = [k for k in indices if str(k) not in state["finished"] or _damaged_slice(slices_dir, k)]
        for index in pending:
            state["finished"].pop(str(index), None)  # computed again
        first_scan, first_reference = read_slice(opts, (pending or indices)[0], offset)
    image_shape = tuple(first_scan.geometry.image_shape)
    problems = measurement_problems(opts, first_scan)
    if reference_volume is not None and tuple(reference_volume.shape) != (rows, *image_shape):
        problems.append(f"--reference has shape {tuple(reference_volume.shape)}; with --slices it must be the volume "
                        f"{(rows, *image_shape)} (detector rows, then the reconstruction's shape)")
    if problems:
        exit_with_error(PROGRAM, "; ".join(problems))
    start_weights = None  # the network the next slice starts from, saved after the last finished one
    if state["network"] and not opts.independent and pending:
        start_weights = _saved_network(slices_dir, state["network"])
    references = None
    if reference_volume is not None:
        references = reference_volume.__getitem__
        first_reference = as_reference(references((pending or indices)[0]))
    slices_dir.mkdir(parents=True, exist_ok=True)

    n, done_before = len(indices), len(indices) - len(pending)
    previous = state["order"][-1] if state["order"] and start_weights is not None else None
    if done_before:
        print(f"{PROGRAM}: {done_before} of {n} slices already done in {out}"
              + ("" if opts.independent or not pending or previous is None
                 else f"; continuing warm-started from slice {previous}'s network"))
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero",
                                                  "lightning.fabric.utilities.rank_zero")]
    levels = [logger.level for logger in quiet]
    computed: dict = {}
    interrupted, error, index = False, None, None
    started = time.perf_counter()
    bar = tqdm(total=n, initial=done_before, unit="slice", dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
    with interrupts_as_keyboard_interrupt(), warnings.catch_warnings():  # SIGTERM between fits, too
        try:
            for position, index in enumerate(pending):
                bar.set_description(f"slice {done_before + position + 1} of {n}")
                start = time.perf_counter()
                scan, reference = ((first_scan, first_reference) if position == 0
                                   else read_slice(opts, index, offset, references))
                warm = start_weights is not None and not opts.independent
                iterations = opts.warm_iterations if warm and opts.warm_iterations else opts.iterations
                progress = _SliceProgress(bar, iterations, record_psnr=reference is not None)
                fitted = fit_slice(opts, scan, reference, iterations, run_logger(opts, out, index),
                                   start_weights=start_weights if warm else None, enable_progress_bar=False,
                                   enable_model_summary=False, callbacks=[progress])
                if fitted.interrupted:
                    interrupted = True
                    break
                if opts.logger == "wandb":
                    import wandb

                    wandb.finish()
                for logger in quiet:  # the device lines once, not once per slice
                    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
                for notice in LIGHTNING_FIT_NOTICES:  # and Lightning's notices about every fit
                    warnings.filterwarnings("ignore", message=notice)
                model = fitted.model
                record = {"slice": index, "iterations": len(model.losses), "best_loss": model.best_loss,
                          "first_loss": model.losses[0], "stopped_early_at": model.stopped_at,
                          "returned_iterate": returned_iterate(model),
                          "warm_start_from": previous if warm else None,
                          "center_offset": -scan.geometry.detector_offset,
                          **reference_metrics(fitted.image, fitted.fbp, reference)}
                start_weights = {name: value.detach().cpu().clone() for name, value in model.net.state_dict().items()}
                record["seconds"] = time.perf_counter() - start
                _commit_slice(slices_dir, state, index, fitted.image.numpy(), progress.curves(model.losses),
                              start_weights, record)
                computed[index], previous = record, index
                bar.update(1)
                tqdm.write(_slice_line(record, done_before + position + 1, n), file=sys.stdout)
        except KeyboardInterrupt:
            interrupted = True
        except ValueError as problem:  # a later row that cannot be read (NaN, dead flats, …)
            if opts.debug:
                raise
            error = f"slice {index}: {problem}"
        finally:
            bar.close()
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)

    done = [k for k in indices if str(k) in state["finished"]]
    if not done:
        exit_with_error(PROGRAM, error or "interrupted before the first slice finished; nothing to save",
                        2 if error else 130)
    records = [dict(state["finished"][str(k)], from_previous_run=k not in computed) for k in done]
    pending = [k for k in indices if str(k) not in state["finished"]]
    kept = _stack_length(out / "recon.npy") if pending else 0
    if kept > len(done):  # an unfinished rerun (a damaged slice not yet recomputed) never shrinks the stack
        print(f"{PROGRAM}: kept the {kept} slices of {out / 'recon.npy'} from an earlier run; this run's {len(done)} "
              f"are in {slices_dir}")
    else:
        with input_errors_end_the_run(opts.debug):
            save_stack(out, [_slice_file(slices_dir, k) for k in done], image_shape)
        _save_preview(out, opts, offset, references, done, slices_dir)
    summary = {"input": opts.input, "mode": "independent" if opts.independent else "warm-start",
               "slices_requested": len(indices), "slices_finished": len(done),
               "shape": [len(done), *image_shape], "sinogram_shape": list(first_scan.data.shape),
               "seconds": time.perf_counter() - started, "interrupted": interrupted,
               "pending": pending, "slices": records}
    for key in ("recon_psnr", "fbp_psnr"):
        if all(key in r for r in records):
            summary[f"mean_{key}"] = float(np.mean([r[key] for r in records]))
    write_summary(out, summary)
    if kept <= len(done):
        print(f"{PROGRAM}: {len(done)} of {n} slices in {out / 'recon.npy'} {tuple(summary['shape'])}"
              + (f", mean PSNR {summary['mean_recon_psnr']:.2f} dB (FBP {summary['mean_fbp_psnr']:.2f} dB)"
                 if "mean_recon_psnr" in summary else ""))
    if error:
        exit_with_error(PROGRAM, f"{error}; the {len(done)} finished slices are saved in {out}")
    if interrupted:
        exit_with_error(PROGRAM, f"interrupted after {len(done)} of {n} slices; they are saved in {out}, and the "
                        "same command continues from there", 130)
    return summary


def _slice_file(slices_dir: Path, index: int) -> Path:
    return slices_dir / f"slice_{index:04d}.npy"


def _settings(opts) -> dict:
    """What a finished slice depends on: a rerun into the same --out must agree on all of it."""
    def file(name):
        return str(Path(name).resolve())

    return {"input": file(opts.input), "input_bytes": Path(opts.input).stat().st_size,
            "angle_step": opts.angle_step, "num_angles": opts.num_angles, "binning": opts.binning,
            "center_offset": opts.center_offset, "iterations": opts.iterations,
            "warm_iterations": opts.warm_iterations, "lr": opts.lr,
            "lr_warmup": opts.lr_warmup, "tv_weight": opts.tv_weight, "network_input": opts.network_input,
            "data_loss": opts.data_loss, "photons": opts.photons, "early_stop_window": opts.early_stop_window,
            "early_stop_patience": opts.early_stop_patience,
            "init": opts.init if opts.init == "random" else file(opts.init), "channels": opts.channels,
            "scales": opts.scales, "network": opts.network, "seed": opts.seed, "independent": opts.independent,
            "reference": opts.reference if opts.reference in (None, "full-fbp") else file(opts.reference)}


def _load_state(path: Path, settings: dict) -> dict:
    """The saved progress of an earlier run into the same --out, or a fresh one; ValueError when
    the saved slices were made with other settings."""
    if not path.is_file():
        return {"settings": settings, "finished": {}, "order": [], "network": None}
    try:
        state = json.loads(path.read_text())
        saved, finished = state["settings"], state["finished"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is unreadable; remove {path.parent} to start over") from None
    changed = [key for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)]
    if changed:
        names = {"input": "input file", "input_bytes": "input file size"}
        described = ", ".join(f"{names.get(key, '--' + key.replace('_', '-'))} {saved.get(key)!r} -> "
                              f"{settings.get(key)!r}" for key in changed[:4])
        raise ValueError(f"{path.parent.parent} holds {len(finished)} slice(s) made with other settings ({described}"
                         f"{', …' if len(changed) > 4 else ''}); rerun with those, use another --out, or remove "
                         f"{path.parent}")
    return state


def _warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


def _damaged_slice(slices_dir: Path, index: int) -> bool:
    """Whether a finished slice's image file is missing or unreadable (truncated, not one image);
    says so in one line: the slice is computed again."""
    path = _slice_file(slices_dir, index)
    try:
        if np.load(path, mmap_mode="r").ndim == 2:  # the header, and a file as long as it announces
            return False
        reason = "not one image"
    except (OSError, ValueError, EOFError) as error:
        reason = "missing" if isinstance(error, FileNotFoundError) else f"unreadable: {type(error).__name__}"
    _warn(f"{path} is damaged ({reason}); slice {index} is computed again")
    return True


def _stack_length(path: Path) -> int:
    """Slices in the stack ``path`` (0 when there is none, or it is unreadable)."""
    try:
        stack = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return 0
    return stack.shape[0] if stack.ndim == 3 else 0


def _saved_network(slices_dir: Path, name: str) -> Optional[dict]:
    """The network weights saved after the last finished slice, which the next slice starts from;
    None, with a one-line warning, when the file is missing or unreadable (the next slice starts from --init)."""
    network = slices_dir / name
    try:
        return torch.load(network, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, truncated, not a weights file
        reason = "missing" if isinstance(error, FileNotFoundError) else f"unreadable: {type(error).__name__}"
        _warn(f"{network}, the network the next slice starts from, is damaged ({reason}); it starts from --init")
        return None


def _commit_slice(slices_dir: Path, state: dict, index: int, image: np.ndarray, curves: dict, net_state: dict,
                  record: dict) -> None:
    """Save one finished slice; ``state.json``, renamed into place last, is what makes it count."""
    write_atomically(_slice_file(slices_dir, index), lambda f: np.save(f, image.astype(np.float32)))
    write_atomically(slices_dir / f"curves_{index:04d}.npz", lambda f: np.savez(f, **curves))
    network = f"net_{index:04d}.pt"  # the weights after this slice, which the next one starts from
    write_atomically(slices_dir / network, lambda f: torch.save(net_state, f))
    state["finished"][str(index)] = record
    state["order"].append(index)
    state["network"] = network
    write_atomically(slices_dir / STATE_FILE, lambda f: f.write(json.dumps(state, indent=1).encode()))
    for stale in slices_dir.glob("net_*.pt"):  # only the newest network is needed
        if stale.name != network:
            stale.unlink()


def _slice_line(record: dict, position: int, n: int) -> str:
    """The line printed when a slice is done."""
    line = (f"slice {record['slice']} ({position}/{n}): {record['iterations']} iterations in "
            f"{record['seconds']:.1f} s, best loss {record['best_loss']:.4g}")
    if "recon_psnr" in record:
        line += f", PSNR {record['recon_psnr']:.2f} dB (FBP {record['fbp_psnr']:.2f} dB)"
    start = record["warm_start_from"]
    return line + (f", warm-started from slice {start}" if start is not None else ", from --init")


def _save_preview(out: Path, opts, offset, references, done: List[int], slices_dir: Path) -> None:
    """preview.png: FBP | prior (| reference) for up to ``PREVIEW_SLICES`` slices spread over the finished ones."""
    count = min(PREVIEW_SLICES, len(done))
    chosen = sorted({done[i] for i in np.linspace(0, len(done) - 1, count).round().astype(int)})
    rows = []
    for index in chosen:
        scan, reference = read_slice(opts, index, offset, references)
        rows.append((f"slice {index}: ", uncut_fbp(scan.geometry, scan.data).numpy(),
                     np.load(_slice_file(slices_dir, index)), None if reference is None else reference.numpy()))
    save_preview(out, rows, NETWORK_LABELS[opts.network], inches=3, fontsize=9)


class _SliceProgress(Callback):
    """Shows iteration and loss on the bar over slices (at most twice a second); records the
    ``train/psnr`` of every step when the model has a reference (``(iteration, psnr)`` pairs)."""

    def __init__(self, bar, iterations: int, record_psnr: bool):
        self.bar, self.iterations, self.record_psnr = bar, iterations, record_psnr
        self.psnr: list = []
        self._shown = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = len(pl_module.losses)
        if self.record_psnr:
            value = trainer.callback_metrics.get("train/psnr")
            if value is not None:
                self.psnr.append((done, value.detach().clone()))
        now = time.monotonic()
        if now - self._shown > 0.5 and pl_module.losses:
            self._shown = now
            self.bar.set_postfix_str(f"iteration {done}/{self.iterations}, loss {pl_module.losses[-1]:.4g}")

    def curves(self, losses) -> dict:
        """The loss of every iteration and the PSNR of every step, for ``curves_NNNN.npz``."""
        curves = {"loss": np.asarray(losses, dtype=np.float32)}
        if self.psnr:
            curves["psnr_iteration"] = np.asarray([i for i, _ in self.psnr], dtype=np.int64)
            curves["psnr"] = torch.stack([v.float().cpu() for _, v in self.psnr]).numpy()
        return curves
