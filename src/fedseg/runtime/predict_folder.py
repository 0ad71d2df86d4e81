"""``fedseg predict -i DIR -o DIR``: segment every image of a folder, as nnU-Net's predictor does.

Every PNG/JPG/BMP and NIfTI file of the input folder is one case (a model with several channels
reads nnU-Net's ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... as one case). The model is
loaded once; each case is preprocessed like the run's training data, predicted (optionally with
mirroring test-time augmentation: the softmax averaged over every combination of flipped spatial
axes), and its class probabilities are resampled back to the file's grid (linear, the cropped
border as background) before the argmax, so the mask ``<case>.nii.gz`` / ``<case>.png`` lies on
the input's native grid. ``save_probabilities`` also writes ``<case>.npz`` holding
``probabilities`` ``(K, *native spatial)`` float32.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel.orientations as nio
import numpy as np
import torch
from monai.transforms import DivisiblePad

from fedseg.data.base import DataError
from fedseg.data.preprocess import GeometryInfo, _pad_crop, _reorient, _resize, preprocess_case
from fedseg.engine.evaluate import predict_logits, sliding_window_for
from fedseg.io import SUFFIXES, file_stem, file_suffix, read_image, write_mask
from fedseg.io.atomic import atomic_open
from fedseg.io.volume import is_nifti
from fedseg.runtime.inference import _folder_config
from fedseg.runtime.trained import EvalError, TrainedRun, open_run

__all__ = ["FolderCase", "FolderPrediction", "folder_cases", "predict_folder", "case_probabilities", "restore_probabilities", "mirror_axes"]

logger = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class FolderCase:
    """One case of an input folder: its name (the output stem) and channel files in order."""

    name: str
    files: tuple[Path, ...]

    @property
    def mask_suffix(self) -> str:
        """``.nii.gz`` for NIfTI inputs, ``.png`` for 2D image files."""
        return ".nii.gz" if is_nifti(self.files[0]) else ".png"


def folder_cases(folder: Path, channels: int) -> list[FolderCase]:
    """The cases of ``folder`` (not recursive), sorted by name.

    Files named ``<case>_<4 digits>`` are grouped per case (channel 0000 first, nnU-Net naming)
    and the case is named without the suffix; other files are single-channel cases named by their
    stem. Hidden files and other suffixes are ignored.

    Raises:
        EvalError: not a folder, no image in it, or a case whose channel files are incomplete.
    """
    if not folder.is_dir():
        raise EvalError(f"-i {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and file_suffix(p) in SUFFIXES)
    if not files:
        raise EvalError(f"-i {folder}: no image files ({', '.join(SUFFIXES)})")
    groups: dict[str, dict[int, Path]] = {}
    for path in files:
        match = _CHANNEL.match(file_stem(path))
        name, channel = (match["case"], int(match["channel"])) if match else (file_stem(path), 0)
        if channel in groups.setdefault(name, {}):
            raise EvalError(f"-i {folder}: case {name!r} has two files for channel {channel}: "
                            f"{groups[name][channel].name}, {path.name}")
        groups[name][channel] = path
    cases = []
    for name, by_channel in sorted(groups.items()):
        wanted = list(range(channels)) if len(by_channel) > 1 or channels > 1 else list(by_channel)
        missing = [c for c in wanted if c not in by_channel]
        if missing or len(by_channel) != len(wanted):
            raise EvalError(f"-i {folder}: case {name!r} has channel files {sorted(by_channel)}, the model takes "
                            f"{channels} (<case>_0000 ... <case>_{channels - 1:04d})")
        cases.append(FolderCase(name, tuple(by_channel[c] for c in wanted)))
    return cases


def mirror_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of flipped spatial axes of a ``(B, C, *spatial)`` tensor, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def case_probabilities(trained: TrainedRun, image: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities ``(K, *spatial)`` (CPU, float32) of one preprocessed image ``(C, *spatial)``.

    Whole images are padded at the end to a multiple of the model's size divisor and cropped back;
    a run trained on patches goes through the sliding window. ``tta``: the mean over
    :func:`mirror_axes` (the input flipped, the output flipped back).
    """
    cfg, model = trained.cfg, trained.model
    window = sliding_window_for(cfg)
    device = trained.device
    spatial = image.shape[1:]
    if window is None:
        pad = DivisiblePad(k=cfg.model.size_divisors(len(spatial)), method="end")
        batch = torch.as_tensor(pad(image))[None]
    else:
        batch = image[None]
    combos = mirror_axes(len(spatial)) if tta else [()]
    total: torch.Tensor | None = None
    for axes in combos:
        x = batch.flip(axes) if axes else batch
        probs = torch.softmax(predict_logits(model, x, device, window).float(), dim=1)
        probs = probs.flip(axes) if axes else probs
        total = probs if total is None else total + probs
    assert total is not None  # combos is never empty
    mean = (total / len(combos))[0].cpu()
    return mean[(slice(None), *(slice(0, n) for n in spatial))]


