"""The main job of ``make demo``: train a learned method on small simulated ellipses (dival's
generator, ``ellipses-small``) on the CPU, then test it against FBP and TV (both tuned on
validation data) on the same fixed test set.

    python -m lightning_recon.demo [extra LightningCLI arguments, e.g. --trainer.max_steps=200]

Runs ``configs/experiment/demo_cpu.yaml`` through the same CLI as ``train.py``; logs to W&B
(offline without credentials) and writes ``outputs/demo/results/results.md`` and ``.csv``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from .results import read_results_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "demo_cpu.yaml"
BASELINES = {"FBP": "lightning_recon.methods.FBPBaseline", "TV": "lightning_recon.methods.TVBaseline"}
# α = 1 was the smallest of TV's default grid on ellipses-small: the grid reaches below it
BASELINE_ARGS = {"TV": ["--model.init_args.alphas=[0.25,0.5,1,2,4,8]"]}


def main(argv: Optional[List[str]] = None) -> dict:
    """Fit, test, and test FBP and TV; prints the table and returns each method's PSNR (dB)."""
    from .threads import prefer_passive_waiting, threads_argument

    extra = list(sys.argv[1:] if argv is None else argv)
    prefer_passive_waiting(threads_argument(extra))  # before torch is imported (lightning_recon.threads)
    from .cli import cli_main

    base = ["--config", str(CONFIG), *extra]
    fit = cli_main(["fit", *base])
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    results_dir = Path(fit.model.hparams.results_dir)
    cli_main(["test", *base, f"--ckpt_path={checkpoint}", "--trainer.logger=false"])
    for name, class_path in BASELINES.items():
        cli_main(["test", *base, f"--model={class_path}", f"--model.init_args.method_name={name}",
                  *BASELINE_ARGS.get(name, []), "--trainer.logger=false"])

    rows = {name: float(row["psnr"]) for name, row in read_results_table(results_dir).items()}
    learned = fit.model.method_name
    print("\n" + (results_dir / "results.md").read_text())
    print(f"{learned} − FBP: {rows[learned] - rows['FBP']:+.2f} dB, {learned} − TV: {rows[learned] - rows['TV']:+.2f} dB "
          f"(per-image data range, {len(rows)} methods on the same test set)")
    print(f"table: {results_dir / 'results.md'}; checkpoint: {checkpoint}")
    return rows


if __name__ == "__main__":
    main()
