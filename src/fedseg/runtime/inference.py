"""Using a trained run: evaluate the model each site is scored with (:func:`evaluate_run`, behind
``fedseg eval``), or segment new files (:func:`predict_file`, behind ``fedseg predict``). Which
model, and how it is rebuilt exactly as in the run: :mod:`fedseg.runtime.trained`."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import DivisiblePad
from PIL import Image
from scipy import ndimage
from torch import nn

from fedseg.config import DataConfig, PreprocessConfig, RunConfig
from fedseg.data.base import DataError, SiteData
from fedseg.data.build import build_federated_data
from fedseg.data.cache import with_run_cache
from fedseg.data.folder import load_site_folder
from fedseg.data.preprocess import preprocess_case, restore_geometry
from fedseg.data.scan import scan_root
from fedseg.engine.evaluate import predict_labels, predict_logits, sliding_window_for
from fedseg.io import file_stem, file_suffix, read_image, write_mask
from fedseg.io.atomic import atomic_open
from fedseg.io.packages import require
from fedseg.metrics import MetricAccumulator
from fedseg.records import Field
from fedseg.runtime.trained import EvalError, open_run

__all__ = ["EvalError", "Prediction", "load_trained_model", "evaluate_run", "predict_file", "channel_files",
           "write_overlay", "overlay_rgb", "overlay_path_for"]

logger = logging.getLogger(__name__)


def load_trained_model(
    run_dir: Path, client: str | None = None, checkpoint: str | None = None
) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The model a trained run uses on new data, on the configured device: ``client``'s
    personalised model, or else the method's model for a site that never trained (the global
    model for methods without local state), from the selected checkpoint
    (:func:`~fedseg.runtime.trained.open_run`)."""
    trained = open_run(run_dir, checkpoint)
    trained.load(None, client=client)
    return trained.model, trained.cfg, trained.info


def _folder_config(cfg: RunConfig, info: dict[str, Any]) -> DataConfig:
    """Data settings for reading new files the way the model's training data was prepared: the
    run's data spec, or for synthetic data z-scored images resampled to the generator's grid."""
    if cfg.data.source == "synthetic":
        size = cfg.data.synthetic.size
        return DataConfig(
            channels=int(info["in_channels"]),
            num_classes=int(info["num_classes"]),
            preprocess=PreprocessConfig(target_shape=[size] * int(info["spatial_dims"]), normalize="zscore"),
        )
    # A whole folder goes to the test split, so the training grouping column is irrelevant, and
    # new data is never deliberately corrupted.
    return cfg.data.model_copy(update={"group_column": None, "corrupt_labels": None})


def _sites_at(path: Path, cfg: RunConfig, info: dict[str, Any]) -> list[SiteData]:
    if not path.exists():
        raise EvalError(f"--data {path}: no such file or folder")
    dcfg = _folder_config(cfg, info)
    mixed = cfg.train.patch_size is not None  # a model trained on patches takes cases of any shape
    if (path / "images").is_dir():
        return [load_site_folder(path, dcfg, cfg.seed, all_to_test=True, mixed_shapes=mixed)]
    names, problems = scan_root(path)  # a folder that is not a site is an error, never skipped
    errors = [str(p) for p in problems if p.severity == "error"]
    if errors:
        raise EvalError(f"--data {path}: {'; '.join(errors)}")
    subdirs = [path / name for name in names]
    if not subdirs:
        raise EvalError(f"--data {path}: neither a site folder (with images/ and masks/) nor a root of site folders")
    return [load_site_folder(p, dcfg, cfg.seed, all_to_test=True, mixed_shapes=mixed) for p in subdirs]


