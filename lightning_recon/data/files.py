"""Readers for users' image files, with one-line errors.

Used by the data modules that take ground-truth images from a user's folder (measurements are
then simulated) and measured pairs. Pure numpy / h5py, with Pillow, tifffile, pydicom and torch
imported lazily inside the functions that need them; nothing from ``lightning_recon`` is imported.

- :func:`find_files` turns a folder, a glob pattern, a file, or a list of these into a sorted list
  of paths (natural order: ``img2`` before ``img10``).
- :func:`read_image` reads one 2-D image as a float32 ``(H, W)`` array from PNG, TIFF, ``.npy``,
  ``.npz``, HDF5 or DICOM (DICOM in Hounsfield units).
- :func:`sort_dicom_series` orders the slices of one DICOM series by slice position;
  :func:`read_dicom_header` reads what it sorts by.
- :func:`hu_to_attenuation` and :func:`hu_window` turn Hounsfield units into attenuation
  (1/mm) or a [0, 1] display window; :func:`resize_image` brings images to one size.

Every problem with a user's file raises :class:`DataFileError` (a ``ValueError``) whose message is
one line: ``"<file>: <problem>"``, e.g. ``"/x/a.png: 3-D array of shape (4, 64, 64), expected a
2-D image (H, W)"``.

The module is long (≈ 700 lines) because each of the seven formats needs its own reading and its
own translation of its library's errors (Pillow, tifffile, numpy, h5py, pydicom); kept together,
every reader shares one error vocabulary and one set of shape and value checks.
"""
from __future__ import annotations

import glob
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "DataFileError", "IMAGE_SUFFIXES", "RESIZE_MODES", "DicomSliceHeader", "find_files", "natural_sort_key",
    "read_image", "read_dicom_header", "sort_dicom_series", "hu_to_attenuation", "hu_window", "resize_image",
    "hdf5_shapes", "OpenHDF5Files",
]

IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".npz", ".h5", ".hdf5", ".dcm")
RESIZE_MODES: Tuple[str, ...] = ("resize", "crop", "pad-crop", "none")
# .npz files without a `key`: the only array, else the first of these names that is present.
NPZ_DEFAULT_KEYS: Tuple[str, ...] = ("image", "ground_truth", "data")
# ITU-R BT.601 luma weights (R, G, B).
LUMA_WEIGHTS: Tuple[float, float, float] = (0.299, 0.587, 0.114)

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, Sequence[PathLike]]

_GLOB_CHARS = re.compile(r"[*?\[]")
_MAX_DETAIL = 300  # characters of a library's error message kept in ours


class DataFileError(ValueError):
    """A user's file (or folder, or glob) cannot be used. The message is one line naming the file
    and the problem; ``path`` holds the file (or source) when known."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        message = re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip()
        super().__init__(message)
        self.path = None if path is None else Path(path)


def _error(path: PathLike, problem: str) -> DataFileError:
    return DataFileError(f"{path}: {problem}", path=path)


def _detail(exc: BaseException, path: PathLike) -> str:
    """One line from a library's exception, without the file name (ours already leads the message)."""
    text = str(exc)
    for spelled in (repr(str(path)), f'"{path}"', str(path)):
        text = text.replace(spelled, "")
    text = " ".join(text.split()).strip(" :,") or "no message"
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL - 1] + "…"
    return f"{type(exc).__name__}: {text}"


# Exceptions the file libraries raise for unreadable, truncated or foreign files. Each reader adds
# its library's own classes (Pillow, tifffile, pydicom) where they do not derive from these.
_READ_ERRORS: Tuple[type, ...] = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, SyntaxError,
                                  AttributeError, RuntimeError, NotImplementedError, struct.error, zlib.error,
                                  zipfile.BadZipFile, MemoryError)


# ----------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------

