"""LoDoPaB-CT at full size on the CPU: data loading and the ray-transform backends, side by side.

Writes a LoDoPaB-layout copy of full-size files (362², 1000 × 513; ``--files`` × ``--per-file``
made samples, the published layout and dtypes) into a temporary folder, then measures in one run:

- loading: samples/s of ``LoDoPaBDataset`` through a DataLoader (batch 4) with 0 and 2 persistent
  workers, after one warm-up epoch (the files then sit in the page cache: the rate of the reader,
  not of the disk);
- the backends ``auto`` chooses between on the CPU, ``matrix`` (system matrix, torch sparse) and
  ``odl`` (ASTRA CPU per sample): forward and adjoint applications/s at batch 1 and 4, alternated
  round by round, as a ratio; the matrix's build (first use) and cached-load times;
- which backend ``auto`` picks here, and FBP images/s with it.

    python bench/lodopab.py --threads 1 --json bench/results/lodopab_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import add_threads_argument, machine_info, set_threads


def make_copy(folder: Path, files: int, per_file: int) -> None:
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    for number in range(files):
        for kind, shape in (("ground_truth", (362, 362)), ("observation", (1000, 513))):
            data = rng.random((per_file, *shape), dtype=np.float32) * (1.0 if kind == "ground_truth" else 0.1)
            with h5py.File(folder / f"{kind}_test_{number:03d}.hdf5", "w") as f:
                f.create_dataset("data", data=data)


def loading_rate(folder: Path, workers: int, rounds: int = 3) -> float:
    import torch

    from lightning_recon.data import LoDoPaBDataset

    dataset = LoDoPaBDataset(folder, "test")
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, persistent_workers=workers > 0)
    sum(len(batch["measurement"]) for batch in loader)  # warm-up: workers started, files opened and cached
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = sum(len(batch["measurement"]) for batch in loader)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_argument(parser)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--per-file", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    threads = set_threads(args.threads)
    from lightning_recon.data import lodopab_geometry
    from lightning_recon.physics import FBP, RayTransform
    from lightning_recon.physics.ray_transform import DEFAULT_MAX_MATRIX_BYTES, estimated_matrix_bytes

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "threads": threads, "machine_info": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_copy(folder, args.files, args.per_file)
        result["loading_samples_per_s"] = {f"{w} workers": loading_rate(folder, w) for w in (0, 2)}

    geometry = lodopab_geometry()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LIGHTNING_RECON_CACHE"] = cache
        start = time.perf_counter()
        matrix = RayTransform(geometry, backend="matrix", check_finite=False)
        matrix.built(torch.device("cpu"))
        result["matrix_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        RayTransform(geometry, backend="matrix", check_finite=False).built(torch.device("cpu"))
        result["matrix_cached_load_s"] = time.perf_counter() - start
        odl = RayTransform(geometry, backend="odl", check_finite=False)
        odl.built(torch.device("cpu"))
        times = {}
        for batch in (1, 4):
            x = torch.rand(batch, 1, *geometry.image_shape)
            y = torch.rand(batch, 1, *geometry.sinogram_shape)
            for _ in range(args.rounds):  # alternated, so that load changes hit both backends
                for name, op in (("matrix", matrix), ("odl", odl)):
                    for direction, call, arg in (("forward", op, x), ("adjoint", op.adjoint, y)):
                        start = time.perf_counter()
                        call(arg)
                        times.setdefault((name, direction, batch), []).append(time.perf_counter() - start)
        result["applications_per_s"] = {f"{name} {direction} batch {batch}": batch / statistics.median(t)
                                         for (name, direction, batch), t in times.items()}
        result["auto_backend"] = RayTransform(geometry).backend_for("cpu")
        result["matrix_estimate_gb"] = estimated_matrix_bytes(geometry) / 1e9
        result["auto_budget_gb"] = DEFAULT_MAX_MATRIX_BYTES / 1e9
        fbp = FBP(geometry, ray_transform=RayTransform(geometry, check_finite=False))
        y = torch.rand(4, 1, *geometry.sinogram_shape)
        fbp(y)
        start = time.perf_counter()
        fbp(y)
        result["fbp_images_per_s_batch_4"] = 4 / (time.perf_counter() - start)

    rates = result["applications_per_s"]
    print(f"LoDoPaB-CT, CPU ({result['machine']}, torch {result['torch']}, {threads} thread(s))")
    print("| loading (DataLoader, batch 4) | samples/s |\n|---|---|")
    for name, rate in result["loading_samples_per_s"].items():
        print(f"| {name} | {rate:.1f} |")
    print("\n| operator | matrix /s | odl /s | matrix ÷ odl |\n|---|---|---|---|")
    for direction in ("forward", "adjoint"):
        for batch in (1, 4):
            m, o = rates[f"matrix {direction} batch {batch}"], rates[f"odl {direction} batch {batch}"]
            print(f"| {direction}, batch {batch} | {m:.2f} | {o:.2f} | {m / o:.1f}× |")
    print(f"\nmatrix: built in {result['matrix_build_s']:.0f} s, loaded from its cache in "
          f"{result['matrix_cached_load_s']:.1f} s, estimated {result['matrix_estimate_gb']:.2f} GB "
          f"(auto's budget here {result['auto_budget_gb']:.2f} GB); auto picks {result['auto_backend']!r}; "
          f"FBP {result['fbp_images_per_s_batch_4']:.2f} images/s at batch 4")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
