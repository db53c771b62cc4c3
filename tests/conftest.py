import os
import warnings

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


@pytest.fixture(autouse=True)
def _matrix_cache(tmp_path_factory, monkeypatch):
    """System matrices go to one per-session temporary cache, never the user's home."""
    monkeypatch.setenv("LIGHTNING_RECON_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))



@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny images: they gain nothing from threads, and a busy
    second core makes two threads much slower. Use with ``pytestmark = usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