def natural_sort_key(text: str) -> Tuple[Tuple[Any, ...], str]:
    """Sort key for natural order: digit runs compare as numbers (``img2 < img10``), the rest
    case-insensitively; ties are broken by the exact string."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), text


def _path_sort_key(path: Path):
    return tuple(natural_sort_key(part) for part in path.parts)


def _suffix_ok(path: Path, suffixes: Sequence[str]) -> bool:
    return path.suffix.lower() in suffixes


def _describe_suffixes(suffixes: Sequence[str]) -> str:
    return "/".join(suffixes)


def _find_one(source: PathLike, suffixes: Tuple[str, ...]) -> List[Path]:
    text = os.path.expanduser(os.fspath(source))
    path = Path(text)
    if path.is_dir():
        try:
            entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        except OSError as exc:
            raise _error(path, f"cannot list the folder: {_detail(exc, path)}") from None
        files = sorted((p for p in entries if p.is_file() and _suffix_ok(p, suffixes)),
                       key=lambda p: natural_sort_key(p.name))
        if not files:
            others = sorted((p.name for p in entries if p.is_file()), key=natural_sort_key)
            subdirs = [p for p in entries if p.is_dir()]
            hint = ""
            if others:
                hint = f" (it holds {len(others)} other file(s), e.g. '{others[0]}')"
            elif subdirs:
                hint = (f" (it holds {len(subdirs)} subfolder(s) such as '{subdirs[0].name}'; folders are not searched"
                        f" recursively: use a glob such as '{path / '**' / ('*' + suffixes[0])}')")
            raise DataFileError(f"no {_describe_suffixes(suffixes)} files in {path}{hint}", path=path)
        return files
    if path.is_file():
        if not _suffix_ok(path, suffixes):
            raise _error(path, f"unsupported file type '{path.suffix}', expected one of {_describe_suffixes(suffixes)}")
        return [path]
    if path.exists():
        raise _error(path, "is neither a file nor a folder")
    if _GLOB_CHARS.search(text):
        matches = [Path(m) for m in glob.glob(text, recursive=True)]
        matches = [m for m in matches if m.is_file()]
        files = sorted((m for m in matches if _suffix_ok(m, suffixes)), key=_path_sort_key)
        if not files:
            if matches:
                raise DataFileError(f"glob {text} matches {len(matches)} file(s) but none with suffix "
                                    f"{_describe_suffixes(suffixes)} (e.g. '{matches[0]}')", path=text)
            raise DataFileError(f"glob {text} matches no files", path=text)
        return files
    raise _error(text, "does not exist")


def find_files(source: Source, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Path]:
    """The files a user points at, as a list of ``Path``.

    ``source`` is a folder (its files whose suffix, case-insensitively, is in ``suffixes``; not
    recursive; hidden files skipped; natural order by name so ``img2`` < ``img10``), a glob pattern
    string (``"/data/*.png"``, ``"scans/**/*.dcm"`` with ``**`` recursive; files with other
    suffixes dropped; natural order by path), a single file (its suffix must be in ``suffixes``),
    or a list of any of these (concatenated in order, duplicates removed, first one kept).

    Raises :class:`DataFileError` for a path that does not exist, a folder or glob that yields no
    files, or a file with another suffix.
    """
    suffixes = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes)
    if not suffixes:
        raise ValueError("find_files: `suffixes` is empty")
    sources: List[PathLike]
    if isinstance(source, (str, os.PathLike)):
        sources = [source]
    else:
        sources = list(source)
        if not sources:
            raise DataFileError("no files given: the list of sources is empty")
    found: List[Path] = []
    seen = set()
    for item in sources:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"find_files: expected a path, a glob string or a list of them, got {type(item).__name__}")
        for path in _find_one(item, suffixes):
            ident = os.path.normcase(os.path.realpath(path))
            if ident not in seen:
                seen.add(ident)
                found.append(path)
    return found


# ----------------------------------------------------------------------------------------------
# Checking arrays
# ----------------------------------------------------------------------------------------------

def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _as_image(array: Any, path: PathLike, context: str = "") -> np.ndarray:
    """Check a just-read array and return it as a finite float32 (H, W) image. ``context`` (e.g.
    "a TIFF with 4 pages") is added to shape messages."""
    array = np.asarray(array)
    note = f" ({context})" if context else ""
    kind = array.dtype.kind
    if kind == "c":
        raise _error(path, f"complex dtype {array.dtype}{note}, expected real pixel values")
    if kind not in "biuf":
        raise _error(path, f"non-numeric dtype {array.dtype}{note}, expected numbers")
    original_shape = array.shape
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        dims = "a scalar (0-D)" if array.ndim == 0 else f"{array.ndim}-D array of shape {_shape_text(original_shape)}"
        raise _error(path, f"{dims}{note}, expected a 2-D image (H, W)")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise _error(path, f"image of shape {_shape_text(array.shape)} is smaller than 2×2")
    image = np.ascontiguousarray(array, dtype=np.float32)
    if not image.flags.writeable:
        image = image.copy()
    finite = np.isfinite(image)
    if not finite.all():
        bad = image.size - int(finite.sum())
        nan = int(np.isnan(image).sum())
        source_note = ""
        if kind == "f" and array.dtype.itemsize > 4 and bad > nan and np.isfinite(array).all():
            source_note = f"; {bad - nan} beyond the float32 range"
        raise _error(path, f"{bad} non-finite pixel value(s) of {image.size} ({nan} NaN, {bad - nan} ±inf"
                           f"{source_note})")
    return image


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, C≥3) → (H, W) float64 with the ITU-R 601 weights; channels after the third
    (alpha) are dropped."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = LUMA_WEIGHTS
    return r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


# ----------------------------------------------------------------------------------------------
# Format readers
# ----------------------------------------------------------------------------------------------

def _pillow_errors() -> Tuple[type, ...]:
    from PIL import Image
    return _READ_ERRORS + (Image.DecompressionBombError,)


def _read_pillow(path: Path, fmt: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    errors = _pillow_errors()
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise _error(path, f"{fmt} with {frames} frames/pages (a 3-D stack), "
                                   f"expected a single 2-D image (H, W)")
            img.load()
            mode = img.mode
            if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
                data = np.asarray(img)
                if data.dtype == bool:
                    data = data.astype(np.uint8)
            elif mode in ("LA", "La"):
                data = np.asarray(img)[..., 0]
            elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
                data = _luminance(np.asarray(img))
            else:  # palette, CMYK, YCbCr, LAB, HSV, ...: via 8-bit RGB
                data = _luminance(np.asarray(img.convert("RGB")))
    except DataFileError:
        raise
    except UnidentifiedImageError:
        raise _error(path, f"cannot read as {fmt}: not an image file Pillow can identify") from None
    except errors as exc:
        raise _error(path, f"cannot read as {fmt}: {_detail(exc, path)}") from None
    return _as_image(data, path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            count = len(tif.pages)
            page = tif.pages[0]
            # later pages that are reduced-resolution copies (thumbnails) do not count
            if count > 1 and not all(getattr(tif.pages[i], "is_reduced", False) for i in range(1, count)):
                raise _error(path, f"multi-page TIFF with {count} pages of shape {_shape_text(page.shape)} "
                                   f"(a 3-D stack), expected a single 2-D image (H, W)")
            photometric = int(page.photometric)
            if photometric == 3:  # PALETTE
                raise _error(path, "palette (indexed-colour) TIFF: save it as grayscale or RGB")
            try:
                data = page.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):
                    raise
                data = None  # compression tifffile cannot decode without imagecodecs: Pillow may
            axes = page.axes
    except DataFileError:
        raise
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read as TIFF: {_detail(exc, path)}") from None
    if data is None:
        return _read_pillow(path, "TIFF")
    if "S" in axes and data.ndim == len(axes):
        data = np.moveaxis(data, axes.index("S"), -1)
        if photometric in (2, 6) and data.shape[-1] >= 3:  # RGB(A), YCbCr (decoded to RGB): luminance
            return _as_image(_luminance(data), path)
        if photometric in (0, 1) and data.shape[-1] == 2:  # grayscale + alpha: drop alpha
            data = data[..., 0]
    return _as_image(data, path, context=f"TIFF axes {axes}" if data.ndim > 2 else "")


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _check_magic(path: Path, fh, fmt: str) -> None:
    """np.load takes anything that is neither .npy nor zip for a pickle: say what the file is not."""
    head = fh.read(6)
    fh.seek(0)
    if fmt == ".npy" and not head.startswith(_NPY_MAGIC):
        found = " (it is a zip/.npz archive)" if head.startswith(_ZIP_MAGICS) else ""
        raise _error(path, f"cannot read as .npy: no NumPy .npy header{found}")
    if fmt == ".npz" and not head.startswith(_ZIP_MAGICS):
        found = " (it is a .npy file)" if head.startswith(_NPY_MAGIC) else ""
        raise _error(path, f"cannot read as .npz: not a zip archive{found}")


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as fh:  # our own handle: np.load leaks its own when a read fails
            _check_magic(path, fh, ".npy")
            data = np.load(fh, allow_pickle=False)
    except DataFileError:
        raise
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read as .npy: {_detail(exc, path)}") from None
    return _as_image(data, path)


def _choose_key(path: Path, names: Sequence[str], key: Optional[str], what: str) -> str:
    listed = ", ".join(names[:10]) + (f", … ({len(names)} in all)" if len(names) > 10 else "")
    if key is not None:
        if key not in names:
            raise _error(path, f"no {what} '{key}' (the file holds: {listed or 'nothing'})")
        return key
    if not names:
        raise _error(path, f"holds no {what}s")
    if len(names) == 1:
        return names[0]
    raise _error(path, f"holds {len(names)} {what}s ({listed}); pass key= to choose one")


def _read_npz(path: Path, key: Optional[str]) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            _check_magic(path, fh, ".npz")
            with np.load(fh, allow_pickle=False) as npz:
                names = list(npz.files)
                if key is None and len(names) > 1:
                    key = next((k for k in NPZ_DEFAULT_KEYS if k in names), None)
                name = _choose_key(path, names, key, "array")
                data = npz[name]
    except DataFileError:
        raise
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read as .npz: {_detail(exc, path)}") from None
    return _as_image(data, path, context=f"array '{name}'")


def _read_h5(path: Path, key: Optional[str]) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: List[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            if key is not None:
                key = key.strip("/")
                if key in f and isinstance(f[key], h5py.Group):
                    inside = [n for n in names if n.startswith(key + "/")]
                    raise _error(path, f"'{key}' is a group, not a dataset (datasets: "
                                       f"{', '.join(inside[:10]) or 'none'})")
            name = _choose_key(path, names, key, "dataset")
            data = f[name][()]
    except DataFileError:
        raise
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read as HDF5: {_detail(exc, path)}") from None
    return _as_image(data, path, context=f"dataset '{name}'")


def _dicom_errors() -> Tuple[type, ...]:
    from pydicom.errors import InvalidDicomError
    return _READ_ERRORS + (InvalidDicomError,)


def _dcmread(path: Path, **kwargs):
    """pydicom's ``dcmread``; files without the 128-byte preamble and 'DICM' (older exports) are
    read with ``force=True`` and kept only if they look like an image (have Rows)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    errors = _dicom_errors()
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        pass
    except errors as exc:
        raise _error(path, f"cannot read as DICOM: {_detail(exc, path)}") from None
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        looks_like_dicom = "Rows" in ds
    except errors:
        looks_like_dicom = False
    if not looks_like_dicom:
        raise _error(path, "not a DICOM file (no 'DICM' marker and no DICOM image header)")
    _set_transfer_syntax(ds)
    return ds