def restore_probabilities(probs: np.ndarray, info: GeometryInfo) -> np.ndarray:
    """Probabilities ``(K, *info.shape)`` back on the file's grid ``(K, *info.original_shape)``.

    The inverse of the preprocessing geometry, as :func:`~fedseg.data.preprocess.restore_geometry`
    for labels, but resampled (bi/trilinear) rather than nearest, so the argmax is taken at native
    resolution; a border cropped away in preprocessing comes back as background (probability 1).
    """
    arr = np.asarray(probs, dtype=np.float32)
    if tuple(arr.shape[1:]) != tuple(info.shape):
        raise EvalError(f"probabilities of shape {arr.shape[1:]}, expected {tuple(info.shape)}")
    covered = _pad_crop(np.ones((1, *arr.shape[1:]), dtype=np.float32), [(-b, -a) for b, a in info.pad_crop])
    arr = _pad_crop(arr, [(-b, -a) for b, a in info.pad_crop])
    arr[0] += 1.0 - covered[0]
    if tuple(info.resampled_shape) != tuple(info.oriented_shape):
        mode = "bilinear" if arr.ndim == 3 else "trilinear"
        arr = _resize(arr, tuple(info.oriented_shape), mode)
    if info.orientation is not None:
        forward = np.asarray(info.orientation, dtype=np.float64)
        identity = np.column_stack([np.arange(len(forward)), np.ones(len(forward))])
        arr = _reorient(arr, nio.ornt_transform(identity, forward))  # type: ignore[no-untyped-call]
    arr = np.clip(arr, 0.0, None)
    total = arr.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(arr / np.where(total > 0, total, 1.0), dtype=np.float32)


@dataclass(frozen=True)
class FolderPrediction:
    """One case written by :func:`predict_folder`: the mask, the probabilities (or None), the grid."""

    case: str
    mask_path: Path
    probabilities_path: Path | None
    shape: tuple[int, ...]


def predict_folder(
    run_dir: Path, input_dir: Path, output_dir: Path, *, client: str | None = None, checkpoint: str | None = None,
    tta: bool = False, save_probabilities: bool = False,
) -> list[FolderPrediction]:
    """Segment every case of ``input_dir`` (:func:`folder_cases`) into ``output_dir`` (see the module docstring).

    Args:
        run_dir: a finished run directory.
        input_dir: folder of PNG/JPG/BMP or NIfTI files.
        output_dir: where ``<case>.nii.gz``/``<case>.png`` (and ``<case>.npz``) go; created.
        client: this client's personalised model; default the method's model for new data.
        checkpoint: ``best`` or ``last``; default the run's ``eval.select``.
        tta: mirroring test-time augmentation.
        save_probabilities: also write the native-grid probabilities.

    Raises:
        EvalError: bad run, client or folder.
        DataError: an unreadable case, wrong channel count or spatial rank.
    """
    trained = open_run(run_dir, checkpoint)
    trained.load(None, client=client)
    info = trained.info
    channels, dims = int(info["in_channels"]), int(info["spatial_dims"])
    dcfg = _folder_config(trained.cfg, info)
    cases = folder_cases(input_dir, channels)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for case in cases:
        volume = read_image(list(case.files), channels=channels)
        if volume.spatial_dims != dims:
            raise DataError(f"{case.files[0]}: a {volume.spatial_dims}D image, but the model of {run_dir} is {dims}D")
        pre = preprocess_case(volume, None, dcfg)
        probs = restore_probabilities(case_probabilities(trained, torch.from_numpy(pre.image), tta=tta).numpy(),
                                      pre.info)
        mask_path = output_dir / f"{case.name}{case.mask_suffix}"
        write_mask(mask_path, probs.argmax(0).astype(np.uint8), like=volume)
        prob_path = None
        if save_probabilities:
            prob_path = output_dir / f"{case.name}.npz"
            with atomic_open(prob_path) as fh:
                np.savez_compressed(fh, probabilities=probs)
        logger.info("predicted %s -> %s", case.files[0], mask_path)
        done.append(FolderPrediction(case.name, mask_path, prob_path, volume.spatial_shape))
    return done
