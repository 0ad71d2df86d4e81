from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.config import config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine.evaluate import SlidingWindow, evaluate, predict_logits, sliding_window_for

_CPU = torch.device("cpu")


def _pointwise(dims: int, seed: int = 0) -> nn.Module:
    """A 1x1(x1) convolution: every output voxel depends on its own input voxel only, so stitched
    sliding-window logits must equal the direct ones wherever the windows are."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(2, 3, 1) if dims == 3 else nn.Conv2d(2, 3, 1)
    return conv.eval()


class _Threshold(nn.Module):
    """Logits ``[0, x - 0.5]``: predicts class 1 exactly where the image exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - 0.5], dim=1)


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "mode"),
    [
        ((11, 9, 7), (4, 4, 4), 0.5, "gaussian"),
        ((11, 9, 7), (4, 3, 8), 0.25, "constant"),  # roi larger than the volume along the last axis
        ((13, 10), (6, 4), 0.0, "gaussian"),
    ],
)
def test_sliding_window_of_a_pointwise_model_equals_whole_image_prediction(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, mode: str
) -> None:
    model = _pointwise(len(shape))
    images = torch.randn(2, 2, *shape, generator=torch.Generator().manual_seed(1))
    direct = predict_logits(model, images, _CPU)
    stitched = predict_logits(model, images, _CPU, SlidingWindow(roi, overlap=overlap, mode=mode, batch_size=3))
    assert stitched.shape == direct.shape == (2, 3, *shape)
    torch.testing.assert_close(stitched, direct, rtol=1e-5, atol=1e-6)


def _write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_in_mm_on_an_anisotropic_nifti_by_sliding_window_matches_hand_computation(
    tmp_path: Path, axis: int
) -> None:
    # A 2x2x2 cube and the same cube shifted by one voxel along `axis`: half of each cube's
    # voxels coincide, the other half lie exactly one voxel (spacing[axis] mm) from the other
    # cube, so every 95th percentile, and HD95, is spacing[axis]; Dice = 2*4/(8+8) = 0.5.
    spacing = (0.8, 1.5, 3.0)
    target = np.zeros((10, 9, 7), dtype=np.uint8)
    target[3:5, 3:5, 2:4] = 1
    image = np.roll(target, 1, axis=axis).astype(np.float32)
    _write_nifti(tmp_path / "case_0000.nii.gz", image, spacing)
    _write_nifti(tmp_path / "case.nii.gz", target, spacing)

    img = nib.load(tmp_path / "case_0000.nii.gz")
    seg = nib.load(tmp_path / "case.nii.gz")
    data = SegmentationSet(
        images=torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None, None],
        masks=torch.from_numpy(np.asarray(seg.dataobj, dtype=np.int64))[None, None],
        spacing=torch.tensor([img.header.get_zooms()[:3]], dtype=torch.float64),
    )
    metrics = evaluate(_Threshold(), data, num_classes=2, device=_CPU, window=SlidingWindow((4, 4, 4), overlap=0.5))
    assert metrics["hd95"] == pytest.approx(spacing[axis])
    assert metrics["dice"] == pytest.approx(0.5)
    assert metrics["iou"] == pytest.approx(1 / 3)
    assert metrics["n"] == 1


def test_window_defaults_to_the_patch_size_and_eval_roi_overrides_it() -> None:
    assert sliding_window_for(config_from_dict(tiny_config())) is None
    patched = tiny_config(dims=3, train={"patch_size": [8, 8, 4]})
    assert sliding_window_for(config_from_dict(patched)) == SlidingWindow((8, 8, 4), overlap=0.5, mode="gaussian")
    patched["eval"] = {"sliding_window": {"roi_size": [16, 16, 8], "overlap": 0.25, "mode": "constant",
                                          "batch_size": 2}}
    assert sliding_window_for(config_from_dict(patched)) == SlidingWindow((16, 16, 8), 0.25, "constant", 2)


def test_window_with_the_wrong_number_of_axes_is_rejected() -> None:
    with pytest.raises(ValueError, match="roi_size"):
        predict_logits(_Threshold(), torch.zeros(1, 1, 8, 8), _CPU, SlidingWindow((4, 4, 4)))