def _set_transfer_syntax(ds) -> None:
    """A dataset read without file meta has no Transfer Syntax UID, which pydicom needs to decode
    the pixels: set it from the encoding the dataset was read with (uncompressed)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    encoding = getattr(ds, "original_encoding", None)  # pydicom ≥ 3: (implicit VR, little endian)
    implicit, little = encoding if encoding and None not in encoding else (ds.is_implicit_VR, ds.is_little_endian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _dicom_number(ds, keyword: str, default: float) -> float:
    value = ds.get(keyword, None)
    return default if value is None or value == "" else float(value)


def _read_dicom(path: Path) -> np.ndarray:
    errors = _dicom_errors()
    ds = _dcmread(path)
    try:
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise _error(path, "DICOM file without pixel data (no PixelData element: truncated, or not an image)")
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples != 1:
            raise _error(path, f"colour DICOM (SamplesPerPixel={samples}, "
                               f"{ds.get('PhotometricInterpretation', '?')}), expected a grayscale CT slice")
        pixels = ds.pixel_array
        slope = _dicom_number(ds, "RescaleSlope", 1.0)
        intercept = _dicom_number(ds, "RescaleIntercept", 0.0)
    except DataFileError:
        raise
    except errors as exc:
        raise _error(path, f"cannot read DICOM pixel data: {_detail(exc, path)}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    context = f"multi-frame DICOM, NumberOfFrames={frames}" if frames > 1 else ""
    if np.asarray(pixels).dtype.kind not in "biuf":
        return _as_image(pixels, path, context=context)
    hu = np.asarray(pixels, dtype=np.float64) * slope + intercept
    return _as_image(hu, path, context=context)


def read_image(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Read one 2-D image: a float32 ``(H, W)`` array, finite, at least 2×2, C-contiguous and
    writeable (a fresh array the caller may modify).

    - ``.png`` (Pillow), ``.tif``/``.tiff`` (tifffile; Pillow for compressions tifffile cannot
      decode without ``imagecodecs``): grayscale values as stored (8-bit 0..255, 16-bit
      0..65535, float TIFF as is; 1-bit as 0/1); RGB/RGBA → luminance with the ITU-R 601 weights
      (0.299, 0.587, 0.114), alpha dropped. Pillow reads 16-bit-per-channel RGB PNGs as 8 bits.
      A TIFF or PNG with several pages/frames is an error (3-D).
    - ``.npy``: the array. ``.npz``: the array under ``key``, else the only array, else the first
      of ``image``, ``ground_truth``, ``data`` present. ``.h5``/``.hdf5``: the dataset at ``key``
      (a path such as ``"exchange/data"``), else the only dataset in the file (groups walked).
    - ``.dcm``: one DICOM slice (pydicom), in Hounsfield units:
      ``pixel_array * RescaleSlope + RescaleIntercept`` (defaults 1 and 0).

    ``key`` is ignored by the formats that hold one image. A leading or trailing axis of size 1 is
    dropped: (1, H, W) and (H, W, 1) are accepted.

    Raises :class:`DataFileError` (one line, naming the file) for a missing, unreadable, truncated
    or foreign file, an unsupported suffix, a missing key, a non-numeric or complex dtype, a
    shape other than 2-D, an image smaller than 2×2, and NaN/±inf pixels (counted).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise _error(path, f"unsupported file type '{path.suffix}', "
                           f"expected one of {_describe_suffixes(IMAGE_SUFFIXES)}")
    if not path.exists():
        raise _error(path, "does not exist")
    if path.is_dir():
        raise _error(path, "is a folder, not a file")
    if suffix == ".png":
        return _read_pillow(path, "PNG")
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".npz":
        return _read_npz(path, key)
    if suffix in (".h5", ".hdf5"):
        return _read_h5(path, key)
    return _read_dicom(path)


# ----------------------------------------------------------------------------------------------
# DICOM series
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DicomSliceHeader:
    """What :func:`sort_dicom_series` needs from one slice's header (``None`` where absent).

    ``position_z``: ``ImagePositionPatient[2]`` in mm; ``pixel_spacing``: ``PixelSpacing``
    (row spacing, column spacing) in mm; ``slice_thickness`` in mm."""

    path: Path
    series_uid: Optional[str]
    series_description: Optional[str]
    position_z: Optional[float]
    instance_number: Optional[int]
    pixel_spacing: Optional[Tuple[float, float]]
    slice_thickness: Optional[float]


_HEADER_TAGS = ["SeriesInstanceUID", "SeriesDescription", "ImagePositionPatient", "InstanceNumber", "PixelSpacing",
                "SliceThickness", "Rows"]


def read_dicom_header(path: PathLike) -> DicomSliceHeader:
    """The series UID, description, slice position, instance number, pixel spacing and slice
    thickness of one DICOM file, read without its pixel data."""
    path = Path(path)
    if not path.exists():
        raise _error(path, "does not exist")
    ds = _dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))

    def get(name, convert):
        value = ds.get(name, None)
        if value is None or value == "":
            return None
        try:
            return convert(value)
        except (TypeError, ValueError, IndexError):
            return None

    return DicomSliceHeader(
        path=path,
        series_uid=get("SeriesInstanceUID", str),
        series_description=get("SeriesDescription", lambda v: str(v).strip() or None),
        position_z=get("ImagePositionPatient", lambda v: float(v[2])),
        instance_number=get("InstanceNumber", int),
        pixel_spacing=get("PixelSpacing", lambda v: (float(v[0]), float(v[1]))),
        slice_thickness=get("SliceThickness", float),
    )


def sort_dicom_series(paths: Iterable[PathLike]) -> List[Path]:
    """Order the slices of one DICOM series: by ``ImagePositionPatient[2]`` (slice position, mm,
    ascending) when every slice has it, then by ``InstanceNumber`` when every slice has it, then by
    file name (natural order) — each later key breaks the ties of the earlier ones.

    Raises :class:`DataFileError` when the files belong to several series (different
    ``SeriesInstanceUID``; slices without one are not counted), listing the series, or when a
    file is not DICOM.
    """
    headers = [read_dicom_header(p) for p in paths]
    if not headers:
        return []
    groups: dict = {}
    for h in headers:
        if h.series_uid is not None:
            groups.setdefault(h.series_uid, []).append(h)
    if len(groups) > 1:
        parents = {os.fspath(h.path.parent) for h in headers}
        where = parents.pop() if len(parents) == 1 else os.path.commonpath([os.fspath(h.path.parent)
                                                                            for h in headers]) or "."
        listed = "; ".join(
            f"{uid}" + (f" '{hs[0].series_description}'" if hs[0].series_description else "")
            + f" ({len(hs)} slice{'s' if len(hs) != 1 else ''}, e.g. {hs[0].path.name})"
            for uid, hs in list(groups.items())[:5])
        more = f"; … ({len(groups)} in all)" if len(groups) > 5 else ""
        raise DataFileError(f"{where}: the folder holds {len(groups)} DICOM series ({listed}{more}); "
                            f"put each series in its own folder or select one series' files", path=where)
    by_position = all(h.position_z is not None for h in headers)
    by_instance = all(h.instance_number is not None for h in headers)
    ordered = sorted(headers, key=lambda h: (h.position_z if by_position else 0.0,
                                             h.instance_number if by_instance else 0,
                                             natural_sort_key(h.path.name), _path_sort_key(h.path)))
    return [h.path for h in ordered]


# ----------------------------------------------------------------------------------------------
# Intensity conversions and sizes
# ----------------------------------------------------------------------------------------------

def _is_tensor(values: Any) -> bool:
    return type(values).__module__.split(".")[0] == "torch" and hasattr(values, "clamp")


def _float_array(values: Any) -> Any:
    """Torch tensors pass through (as floating point); anything else becomes a floating numpy array
    (float32 unless it already is float64)."""
    if _is_tensor(values):
        return values if values.is_floating_point() else values.float()
    array = np.asarray(values)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)


def _clip(values: Any, low: Optional[float], high: Optional[float]) -> Any:
    if _is_tensor(values):
        return values.clamp(min=low, max=high)
    return np.clip(values, low, high)


def hu_to_attenuation(hu: Any, mu_water: float = 0.02) -> Any:
    """Hounsfield units → linear attenuation coefficient ``μ = μ_water · (1 + HU/1000)``, clipped
    at 0 (air, −1000 HU, is 0; noise below it does not go negative).

    ``mu_water`` is in 1/mm: the default 0.02 mm⁻¹ is water at roughly 60–70 keV (a typical
    effective energy of a 120 kVp CT beam). The result is in the units of ``mu_water``; a ray
    transform that integrates over pixels needs it multiplied by the pixel size in mm (DICOM
    ``PixelSpacing``). Accepts numpy arrays, scalars or torch tensors; float32 unless given
    float64. Same shape as ``hu``.
    """
    mu_water = float(mu_water)
    if not np.isfinite(mu_water) or mu_water <= 0:
        raise ValueError(f"hu_to_attenuation: mu_water must be a positive number (1/mm), got {mu_water}")
    hu = _float_array(hu)
    return _clip(mu_water * (1.0 + hu / 1000.0), 0.0, None)


def hu_window(hu: Any, low: float = -1000.0, high: float = 1000.0) -> Any:
    """Map the window ``[low, high]`` (HU) linearly to [0, 1], clipping values outside it.
    Accepts numpy arrays, scalars or torch tensors; float32 unless given float64."""
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)) or not low < high:
        raise ValueError(f"hu_window: need finite low < high, got low={low}, high={high}")
    hu = _float_array(hu)
    return _clip((hu - low) / (high - low), 0.0, 1.0)


def _size_pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        pair = tuple(int(s) for s in size)
        if len(pair) != 2:
            raise ValueError(f"resize_image: size must be an int or (H, W), got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"resize_image: size must be positive, got {size!r}")
    return pair  # type: ignore[return-value]


def _centre_crop_or_pad(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, dtype=np.float32)
    src, dst = [], []
    for have, want in zip(image.shape, size):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = image[tuple(src)]
    return out


def resize_image(image: Any, size: Union[int, Sequence[int]], mode: str = "resize",
                 name: Optional[PathLike] = None) -> np.ndarray:
    """Bring a 2-D image to ``size`` = (H, W) (or an int for H = W); a fresh float32 (H, W) array.

    ``mode``:

    - ``"resize"``: bilinear interpolation with antialiasing (area-like averaging when
      downsampling): torch ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``.
      Each axis is scaled on its own, so the aspect ratio changes if the shapes' ratios differ.
    - ``"crop"``: centre crop; an image smaller than ``size`` on either axis is an error.
    - ``"pad-crop"``: per axis, centre crop when larger, zero-pad (centred) when smaller. Zero is
      air in attenuation or [0, 1]-window units, water in HU: convert before padding.
    - ``"none"``: the image must already be ``size``.

    ``name`` (the file) leads the :class:`DataFileError` messages for the "crop" and "none" cases.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_image: mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    size = _size_pair(size)
    if hasattr(image, "detach") and not isinstance(image, np.ndarray):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"resize_image: expected a 2-D image (H, W), got shape {_shape_text(image.shape)}")
    image = image.astype(np.float32, copy=False)
    label = "image" if name is None else os.fspath(name)
    shape = tuple(image.shape)
    if shape == size:
        return image.copy()
    if mode == "none":
        raise DataFileError(f"{label}: image of shape {_shape_text(shape)}, expected {_shape_text(size)} "
                            f"(mixed image sizes without a resize rule: choose a resize mode, 'resize', "
                            f"'crop' or 'pad-crop')", path=name)
    if mode == "crop":
        if shape[0] < size[0] or shape[1] < size[1]:
            raise DataFileError(f"{label}: image of shape {_shape_text(shape)} is smaller than the crop size "
                                f"{_shape_text(size)} (use 'pad-crop' or 'resize')", path=name)
        return _centre_crop_or_pad(image, size)
    if mode == "pad-crop":
        return _centre_crop_or_pad(image, size)
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    out = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy().astype(np.float32, copy=True)


