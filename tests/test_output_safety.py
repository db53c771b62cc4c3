"""One run per output folder, writability known before any work, damaged caches rebuilt."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from lightning_recon.locks import FolderInUse, OutputLock, check_writable


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lightning_recon.locks import OutputLock\n"
        f"lock = OutputLock({str(folder)!r}, 'holder').acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=rf"in use by holder \(PID {holder.pid} on "):
            OutputLock(folder, "second").acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(folder, "second") as lock:  # the killed holder's lock is stale: taken over
        assert lock.holder()["pid"] == os.getpid()
    assert not lock.path.exists()


def test_writability_is_checked_without_creating_anything(tmp_path):
    check_writable(tmp_path / "new" / "deeper", "results")
    assert not (tmp_path / "new").exists()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PermissionError, match="a-file is a file, not a folder"):
        check_writable(tmp_path / "a-file" / "out", "--out")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match="cannot write in"):
            check_writable(locked, "results")


def test_a_damaged_matrix_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    from lightning_recon.physics import ParallelBeam2D, RayTransform

    monkeypatch.setenv("LIGHTNING_RECON_CACHE", str(tmp_path))
    geometry = ParallelBeam2D((12, 12), num_angles=5)
    x = torch.rand(1, 1, 12, 12)
    expected = RayTransform(geometry, backend="matrix")(x)
    (cached,) = (tmp_path / "matrices").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # truncated: zipfile.BadZipFile
    with pytest.warns(UserWarning, match="damaged .*rebuilding"):
        again = RayTransform(geometry, backend="matrix")(x)
    assert torch.equal(again, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RayTransform(geometry, backend="matrix")(x)  # the rebuilt cache loads silently


TINY_FIT = ["--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16", "--data.init_args.num_angles=6",
            "--data.init_args.train_length=4", "--data.init_args.val_length=2", "--data.init_args.test_length=2",
            "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--model=lightning_recon.methods.FBPUNet",
            "--model.init_args.channels=[4,4]", "--trainer.accelerator=cpu", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false"]


def test_two_train_py_fits_into_one_checkpoint_folder_the_second_is_refused(tmp_path):
    """Two real processes: the second `fit` with the same checkpoint folder stops before any work,
    naming the first; the first's checkpoints are untouched."""
    folder = tmp_path / "ckpt"
    command = [sys.executable, "train.py", "fit", *TINY_FIT, f"--checkpoint.dirpath={folder}",
               f"--trainer.default_root_dir={tmp_path}", "--model.init_args.results_dir=null"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    first = subprocess.Popen([*command, "--trainer.max_steps=100000"], cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / ".ckpt.lock"
        for _ in range(600):  # the first run holds the lock once it has started fitting
            if lock.exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert lock.exists(), "the first run never locked its checkpoint folder"
        second = subprocess.run([*command, "--trainer.max_steps=2"], cwd=root, env=env, capture_output=True, text=True)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        (line,) = [line for line in second.stderr.splitlines() if line.startswith("train.py")]
        assert f"in use by train.py fit (PID {first.pid}" in line
    finally:
        first.kill()
        first.wait()


def test_train_py_refuses_missing_and_plain_checkpoints_and_unwritable_results_in_one_line(tmp_path, capsys):
    from lightning_recon.cli import cli_main

    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    (tmp_path / "a-file").write_text("")
    cases = [(["test", *TINY_FIT, f"--ckpt_path={tmp_path / 'missing.ckpt'}"], "missing.ckpt does not exist"),
             (["test", *TINY_FIT, f"--ckpt_path={tmp_path / 'plain.pt'}"], "not a Lightning checkpoint"),
             (["test", *TINY_FIT, f"--model.init_args.results_dir={tmp_path / 'a-file' / 'results'}"],
              "a-file is a file, not a folder")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main([*args, f"--trainer.default_root_dir={tmp_path}"])
        error = capsys.readouterr().err
        (line,) = [line for line in error.splitlines() if line.startswith("train.py")]
        assert exit_.value.code == 2 and "Traceback" not in error and message in line, error


def test_log_rotation_never_overwrites_an_earlier_part(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = [*TINY_FIT, "--model.init_args.results_dir=null", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=run",
              "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"]
    cli_main(["fit", *common, "--trainer.max_steps=2"])
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    cli_main(["fit", *common, "--trainer.max_steps=4", f"--ckpt_path={last}"])
    cli_main(["fit", *common, "--trainer.max_steps=6", f"--ckpt_path={last}"])
    folder = tmp_path / "run" / "version_0"
    assert (folder / "metrics.until-last.csv").exists() and (folder / "metrics.until-last-2.csv").exists()
    first, second = (folder / "metrics.until-last.csv").read_text(), (folder / "metrics.until-last-2.csv").read_text()
    assert first != second  # the first part survived the second resume
