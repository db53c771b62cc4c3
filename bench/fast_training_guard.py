"""Quality guard of the fast training settings: the same ``train.py fit`` run in float32 (eager)
and with ``--trainer.precision=bf16-mixed``, ``channels_last`` and ``compile_mode`` together, the
same steps, data and seed; validation PSNR at the last step and training steps per second side by
side (the target: the fast run within 0.1 dB of the float32 one).

Runs go one after the other in this process, alternating the settings model by model, on the
``make demo`` data (ellipses-small, 64², 30 angles, 1,024 cached training samples, batch 8):
learned GD as ``configs/experiment/demo_cpu.yaml``, learned PD and FBP + U-Net from
``configs/model/``. Steps per second are over the whole run (the first steps include compilation).
Prints a markdown table and writes JSON.

    OMP_NUM_THREADS=1 python bench/fast_training_guard.py --steps 1000 --threads 1
    python bench/fast_training_guard.py --steps 20 --models learned_gd --threads 1   # a quick check
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import RESULTS, add_threads_argument, machine_info, set_threads

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "learned_gd": ["--config", str(ROOT / "configs/experiment/demo_cpu.yaml")],
    "learned_pd": ["--config", str(ROOT / "configs/experiment/demo_cpu.yaml"),
                   "--config", str(ROOT / "configs/model/learned_pd.yaml"), "--model.init_args.method_name=learned PD"],
    "fbp_unet": ["--config", str(ROOT / "configs/experiment/demo_cpu.yaml"),
                 "--config", str(ROOT / "configs/model/fbp_unet.yaml"), "--model.init_args.method_name=FBP + U-Net"],
}
SETTINGS = {
    "fp32": [],
    "bf16 + channels_last + compile": ["--trainer.precision=bf16-mixed", "--model.init_args.channels_last=true",
                                       "--model.init_args.compile_mode=default"],
}


def run(model: str, setting: str, steps: int, threads: int, folder: Path) -> dict:
    """One ``train.py fit`` of ``steps`` steps, validated at its end; its val PSNR and steps/s."""
    from lightning_recon.cli import cli_main

    out = folder / f"{model}-{setting.split()[0]}"
    start = time.perf_counter()
    cli = cli_main(["fit", *MODELS[model], *SETTINGS[setting], f"--trainer.max_steps={steps}",
                    f"--trainer.val_check_interval={steps}", "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false", f"--threads={threads}", f"--out={out}"])
    seconds = time.perf_counter() - start
    return {"val_psnr": float(cli.trainer.callback_metrics["val/psnr"]), "seconds": seconds,
            "steps_per_second": cli.trainer.global_step / seconds, "steps": cli.trainer.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_threads_argument(parser)
    parser.add_argument("--out", default=str(RESULTS / "fast_training_guard.json"))
    args = parser.parse_args()
    threads = set_threads(args.threads)
    results = {"machine_info": machine_info(), "threads": threads, "steps": args.steps, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="fast-guard-") as folder:
        for model in args.models:
            for setting in SETTINGS:
                results["runs"].setdefault(model, {})[setting] = run(model, setting, args.steps, threads, Path(folder))
    print(f"\n{args.steps} steps, {threads} thread(s), {results['machine_info']}\n")
    print("| model | val PSNR fp32 (dB) | val PSNR fast (dB) | difference (dB) | steps/s fp32 | steps/s fast | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for model, runs in results["runs"].items():
        slow, fast = runs["fp32"], runs["bf16 + channels_last + compile"]
        print(f"| {model} | {slow['val_psnr']:.2f} | {fast['val_psnr']:.2f} | {fast['val_psnr'] - slow['val_psnr']:+.2f} "
              f"| {slow['steps_per_second']:.2f} | {fast['steps_per_second']:.2f} "
              f"| {fast['steps_per_second'] / slow['steps_per_second']:.2f}× |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
