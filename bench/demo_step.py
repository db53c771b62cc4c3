"""The ``make demo`` training step inside Lightning: milliseconds per step under OpenMP wait policies
and thread counts, idle or beside one competing CPU-bound process.

Each case is one ``train.py fit`` of ``configs/experiment/demo_cpu.yaml`` (learned GD, bf16-mixed,
channels-last, compiled; 1,024 cached samples, one loader worker) in its own subprocess, because
the OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch loads it. A callback times steps
``--start`` to ``--end`` (after the first epoch, whose worker simulates the cache, and after
compilation) and stops the fit there; no validation in between, no logger. The cases run in
``--rounds`` rounds, their order rotating, so that a change in the machine's load hits them alike;
the table gives the median ms/step over rounds. Prints a markdown table and writes JSON.

    python bench/demo_step.py                                           # idle: the cases below
    python bench/demo_step.py --beside-busy-process                     # beside `while True: pass`
    python bench/demo_step.py --cases t1 t2-default --rounds 1 --end 200 # a quick look

Cases: ``t1`` (1 thread), ``t2-default`` (2 threads, the runtime's default waiting: spin a while,
then sleep), ``t2-passive`` (``OMP_WAIT_POLICY=PASSIVE``), ``t2-active`` (``ACTIVE``); the cases
run without a progress bar but ``t2-default-bar`` (the training bar as ``make demo`` shows it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, machine_info

ROOT = Path(__file__).resolve().parents[1]
CASES = {"t1": (1, None), "t2-default": (2, None), "t2-passive": (2, "PASSIVE"), "t2-active": (2, "ACTIVE"),
         "t2-default-bar": (2, None)}  # name -> (threads, OMP_WAIT_POLICY); "-bar": with the progress bar

CHILD = r"""
import json, sys, time
import lightning as L
from lightning_recon.cli import cli_main

start, end, threads, out, bar = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


class StepTimer(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == start:
            self.began = time.perf_counter()
        elif trainer.global_step == end:
            self.ms = 1000 * (time.perf_counter() - self.began) / (end - start)
            trainer.should_stop = True


timer = StepTimer()
cli = cli_main(["--config", "configs/experiment/demo_cpu.yaml", f"--out={out}", f"--threads={threads}",
                "--trainer.val_check_interval=100000", "--trainer.logger=false",
                f"--trainer.enable_progress_bar={bar}"], run=False)
cli.trainer.callbacks.append(timer)
cli.trainer.fit(cli.model, cli.datamodule)
print("RESULT", json.dumps({"ms_per_step": timer.ms}))
"""


def run_case(name: str, start: int, end: int) -> float:
    """ms/step of one case, in a fresh process with its thread count and wait policy."""
    threads, policy = CASES[name]
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory(prefix="demo_step-") as out:
        bar = str(name.endswith("-bar")).lower()  # the bar writes to a pipe here, as to a log file
        run = subprocess.run([sys.executable, "-c", CHILD, str(start), str(end), str(threads), out, bar], cwd=ROOT,
                             env=env, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{run.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])["ms_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES)[:4], choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--start", type=int, default=150, help="first timed step (after the first epoch: 128)")
    parser.add_argument("--end", type=int, default=650, help="last timed step")
    parser.add_argument("--beside-busy-process", action="store_true",
                        help="run beside one competing CPU-bound process (`python -c 'while True: pass'`)")
    parser.add_argument("--json", default=None, help="JSON output (default: bench/results/demo_step[-busy].json)")
    args = parser.parse_args()
    if not 0 < args.start < args.end:
        raise SystemExit("--start and --end: 0 < start < end")

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.beside_busy_process else None
    try:
        times = {name: [] for name in args.cases}
        for round_index in range(args.rounds):
            shift = round_index % len(args.cases)
            for name in args.cases[shift:] + args.cases[:shift]:
                times[name].append(run_case(name, args.start, args.end))
                print(f"round {round_index + 1}: {name} {times[name][-1]:.1f} ms/step", flush=True)
    finally:
        if busy is not None:
            busy.kill()

    state = "beside one busy process" if busy is not None else "idle"
    print(f"\n`make demo`'s training step in Lightning, steps {args.start}–{args.end}, {state}, "
          f"median of {args.rounds} round(s)")
    print("| case | threads | OMP_WAIT_POLICY | ms/step (median) | each round |\n|---|---|---|---|---|")
    rows = []
    for name in args.cases:
        threads, policy = CASES[name]
        median = statistics.median(times[name])
        rows.append(dict(case=name, threads=threads, wait_policy=policy, ms_per_step=times[name], median=median))
        print(f"| {name} | {threads} | {policy or 'unset'} | {median:.1f} | "
              f"{', '.join(f'{t:.1f}' for t in times[name])} |")
    out = Path(args.json or RESULTS / f"demo_step{'-busy' if busy is not None else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine_info=machine_info(), beside_busy_process=busy is not None,
                                   start=args.start, end=args.end, rounds=args.rounds, cases=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
