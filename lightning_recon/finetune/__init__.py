"""``finetune.py``: Deep Image Prior (+TV), the deep decoder or the analytic deep prior on one real
measurement, or on every slice of a scan.

    python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune
    python finetune.py scan.h5 --slices all --num-angles 30 --iterations 500 --out outputs/scan

Inputs are checked before anything is read or written; Ctrl-C or SIGTERM ends the run early and
still saves the best iterate so far (one slice) or the finished slices (``--slices``).

Modules: ``arguments`` (options and their checks), ``inputs`` (sinograms, references, the uncut
FBP), ``fitting`` (one slice's fit, shared by both modes), ``slices`` (whole scans: warm start,
commit, resume), ``outputs`` (files written), ``command`` (the run after parsing and the one-slice
run). Only ``arguments`` is imported before the options are parsed, so ``--help`` starts without torch.
"""
from __future__ import annotations

from typing import List, Optional

from .arguments import parse_arguments, parse_slices, slice_indices

__all__ = ["main", "parse_slices", "slice_indices"]


def main(args: Optional[List[str]] = None) -> dict:
    """Entry point of ``finetune.py``: Deep Image Prior (+TV) on one real measurement, or on several
    slices of a scan in turn (``--slices``: each warm-started from the previous slice's network,
    resumable in the same ``--out``). Returns the summary.

    ``python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune``
    ``python finetune.py scan.h5 --slices all --num-angles 30 --iterations 500 --out outputs/scan``
    ``python finetune.py scan.npy --image-size 256 --init ellipses-edip`` (shipped EDIP weights)
    """
    opts = parse_arguments(args, description=main.__doc__)
    from ..threads import prefer_passive_waiting

    prefer_passive_waiting(opts.threads)  # before torch is imported (lightning_recon.threads)
    from .command import run

    return run(opts)
