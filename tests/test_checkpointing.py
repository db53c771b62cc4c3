"""Checkpoints are written atomically and an unreadable one is reported by path."""
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

    (target.parent / "last.ckpt.partial").write_bytes(b"left by a SIGKILL")  # a kill cannot clean up
    io.save_checkpoint({"step": 3}, target)
    assert io.load_checkpoint(target)["step"] == 3 and not list(target.parent.glob("*.partial"))


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
