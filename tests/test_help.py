"""``train.py --help`` and ``finetune.py --help`` answer without importing torch or Lightning, and
the short train.py usage names the LightningCLI's own subcommands and options."""
import contextlib
import io
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