def evaluate_run(
    run_dir: Path, *, data: Path | None = None, client: str | None = None, split: str = "test",
    checkpoint: str | None = None, per_case: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per-site metrics on the run's own ``split`` or on the site folder(s) at ``data``; with
    ``per_case`` given, one row per case (``site``, ``case`` id and its metrics) is appended to it.

    Each site of the run is scored with the model its method is judged by (its personalised
    model, or the global one), a site that never trained and every site at ``data`` with the
    method's unseen model, or all with ``client``'s personalised model; see
    :mod:`fedseg.runtime.trained`. Each row says which model (``model``), ``selection`` and
    ``selected_round``.
    """
    trained = open_run(run_dir, checkpoint)
    cfg, info = trained.cfg, trained.info
    if data is None:
        if split not in ("train", "val", "test"):
            raise EvalError(f"--split {split!r}; allowed: train, val, test")
        sites = build_federated_data(with_run_cache(cfg.data, run_dir), cfg.seed,
                                     mixed_shapes=cfg.train.patch_size is not None).sites
    else:
        sites, split = _sites_at(data, cfg, info), "test"
    rows = []
    for site in sites:
        scored = trained.load(site.name if data is None else None, client=client)
        cases = getattr(site, split)
        acc = MetricAccumulator(num_classes=int(info["num_classes"]))
        if len(cases):  # what engine.evaluate.evaluate computes, keeping each case's metrics
            pred = predict_labels(trained.model, cases.images, trained.device, cfg.eval.batch_size,
                                  sliding_window_for(cfg))
            scored_cases = acc.add(pred, cases.pixel_masks()[:, 0], cases.spacing)
            if per_case is not None:
                per_case.extend({Field.SITE.value: site.name, "case": str(cid), **m}
                                for cid, m in zip(cases.ids, scored_cases, strict=True))
        metrics = acc.summary() if len(cases) else {"n": 0}
        rows.append({Field.SITE.value: site.name, Field.MODEL.value: scored.kind,
                     Field.SELECTION.value: trained.selection, Field.SELECTED_ROUND.value: scored.selected_round,
                     **metrics})
    return rows


@dataclass
class Prediction:
    """What :func:`predict_file` wrote.

    Attributes:
        mask_path: the label map, on the input's grid (NIfTI: the input's affine and header).
        overlay_path: ``<output stem>_overlay.png`` for 2D inputs, else ``None``.
        shape: spatial shape of the input (and of the mask).
        spacing: mm per axis of the input file.
        voxels: voxel count per class present in the mask.
        model: which model segmented it (``personal`` with ``client``, else ``unseen``: the
            method's model for new data) and ``selected_round``, the round it comes from.
    """

    mask_path: Path
    overlay_path: Path | None
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    voxels: dict[int, int]
    model: str = ""
    selected_round: int = 0


_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_files(inputs: Sequence[Path], channels: int) -> list[Path]:
    """The files holding a case's ``channels`` input channels.

    Several paths are taken as given, in channel order. A single ``<case>_0000.nii.gz`` of a
    model with more channels brings its siblings ``<case>_0001.nii.gz`` ... from the same folder
    (the nnU-Net naming the datasets use).

    Raises:
        EvalError: no input, or a sibling channel file is missing.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise EvalError("predict: no input file given")
    if len(paths) > 1 or channels == 1:
        return paths
    match = _CHANNEL_SUFFIX.match(file_stem(paths[0]))
    if match is None or int(match["channel"]) != 0:
        return paths  # one multi-channel file (4-D NIfTI, RGB image): the reader checks the count
    suffix = file_suffix(paths[0])
    siblings = [paths[0].with_name(f"{match['case']}_{c:04d}{suffix}") for c in range(channels)]
    missing = [str(s) for s in siblings if not s.is_file()]
    if missing:
        raise EvalError(f"predict: the model takes {channels} channels but {', '.join(missing)} do(es) not exist; "
                        "pass every channel file of the case, in order")
    return siblings


def overlay_path_for(output: Path) -> Path:
    """``<output stem>_overlay.png`` next to ``output``."""
    return output.with_name(f"{file_stem(output)}_overlay.png")


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.4) -> None:
    """Save a PNG of ``image`` with each foreground class tinted and outlined in its own colour
    (:func:`overlay_rgb`; ``path``: the PNG to write)."""
    with atomic_open(path) as fh:
        Image.fromarray(overlay_rgb(image, labels, num_classes, alpha), mode="RGB").save(fh, format="PNG")


