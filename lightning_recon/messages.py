"""How the command-line programs (``train.py``, ``finetune.py``, downloads) end on bad input, and
the library notes they leave out."""
from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["exit_with_error", "quiet_library_notes"]

# Notes of Lightning that say nothing about the run: an advertisement on every Trainer, and a
# deprecation inside Lightning's own code (nothing a user can change) printed at every loop start.
_UNHELPFUL_LOG_PREFIXES = ("💡 Tip:",)
_UNHELPFUL_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


def exit_with_error(program: str, message: str, code: int = 2):
    """End ``program`` with one line on stderr, no traceback; status 2 (bad input) reads ``error:``."""
    sys.stderr.write(f"{program}: {'error: ' if code == 2 else ''}{message}\n")
    raise SystemExit(code)


class _DropUnhelpful(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_UNHELPFUL_LOG_PREFIXES)


def quiet_library_notes() -> None:
    """Leaves out Lightning's notes that add nothing to a run (idempotent); its other warnings stay."""
    for message in _UNHELPFUL_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropUnhelpful) for f in log.filters):
        log.addFilter(_DropUnhelpful())
