"""The W&B mode of a run: never wait on an unreachable server (``train.py``, ``finetune.py``)."""
from __future__ import annotations

import netrc
import os
import socket
import warnings
from urllib.parse import urlparse

__all__ = ["default_wandb_mode"]


def default_wandb_mode(probe_seconds: float = 3.0) -> str:
    """The W&B mode a run uses: ``offline``/``disabled`` when ``WANDB_MODE`` says so; ``online``
    (``WANDB_MODE=online``, or unset with W&B credentials) only when the W&B server answers a TCP
    connection within ``probe_seconds``, otherwise ``offline`` with one warning, so that a run on a
    machine without network never waits on the server; ``offline`` without credentials."""
    mode = os.environ.get("WANDB_MODE")
    if mode and mode != "online":
        return mode
    if mode != "online" and not _wandb_credentials():
        return "offline"
    if _wandb_server_reachable(probe_seconds):
        return "online"
    warnings.warn("W&B server unreachable: logging offline instead (upload later with `wandb sync`)", stacklevel=2)
    return "offline"


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators(urlparse(_wandb_url()).hostname or "api.wandb.ai"))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _wandb_server_reachable(timeout: float) -> bool:
    """A TCP connection to the W&B server (``WANDB_BASE_URL``) within ``timeout`` seconds."""
    url = urlparse(_wandb_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False
