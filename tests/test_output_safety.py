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
