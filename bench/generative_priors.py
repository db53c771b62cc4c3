"""Generative regularisers (range, soft; VAE and GAN priors) next to FBP and TV, at 30 angles,
10 angles and 60° limited angle, with the SAME trained generator for every geometry.

Every number comes from one ``train.py test`` command (printed, and stored in the JSON with its
tuned parameter): the experiment configs ``configs/experiment/<preset>_generative_<geometry>.yaml``
with the model chosen by flags. FBP's filter, TV's α, μ (range) and λ (soft) are tuned on
validation samples, never on the test set. Prints a markdown table (PSNR / SSIM per method and
geometry) and writes JSON.

    OMP_NUM_THREADS=1 python bench/generative_priors.py --vae outputs/vae_prior_small/checkpoints/last.ckpt \\
        --gan outputs/gan_prior_small/checkpoints/last.ckpt
    python bench/generative_priors.py --vae ... --methods fbp tv --dry-run     # print the commands only

Priors are trained beforehand (``configs/experiment/<preset>_{vae,gan}_prior*.yaml``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List


from common import GEOMETRY_NAMES, baseline_test_flags, geometry_table, machine_info, read_results_row

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIES = ("30angles", "10angles", "limited60")
CONFIG_PREFIX = {"ellipses-small": "ellipses_small", "ellipses-30": "ellipses30"}
METHODS = ("fbp", "tv", "vae-range", "vae-soft", "gan-range", "gan-soft")
ROW_NAMES = {"fbp": "FBP", "tv": "TV", "vae-range": "VAE range", "vae-soft": "VAE soft", "gan-range": "GAN range",
             "gan-soft": "GAN soft"}


def command(method: str, geometry: str, args) -> List[str]:
    """The ``train.py test`` command line of one (method, geometry)."""
    config = f"configs/experiment/{CONFIG_PREFIX[args.preset]}_generative_{geometry}.yaml"
    results = Path(args.results_root) / geometry
    out = ["train.py", "test", "--config", config]
    if method in ("fbp", "tv"):
        out += baseline_test_flags(method, args)
    else:
        prior, mode = method.split("-")
        checkpoint = args.vae if prior == "vae" else args.gan
        out += [f"--model.init_args.prior_checkpoint={checkpoint}", f"--model.init_args.mode={mode}",
                f"--model.init_args.iterations={args.iterations}", f"--model.init_args.restarts={args.restarts}",
                f"--model.init_args.tune_samples={args.tune_samples}",
                f"--model.init_args.encoder_init={'true' if prior == 'vae' else 'false'}",
                f"--model.init_args.method_name={ROW_NAMES[method]}"]
        if args.mus:
            out.append(f"--model.init_args.mus=[{','.join(str(v) for v in args.mus)}]")
        if args.lams:
            out.append(f"--model.init_args.lams=[{','.join(str(v) for v in args.lams)}]")
    if args.test_samples:
        out.append(f"--data.init_args.test_length={args.test_samples}")
    return out + [f"--model.init_args.results_dir={results}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ellipses-small", choices=sorted(CONFIG_PREFIX))
    parser.add_argument("--vae", help="VAEPrior checkpoint")
    parser.add_argument("--gan", help="GANPrior checkpoint")
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES)
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                        help="default: FBP, TV and range/soft of each prior given")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--tune-samples", type=int, default=8)
    parser.add_argument("--mus", type=float, nargs="+", help="μ grid of range (default: the config's)")
    parser.add_argument("--lams", type=float, nargs="+", help="λ grid of soft (default: the config's)")
    parser.add_argument("--tv-iterations", type=int, default=1000)
    parser.add_argument("--tv-alphas", type=float, nargs="+", default=[0.0625, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tv-tune-samples", type=int, default=20)
    parser.add_argument("--fbp-tune-samples", type=int, default=32)
    parser.add_argument("--test-samples", type=int, default=None,
                        help="the first N test samples (default: the preset's test split, e.g. 100 for ellipses-30)")
    parser.add_argument("--results-root", default=None, help="default: bench/results/generative_<preset>")
    parser.add_argument("--out", default=None, help="JSON (default: <results-root>/generative_priors.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    args.results_root = args.results_root or f"bench/results/generative_{args.preset.replace('-', '_')}"
    methods = args.methods or ["fbp", "tv"] + [f"{p}-{m}" for p in ("vae", "gan") if getattr(args, p)
                                               for m in ("range", "soft")]
    for method in methods:
        prior = method.split("-")[0]
        if prior in ("vae", "gan") and not getattr(args, prior):
            parser.error(f"method {method} needs --{prior} <checkpoint>")
    out_path = Path(args.out or Path(args.results_root) / "generative_priors.json")
    env = dict(os.environ, WANDB_MODE="disabled")

    runs, results = [], {}
    for geometry in args.geometries:
        for method in methods:
            cmd = command(method, geometry, args)
            printed = "python " + " ".join(shlex.quote(c) for c in cmd)
            print(printed, flush=True)
            if args.dry_run:
                continue
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            log = proc.stdout + proc.stderr
            tuned = [line.strip() for line in log.splitlines() if re.search(r"tuned on \d+ validation", line)]
            if proc.returncode != 0:
                print(log[-3000:], file=sys.stderr)
                raise SystemExit(f"failed ({proc.returncode}): {printed}")
            row = read_results_row(ROOT / args.results_root / geometry, ROW_NAMES[method])
            results.setdefault(geometry, {})[method] = row
            runs.append({"geometry": geometry, "method": method, "command": printed, "tuned": tuned,
                         "wall_seconds": seconds, "row": row})
            print(f"  {ROW_NAMES[method]}: {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}; {'; '.join(tuned)} "
                  f"({seconds:.0f} s)", flush=True)
    if args.dry_run:
        return
    table = geometry_table(results, args.geometries, {m: ROW_NAMES[m] for m in methods})
    print(f"\n{args.preset}, test split ({int(next(iter(next(iter(results.values())).values()))['images'])} images), "
          "PSNR/SSIM per image with the per-image data range:\n")
    print(table)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({
        "preset": args.preset, "geometries": {g: GEOMETRY_NAMES[g] for g in args.geometries},
        "priors": {"vae": args.vae, "gan": args.gan}, "settings": {k: v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "machine_info": machine_info(),
        "table": table, "runs": runs}, indent=2))
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
