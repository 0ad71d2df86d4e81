"""File I/O for images and masks (NIfTI via nibabel, PNG/JPG/BMP via Pillow).

Sits below :mod:`fedseg.data` (beside :mod:`fedseg.config`): it imports neither, so the dataset
layer, the CLI and prediction share one reader and one error vocabulary. Two submodules serve
every layer above: :mod:`fedseg.io.atomic` (every file fedseg writes: temp file + fsync + rename,
orphan temp removal) and :mod:`fedseg.io.safe` (checkpoints: saved as plain data, loaded with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from fedseg.io.errors import DataError, Problem, format_problems
from fedseg.io.volume import (
    AFFINE_ATOL,
    IMAGE_2D_SUFFIXES,
    NIFTI_SUFFIXES,
    SUFFIXES,
    Volume,
    file_stem,
    file_suffix,
    is_nifti,
    read_image,
    read_mask,
    write_mask,
)

__all__ = [
    "AFFINE_ATOL",
    "DataError",
    "IMAGE_2D_SUFFIXES",
    "NIFTI_SUFFIXES",
    "Problem",
    "SUFFIXES",
    "Volume",
    "file_stem",
    "file_suffix",
    "format_problems",
    "is_nifti",
    "read_image",
    "read_mask",
    "write_mask",
]
