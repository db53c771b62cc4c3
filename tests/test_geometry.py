"""``num_angles`` of a 2D geometry is the number of measured angles (after ``angle_step``)."""
import math

import numpy as np
import pytest

from lightning_recon.physics.geometry import FanBeam2D, ParallelBeam2D, geometry_from_dict


def grid_midpoints(lo, hi, cells):
    """The cell midpoints of a uniform grid, computed as the geometry always has."""
    return lo + (hi - lo) / cells * (np.arange(cells) + 0.5)


@pytest.mark.parametrize("cls", [ParallelBeam2D, FanBeam2D])
def test_sparse_view_counts_the_measured_angles_and_keeps_the_old_angle_values(cls):
    # before: num_angles=180, angle_step=6 (the grid count); now: num_angles=30, angle_step=6
    geometry = cls((16, 16), num_angles=30, angle_step=6)
    lo, hi = geometry.angle_range
    old_grid = grid_midpoints(lo, hi, 180)
    assert geometry.num_angles == len(geometry.angle_array) == 30
    assert geometry.sinogram_shape[0] == 30
    assert np.array_equal(geometry.full_angles, old_grid)
    assert np.array_equal(geometry.angle_array, old_grid[::6])
    assert np.allclose(geometry.angle_weights, (hi - lo) / 30)
    # ODL sees the same partition as before: the measured angles, bounded by angle_range
    import odl

    apart, _ = geometry._odl_partitions()
    assert apart == odl.nonuniform_partition(old_grid[::6], min_pt=lo, max_pt=hi)


def test_dense_grid_is_odls_uniform_partition():
    import odl

    geometry = ParallelBeam2D((16, 16), num_angles=30)
    apart, _ = geometry._odl_partitions()
    reference = odl.uniform_partition(0.0, math.pi, 30)
    assert apart == reference
    assert np.array_equal(geometry.angle_array, grid_midpoints(0.0, math.pi, 30))


def test_explicit_angles_resolve_num_angles_to_the_measured_count():
    angles = np.linspace(0.1, 3.0, 10)
    geometry = ParallelBeam2D((8, 8), angles=angles, angle_step=3)
    assert geometry.num_angles == len(geometry.angle_array) == 4
    assert np.array_equal(geometry.angle_array, angles[::3])
    assert ParallelBeam2D((8, 8), angles=angles, angle_step=3, num_angles=4) == geometry
    with pytest.raises(ValueError, match=r"num_angles \(10\).*4 measured angles"):
        ParallelBeam2D((8, 8), angles=angles, angle_step=3, num_angles=10)


def test_num_angles_defaults_to_30_and_must_be_positive():
    assert ParallelBeam2D((8, 8)).num_angles == 30
    with pytest.raises(ValueError, match="num_angles must be >= 1, got 0"):
        ParallelBeam2D((8, 8), num_angles=0)


@pytest.mark.parametrize("geometry", [
    ParallelBeam2D((8, 8), num_angles=12, angle_step=4),
    FanBeam2D((8, 8), num_angles=9, angle_step=2),
    ParallelBeam2D((8, 8), angles=(0.1, 0.5, 0.9, 1.7, 2.2), angle_step=2),
], ids=["parallel", "fan", "explicit"])
def test_to_dict_round_trips_the_measured_count(geometry):
    spec = geometry.to_dict()
    assert spec["num_angles"] == geometry.num_angles
    assert geometry_from_dict(spec) == geometry
    assert geometry_from_dict(spec).cache_key() == geometry.cache_key()


def test_replace_follows_explicit_angles():
    geometry = ParallelBeam2D((8, 8), angles=np.linspace(0.1, 3.0, 10))
    assert geometry.replace(angle_step=2).num_angles == 5
    assert geometry.replace(angles=(0.1, 0.2)).num_angles == 2
    assert geometry.replace(detector_offset=1.0).num_angles == 10
    uniform = ParallelBeam2D((8, 8), num_angles=10)
    assert uniform.replace(angle_step=3).num_angles == 10  # the measured count stays; the grid grows


def test_the_detector_count_is_stated_and_a_default_one_follows_the_image():
    geometry = ParallelBeam2D((64, 64), num_angles=10)
    assert geometry.num_detector_pixels == 93 and geometry.to_dict()["num_detector_pixels"] == 93
    assert geometry.replace(image_shape=(128, 128)).num_detector_pixels == 183  # the default follows
    fixed = ParallelBeam2D((64, 64), num_angles=10, num_detector_pixels=80)
    assert fixed.replace(image_shape=(128, 128)).num_detector_pixels == 80  # a chosen count stays
