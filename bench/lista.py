"""LISTA versus (F)ISTA: error and neuron detection against layers / iterations, and time per volume.

    python bench/lista.py                       # both problems and the timing, CPU, 1 thread (--threads)
    python bench/lista.py --problems lightfield --lf-steps 200 --device cuda

1. Sparse coding (Gregor & LeCun 2010; Chen et al. 2018): ``y = A x + e``, ``A`` 250×500 Gaussian,
   Bernoulli(0.1)–Gaussian codes, noise std 0.01. ISTA and FISTA with λ tuned on validation
   codes; one untied LISTA per depth ``K``, trained end to end (MSE, Adam).
2. Light field: neuron volumes (7 depths, 60² pixels, 12² lenslets of 5² pixels, 1000 photons),
   non-negative ISTA/FISTA versus non-negative LISTA, NMSE and detection F1.
3. Time per volume of 10-layer LISTA and of one ISTA iteration at a small and a realistic
   light-field size (15² pixels per lenslet, 29² lenslets, 21 depths).

Prints tables, writes ``bench/results/lista.json`` and the curves ``bench/results/lista.png``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lightning_recon.data import NeuronVolumeDataset, SparseCodingDataset
from lightning_recon.metrics import detection_scores, find_peaks, set_nmse_db
from lightning_recon.nets import LISTA
from lightning_recon.physics import LightFieldGeometry, LightFieldModel, SparseCodingProblem
from lightning_recon.solvers import ista

from common import (RESULTS, add_device_argument, add_threads_argument, first_samples, machine_info, set_threads,
                    synchronize)

CHECKPOINTS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def set_nmse(pred, truth) -> float:
    """NMSE of the whole set in dB: ``metrics.set_nmse_db`` of the per-sample errors and energies."""
    return set_nmse_db((pred - truth).pow(2).flatten(1).sum(1), truth.pow(2).flatten(1).sum(1))


def mean_f1(pred, centres, counts) -> float:
    return float(np.mean([detection_scores(find_peaks(p, 0.2), c[:n])["f1"] for p, c, n in zip(pred, centres, counts)]))


def ista_curve(operator, y, truth, lam, iterations, nonnegative, accelerated, detect=None):
    """NMSE (and F1) at the ``CHECKPOINTS`` iterations."""
    curve = {}

    def record(k, x):
        if k in CHECKPOINTS:
            curve[k] = {"nmse": set_nmse(x, truth)}
            if detect is not None:
                curve[k]["f1"] = mean_f1(x, *detect)

    ista(operator, y, lam, iterations, nonnegative=nonnegative, accelerated=accelerated, callback=record)
    return curve


def tune_lambda(operator, y, truth, candidates, iterations, nonnegative):
    scores = {}
    for lam in candidates:
        x = ista(operator, y, lam, iterations, nonnegative=nonnegative, accelerated=True)
        scores[lam] = set_nmse(x, truth)
    return min(scores, key=scores.get), scores


def train_lista(operator, train, layers, steps, batch_size, lr, lam, nonnegative, device, seed=0):
    torch.manual_seed(seed)
    net = LISTA(operator, num_layers=layers, nonnegative=nonnegative, sparsity_weight=lam).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    y_all, x_all = train["measurement"].to(device), train["ground_truth"].to(device)
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, len(y_all), (batch_size,), device=device)
        loss = torch.nn.functional.mse_loss(net(y_all[index]), x_all[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net, time.perf_counter() - start


def sparse_coding(args, device):
    problem = SparseCodingProblem(m=250, n=500, sparsity=0.1, noise_std=0.01)
    operator = problem.build_operator().to(device)
    train = first_samples(SparseCodingDataset(problem, args.sc_train, seed=42), None, args.sc_train)
    val = first_samples(SparseCodingDataset(problem, 256, seed=2), None, 256)
    test = first_samples(SparseCodingDataset(problem, 1000, seed=1), None, 1000)
    y, x = test["measurement"].to(device), test["ground_truth"].to(device)
    lam, scores = tune_lambda(operator, val["measurement"].to(device), val["ground_truth"].to(device),
                              (0.003, 0.01, 0.03, 0.1), 1000, nonnegative=False)
    out = {"problem": problem.to_dict(), "lambda": lam, "lambda_scores": scores,
           "ista": ista_curve(operator, y, x, lam, max(CHECKPOINTS), False, False),
           "fista": ista_curve(operator, y, x, lam, max(CHECKPOINTS), False, True), "lista": {}}
    for layers in args.sc_layers:
        net, seconds = train_lista(operator, train, layers, args.sc_steps, 64, 5e-4, lam, False, device)
        with torch.no_grad():
            out["lista"][layers] = {"nmse": set_nmse(net(y), x), "train_seconds": seconds}
        print(f"  sparse coding: LISTA K={layers}: {out['lista'][layers]['nmse']:.2f} dB ({seconds:.0f} s training)")
    return out


def light_field(args, device):
    geometry = LightFieldGeometry()
    operator = LightFieldModel(geometry).to(device)
    train = first_samples(NeuronVolumeDataset(geometry, args.lf_train, seed=42), None, args.lf_train)
    val = first_samples(NeuronVolumeDataset(geometry, 16, seed=2), None, 16)
    test = first_samples(NeuronVolumeDataset(geometry, 64, seed=1), None, 64)
    y, x = test["measurement"].to(device), test["ground_truth"].to(device)
    detect = (test["centres"], test["num_neurons"])
    lam, scores = tune_lambda(operator, val["measurement"].to(device), val["ground_truth"].to(device),
                              (0.001, 0.003, 0.01, 0.03), 200, nonnegative=True)
    out = {"geometry": geometry.to_dict(), "lambda": lam, "lambda_scores": scores,
           "ista": ista_curve(operator, y, x, lam, args.lf_ista, True, False, detect),
           "fista": ista_curve(operator, y, x, lam, args.lf_ista, True, True, detect), "lista": {}}
    for layers in args.lf_layers:
        net, seconds = train_lista(operator, train, layers, args.lf_steps, 16, 1e-3, lam, True, device)
        with torch.no_grad():
            pred = torch.cat([net(chunk) for chunk in y.split(16)])
        out["lista"][layers] = {"nmse": set_nmse(pred, x), "f1": mean_f1(pred.cpu(), *detect), "train_seconds": seconds}
        print(f"  light field: LISTA K={layers}: {out['lista'][layers]['nmse']:.2f} dB, "
              f"F1 {out['lista'][layers]['f1']:.3f} ({seconds:.0f} s training)")
    return out


def timing(device, repeats=3):
    sizes = {"small (60², 7 depths)": LightFieldGeometry(),
             "realistic (435², 21 depths)": LightFieldGeometry(num_lenslets=29, lenslet_size=15, num_depths=21)}
    out = {}
    for name, geometry in sizes.items():
        operator = LightFieldModel(geometry).to(device)
        net = LISTA(operator, num_layers=10, tied=True, step=0.1).to(device)  # same compute as untied
        y = torch.rand(1, *operator.range_shape, device=device)

        def best_of(run):
            times = []
            for _ in range(repeats + 1):
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                times.append(time.perf_counter() - start)
            return min(times[1:])  # the first run warms up

        with torch.no_grad():
            lista_seconds = best_of(lambda: net(y))
            ista_seconds = best_of(lambda: ista(operator, y, 0.01, 10, step=0.1)) / 10
        out[name] = {"lista10_seconds_per_volume": lista_seconds, "ista_seconds_per_iteration": ista_seconds,
                     "volume_shape": list(geometry.volume_shape), "filters": int(operator.weight.shape[0]),
                     "kernel": geometry.kernel_size}
        print(f"  {name}: LISTA-10 {lista_seconds:.3f} s/volume, ISTA {ista_seconds:.4f} s/iteration")
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, results[k]) for k in ("sparse_coding", "light_field") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], panels):
        for solver, style in (("ista", "o-"), ("fista", "s-")):
            ks = sorted(int(k) for k in res[solver])
            ax.semilogx(ks, [res[solver][k]["nmse"] for k in ks], style, label=f"{solver.upper()} (λ = {res['lambda']})")
        ks = sorted(int(k) for k in res["lista"])
        ax.semilogx(ks, [res["lista"][k]["nmse"] for k in ks], "D-", label="LISTA (one network per K)")
        ax.set_xlabel("iterations / layers K")
        ax.set_ylabel("NMSE (dB)")
        ax.set_title(name.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=["sparse_coding", "light_field", "timing"],
                        choices=["sparse_coding", "light_field", "timing"])
    add_device_argument(parser)
    parser.add_argument("--sc-layers", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    parser.add_argument("--sc-steps", type=int, default=2000)
    parser.add_argument("--sc-train", type=int, default=20000)
    parser.add_argument("--lf-layers", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--lf-steps", type=int, default=400)
    parser.add_argument("--lf-train", type=int, default=2048)
    parser.add_argument("--lf-ista", type=int, default=1000, help="ISTA/FISTA iterations on the light field")
    add_threads_argument(parser)
    parser.add_argument("--out", default=str(RESULTS / "lista.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}",
               "torch": torch.__version__, "machine_info": machine_info(), "args": vars(args)}
    runners = {"sparse_coding": sparse_coding, "light_field": light_field, "timing": timing}
    for name in args.problems:
        print(f"== {name}")
        start = time.perf_counter()
        results[name] = runners[name](device) if name == "timing" else runners[name](args, device)
        print(f"   ({time.perf_counter() - start:.0f} s)")
    for name in ("sparse_coding", "light_field"):
        if name not in results:
            continue
        res = results[name]
        print(f"\n{name}: NMSE (dB){' / F1' if name == 'light_field' else ''}, λ = {res['lambda']}")
        print("| K | ISTA | FISTA | LISTA |\n|---|---|---|---|")
        for k in sorted(set(int(k) for k in res["ista"]) | set(int(k) for k in res["lista"])):
            cells = []
            for solver in ("ista", "fista", "lista"):
                entry = res[solver].get(k)
                cells.append("" if entry is None else f"{entry['nmse']:.2f}" + (f" / {entry['f1']:.2f}" if "f1" in entry else ""))
            print(f"| {k} | " + " | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    if any(k in results for k in ("sparse_coding", "light_field")):
        plot(results, Path(args.out).with_suffix(".png"))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
