"""``train.py --help`` and ``finetune.py --help`` answer without importing torch or Lightning, and
the short train.py usage names the LightningCLI's own subcommands and options."""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = ("import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            "try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [name for name in ('torch', 'lightning', 'numpy') if name in sys.modules]\n"
            "assert not heavy, heavy")


@pytest.mark.parametrize("script", ["train.py", "finetune.py"])
def test_help_prints_usage_without_importing_torch(script):
    done = subprocess.run([sys.executable, "-c", NO_TORCH.format(script=script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}")


def test_the_short_usage_names_the_cli_s_subcommands_and_options(tmp_path):
    from lightning_recon.cli import ReconCLI, cli_main
    from lightning_recon.usage import SUBCOMMANDS, TRAIN_USAGE

    assert list(SUBCOMMANDS) == list(ReconCLI.subcommands())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):  # every option the usage names parses
        cli_main(["--config", str(ROOT / "configs/experiment/demo_cpu.yaml"), "--out", str(tmp_path),
                  "--print_config"], run=False)  # (--ckpt_path with a shipped name: tests/test_pretrained.py)
    printed = printed.getvalue()
    assert f"out: {tmp_path}" in printed
    for option in ("--config", "--out", "--ckpt_path", "--print_config", "--data", "--model", "--trainer."):
        assert option in TRAIN_USAGE


def test_a_run_prints_none_of_lightning_s_notes_that_add_nothing(tmp_path):
    """No advertisement and no deprecation inside Lightning's own loops; Lightning's other messages stay."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--model=lightning_recon.methods.FBPUNet",
         "--model.init_args.channels=[4,4]", "--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16",
         "--data.init_args.num_angles=6", "--data.init_args.train_length=4", "--data.init_args.val_length=2",
         "--data.init_args.test_length=2", "--data.init_args.batch_size=2", "--trainer.accelerator=cpu",
         "--trainer.max_steps=2", "--trainer.logger=false", f"--out={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout + done.stderr
    assert "`max_steps=2` reached" in printed
    assert "Tip:" not in printed and "LeafSpec" not in printed
