"""Random-ellipse phantoms with the distribution of dival's ``EllipsesDataset``.

Each phantom sums 50 ellipses (value ``U(−½, ½) · Exp(0.4)``, half-axes ``0.2 · Exp(1)``, centre
``U(−1, 1)²``, rotation ``U(0, 2π)``, in coordinates where the image spans [−1, 1]²), rasterised by
``odl.phantom.ellipsoid_phantom`` and min-max normalised to [0, 1]. Parameters for sample ``i``
are the ``i``-th draw of ``numpy.random.RandomState(seed)``, exactly as dival draws them, so
dival's fixed seeds (train 42, validation 2, test 1) reproduce its images, and samples are a
deterministic function of (seed, index) for any worker or rank.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ELLIPSES_PER_IMAGE", "random_ellipse_parameters", "ellipse_phantom"]

ELLIPSES_PER_IMAGE = 50


def random_ellipse_parameters(seed: int, count: int) -> np.ndarray:
    """Parameters ``(count, 50, 6)`` = (value, a1, a2, x0, y0, rotation) of ``count`` phantoms."""
    rng = np.random.RandomState(seed)
    n = ELLIPSES_PER_IMAGE
    params = np.empty((count, n, 6))
    for i in range(count):
        value = rng.uniform(-0.5, 0.5, (n,)) * rng.exponential(0.4, (n,))
        a1 = 0.2 * rng.exponential(1.0, (n,))
        a2 = 0.2 * rng.exponential(1.0, (n,))
        x0 = rng.uniform(-1.0, 1.0, (n,))
        y0 = rng.uniform(-1.0, 1.0, (n,))
        rotation = rng.uniform(0.0, 2 * np.pi, (n,))
        params[i] = np.stack((value, a1, a2, x0, y0, rotation), axis=1)
    return params


def ellipse_phantom(params: np.ndarray, shape, extent=None, normalise: bool = True) -> np.ndarray:
    """Rasterise one phantom's ``(n, 6)`` parameters on a grid of ``shape`` (float32, ODL axes)."""
    import odl
    from odl.core.phantom import ellipsoid_phantom

    extent = extent if extent is not None else shape
    half = [e / 2 for e in extent]
    space = odl.uniform_discr([-h for h in half], half, tuple(shape), dtype="float32")
    image = ellipsoid_phantom(space, params).data.astype(np.float32)
    if normalise:
        image -= image.min()
        peak = image.max()
        if peak > 0:
            image /= peak
    return image
