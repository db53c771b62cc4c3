"""Reliability: atomic checkpoints, --ckpt_path against the command line, one-line errors of train.py."""
from pathlib import Path

import pytest
import torch

from lightning_recon.checkpointing import AtomicCheckpointIO, CheckpointUnreadable


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, target)
    assert io.load_checkpoint(target)["step"] == 1

    real_save = torch.save

    def killed_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(target)["step"] == 1  # the previous checkpoint is intact
    assert not list(target.parent.glob("*.partial"))

    import os
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = target.parent / f"last.ckpt.{int(finished.stdout)}.partial"  # its writer no longer runs
    killed.write_bytes(b"left by a SIGKILL")  # a kill cannot clean up
    running = target.parent / f"epoch1.ckpt.{os.getppid()}.partial"  # another run still writing
    running.write_bytes(b"being written")
    io.save_checkpoint({"step": 3}, target)
    assert io.load_checkpoint(target)["step"] == 3
    assert list(target.parent.glob("*.partial")) == [running]


def test_a_truncated_checkpoint_names_its_path_and_the_way_out(tmp_path):
    io = AtomicCheckpointIO()
    good = tmp_path / "epoch003.ckpt"
    io.save_checkpoint({"step": 3}, good)
    last = tmp_path / "last.ckpt"
    last.write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointUnreadable, match=r"last\.ckpt is unreadable.*resume from another checkpoint.*epoch003\.ckpt"):
        io.load_checkpoint(last)
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_train_py_writes_checkpoints_through_the_atomic_writer(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["fit", "--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16",
                    "--data.init_args.num_angles=6", "--data.init_args.train_length=4", "--data.init_args.val_length=2",
                    "--data.init_args.batch_size=2", "--model=lightning_recon.methods.FBPUNet",
                    "--model.init_args.channels=[4,4]", "--trainer.max_steps=2", "--trainer.accelerator=cpu",
                    "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                    f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert (tmp_path / "ckpt" / "last.ckpt").exists() and not list((tmp_path / "ckpt").glob("*.partial"))


TINY_DATA = ["--data.init_args.preset=ellipses-small", "--data.init_args.image_size=16", "--data.init_args.num_angles=6",
             "--data.init_args.train_length=4", "--data.init_args.val_length=2", "--data.init_args.test_length=2",
             "--data.init_args.batch_size=2", "--trainer.accelerator=cpu", "--trainer.logger=false",
             "--trainer.enable_progress_bar=false"]



def test_last_ckpt_is_the_last_validated_step_even_when_it_is_not_the_best(tmp_path, monkeypatch):
    """Lightning 2.6 writes last.ckpt only beside a top-k save: with a learning rate of 0 the second
    validation equals the first, is not better, saves no top-k checkpoint, and last.ckpt must still
    be the last step."""
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli_main(["fit", *TINY_DATA, "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
              "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null",
              "--model.init_args.lr=0.0", f"--out={tmp_path}"])
    best = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch*.ckpt"))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(best) == 1 and saved["global_step"] == 4, (best, saved["global_step"])

@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    from lightning_recon.cli import cli_main

    root = tmp_path_factory.mktemp("ckpt")
    cli_main(["fit", *TINY_DATA, "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
              "--trainer.max_steps=2", f"--trainer.default_root_dir={root}", f"--checkpoint.dirpath={root / 'ckpt'}",
              f"--model.init_args.results_dir={root / 'old_results'}"])
    return root / "ckpt" / "last.ckpt"


@pytest.mark.parametrize("model_args, message", [
    (["--model=lightning_recon.methods.LearnedGD"], "holds a FBPUNet, the config asks for LearnedGD"),
    (["--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[8,8]"],
     "channels: config [8, 8], checkpoint [4, 4]"),
])
def test_ckpt_path_refuses_a_different_model(unet_checkpoint, tmp_path, capsys, monkeypatch, model_args, message):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *TINY_DATA, *model_args, "--trainer.max_steps=3", f"--ckpt_path={unet_checkpoint}",
                  f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_ckpt_path_honours_where_and_under_which_name_results_go(unet_checkpoint, tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli_main(["test", *TINY_DATA, "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
              f"--model.init_args.results_dir={tmp_path / 'new'}", "--model.init_args.method_name=MyRow",
              "--model.init_args.lr=0.5", "--model.init_args.ray_transform_backend=odl",
              f"--ckpt_path={unet_checkpoint}", f"--trainer.default_root_dir={tmp_path}"])
    table = (tmp_path / "new" / "results.md").read_text()
    assert "| MyRow |" in table
    assert not (unet_checkpoint.parent.parent / "old_results" / "results.md").exists()


@pytest.mark.parametrize("setting, message", [("--data.init_args.batch_size=0", "batch_size must be >= 1, got 0"),
                                              ("--data.init_args.num_angles=0", "num_angles must be >= 1, got 0"),
                                              ("--data.init_args.preset=bogus", "unknown preset 'bogus'")])
def test_train_py_bad_settings_end_in_one_line(tmp_path, capsys, monkeypatch, setting, message):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("LIGHTNING_RECON_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *TINY_DATA, "--model=lightning_recon.methods.FBPUNet", setting,
                  f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"train.py: error: {message}" in err and "Traceback" not in err


def test_matrix_cache_files_are_readable_by_other_users(tmp_path, monkeypatch):
    import os
    import stat

    from lightning_recon.physics import ParallelBeam2D, RayTransform

    monkeypatch.setenv("LIGHTNING_RECON_CACHE", str(tmp_path))
    previous = os.umask(0o022)
    try:
        RayTransform(ParallelBeam2D((12, 12), num_angles=5), backend="matrix")(torch.zeros(1, 1, 12, 12))
    finally:
        os.umask(previous)
    (cached,) = (tmp_path / "matrices").glob("*.npz")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644


def test_resumable_loader_continues_the_interrupted_order():
    from lightning_recon.data.device_simulation import SampleIndices
    from lightning_recon.data.resumable import ResumableLoader

    def order(loader, batches):
        out, it = [], iter(loader)
        while len(out) < batches:
            try:
                out.append(next(it).tolist())
            except StopIteration:
                it = iter(loader)
        return out

    full = order(ResumableLoader(SampleIndices(10), batch_size=3, seed=5), 9)  # 4 batches per epoch
    first = ResumableLoader(SampleIndices(10), batch_size=3, seed=5)
    seen = order(first, 6)  # stopped in the middle of the second epoch
    resumed = ResumableLoader(SampleIndices(10), batch_size=3, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert seen + order(resumed, 3) == full
    assert sorted(sum(full[:4], [])) == list(range(10)) and full[:4] != full[4:8]


def _fit_command(root, extra=()):
    import sys

    return [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), "fit", *TINY_DATA,
            "--data.init_args.train_length=12", "--data.init_args.num_workers=0",
            "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
            "--trainer.max_steps=40", "--trainer.val_check_interval=20", "--trainer.check_val_every_n_epoch=null",
            "--checkpoint.every_n_train_steps=5", "--checkpoint.save_top_k=-1", "--checkpoint.monitor=null",
            "--checkpoint.filename=step={step}", f"--trainer.default_root_dir={root}", f"--checkpoint.dirpath={root}/ckpt",
            "--model.init_args.results_dir=null", *extra]


def test_a_sigkilled_fit_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL mid-run, resume with --ckpt_path: same step, learning rate and final weights."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, WANDB_MODE="disabled")
    subprocess.run(_fit_command(tmp_path / "whole"), env=env, check=True, capture_output=True, timeout=300)

    killed = subprocess.Popen(_fit_command(tmp_path / "killed"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_from = tmp_path / "killed" / "ckpt" / "step=15.ckpt"  # mid-epoch: 6 batches per epoch
    deadline = time.time() + 240
    while time.time() < deadline and not resume_from.exists():
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)  # usually mid-run; the assertions hold either way
    killed.wait(timeout=60)
    step = 15
    subprocess.run(_fit_command(tmp_path / "killed", [f"--ckpt_path={resume_from}"]), env=env, check=True,
                   capture_output=True, timeout=300)

    whole = torch.load(tmp_path / "whole" / "ckpt" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "ckpt" / "last.ckpt", weights_only=True)
    assert whole["global_step"] == resumed["global_step"] == 40
    lr = lambda ckpt: ckpt["optimizer_states"][0]["param_groups"][0]["lr"]  # noqa: E731
    assert lr(whole) == pytest.approx(lr(resumed))
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=f"{key} differs after resume from {step}")


def test_resuming_logs_into_the_same_version_folder(tmp_path, monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = [*TINY_DATA, "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
              "--model.init_args.results_dir=null", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=run",
              "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"]
    cli_main(["fit", *common, "--trainer.max_steps=4"])
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    cli = cli_main(["fit", *common, "--trainer.max_steps=6", f"--ckpt_path={last}"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0"]
    kept = (tmp_path / "run" / "version_0" / "metrics.until-last.csv").read_text()
    assert "val/psnr" in kept  # the first part's log is not deleted
    assert (tmp_path / "run" / "version_0" / "metrics.csv").exists()
    assert cli.trainer.global_step == 6
    assert cli.trainer.checkpoint_callback.best_model_path  # the record survived the resume


def test_ckpt_path_keeps_the_checkpoints_row_name_and_folder_when_none_is_given(unet_checkpoint, tmp_path,
                                                                                 monkeypatch):
    from lightning_recon.cli import cli_main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["test", *TINY_DATA, "--model=lightning_recon.methods.FBPUNet", "--model.init_args.channels=[4,4]",
                    f"--ckpt_path={unet_checkpoint}", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.model.hparams.results_dir == str(unet_checkpoint.parent.parent / "old_results")
    assert "| FBPUNet |" in (unet_checkpoint.parent.parent / "old_results" / "results.md").read_text()


def test_a_cached_split_is_served_from_memory_after_the_workers_first_epoch():
    """With ``cache_samples`` and a loader worker, the training process keeps what the worker sends;
    from the second epoch on it serves the same batches in the same order without the worker, and a
    resumed loader continues that order."""
    from lightning_recon.data import SimulatedCTDataModule

    def data(workers):
        module = SimulatedCTDataModule("ellipses-small", image_size=16, num_angles=6, train_length=10, batch_size=3,
                                       num_workers=workers, cache_samples=True)
        module.setup("fit")
        return module

    def epochs(loader, count):
        served, from_memory = [], []
        for _ in range(count):
            from_memory.append(loader.serves_from_memory)
            served.append([{key: value.clone() for key, value in batch.items()} for batch in loader])
        return served, from_memory

    reference, never = epochs(data(0).train_dataloader(), 3)
    worked = data(1)
    loader = worked.train_dataloader()
    served, from_memory = epochs(loader, 3)
    assert never == [False] * 3 and from_memory == [False, True, True]
    assert worked.dataset("train").holds_every_sample()
    for mine, theirs in zip(served, reference):
        assert [batch["index"].tolist() for batch in mine] == [batch["index"].tolist() for batch in theirs]
        for a, b in zip(mine, theirs):
            assert all(torch.equal(a[key], b[key]) for key in ("ground_truth", "measurement", "fbp"))

    resumed = worked.train_dataloader()  # the same dataset object, its memory full
    state = loader.state_dict()
    state["batches"] = 2  # as if stopped after two batches of the third epoch
    resumed.load_state_dict(state)
    assert resumed.serves_from_memory
    assert [batch["index"].tolist() for batch in resumed] == [batch["index"].tolist() for batch in reference[2][2:]]
