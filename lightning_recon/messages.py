"""How the command-line programs (``train.py``, ``finetune.py``, downloads) end on bad input."""
from __future__ import annotations

import sys

__all__ = ["exit_with_error"]


def exit_with_error(program: str, message: str, code: int = 2):
    """End ``program`` with one line on stderr, no traceback; status 2 (bad input) reads ``error:``."""
    sys.stderr.write(f"{program}: {'error: ' if code == 2 else ''}{message}\n")
    raise SystemExit(code)
