"""What the bench/ scripts share: command-line arguments, data, timing, machine facts, the DIP fit.

``bench/`` is not a package: the scripts run as ``python bench/<script>.py`` and Python puts the
script's own folder first on ``sys.path``, so ``from common import ...`` works from any working
directory without touching ``sys.path``. This module imports only the standard library when
loaded (torch, Lightning and the package inside the functions), so scripts that defer torch, such
as ``bench/lodopab.py`` and ``bench/operators.py``, still do.

- ``add_device_argument``, ``add_threads_argument`` / ``set_threads``: ``--device`` (CUDA when
  present) and ``--threads`` with one default for every script, 1 (on this project's two shared
  cores, 2 threads ran 5–10× slower than 1 for the small networks benchmarked here);
- ``first_samples``: the first N samples of a split (or a dataset), stacked;
- ``synchronize``: wait for a CUDA device before reading the clock;
- ``machine_info``: CPU / GPU names, torch version and threads, for every JSON output;
- ``first_reaching``: the first iteration at which a curve reaches a level;
- ``fit_dip``: the single-measurement fit loop (DIP, deep decoder, ADP) with the PSNR, loss and time
  of every iteration, whatever the module's ``iterations_per_step``;
- ``load_sparse_view_case``: the tooth and CT_small sparse-view measurements.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
TOOTH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tooth.h5"
DEFAULT_THREADS = 1


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: a torch device, default ``cuda`` when one is present, else ``cpu``."""
    import torch

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when present, else cpu)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads, default 1 (apply it with :func:`set_threads`)."""
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch CPU threads (default {DEFAULT_THREADS}: on 2 shared cores 2 threads ran 5-10x "
                             "slower than 1; 0: torch's own default). State it with every figure")


def set_threads(threads: int) -> int:
    """Apply ``--threads`` (0: leave torch's default), print the count in use and return it."""
    import torch

    if threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    count = torch.get_num_threads()
    print(f"torch CPU threads: {count}", flush=True)
    return count


def first_samples(source, split: Optional[str], n: int, keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The first ``n`` samples of ``split`` stacked along a new first dimension: ``{key: (n, ...)}``.

    ``source`` is a data module (its ``dataset(split)``) or a dataset (then ``split`` is None);
    ``keys`` picks the keys (default: every key of a sample, each made a tensor).
    """
    import torch

    dataset = source if split is None else source.dataset(split)
    if not 0 < n <= len(dataset):
        raise SystemExit(f"asked for the first {n} samples of {split or 'the dataset'}, which has {len(dataset)}")
    samples = [dataset[i] for i in range(n)]
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in (keys or list(samples[0]))}


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a ``torch.device`` or its name); no-op off CUDA."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, Any]:
    """What a figure was measured on: CPU and GPU names, core count, torch version, threads now."""
    import torch

    return {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def first_reaching(values: Sequence[float], level: float, iterations: Optional[Sequence[int]] = None,
                   tolerance: float = 0.0) -> Optional[int]:
    """The first iteration whose value is at least ``level`` (``value >= level - tolerance``), None if none.

    ``values[k]`` is the value at iteration ``iterations[k]`` (default ``k + 1``: one value per
    iteration, counted from 1). For a curve that should fall (a loss), pass ``-values`` and ``-level``.
    """
    for k, value in enumerate(values):
        if value >= level - tolerance:
            return int(iterations[k]) if iterations is not None else k + 1
    return None


def fit_dip(model, measurement, iterations: int, accelerator: str = "cpu", reference=None) -> Dict[str, Any]:
    """Fit a single-measurement module for ``iterations`` iterations; with ``reference``, every iterate's PSNR.

    ``model`` is a ``DeepImagePrior`` (any network, any ``iterations_per_step``: ``max_steps`` counts
    iterations) or an ``AnalyticDeepPrior`` (one Adam step per iteration); ``measurement`` is the
    sinogram ``(1, 1, A, D)``. Returns ``fit_seconds`` (the wall time of ``trainer.fit``) and, with a
    reference image ``(H, W)`` (also set as ``model.reference``, so the module logs PSNR/SSIM as
    before), per iteration: ``psnr`` (of the iterate the iteration computes, the data range the
    reference's, as the module's ``train/psnr``), ``loss`` (``model.losses``) and ``seconds`` (since
    training started, after the iteration's optimiser step; on CUDA each costs a synchronisation).
    Iterations a DIP early stop discards are not in the curves.
    """
    import lightning as L

    from lightning_recon.methods.dip import RepeatedMeasurement

    callbacks = []
    if reference is not None:
        model.reference = reference
        callbacks.append(_iteration_recorder(reference))
    trainer = L.Trainer(max_steps=iterations, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, RepeatedMeasurement(measurement[0], iterations).loader())
    result = {"fit_seconds": time.perf_counter() - start}
    if callbacks:
        result.update(callbacks[0].curves(model))
    return result


def _iteration_recorder(reference):
    """A Lightning callback: a forward hook on the module keeps the PSNR of every iterate computed
    with gradients (on the device, read once at the end), an optimiser step hook the time after every
    step; so it sees each iteration however many iterations a Lightning step runs."""
    import lightning as L
    import torch

    from lightning_recon.metrics import psnr

    class IterationRecorder(L.Callback):
        def __init__(self):
            self.psnr, self.seconds, self.handles = [], [], []

        def on_train_start(self, trainer, pl_module):
            ref = reference.to(pl_module.device)[None, None]
            data_range = float(ref.max() - ref.min())

            def record_iterate(module, inputs, output):
                if module.training and torch.is_grad_enabled():
                    self.psnr.append(psnr(output.detach(), ref, data_range).mean())

            def record_time(optimizer, args, kwargs):
                synchronize(pl_module.device)
                self.seconds.append(time.perf_counter() - self.start)

            self.handles = [pl_module.register_forward_hook(record_iterate)]
            self.handles += [optimizer.register_step_post_hook(record_time) for optimizer in trainer.optimizers]
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            for handle in self.handles:
                handle.remove()

        def curves(self, model) -> Dict[str, list]:
            count = len(model.losses)  # iterations after a DIP early stop are computed but do not count
            return {"psnr": torch.stack(self.psnr[:count]).tolist() if count else [],
                    "loss": [float(v) for v in model.losses], "seconds": self.seconds[:count]}

    return IterationRecorder()


def load_sparse_view_case(case: str):
    """(sparse sinogram ``(1, 1, A, D)``, its geometry, reference image ``(H, W)``, description).

    ``tooth``: ``../shared/data/tooth.h5`` slice 0, 30 of 181 angles, binning 4, reference the
    181-angle FBP (Hann); ``ct_small``: pydicom's ``CT_small.dcm`` (HU → [0, 1] over [−1000, max])
    as ground truth, 30 parallel-beam angles, 2.5 % white noise.
    """
    import numpy as np
    import torch

    from lightning_recon.data.real import load_data_exchange
    from lightning_recon.physics import FBP, GaussianNoise, ParallelBeam2D, RayTransform

    if case == "tooth":
        if not TOOTH.exists():
            raise SystemExit(f"{TOOTH} not found: the tooth case needs the shared real scan")
        sparse = load_data_exchange(TOOTH, 0, binning=4, num_angles=30)
        full = load_data_exchange(TOOTH, 0, angle_step=1, binning=4)
        reference = FBP(full.geometry, "Hann", 1.0)(torch.from_numpy(full.data)[None, None])[0, 0]
        return torch.from_numpy(sparse.data)[None, None], sparse.geometry, reference, \
            "tooth.h5 slice 0, 30 of 181 angles, binning 4; reference: 181-angle FBP"
    import pydicom
    from pydicom.data import get_testdata_file

    dicom = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = dicom.pixel_array.astype(np.float32) * float(dicom.RescaleSlope) + float(dicom.RescaleIntercept)
    truth = torch.from_numpy((np.clip(hu, -1000, None) + 1000) / (hu.max() + 1000)).float()
    geometry = ParallelBeam2D(tuple(truth.shape), num_angles=30)
    clean = RayTransform(geometry)(truth[None, None])
    noisy = GaussianNoise(0.025)(clean, generator=torch.Generator().manual_seed(0))
    return noisy, geometry, truth, "pydicom CT_small.dcm (128², ground truth), 30 angles, 2.5 % noise"


def baseline_test_flags(method: str, args) -> List[str]:
    """``train.py test`` flags of the FBP or TV row (``method`` "fbp" / "tv") over an experiment whose
    model is another method: jsonargparse carries the arguments the classes share over to the new
    class, so every one is named. ``args``: ``fbp_tune_samples``, ``tv_iterations``, ``tv_alphas``,
    ``tv_tune_samples``."""
    if method == "fbp":
        return ["--model", "lightning_recon.methods.FBPBaseline", f"--model.init_args.tune_samples={args.fbp_tune_samples}",
                "--model.init_args.method_name=FBP"]
    return ["--model", "lightning_recon.methods.TVBaseline", f"--model.init_args.iterations={args.tv_iterations}",
            f"--model.init_args.alphas=[{','.join(str(a) for a in args.tv_alphas)}]",
            f"--model.init_args.tune_samples={args.tv_tune_samples}", "--model.init_args.method_name=TV"]


# The three ellipses-small geometries of the prior benches (configs/experiment/ellipses_small_*_<key>.yaml).
GEOMETRY_NAMES = {"30angles": "30 angles", "10angles": "10 angles", "limited60": "60° limited angle (30 angles)"}
TEXT_COLUMNS = ("method", "data", "checkpoint")  # the results table's columns that are not numbers


def read_results_row(results_dir: Path, name: str) -> Optional[Dict[str, Any]]:
    """Row ``name`` of the results table in ``results_dir``, numbers as floats (None if absent)."""
    from lightning_recon.results import read_results_table

    row = read_results_table(results_dir).get(name)
    return None if row is None else {k: (float(v) if v not in ("", None) and k not in TEXT_COLUMNS else v)
                                     for k, v in row.items()}


def geometry_table(results: Dict[str, Dict[str, dict]], geometries: Sequence[str], rows: Dict[str, str],
                   seconds: bool = False) -> str:
    """Markdown: one row per method (``rows``: key → row name), PSNR ± std and SSIM (and s/image with
    ``seconds``) per geometry; ``results[geometry][method]`` as :func:`read_results_row` gives it."""
    columns = 3 if seconds else 2
    head = "| method | " + " | ".join(f"{GEOMETRY_NAMES[g]}: PSNR (dB) | SSIM" + (" | s/image" if seconds else "")
                                     for g in geometries) + " |"
    lines = [head, "|---" * (1 + columns * len(geometries)) + "|"]
    for method, name in rows.items():
        cells = []
        for g in geometries:
            row = results.get(g, {}).get(method)
            if row is None:
                cells += ["–"] * columns
            else:
                cells += [f"{row['psnr']:.2f} ± {row['psnr_std']:.2f}", f"{row['ssim']:.3f}"]
                cells += [f"{row['seconds_per_image']:.3g}"] if seconds else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
