"""Readers for users' image files (lightning_recon.data.files): formats, sorting, one-line errors."""
import re

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lightning_recon.data.files import (
    IMAGE_SUFFIXES, DataFileError, find_files, hu_to_attenuation, hu_window, natural_sort_key, read_dicom_header,
    read_image, resize_image, sort_dicom_series,
)

pydicom = pytest.importorskip("pydicom")


def ramp(h=6, w=5, dtype=np.float32, scale=1.0):
    return (np.arange(h * w).reshape(h, w) * scale).astype(dtype)


def write_dicom(path, pixels, z=0.0, instance=1, series="1.2.826.0.1.3680043.2.1125.1", slope=1.0,
                intercept=-1024.0, description="AXIAL 1mm", rescale=True):
    """A minimal valid CT slice (signed 16-bit, MONOCHROME2, explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.9"
    ds.SeriesInstanceUID = series
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.75]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if rescale:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = np.asarray(pixels, dtype="<i2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def one_line_error(excinfo, path, *patterns):
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return message


# ------------------------------------------------------------------------------------------ finding

def test_find_files_folder_natural_order_case_insensitive_and_filtered(tmp_path):
    for name in ["img10.png", "img2.PNG", "img1.npy", "notes.txt", ".hidden.png", "b.TIFF"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "img3.png").write_bytes(b"x")
    assert [p.name for p in find_files(tmp_path)] == ["b.TIFF", "img1.npy", "img2.PNG", "img10.png"]
    assert [p.name for p in find_files(tmp_path, suffixes=(".png",))] == ["img2.PNG", "img10.png"]
    assert natural_sort_key("img2") < natural_sort_key("img10") < natural_sort_key("IMG11")


def test_find_files_glob_single_file_and_lists(tmp_path):
    (tmp_path / "scans" / "b").mkdir(parents=True)
    (tmp_path / "scans" / "a").mkdir()
    for rel in ["scans/b/s1.dcm", "scans/a/s10.dcm", "scans/a/s9.dcm", "scans/top.dcm", "scans/a/x.png"]:
        (tmp_path / rel).write_bytes(b"x")
    found = find_files(str(tmp_path / "scans" / "**" / "*.dcm"))
    assert [p.relative_to(tmp_path / "scans").as_posix() for p in found] == ["a/s9.dcm", "a/s10.dcm", "b/s1.dcm",
                                                                             "top.dcm"]
    single = tmp_path / "scans" / "a" / "x.png"
    assert find_files(single) == [single]
    both = find_files([single, str(tmp_path / "scans" / "a" / "*"), str(single)])  # duplicates dropped, order kept
    assert [p.name for p in both] == ["x.png", "s9.dcm", "s10.dcm"]


def test_find_files_errors_name_the_source(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError) as e:
        find_files(empty)
    one_line_error(e, empty, r"no \.png/\.tif/.*\.dcm files in")
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataFileError) as e:
        find_files(empty)
    one_line_error(e, empty, "readme.txt")
    pattern = str(tmp_path / "nothing" / "*.png")
    with pytest.raises(DataFileError) as e:
        find_files(pattern)
    one_line_error(e, pattern, "glob .* matches no files")
    with pytest.raises(DataFileError) as e:
        find_files(tmp_path / "missing")
    one_line_error(e, tmp_path / "missing", "does not exist")
    with pytest.raises(DataFileError) as e:
        find_files(empty / "readme.txt")
    one_line_error(e, empty / "readme.txt", "unsupported file type")
    with pytest.raises(DataFileError):
        find_files([])
    assert issubclass(DataFileError, ValueError) and ".dcm" in IMAGE_SUFFIXES


# ------------------------------------------------------------------------------------------ formats

def test_png_8_and_16_bit_grayscale_keep_their_values(tmp_path):
    g8 = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    g16 = (np.arange(48).reshape(6, 8) * 1365).astype(np.uint16)  # up to 64155
    Image.fromarray(g8).save(tmp_path / "g8.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    for name, want in [("g8.png", g8), ("g16.png", g16)]:
        image = read_image(tmp_path / name)
        assert image.dtype == np.float32 and image.shape == (6, 8) and image.flags.writeable
        np.testing.assert_array_equal(image, want.astype(np.float32))


def test_rgb_and_rgba_png_become_itu601_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 17, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    want = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    for name in ["rgb.png", "rgba.png"]:
        np.testing.assert_allclose(read_image(tmp_path / name), want, rtol=1e-6)
    gray = np.repeat(rgb[..., :1], 3, axis=-1)  # R = G = B: luminance is the value itself
    Image.fromarray(gray).save(tmp_path / "gray_rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray_rgb.png"), rgb[..., 0].astype(np.float32))


def test_tiff_integer_float_and_rgb(tmp_path):
    u16 = ramp(dtype=np.uint16, scale=1000)
    f32 = ramp(scale=-0.25) + 0.125
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    tifffile.imwrite(tmp_path / "f32.tiff", f32)
    tifffile.imwrite(tmp_path / "f64.tif", f32.astype(np.float64))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "u16.tif"), u16.astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "f32.tiff"), f32)
    np.testing.assert_array_equal(read_image(tmp_path / "f64.tif"), f32)
    want = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(read_image(tmp_path / "rgb.tif"), want, rtol=1e-6)
    Image.fromarray(u16).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # decoded by Pillow if tifffile cannot
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), u16.astype(np.float32))


def test_npy_npz_and_squeezed_axes(tmp_path):
    a = ramp()
    np.save(tmp_path / "a.npy", a[None])  # (1, H, W)
    np.save(tmp_path / "b.npy", a[..., None].astype(np.int16))  # (H, W, 1)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), a)
    np.testing.assert_array_equal(read_image(tmp_path / "b.npy"), a)
    np.savez(tmp_path / "only.npz", whatever=a)
    np.savez(tmp_path / "named.npz", mask=a * 0, ground_truth=a)
    np.savez(tmp_path / "keys.npz", x=a, y=a + 1)
    np.testing.assert_array_equal(read_image(tmp_path / "only.npz"), a)
    np.testing.assert_array_equal(read_image(tmp_path / "named.npz"), a)
    np.testing.assert_array_equal(read_image(tmp_path / "keys.npz", key="y"), a + 1)
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "keys.npz")
    one_line_error(e, tmp_path / "keys.npz", "2 arrays", "x, y", "key=")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "keys.npz", key="z")
    one_line_error(e, tmp_path / "keys.npz", "no array 'z'", "x, y")


def test_hdf5_key_or_only_dataset_in_nested_groups(tmp_path):
    a = ramp(dtype=np.float64)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_group("scan/recon")["slice"] = a
        f.attrs["note"] = "attributes are not datasets"
    np.testing.assert_array_equal(read_image(tmp_path / "one.h5"), a.astype(np.float32))
    with h5py.File(tmp_path / "two.hdf5", "w") as f:
        f["truth"] = a
        f["group/noisy"] = a + 1
    np.testing.assert_array_equal(read_image(tmp_path / "two.hdf5", key="/group/noisy"), a + 1)
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "two.hdf5")
    one_line_error(e, tmp_path / "two.hdf5", "2 datasets", "group/noisy", "truth")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "two.hdf5", key="gt")
    one_line_error(e, tmp_path / "two.hdf5", "no dataset 'gt'", "group/noisy, truth")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "two.hdf5", key="group")
    one_line_error(e, tmp_path / "two.hdf5", "is a group")


def test_dicom_in_hounsfield_units(tmp_path):
    stored = (np.arange(-30, 30, dtype=np.int16).reshape(6, 10) * 53)
    path = write_dicom(tmp_path / "s.dcm", stored, slope=2.0, intercept=-1024.0)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (6, 10)
    np.testing.assert_array_equal(image, stored * 2.0 - 1024.0)
    plain = write_dicom(tmp_path / "plain.dcm", stored, rescale=False)  # defaults: slope 1, intercept 0
    np.testing.assert_array_equal(read_image(plain), stored.astype(np.float32))
    from pydicom.filebase import DicomBytesIO

    raw = DicomBytesIO()  # a bare dataset: no preamble, no 'DICM', no file meta (older exports)
    raw.is_little_endian, raw.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(raw, pydicom.dcmread(path))
    (tmp_path / "raw.dcm").write_bytes(raw.getvalue())
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm"), image)
    header = read_dicom_header(path)
    assert header.position_z == 0.0 and header.instance_number == 1 and header.pixel_spacing == (0.5, 0.75)
    assert header.series_description == "AXIAL 1mm"


def test_dicom_series_sorted_by_position_then_instance(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    px = np.zeros((4, 4), np.int16)
    positions = [12.5, -7.5, 2.5, -2.5, 7.5]  # written in scrambled order, names and instance numbers disagree
    for i, z in enumerate(positions):
        write_dicom(series / f"slice{i}.dcm", px + i, z=z, instance=10 - i)
    ordered = sort_dicom_series(find_files(series))
    assert [read_dicom_header(p).position_z for p in ordered] == sorted(positions)
    assert [read_image(p)[0, 0] + 1024 for p in ordered] == [1, 3, 2, 4, 0]
    same_z = tmp_path / "same_z"
    same_z.mkdir()
    for i, instance in enumerate([3, 1, 2]):
        write_dicom(same_z / f"s{i}.dcm", px, z=0.0, instance=instance)
    assert [p.name for p in sort_dicom_series(find_files(same_z))] == ["s1.dcm", "s2.dcm", "s0.dcm"]


def test_two_series_in_one_folder_is_an_error(tmp_path):
    px = np.zeros((4, 4), np.int16)
    write_dicom(tmp_path / "a1.dcm", px, series="1.2.3.4", description="SOFT")
    write_dicom(tmp_path / "a2.dcm", px, z=1.0, series="1.2.3.4", description="SOFT")
    write_dicom(tmp_path / "b1.dcm", px, series="1.2.3.5", description="LUNG")
    with pytest.raises(DataFileError) as e:
        sort_dicom_series(find_files(tmp_path))
    one_line_error(e, tmp_path, "2 DICOM series", r"1\.2\.3\.4 'SOFT' \(2 slices", r"1\.2\.3\.5 'LUNG'")


# ------------------------------------------------------------------------------------------ bad files

def test_unreadable_truncated_and_foreign_files(tmp_path):
    Image.fromarray(ramp(8, 8, np.uint8)).save(tmp_path / "good.png")
    np.save(tmp_path / "good.npy", ramp(32, 32))
    with h5py.File(tmp_path / "good.h5", "w") as f:
        f["x"] = ramp(32, 32)
    write_dicom(tmp_path / "good.dcm", np.zeros((16, 16), np.int16))
    np.savez(tmp_path / "good.npz", x=ramp(32, 32))
    tifffile.imwrite(tmp_path / "good.tif", ramp(32, 32))
    for suffix in ["png", "npy", "h5", "dcm", "npz", "tif"]:
        data = (tmp_path / f"good.{suffix}").read_bytes()
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(DataFileError) as e:
            read_image(cut)
        one_line_error(e, cut)
    (tmp_path / "text.png").write_text("this is not\nan image\n")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "text.png")
    one_line_error(e, tmp_path / "text.png", "cannot read as PNG")
    foreign = {"npy": "no NumPy .npy header", "npz": "not a zip archive", "h5": "cannot read as HDF5",
               "dcm": "not a DICOM file", "tif": "not a TIFF file"}
    for suffix, pattern in foreign.items():
        path = tmp_path / f"text.{suffix}"
        path.write_text("hello\n" * 40)
        with pytest.raises(DataFileError) as e:
            read_image(path)
        one_line_error(e, path, pattern)
    with open(tmp_path / "renamed.npz", "wb") as fh:  # np.save would append .npy to the name
        np.save(fh, ramp())
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "renamed.npz")
    one_line_error(e, tmp_path / "renamed.npz", r"not a zip archive \(it is a \.npy file\)")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "missing.png")
    one_line_error(e, tmp_path / "missing.png", "does not exist")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "good.jpg")
    one_line_error(e, tmp_path / "good.jpg", "unsupported file type")


def test_bad_pixels_shapes_and_dtypes(tmp_path):
    a = ramp(8, 8)
    a[1, 2] = np.nan
    a[3, 3] = np.inf
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "nan.npy")
    one_line_error(e, tmp_path / "nan.npy", r"2 non-finite pixel value\(s\) of 64 \(1 NaN, 1 ±inf")
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "nan.tif")
    one_line_error(e, tmp_path / "nan.tif", "non-finite")
    cases = {
        "cube.npy": (np.zeros((4, 64, 64), np.float32), r"3-D array of shape \(4, 64, 64\), expected a 2-D image"),
        "line.npy": (np.zeros(64, np.float32), r"1-D array of shape \(64,\)"),
        "tiny.npy": (np.zeros((1, 64), np.float32), r"smaller than 2×2"),
        "text.npy": (np.array([["a", "b"], ["c", "d"]]), "non-numeric dtype"),
        "cplx.npy": (np.zeros((4, 4), np.complex64), "complex dtype"),
    }
    for name, (array, pattern) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(DataFileError) as e:
            read_image(tmp_path / name)
        one_line_error(e, tmp_path / name, pattern)
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "objects.npy")
    one_line_error(e, tmp_path / "objects.npy", "cannot read as .npy")
    with h5py.File(tmp_path / "cube.h5", "w") as f:
        f["volume"] = np.zeros((3, 8, 8))
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "cube.h5")
    one_line_error(e, tmp_path / "cube.h5", r"3-D array of shape \(3, 8, 8\) \(dataset 'volume'\)")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 8, 8), np.float32), photometric="minisblack")
    with pytest.raises(DataFileError) as e:
        read_image(tmp_path / "stack.tif")
    one_line_error(e, tmp_path / "stack.tif", "multi-page TIFF with 4 pages")


# ------------------------------------------------------------------------------------------ conversions

def test_hu_to_attenuation_and_window():
    hu = np.array([-1100.0, -1000.0, 0.0, 1000.0], np.float32)
    mu = hu_to_attenuation(hu)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04], atol=1e-9)
    np.testing.assert_allclose(hu_to_attenuation(hu, mu_water=0.19), [0.0, 0.0, 0.19, 0.38], rtol=1e-6)
    assert hu_to_attenuation(torch.tensor([0.0, -2000.0])).tolist() == pytest.approx([0.02, 0.0])
    np.testing.assert_allclose(hu_window(hu), [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(hu_window(np.array([-160, 40, 240, 500]), low=-160, high=240), [0, 0.5, 1, 1])
    assert hu_window(np.array([0], np.int16)).dtype == np.float32
    with pytest.raises(ValueError):
        hu_window(hu, low=100, high=100)
    with pytest.raises(ValueError):
        hu_to_attenuation(hu, mu_water=0)


def test_resize_modes():
    image = np.arange(36, dtype=np.float64).reshape(6, 6)
    same = resize_image(image, 6, "none")
    assert same.dtype == np.float32 and same.shape == (6, 6) and not np.shares_memory(same, image)
    np.testing.assert_array_equal(resize_image(image, (4, 2), "crop"), image[1:5, 2:4])
    padded = resize_image(image, (8, 4), "pad-crop")
    np.testing.assert_array_equal(padded[1:7], image[:, 1:5])
    assert not padded[0].any() and not padded[7].any()
    np.testing.assert_array_equal(resize_image(padded, (6, 4), "pad-crop"), image[:, 1:5])
    small = resize_image(image, 3, "resize")
    assert small.shape == (3, 3) and small[1, 1] == pytest.approx(image[2:4, 2:4].mean())  # symmetric centre
    noise = np.random.default_rng(2).standard_normal((64, 64))
    # antialiased 8× downsampling averages over ~8×8 pixels (plain bilinear would average 2×2: std 0.5)
    assert resize_image(noise, 8, "resize").std() < 0.25
    assert resize_image(np.ones((5, 7)), (9, 4), "resize") == pytest.approx(np.ones((9, 4)))
    with pytest.raises(DataFileError) as e:
        resize_image(image, (8, 8), "crop", name="/x/a.png")
    one_line_error(e, "/x/a.png", r"\(6, 6\) is smaller than the crop size \(8, 8\)")
    with pytest.raises(DataFileError) as e:
        resize_image(image, (5, 6), "none", name="/x/b.png")
    one_line_error(e, "/x/b.png", r"shape \(6, 6\), expected \(5, 6\)", "without a resize rule")
    with pytest.raises(ValueError):
        resize_image(image, 4, "stretch")