# ----------------------------------------------------------------------------------------------
# HDF5 stacks read sample by sample (LoDoPaB-CT, measured pairs)
# ----------------------------------------------------------------------------------------------

def hdf5_shapes(path: PathLike, keys: Sequence[str], hint: str = "") -> Tuple[Tuple[int, ...], ...]:
    """The shapes of the datasets ``keys`` of one HDF5 file; ``DataFileError`` (one line) for a
    missing dataset (listing those present, then ``hint``) or an unreadable file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in keys if key not in f]
            if missing:
                raise DataFileError(f"{path}: no dataset {missing[0]!r} (found {sorted(f.keys())}){hint}", path=path)
            return tuple(tuple(f[key].shape) for key in keys)
    except DataFileError:
        raise
    except Exception as error:  # h5py raises OSError, KeyError or others on damaged files
        raise _error(path, f"unreadable HDF5 file ({_detail(error, path)}); it may be truncated") from None


class OpenHDF5Files:
    """HDF5 files opened once per process and kept open (read one sample at a time): a forked
    DataLoader worker, or an unpickled copy, opens its own instead of sharing the parent's handles."""

    def __init__(self):
        self._files: dict = {}
        self._pid: Optional[int] = None

    def __getitem__(self, path: PathLike):
        import h5py

        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
        return self._files[path]

    def __getstate__(self) -> dict:
        return {"_files": {}, "_pid": None}
