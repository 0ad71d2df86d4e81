"""MONAI's ``Resize`` without its per-call costs: the same steps on plain arrays.

``monai.transforms.Resize`` wraps every array in a ``MetaTensor`` and records an affine and a
transform trace for inversion, which :mod:`fedseg.data.preprocess` never uses (it keeps its own
:class:`~fedseg.data.preprocess.GeometryInfo`); for a 2D image that bookkeeping costs more than
the resize. Its anti-aliasing Gaussian is a ``torch`` convolution, and on CPU oneDNN builds a new
convolution primitive for every new input shape: about 20 ms for each image of a dataset whose
images all differ in size (BUS-BRA), two thirds of a cold load.

:func:`resize_array` runs the steps of ``monai.transforms.spatial.functional.resize`` in the same
order: skimage's default sigma ``max(0, (factor - 1) / 2)`` per shrinking axis (in float32, as
MONAI computes it), MONAI's own kernel (``gaussian_1d``, erf approximation, truncated at 4 sigma)
applied per axis with zero padding, then ``torch.nn.functional.interpolate``. The smoothing runs
in ``scipy.ndimage.correlate1d`` (float64 accumulation), so values match MONAI's to float32
rounding (tests/data/test_cold_start.py) and do not depend on torch's convolution backend or
thread count; interpolation without anti-aliasing (all masks) is bit for bit MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers.convutils import gaussian_1d
from scipy import ndimage

__all__ = ["resize_array"]


def resize_array(array: np.ndarray, shape: Sequence[int], mode: str, anti_aliasing: bool = False) -> np.ndarray:
    """``(C, *spatial)`` -> ``(C, *shape)`` float32, as ``Resize(shape, mode, align_corners, anti_aliasing)``.

    Args:
        array: channel-first image or label array (any real dtype; computed in float32).
        shape: the new spatial shape.
        mode: ``torch.nn.functional.interpolate`` mode; ``nearest*`` modes use no ``align_corners``,
            the linear ones ``align_corners=False`` (voxel edges aligned).
        anti_aliasing: Gaussian smoothing of the axes that shrink, before interpolating.

    Returns:
        The resized array, float32 (``array`` itself when the shape already matches).
    """
    size = tuple(int(n) for n in shape)
    if tuple(array.shape[1:]) == size:
        return array
    image = np.ascontiguousarray(array, dtype=np.float32)
    if anti_aliasing and any(new < old for new, old in zip(size, image.shape[1:])):
        factors = torch.div(torch.Tensor(list(image.shape[1:])), torch.Tensor(list(size)))
        for axis, sigma in enumerate(torch.maximum(torch.zeros(factors.shape), (factors - 1) / 2).tolist()):
            kernel = gaussian_1d(torch.as_tensor(sigma), truncated=4.0, approx="erf").numpy().astype(np.float64)
            image = ndimage.correlate1d(image, kernel, axis=axis + 1, mode="constant", cval=0.0)
    align = None if mode.startswith("nearest") else False
    resized = torch.nn.functional.interpolate(torch.from_numpy(image).unsqueeze(0), size=size, mode=mode,
                                              align_corners=align)
    return np.asarray(resized.squeeze(0).numpy(), dtype=np.float32)
