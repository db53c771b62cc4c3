"""What ``finetune.py`` reads: the sinogram of one detector row of a scan (or the one sinogram of
an .npz / .npy file), its reference image, and the uncut FBP of references and previews. A bad
input ends the program with one line (``--debug``: the traceback)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import yaml

from ..data.real import Sinogram, load_data_exchange, load_sinogram, scan_rows
from ..messages import exit_with_error
from ..methods.single_measurement import UNCUT_FBP_FILTER, UNCUT_FBP_FREQUENCY_SCALING
from ..physics.fbp import FBP
from ..physics.geometry import geometry_from_dict
from .arguments import PROGRAM, is_scan

__all__ = ["as_reference", "center_offset", "input_errors_end_the_run", "measurement_problems", "read_slice", "reference_file",
           "scan_rows", "uncut_fbp"]


@contextlib.contextmanager
def input_errors_end_the_run(debug: bool):
    """A ValueError or OSError (an unreadable or unfit input) inside the block ends the program with
    its message on one line; with ``debug`` it propagates (the traceback)."""
    try:
        yield
    except (ValueError, OSError) as error:
        if debug:
            raise
        exit_with_error(PROGRAM, str(error))


def center_offset(opts) -> Union[float, str]:
    """``--center-offset`` in pixels, or ``"auto"``."""
    return opts.center_offset if opts.center_offset == "auto" else float(opts.center_offset)


def measurement_problems(opts, scan: Sinogram) -> List[str]:
    """What the measurement makes impossible, known once its first slice is read: a numeric
    ``--center-offset`` off the detector, or a network deeper than the image (its coarsest scale,
    the image halved ``--scales`` − 1 times, must keep at least 2 pixels)."""
    problems = []
    pixels = scan.data.shape[1]
    detector = f"{pixels} detector pixels" + (f" after --binning {opts.binning}" if is_scan(opts.input) else "")
    if opts.center_offset != "auto" and abs(float(opts.center_offset)) >= pixels / 2:
        problems.append(f"--center-offset {opts.center_offset} puts the rotation axis off the detector ({detector}: "
                        f"less than {pixels / 2:g} pixels either way)")
    size = min(scan.geometry.image_shape)
    largest = (size - 1).bit_length()  # the most scales whose coarsest one is >= 2 pixels
    if opts.network != "analytic" and opts.scales > largest:
        coarsest = -(-size // 2 ** (opts.scales - 1))
        problems.append(f"--scales {opts.scales} is too deep for the {size} × {size} image ({detector}): its coarsest "
                        f"scale would be {coarsest} pixel wide; use --scales {largest} or fewer"
                        + (" (or less --binning)" if is_scan(opts.input) and opts.binning > 1 else ""))
    return problems


def uncut_fbp(geometry, sinogram: np.ndarray) -> torch.Tensor:
    """The uncut FBP (Hann, frequency scaling 1: the FBP the priors start from) of one sinogram
    ``(A, D)``: an image ``(H, W)``."""
    fbp = FBP(geometry, UNCUT_FBP_FILTER, UNCUT_FBP_FREQUENCY_SCALING)
    return fbp(torch.from_numpy(sinogram)[None, None])[0, 0]


def measurement_geometry(scan: Sinogram, opts):
    """The geometry of ``scan`` that ``--geometry`` (a YAML file of numbers, checked against the
    sinogram's shape) or ``--image-size`` (an N × N grid over the same field of view) asks for; else
    the scan's own (one pixel per detector pixel)."""
    if opts.geometry is not None:
        spec = yaml.safe_load(Path(opts.geometry).read_text())
        if not isinstance(spec, dict):
            raise ValueError(f"--geometry {opts.geometry}: expected a mapping of numbers (type, image_shape, ...)")
        given = geometry_from_dict(spec.get("geometry", spec))
        if tuple(given.sinogram_shape) != tuple(scan.data.shape):
            raise ValueError(f"--geometry {opts.geometry} describes sinograms of shape {tuple(given.sinogram_shape)}, "
                             f"the input's is {tuple(scan.data.shape)} (angles, detector pixels)")
        return given
    if opts.image_size is not None:
        return scan.geometry.replace(image_shape=(opts.image_size,) * 2, image_extent=scan.geometry.extent)
    return scan.geometry


def as_reference(image) -> torch.Tensor:
    """A reference image (any array) as a float32 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.float32))


def reference_file(opts) -> Optional[Callable[[int], np.ndarray]]:
    """``--reference FILE`` as a reader of a row's reference: the file's image (whatever the row),
    or row ``row`` of a ``(rows, H, W)`` volume, as ``--slices`` reads it; None for no reference or
    ``full-fbp`` (computed by :func:`read_slice`)."""
    if opts.reference in (None, "full-fbp"):
        return None

    def row_reference(row: int) -> np.ndarray:
        reference = np.load(opts.reference, mmap_mode="r")
        return reference[row] if reference.ndim == 3 and row < reference.shape[0] else reference

    return row_reference


def read_slice(opts, row: int, offset, references: Optional[Callable[[int], np.ndarray]] = None
               ) -> Tuple[Sinogram, Optional[torch.Tensor]]:
    """The sinogram of detector row ``row`` of an .h5 scan (of an .npz / .npy file: its one
    sinogram), then its reference: the uncut FBP from all the scan's angles for ``--reference
    full-fbp``, else ``references(row)``, else None."""
    if is_scan(opts.input):
        scan = load_data_exchange(opts.input, row, opts.angle_step, opts.binning, offset, num_angles=opts.num_angles)
    else:
        scan = load_sinogram(opts.input, 0.0 if offset == "auto" else offset, angle_unit=opts.angle_unit,
                             angle_step=opts.angle_step)
    scan = Sinogram(scan.data, scan.angles, measurement_geometry(scan, opts))
    if opts.reference == "full-fbp":
        full = load_data_exchange(opts.input, row, 1, opts.binning, offset)
        return scan, uncut_fbp(measurement_geometry(full, opts), full.data)
    return scan, None if references is None else as_reference(references(row))