def overlay_rgb(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.4) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` with each foreground class tinted and outlined in its own colour.

    Args:
        image: ``(C, H, W)`` float intensities (C = 1 grey or 3 RGB; other counts show the first
            channel); min-max scaled for display.
        labels: ``(H, W)`` integer class indices.
        num_classes: classes including background (colour k = matplotlib ``tab10`` colour k-1).
        alpha: tint opacity inside each class; outlines are opaque.
    """
    rgb = image[:3] if image.shape[0] == 3 else np.repeat(image[:1], 3, axis=0)
    lo, hi = float(rgb.min()), float(rgb.max())
    base = np.moveaxis((rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb), 0, -1)
    palette = require("matplotlib", what="prediction overlays").colormaps["tab10"]
    out = base.copy()
    for k in range(1, num_classes):
        region = labels == k
        if not region.any():
            continue
        colour = np.asarray(palette((k - 1) % 10)[:3])
        out[region] = (1 - alpha) * out[region] + alpha * colour
        outline = region & ~ndimage.binary_erosion(region)
        out[outline] = colour
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def predict_file(
    run_dir: Path, inputs: Sequence[Path], output: Path, *, client: str | None = None, checkpoint: str | None = None
) -> Prediction:
    """Segment one case with a trained run's model and write the mask on the input's grid.

    The case is read with :func:`fedseg.io.read_image`, preprocessed exactly like the run's
    training data (:func:`fedseg.data.preprocess.preprocess_case` with the run's data spec),
    predicted whole (padded to a multiple of the model's downsampling) or by sliding window when
    the run trained on patches, put back on the file's grid with
    :func:`~fedseg.data.preprocess.restore_geometry` and written with
    :func:`fedseg.io.write_mask` (NIfTI: the input's affine and header). 2D inputs also get an
    overlay PNG (:func:`write_overlay`).

    Args:
        run_dir: a finished run directory.
        inputs: one image file (PNG/JPG/BMP or NIfTI) or the channel files of one case.
        output: mask path; ``.nii.gz``/``.nii`` or, for 2D, ``.png``/``.bmp``.
        client: use this client's personalised model; default: the method's model for a site
            that never trained (the global model for methods without local state).
        checkpoint: ``best`` or ``last``; default: the run's ``eval.select``.

    Returns:
        What was written (:class:`Prediction`).

    Raises:
        EvalError: bad run directory, client or inputs.
        DataError: unreadable input, wrong channel count or spatial rank, unwritable output format.
    """
    trained = open_run(run_dir, checkpoint)
    scored = trained.load(None, client=client)
    model, cfg, info = trained.model, trained.cfg, trained.info
    channels = int(info["in_channels"])
    volume = read_image(channel_files(inputs, channels), channels=channels)
    if volume.spatial_dims != int(info["spatial_dims"]):
        raise DataError(f"{volume.paths[0]}: a {volume.spatial_dims}D image, but the model of {run_dir} is "
                        f"{info['spatial_dims']}D")
    case = preprocess_case(volume, None, _folder_config(cfg, info))
    image = torch.from_numpy(case.image)
    window = sliding_window_for(cfg)
    device = next(model.parameters()).device
    if window is None:
        # whole image: pad at the end to a multiple of the total downsampling, crop the logits back
        pad = DivisiblePad(k=math.prod(cfg.model.strides), method="end")
        padded = torch.as_tensor(pad(image))
        logits = predict_logits(model, padded[None], device)[0]
        logits = logits[(slice(None), *(slice(0, n) for n in image.shape[1:]))]
    else:
        logits = predict_logits(model, image[None], device, window)[0]
    labels = restore_geometry(logits.argmax(0).cpu().numpy(), case.info)
    write_mask(output, labels, like=volume)
    overlay = None
    if volume.spatial_dims == 2:
        overlay = overlay_path_for(output)
        write_overlay(overlay, volume.array, labels, int(info["num_classes"]))
    values, counts = np.unique(labels, return_counts=True)
    logger.info("predicted %s -> %s (%s)", volume.paths[0], output, dict(zip(values.tolist(), counts.tolist())))
    return Prediction(
        mask_path=output,
        overlay_path=overlay,
        shape=volume.spatial_shape,
        spacing=tuple(float(s) for s in volume.spacing),
        voxels={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        model=scored.kind,
        selected_round=scored.selected_round,
    )
