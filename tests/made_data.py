"""Small files in each layout the data modules read, made by the tests (ellipse phantoms as images)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from lightning_recon.physics.phantoms import ellipse_parameters, ellipse_phantom

# a reduced LoDoPaB copy: LoDoPaB's square and detector span at 32², 40 angles, 47 detector pixels
LODOPAB_SMALL = dict(image_size=32, num_angles=40, num_detector_pixels=47)
LODOPAB_SMALL_FLAGS = [f"--data.init_args.{key}={value}" for key, value in LODOPAB_SMALL.items()]


def phantoms(count: int, size: int, seed: int = 5) -> np.ndarray:
    """``(count, size, size)`` float32 phantoms in [0, 1] (dival's family)."""
    params = ellipse_parameters(seed, count, "dival")
    return np.stack([ellipse_phantom(params[i], (size, size), (float(size),) * 2, "dival") for i in range(count)])


def make_lodopab(folder: Path, files: Dict[str, Sequence[int]], image_size: int = 32, num_angles: int = 40,
                 num_detector_pixels: int = 47, patient_ids: bool = True, seed: int = 0) -> Path:
    """LoDoPaB's layout in ``folder``: for each part, files ``000, 001, ...`` with the given sample
    counts; observations are the noiseless post-log sinograms of the ground truths in LoDoPaB's
    geometry (metres) plus 1 % noise; ``patient_ids_rand_<part>.csv`` with a few patients per part."""
    import h5py

    from lightning_recon.data.lodopab import lodopab_geometry
    from lightning_recon.physics import RayTransform

    folder.mkdir(parents=True, exist_ok=True)
    project = RayTransform(lodopab_geometry(1, image_size, num_angles, num_detector_pixels))
    rng = np.random.default_rng(seed)
    for part, counts in files.items():
        for number, count in enumerate(counts):
            truth = phantoms(count, image_size, seed=100 * seed + 10 * len(part) + number)
            sinogram = project(torch.from_numpy(truth)[:, None])[:, 0].numpy()
            sinogram = sinogram + 0.01 * np.abs(sinogram).mean() * rng.standard_normal(sinogram.shape)
            for kind, data in (("ground_truth", truth), ("observation", sinogram)):
                with h5py.File(folder / f"{kind}_{part}_{number:03d}.hdf5", "w") as f:
                    f.create_dataset("data", data=data.astype(np.float32))
        if patient_ids:
            total = 128 * (len(counts) - 1) + counts[-1]
            ids = rng.integers(0, 3, total) + {"train": 0, "validation": 632, "test": 692}[part]
            np.savetxt(folder / f"patient_ids_rand_{part}.csv", ids, fmt="%d")
    return folder


def make_image_folder(folder: Path, count: int, size: int = 40, kind: str = "png", seed: int = 5) -> Path:
    """``count`` phantom images as 8-bit PNG, float ``.npy`` or DICOM (HU = 1000·value − 1000)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(phantoms(count, size, seed)):
        if kind == "png":
            from PIL import Image

            Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
        elif kind == "npy":
            np.save(folder / f"img{i}.npy", image)
        elif kind == "dcm":
            write_dicom(folder / f"slice{i}.dcm", (image * 1000 - 1000).round().astype(np.int16), position=float(i))
        else:
            raise ValueError(kind)
    return folder


def write_dicom(path: Path, hu: np.ndarray, position: float, series: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
    """One CT slice in Hounsfield units (stored as int16 with slope 1, intercept 0)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, int(position) + 1
    ds.ImagePositionPatient, ds.PixelSpacing = [0.0, 0.0, position], [1.0, 1.0]
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = hu.astype(np.int16).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def make_pairs(folder: Path, count: int, geometry, layout: str = "npz", seed: int = 7) -> Path:
    """``count`` (noisy sinogram, phantom) pairs in ``geometry`` as ``.npz`` files, one HDF5 file
    (``pairs.h5``) or a manifest (``pairs.csv`` with ``.npy`` sinograms and PNG references)."""
    import h5py

    from lightning_recon.physics import RayTransform

    folder.mkdir(parents=True, exist_ok=True)
    truth = phantoms(count, geometry.image_shape[0], seed)
    sinogram = RayTransform(geometry)(torch.from_numpy(truth)[:, None])[:, 0].numpy()
    sinogram = sinogram + 0.02 * np.abs(sinogram).mean() * np.random.default_rng(seed).standard_normal(sinogram.shape)
    if layout == "npz":
        for i in range(count):
            np.savez(folder / f"pair{i}.npz", sinogram=sinogram[i], reference=truth[i])
        return folder
    if layout == "hdf5":
        with h5py.File(folder / "pairs.h5", "w") as f:
            f.create_dataset("sinogram", data=sinogram.astype(np.float32))
            f.create_dataset("reference", data=truth)
        return folder / "pairs.h5"
    lines = ["measurement,reference"]
    for i in range(count):
        np.save(folder / f"sino{i}.npy", sinogram[i].astype(np.float32))
        np.save(folder / f"ref{i}.npy", truth[i])
        lines.append(f"sino{i}.npy,ref{i}.npy")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"
