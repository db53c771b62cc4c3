"""Whole scans: the synthetic multi-slice scan, and finetune.py --slices (warm start, resume, errors)."""
import json

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.data.real import load_data_exchange
from lightning_recon.data.synthetic_scan import main as synthetic_scan_main
from lightning_recon.data.synthetic_scan import read_ground_truth, write_synthetic_scan
from lightning_recon.finetune import main as finetune_main, parse_slices, slice_indices
from lightning_recon.metrics import psnr
from lightning_recon.physics import FBP

TINY = ["--iterations", "30", "--channels", "8", "--scales", "3", "--center-offset", "0", "--logger", "none",
        "--accelerator", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """4 slices of 24², 30 angles, and its ground truth as a (rows, H, W) .npy reference."""
    folder = tmp_path_factory.mktemp("scan")
    truth = write_synthetic_scan(folder / "scan.h5", slices=4, size=24, angles=30, seed=0)
    np.save(folder / "truth.npy", truth)
    return folder / "scan.h5", folder / "truth.npy"


@pytest.fixture(scope="module")
def warm_run(scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "out"
    summary = finetune_main([str(scan[0]), "--slices", "0:4", "--reference", str(scan[1]), *TINY, "--out", str(out)])
    return out, summary


def test_synthetic_scan_reads_as_data_exchange_and_its_fbp_matches_the_ground_truth(tmp_path):
    path = tmp_path / "scan.h5"
    truth = write_synthetic_scan(path, slices=3, size=32, angles=60, seed=1)
    assert truth.shape == (3, 32, 32) and truth.dtype == np.float32
    assert truth.min() == 0 and 0 < truth.max() <= 2.0 / 32 + 1e-7  # phantom in [0, 1] × attenuation / size
    np.testing.assert_array_equal(read_ground_truth(path), truth)
    with h5py.File(path, "r") as f:
        assert f["exchange/data"].shape == (60, 3, 32) and f["exchange/theta"][1] == pytest.approx(3.0)  # degrees
    for k in range(3):
        sinogram = load_data_exchange(path, k, center_offset=0)
        fbp = FBP(sinogram.geometry, "Hann", 1.0)(torch.from_numpy(sinogram.data)[None, None])
        aligned = float(psnr(fbp, torch.from_numpy(truth[k])[None, None]))
        turned = float(psnr(fbp, torch.from_numpy(truth[k].T.copy())[None, None]))
        assert aligned > 19.0 and aligned > turned + 3.0  # measured 20.8-21.3 dB; the transposed slice ~5 dB lower
    assert abs(load_data_exchange(path, 1).geometry.detector_offset) < 0.3  # the automatic centre finds the axis
    again = tmp_path / "again.h5"
    synthetic_scan_main([str(again), "--slices", "3", "--size", "32", "--angles", "60", "--seed", "1"])
    other = write_synthetic_scan(tmp_path / "other.h5", slices=3, size=32, angles=60, seed=2)
    with h5py.File(path, "r") as a, h5py.File(again, "r") as b:
        for key in ("exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta",
                    "exchange/ground_truth"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
    assert not np.array_equal(other, truth)



def test_one_slice_is_the_same_fit_as_slices_k(scan, tmp_path):
    """``--slice k`` and ``--slices k`` run one ``fit_slice`` with the same start: the same image and
    the same PSNR (the first slice of ``--slices`` starts from ``--init``, as a single slice does)."""
    common = [str(scan[0]), "--reference", str(scan[1]), *TINY]
    single = finetune_main([*common, "--slice", "2", "--out", str(tmp_path / "single")])
    stack = finetune_main([*common, "--slices", "2", "--out", str(tmp_path / "stack")])
    image = np.load(tmp_path / "single" / "recon.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "stack" / "recon.npy"), image[None])
    assert stack["slices"][0]["recon_psnr"] == single["recon_psnr"] and stack["slices"][0]["slice"] == 2
    assert stack["slices"][0]["best_loss"] == single["best_loss"]

def test_slices_forms():
    assert slice_indices("all", 5) == [0, 1, 2, 3, 4]
    assert slice_indices("3", 5) == [3]
    assert slice_indices("0:16", 16) == list(range(16))
    assert slice_indices("0:64:4", 64) == list(range(0, 64, 4))
    assert slice_indices("2:", 5) == [2, 3, 4] and slice_indices("::2", 5) == [0, 2, 4]
    assert parse_slices(" 1:3 ") == slice(1, 3, 1)


def test_whole_scan_stack_files_and_warm_start_against_independent(scan, warm_run, tmp_path, capsys):
    out, warm = warm_run
    for name in ("recon.npy", "recon.tif", "preview.png", "summary.json", "slices/state.json"):
        assert (out / name).exists(), name
    stack = np.load(out / "recon.npy")
    assert stack.shape == (4, 24, 24) and np.isfinite(stack).all()
    np.testing.assert_array_equal(__import__("tifffile").imread(out / "recon.tif"), stack)
    for k in range(4):
        np.testing.assert_array_equal(np.load(out / f"slices/slice_{k:04d}.npy"), stack[k])
    assert json.loads((out / "summary.json").read_text())["slices"] == warm["slices"]
    assert [r["slice"] for r in warm["slices"]] == [0, 1, 2, 3]
    assert [r["warm_start_from"] for r in warm["slices"]] == [None, 0, 1, 2]
    assert all(r["iterations"] == 30 and r["seconds"] > 0 and "recon_psnr" in r for r in warm["slices"])
    curves = np.load(out / "slices/curves_0001.npz")
    # the loss of every iteration; the PSNR once per Lightning step (25 iterations: 25 and 30)
    assert curves["loss"].shape == (30,) and curves["psnr"].shape == curves["psnr_iteration"].shape == (2,)
    assert curves["psnr_iteration"].tolist() == [25, 30]
    assert list((out / "slices").glob("net_*.pt")) == [out / "slices/net_0003.pt"]  # only the newest network

    independent = finetune_main([str(scan[0]), "--slices", "1:3", "--independent", "--reference", str(scan[1]),
                                 *TINY, "--out", str(tmp_path / "independent")])
    assert [r["warm_start_from"] for r in independent["slices"]] == [None, None]
    alone = np.load(tmp_path / "independent/recon.npy")
    assert not np.allclose(alone[0], stack[1])
    # the warm start begins near the answer: iteration 1 of a slice fits the data far better
    for warm_record, alone_record in zip(warm["slices"][1:3], independent["slices"]):
        assert warm_record["first_loss"] < 0.5 * alone_record["first_loss"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("slice ")]
    assert len(lines) == 2 and all("from --init" in line for line in lines)  # one line per slice


def test_an_interrupt_keeps_finished_slices_and_a_rerun_continues_the_warm_start(scan, warm_run, tmp_path,
                                                                                  monkeypatch, capsys):
    import lightning_recon.finetune.fitting as finetuning

    real_fit, calls, interrupt_at = finetuning._fit_saving_on_interrupt, [], [3]

    def fit_counting(trainer, model, loader):
        calls.append(1)
        if len(calls) == interrupt_at[0]:
            return True  # as Ctrl-C during this slice
        return real_fit(trainer, model, loader)

    monkeypatch.setattr(finetuning, "_fit_saving_on_interrupt", fit_counting)
    out = tmp_path / "out"
    command = [str(scan[0]), "--reference", str(scan[1]), *TINY, "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        finetune_main(["--slices", "0:3", *command])
    assert exit_info.value.code == 130
    assert "interrupted after 2 of 3 slices" in capsys.readouterr().err
    first = json.loads((out / "summary.json").read_text())
    assert first["interrupted"] and first["pending"] == [2] and first["shape"] == [2, 24, 24]
    assert np.load(out / "recon.npy").shape == (2, 24, 24)
    stamps = {k: (out / f"slices/slice_{k:04d}.npy").stat().st_mtime_ns for k in (0, 1)}

    interrupt_at[0] = None
    summary = finetune_main(["--slices", "0:4", *command])  # more slices, same settings: continues
    assert len(calls) == 3 + 2  # the rerun fitted slices 2 and 3 only
    assert [r["from_previous_run"] for r in summary["slices"]] == [True, True, False, False]
    assert {k: (out / f"slices/slice_{k:04d}.npy").stat().st_mtime_ns for k in (0, 1)} == stamps
    assert summary["slices"][:2] == [dict(r, from_previous_run=True) for r in first["slices"]]
    assert not summary["interrupted"] and summary["shape"] == [4, 24, 24]
    # slice 2 warm-started from the saved network of slice 1: the same stack as one uninterrupted run
    np.testing.assert_allclose(np.load(out / "recon.npy"), np.load(warm_run[0] / "recon.npy"), rtol=0, atol=1e-6)
    assert "2 of 4 slices already done" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:  # other settings: refused, nothing touched
        finetune_main(["--slices", "0:4", *command, "--lr", "0.01"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "other settings (--lr 0.001 -> 0.01)" in err and len(err.strip().splitlines()) == 1
    assert {k: (out / f"slices/slice_{k:04d}.npy").stat().st_mtime_ns for k in (0, 1)} == stamps


@pytest.mark.parametrize("argument, message", [
    (["--slices", "abc"], "--slices must be 'all', a row"),
    (["--slices", "1.5"], "--slices must be 'all', a row"),
    (["--slices", "1:2:3:4"], "--slices must be 'all', a row"),
    (["--slices", ""], "--slices must be 'all', a row"),
    (["--slices", "-1"], "(step >= 1)"),
    (["--slices", "0:4:0"], "(step >= 1)"),
    (["--slices", "3:1"], "selects no row"),
    (["--slices", "0:9"], "reaches beyond the scan's 4 detector rows"),
    (["--slices", "7"], "reaches beyond the scan's 4 detector rows"),
    (["--slices", "0:2", "--slice", "1"], "give --slice (one row) or --slices (several), not both"),
    (["--independent"], "--independent needs --slices"),
    (["--warm-iterations", "5"], "--warm-iterations needs --slices without --independent"),
    (["--slices", "0:2", "--independent", "--warm-iterations", "5"], "--warm-iterations needs --slices without"),
    (["--slices", "0:2", "--warm-iterations", "0"], "--warm-iterations must be >= 1"),
    (["--slices", "0:2", "--reference", "TRUTH2D"], "with --slices it must be the volume (4, 24, 24)"),
])
def test_bad_slices_arguments_are_one_line_errors(scan, tmp_path, capsys, argument, message):
    if "TRUTH2D" in argument:
        np.save(tmp_path / "slice.npy", read_ground_truth(scan[0], 0))
        argument = [str(tmp_path / "slice.npy") if a == "TRUTH2D" else a for a in argument]
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        finetune_main([str(scan[0]), *argument, *TINY, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_slices_need_an_h5_scan(tmp_path, capsys):
    np.save(tmp_path / "sinogram.npy", np.ones((8, 16), np.float32))
    with pytest.raises(SystemExit):
        finetune_main([str(tmp_path / "sinogram.npy"), "--slices", "0:2", "--out", str(tmp_path / "never")])
    assert "--slices needs an .h5 scan" in capsys.readouterr().err


def test_warm_iterations_shorten_every_warm_started_slice(scan, tmp_path):
    out = tmp_path / "short"
    summary = finetune_main([str(scan[0]), "--slices", "0:3", "--warm-iterations", "10", *TINY, "--out", str(out)])
    assert [r["iterations"] for r in summary["slices"]] == [30, 10, 10]
    assert np.load(out / "recon.npy").shape == (3, 24, 24)
    with pytest.raises(SystemExit):  # a rerun with other settings is refused, not mixed in
        finetune_main([str(scan[0]), "--slices", "0:3", *TINY, "--out", str(out)])
