"""Ray-transform throughput and peak memory, side by side, in one run.

For each geometry (ellipses-30's 128²/30 angles; the lodopab geometry 362²/1000 angles/513
detector pixels) and device, times forward + adjoint on a batch of 32 for our backends,
``odl.contrib.torch.OperatorModule`` (the common baseline) and ``deepinv.physics.Tomography``
(peer). Each case runs in its own subprocess, so peak memory is that case's alone. Prints a
table with speed-ups relative to OperatorModule and deepinv, and writes JSON.

    python bench/operators.py                       # CPU, and CUDA when present
    python bench/operators.py --devices cpu --geometries small --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from common import machine_info, synchronize

GEOMETRIES = {
    "small": dict(image_size=128, num_angles=30, label="128²/30 angles"),
    "lodopab": dict(image_size=362, num_angles=1000, label="362²/1000 angles/513 det"),
}
BATCH = 32


def _geometry(name):
    from lightning_recon.physics import ParallelBeam2D

    spec = GEOMETRIES[name]
    return ParallelBeam2D((spec["image_size"],) * 2, num_angles=spec["num_angles"])


def _build(method, geometry, device):
    """Return (forward, adjoint) callables on (B, 1, H, W) / sinogram tensors."""
    import torch

    if method.startswith("ours-"):
        from lightning_recon.physics import RayTransform

        op = RayTransform(geometry, backend=method[len("ours-"):], check_finite=False)
        return op, op.adjoint
    if method == "odl-OperatorModule":
        from odl.contrib.torch import OperatorModule

        impl = "astra_cuda" if device == "cuda" else "astra_cpu"
        op = geometry.odl_ray_transform(impl=impl)
        return OperatorModule(op), OperatorModule(op.adjoint)
    if method == "deepinv-Tomography":
        from deepinv.physics import Tomography

        physics = Tomography(angles=geometry.num_angles, img_width=geometry.image_shape[0], circle=False,
                             normalize=False, device=device, dtype=torch.float32)
        return physics.A, physics.A_adjoint
    raise ValueError(f"unknown method {method}")


def run_one(method, geometry_name, device, min_seconds, max_repeats):
    """Time one case in this process; returns a result dict."""
    import torch

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    geometry = _geometry(geometry_name)
    forward, adjoint = _build(method, geometry, device)
    x = torch.rand(BATCH, 1, *geometry.image_shape, device=device)

    def step():
        y = forward(x)
        out = adjoint(y)
        synchronize(device)
        return y, out

    t0 = time.perf_counter()
    y, _ = step()  # warm-up: builds operators, matrices, kernels
    setup_seconds = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (time.perf_counter() - start < min_seconds or len(times) < 3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    result = dict(
        method=method, geometry=geometry_name, device=device, batch=BATCH, repeats=len(times),
        seconds_per_batch=seconds, images_per_second=BATCH / seconds, setup_seconds=setup_seconds,
        sinogram_shape=list(y.shape[-2:]),
        peak_host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        # bytes that must cross memory at least once: image read + sinogram write, then back
        moved = 2 * 4 * BATCH * (x[0].numel() + y[0].numel())
        result["effective_gb_per_s"] = moved / seconds / 1e9
    return result


def copy_bandwidth_gb_per_s():
    """Device-to-device copy bandwidth (read + write) as the practical memory roof."""
    import torch

    a = torch.empty(2**28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    synchronize("cuda")
    t = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    synchronize("cuda")
    return 2 * a.numel() * 4 * 20 / (time.perf_counter() - t) / 1e9


def cases(devices, geometries):
    import torch

    from lightning_recon.physics import astra_cuda_available

    for device in devices:
        for geometry in geometries:
            methods = ["odl-OperatorModule", "deepinv-Tomography"]
            if device == "cpu":
                methods.insert(0, "ours-matrix" if geometry == "small" else "ours-odl")
                if geometry == "small":
                    methods.insert(1, "ours-odl")
            elif torch.cuda.is_available():
                if astra_cuda_available():
                    methods.insert(0, "ours-astra_cuda")
                methods.insert(1, "ours-matrix")
            else:
                continue
            for method in methods:
                yield method, geometry, device


def format_table(results):
    lines = ["| device | geometry | method | images/s | ms/batch | vs OperatorModule | vs deepinv | peak memory MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['device']} | {r['geometry']} | {r['method']} | failed: {r['error'][:60]} | | | | |")
            continue
        base = {x["method"]: x for x in results
                if x["device"] == r["device"] and x["geometry"] == r["geometry"] and "error" not in x}
        ratio = lambda name: (f"{r['images_per_second'] / base[name]['images_per_second']:.1f}×" if name in base else "–")
        memory = r.get("peak_gpu_mib", r["peak_host_rss_mib"])
        lines.append(
            f"| {r['device']} | {GEOMETRIES[r['geometry']]['label']} | {r['method']} | {r['images_per_second']:.1f} | "
            f"{1000 * r['seconds_per_batch']:.1f} | {ratio('odl-OperatorModule')} | {ratio('deepinv-Tomography')} | {memory:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: all present)")
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case")
    parser.add_argument("--json", default="bench/results/operators.json")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "GEOMETRY", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(*args.one, args.min_seconds, args.max_repeats)))
        return

    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for method, geometry, device in cases(devices, args.geometries):
        if args.methods and method not in args.methods:
            continue
        cmd = [sys.executable, __file__, "--one", method, geometry, device,
               "--min-seconds", str(args.min_seconds), "--max-repeats", str(args.max_repeats)]
        print(f"running {method} on {geometry} ({device}) ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode == 0:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                results.append(dict(method=method, geometry=geometry, device=device,
                                    error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"))
        except subprocess.TimeoutExpired:
            results.append(dict(method=method, geometry=geometry, device=device, error=f"timeout {args.timeout}s"))
    machine = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                   cpu_count=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads())
    if "cuda" in devices and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
        machine["copy_bandwidth_gb_per_s"] = copy_bandwidth_gb_per_s()
        for r in results:
            if "effective_gb_per_s" in r:
                r["fraction_of_copy_bandwidth"] = r["effective_gb_per_s"] / machine["copy_bandwidth_gb_per_s"]
    print(format_table(results))
    if "copy_bandwidth_gb_per_s" in machine:
        print(f"\nGPU copy bandwidth {machine['copy_bandwidth_gb_per_s']:.0f} GB/s; effective bandwidth of each GPU case:")
        for r in results:
            if "effective_gb_per_s" in r:
                print(f"  {r['method']} {r['geometry']}: {r['effective_gb_per_s']:.1f} GB/s "
                      f"({100 * r['fraction_of_copy_bandwidth']:.2f} %)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=machine, machine_info=machine_info(), batch=BATCH, results=results),
                              indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
