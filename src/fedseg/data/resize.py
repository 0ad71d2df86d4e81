"""MONAI's ``Resize`` without its per-call overhead: the same steps on plain tensors, the same values.

``monai.transforms.Resize`` wraps every array in a ``MetaTensor`` and records an affine and a
transform trace for inversion, which :mod:`fedseg.data.preprocess` never uses (it keeps its own
:class:`~fedseg.data.preprocess.GeometryInfo`). For a 2D image that bookkeeping costs more than the
resize. :func:`resize_array` runs the steps of ``monai.transforms.spatial.functional.resize`` in
the same order and precision, on plain tensors, with MONAI's own Gaussian filter: optional
anti-aliasing (``GaussianFilter`` with skimage's default sigma ``max(0, (factor - 1) / 2)`` per
axis, computed in float32 as MONAI does), then ``torch.nn.functional.interpolate``. The results
are bit for bit those of ``Resize`` (tests/data/test_cold_start.py checks it, 2D and 3D).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import GaussianFilter

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
    image = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
    if anti_aliasing and any(new < old for new, old in zip(size, image.shape[1:])):
        factors = torch.div(torch.Tensor(list(image.shape[1:])), torch.Tensor(list(size)))
        sigma = torch.maximum(torch.zeros(factors.shape), (factors - 1) / 2).tolist()
        smooth = GaussianFilter(len(size), [torch.as_tensor(s) for s in sigma], truncated=4.0, approx="erf")
        with torch.no_grad():
            image = smooth(image.unsqueeze(0)).squeeze(0)
    align = None if mode.startswith("nearest") else False
    resized = torch.nn.functional.interpolate(image.unsqueeze(0), size=size, mode=mode, align_corners=align)
    return np.asarray(resized.squeeze(0).to(torch.float32).numpy())
