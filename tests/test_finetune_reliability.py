"""finetune.py refuses bad situations before any work, in one line (status 2, no traceback, --out
untouched): a second run on the same --out, an unwritable --out, a bad --init checkpoint, a network
deeper than the image, non-finite or out-of-range numbers, a missing GPU, a beam-off scan, options
the analytic prior ignores; damaged slice files of a resumed --slices run are computed again."""
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.data.real import load_data_exchange
from lightning_recon.data.synthetic_scan import write_synthetic_scan
from lightning_recon.finetune import main as finetune_main
from lightning_recon.finetune.outputs import save_stack
from lightning_recon.methods.dip import dip_unet
from lightning_recon.nets import DeepDecoder, UNet

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "20", "--channels", "8", "--scales", "3", "--center-offset", "0", "--logger", "none",
        "--accelerator", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """3 slices of 24², 30 angles."""
    path = tmp_path_factory.mktemp("scan") / "scan.h5"
    write_synthetic_scan(path, slices=3, size=24, angles=30, seed=0)
    return path


def refused(args, capsys, out: Path) -> str:
    """Runs finetune.py in this process; asserts status 2, one line, no traceback, ``out`` untouched; the line."""
    before = sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else None
    with pytest.raises(SystemExit) as exit_info:
        finetune_main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "warning" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("finetune.py: error: "), err
    assert (sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else None) == before
    return lines[0]


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(scan, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "finetune.py"), str(scan), "--slices", "all", *TINY, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([*command, "--iterations", "100000"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / ".out.lock"
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists(), "the first run never locked --out"
        second = subprocess.run([*command, "--lr", "0.01"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"in use by finetune.py (PID {first.pid} on " in line
    finally:
        first.kill()
        first.wait()
    assert not (out / "recon.npy").exists()


def test_an_out_that_is_a_file_or_read_only_is_refused_before_any_work(scan, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    line = refused([str(scan), *TINY], capsys, tmp_path / "a-file")
    assert "--out" in line and "a-file is a file, not a folder" in line
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        assert "cannot write in" in refused([str(scan), "--slices", "all", *TINY], capsys, locked)


def _checkpoint(path: Path, net=None, **hyper_parameters) -> Path:
    weights = {} if net is None else {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": weights, "hyper_parameters": hyper_parameters}, path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("truncated", "is unreadable"),
    ("empty", "is unreadable"),
    ("text", "is unreadable"),
    ("plain", "is not a Lightning checkpoint (no state_dict)"),
    ("fbpunet", "holds a FBPUNet, not a DIP network"),
    ("fbpunet-weights", "does not fit the one asked for"),
    ("other-channels", "(trained with channels [4, 4]) does not fit"),
])
@pytest.mark.parametrize("mode", [[], ["--slices", "all"]])
def test_a_bad_init_checkpoint_is_one_line(scan, tmp_path, capsys, kind, message, mode):
    path = tmp_path / f"{kind}.ckpt"
    if kind in ("truncated", "empty"):
        good = _checkpoint(tmp_path / "good.ckpt", dip_unet((8,) * 3, (4,) * 3), channels=[8, 8, 8])
        path.write_bytes(good.read_bytes()[: 300 if kind == "truncated" else 0])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "plain":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "fbpunet":
        _checkpoint(path, UNet(1, 1, (8, 8, 8), norm="batch", residual=True),
                    _class_path="lightning_recon.methods.FBPUNet")
    elif kind == "fbpunet-weights":
        _checkpoint(path, UNet(1, 1, (8, 8, 8), norm="batch", residual=True))
    else:
        _checkpoint(path, dip_unet((4, 4), (4, 4)), channels=[4, 4], _class_path="lightning_recon.methods.EDIPPretrain")
    line = refused([str(scan), *mode, *TINY, "--init", str(path)], capsys, tmp_path / "out")
    assert line.startswith(f"finetune.py: error: --init {path}") and message in line


@pytest.mark.parametrize("make, args, message", [
    ("h5", ["--binning", "4", "--scales", "5"],
     "--scales 5 is too deep for the 16 × 16 image (16 detector pixels after --binning 4): its coarsest scale "
     "would be 1 pixel wide; use --scales 4 or fewer (or less --binning)"),
    (40, ["--scales", "9"], "--scales 9 is too deep for the 40 × 40 image (40 detector pixels): its coarsest scale "
                            "would be 1 pixel wide; use --scales 6 or fewer"),
    (2, ["--scales", "2"], "use --scales 1 or fewer"),
    (2, ["--network", "deep-decoder"], "use --scales 1 or fewer"),
])
def test_a_network_deeper_than_the_image_is_refused(tmp_path, capsys, make, args, message):
    if make == "h5":
        source = tmp_path / "scan.h5"
        write_synthetic_scan(source, slices=1, size=64, angles=30, seed=0)
    else:
        source = tmp_path / "sinogram.npy"
        np.save(source, np.random.default_rng(0).random((12, make)).astype(np.float32))
    options = ["--iterations", "2", "--channels", "8", "--center-offset", "0", "--logger", "none", "--accelerator",
               "cpu"]
    assert message in refused([str(source), *options, *args], capsys, tmp_path / "out")


def test_the_depth_rule_admits_exactly_the_sizes_the_networks_run_on():
    """Channels 8 (one channel per norm group): the sizes the rule admits run, one pixel less fails."""
    from argparse import Namespace

    from lightning_recon.data.real import Sinogram, _geometry_for
    from lightning_recon.finetune.inputs import measurement_problems

    def sinogram(width):
        angles = np.linspace(0, np.pi, 6, endpoint=False)
        return Sinogram(np.zeros((6, width), np.float32), angles, _geometry_for(width, angles, 0.0))

    for scales in (2, 3, 4):
        smallest = 2 ** (scales - 1) + 1
        opts = Namespace(input="s.npy", binning=1, center_offset="auto", network="unet", scales=scales)
        assert measurement_problems(opts, sinogram(smallest - 1)) and not measurement_problems(opts, sinogram(smallest))
        for size in (smallest, smallest + 1):
            for network in (dip_unet((8,) * scales, (4,) * scales), DeepDecoder((size, size), (8,) * scales)):
                z = torch.rand(1, *(network.input_shape if isinstance(network, DeepDecoder) else (1, size, size)))
                assert network(z).shape[-2:] == (size, size)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            dip_unet((8,) * scales, (4,) * scales)(torch.rand(1, 1, smallest - 1, smallest - 1))


@pytest.mark.parametrize("args, message", [
    (["--tv-weight", "nan"], "--tv-weight must be finite and >= 0, got nan"),
    (["--tv-weight", "inf"], "--tv-weight must be finite and >= 0, got inf"),
    (["--center-offset", "nan"], "--center-offset must be a number of pixels or 'auto', got 'nan'"),
    (["--center-offset", "inf"], "--center-offset must be a number of pixels or 'auto', got 'inf'"),
    (["--center-offset", "1e9"], "--center-offset 1e9 puts the rotation axis off the detector (24 detector pixels "
                                 "after --binning 1: less than 12 pixels either way)"),
    (["--center-offset", "-12"], "--center-offset -12 puts the rotation axis off the detector"),
    (["--lr", "inf"], "--lr must be finite and > 0, got inf"),
    (["--lr", "nan"], "--lr must be finite and > 0, got nan"),
    (["--photons", "inf"], "--photons must be finite and > 0, got inf"),
    (["--accelerator", "gpu"], "--accelerator gpu needs CUDA, which this machine does not have"),
    (["--accelerator", "cuda", "--slices", "all"], "--accelerator cuda needs CUDA"),
])
def test_numbers_must_be_finite_and_in_range_and_the_accelerator_present(scan, tmp_path, capsys, args, message):
    if "--accelerator" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused([str(scan), *TINY, *args], capsys, tmp_path / "out")
    assert message in line


@pytest.mark.parametrize("args, message", [
    (["--early-stop-window", "50"], "--network analytic does not use --early-stop-window (DIP options); leave it out"),
    (["--tv-weight", "0"], "does not use --tv-weight"),
    (["--network-input", "noise", "--tv-weight", "0.1"], "does not use --tv-weight, --network-input (DIP options); "
                                                         "leave them out"),
])
def test_dip_options_are_refused_with_the_analytic_prior(scan, tmp_path, capsys, args, message):
    command = [str(scan), "--network", "analytic", "--iterations", "2", "--logger", "none", *args]
    assert message in refused(command, capsys, tmp_path / "out")


def _with_beam_off(path: Path, angles: slice, noise: float) -> None:
    """The scan with the projections of ``angles`` replaced by the dark field (plus Gaussian noise)."""
    with h5py.File(path, "r+") as f:
        data = f["exchange/data"][()].astype(np.float64)
        dark = f["exchange/data_dark"][()].astype(np.float64).mean(0)
        noisy = dark + np.random.default_rng(1).normal(0, noise, data[angles].shape)
        data[angles] = np.clip(np.round(noisy), 0, None)
        del f["exchange/data"]
        f["exchange/data"] = data.astype(np.uint16)


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_a_beam_off_scan_is_refused_in_one_line(tmp_path, capsys, noise):
    path = tmp_path / "scan.h5"
    write_synthetic_scan(path, slices=2, size=24, angles=30, seed=0)
    _with_beam_off(path, slice(None), noise)
    for mode in ([], ["--slices", "all"]):
        line = refused([str(path), *mode, *TINY], capsys, tmp_path / "out")
        assert "of the projection pixels in this row are at the dark level (transmission below 0.01)" in line
        assert "beam off or shutter closed" in line


def test_a_partly_dark_scan_warns(tmp_path):
    path = tmp_path / "scan.h5"
    write_synthetic_scan(path, slices=1, size=24, angles=30, seed=0)
    _with_beam_off(path, slice(0, 3), 3.0)  # 10 % of the projections
    with pytest.warns(UserWarning, match=r"10 % of the projection pixels in this row are at the dark level"):
        load_data_exchange(path, center_offset=0)


def test_damaged_slice_files_are_computed_again_and_the_stack_is_never_emptied(scan, tmp_path, capsys, monkeypatch):
    import lightning_recon.finetune.fitting as fitting

    out = tmp_path / "out"
    command = [str(scan), "--slices", "0:2", *TINY, "--out", str(out)]
    finetune_main(command)
    good = np.load(out / "recon.npy")
    capsys.readouterr()

    damaged = out / "slices" / "slice_0001.npy"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ValueError, match="slice_0001.npy is unreadable"):  # the stack is assembled aside
        save_stack(out, [out / "slices" / "slice_0000.npy", damaged], good.shape[1:])
    np.testing.assert_array_equal(np.load(out / "recon.npy"), good)
    assert not list(out.glob("*.tmp"))

    with monkeypatch.context() as patch:  # interrupted while computing it again: the longer stack stays
        patch.setattr(fitting, "_fit_saving_on_interrupt", lambda trainer, model, loader: True)
        with pytest.raises(SystemExit) as exit_info:
            finetune_main(command)
    assert exit_info.value.code == 130 and "kept the 2 slices of" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "recon.npy"), good)

    summary = finetune_main(command)  # the damaged slice is computed again, with a warning naming it
    err = capsys.readouterr().err
    assert f"warning: {damaged} is damaged (unreadable: ValueError); slice 1 is computed again" in err
    assert [r["from_previous_run"] for r in summary["slices"]] == [True, False]
    stack = np.load(out / "recon.npy")
    assert stack.shape == good.shape and np.isfinite(stack).all() and np.abs(stack[1]).max() > 0

    network = out / "slices" / "net_0001.pt"
    network.write_bytes(network.read_bytes()[:100])
    summary = finetune_main([str(scan), "--slices", "0:3", *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert f"warning: {network}, the network the next slice starts from, is damaged" in err
    assert summary["slices"][2]["warm_start_from"] is None and np.load(out / "recon.npy").shape == (3, 24, 24)
