"""``finetune.py``: Deep Image Prior (+TV), the deep decoder or the analytic deep prior on one real
measurement, or on every slice of a scan.

    python finetune.py scan.h5 --slice 0 --num-angles 30 --iterations 2000 --out outputs/finetune
    python finetune.py scan.h5 --slices all --num-angles 30 --iterations 500 --out outputs/scan

Inputs are checked before anything is read or written; Ctrl-C or SIGTERM ends the run early and
still saves the best iterate so far (one slice) or the finished slices (``--slices``).

Modules: ``arguments`` (options and their checks), ``inputs`` (sinograms, references, the uncut
FBP), ``fitting`` (one slice's fit, shared by both modes), ``slices`` (whole scans: warm start,
commit, resume), ``outputs`` (files written), ``command`` (:func:`main` and the one-slice run).
"""
from .arguments import parse_slices, slice_indices
from .command import main

__all__ = ["main", "parse_slices", "slice_indices"]
