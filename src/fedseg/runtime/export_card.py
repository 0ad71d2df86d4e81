"""The model card written beside an exported model: JSON for machines, markdown for people.

It says what the model was trained on (data source, sites), how well it did (the run's test
metrics from ``summary.json`` for the exported model kind), how an input must be prepared
(``data.preprocess`` of ``config.yaml``, channels, classes, the size divisor or sliding window),
what it is for, and which versions and checkpoint (SHA-256) produced it.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import monai
import torch

import fedseg
from fedseg.runtime.trained import TrainedRun

__all__ = ["model_card", "card_markdown", "INTENDED_USE"]

INTENDED_USE = (
    "Research use: segmentation of images like the training sites' (same modality, channels and preprocessing). "
    "Not a medical device; not validated for clinical decisions. Check the per-site test metrics below and "
    "validate on your own data before any use; performance on other scanners or populations is unknown."
)


def _metrics(root: Path, kind: str, client: str | None) -> dict[str, Any]:
    """Test metrics of the exported model kind from ``summary.json`` (per site, and the mean)."""
    path = root / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    per_kind = summary.get("test", {})
    # the new-data model is the global one for methods without local state; an unseen model is
    # scored only on sites that never trained
    for key in ([kind] if kind != "unseen" else ["unseen", "global"]):
        if key in per_kind:
            sites = per_kind[key]
            if client is not None and client in sites:
                sites = {client: sites[client]}
            return {"model": key, "per_site": sites, "mean": summary.get("mean", {}).get(key, {})}
    return {}


def model_card(
    trained: TrainedRun, *, fmt: str, model_file: str, model_sha256: str, checkpoint: Path, checkpoint_sha256: str,
    kind: str, selected_round: int, client: str | None, example_shape: list[int],
) -> dict[str, Any]:
    """The card's content (JSON-serialisable); see the module docstring."""
    cfg, info = trained.cfg, trained.info
    dims = int(info["spatial_dims"])
    sw = cfg.eval.sliding_window
    window = sw.roi_size if sw.roi_size is not None else cfg.train.patch_size
    data: dict[str, Any] = {"source": cfg.data.source,
                            "sites": [str(s) for s in info.get("sites", info["clients"])],
                            "trained_on": trained.trained_sites()}
    if cfg.data.source == "folder":
        data["root"] = str(cfg.data.root)
    return {
        "name": f"{cfg.name}_{info['algorithm']}",
        "format": fmt,
        "file": model_file,
        "sha256": model_sha256,
        "algorithm": info["algorithm"],
        "model_kind": kind,
        "client": client,
        "selection": trained.selection,
        "selected_round": selected_round,
        "checkpoint": {"path": str(checkpoint), "sha256": checkpoint_sha256},
        "architecture": cfg.model.model_dump(mode="json"),
        "input": {
            "spatial_dims": dims,
            "channels": int(info["in_channels"]),
            "dtype": "float32",
            "layout": "(batch, channels, *spatial)",
            "size_divisor": cfg.model.size_divisors(dims),
            "sliding_window": list(window) if window is not None else None,
            "example_shape": example_shape,
        },
        "output": {"classes": int(info["num_classes"]), "layout": "(batch, classes, *spatial) logits; argmax = label"},
        "preprocessing": cfg.data.preprocess.model_dump(mode="json"),
        "data": data,
        "metrics": _metrics(trained.root, kind, client),
        "intended_use": INTENDED_USE,
        "versions": {"fedseg": fedseg.__version__, "torch": torch.__version__, "monai": monai.__version__,
                     "python": platform.python_version()},
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return "–" if value is None else str(value)


def card_markdown(card: dict[str, Any]) -> str:
    """The card as markdown (``MODEL_CARD.md``)."""
    inp, out = card["input"], card["output"]
    who = f"client {card['client']}'s personalised model" if card["client"] else f"{card['model_kind']} model"
    lines = [f"# Model card: {card['name']}", "",
             f"{card['algorithm']}, {who}, {card['selection']} checkpoint (round {card['selected_round']}), "
             f"exported as {card['format']}: `{card['file']}` (sha256 `{card['sha256']}`).", "",
             "## Intended use", "", card["intended_use"], "",
             "## Input and output", "",
             f"- input: {inp['layout']}, {inp['dtype']}, {inp['channels']} channel(s), {inp['spatial_dims']}D; every "
             f"spatial size a multiple of {inp['size_divisor']}"
             + (f"; trained on {inp['sliding_window']} patches (use a sliding window)" if inp["sliding_window"] else ""),
             f"- output: {out['layout']}, {out['classes']} classes (0 = background)",
             f"- preprocessing (apply before the model): `{json.dumps(card['preprocessing'], sort_keys=True)}`", "",
             "## Data", "",
             f"- source: {card['data']['source']}" + (f" ({card['data']['root']})" if "root" in card["data"] else ""),
             f"- sites: {', '.join(card['data']['sites'])}; trained on: {', '.join(card['data']['trained_on'])}", ""]
    metrics = card["metrics"]
    lines += ["## Test metrics (from summary.json)", ""]
    if metrics:
        lines += ["| site | n | Dice | HD95 (mm) |", "|---|---:|---:|---:|"]
        for site, m in metrics["per_site"].items():
            lines.append(f"| {site} | {_fmt(m.get('n'))} | {_fmt(m.get('dice'))} | {_fmt(m.get('hd95'))} |")
        lines += ["", f"Scored as the run's `{metrics['model']}` model."]
    else:
        lines.append("No test metrics recorded for this model (no summary.json, or the kind was not scored).")
    versions = card["versions"]
    lines += ["", "## Provenance", "",
              f"- checkpoint: `{card['checkpoint']['path']}` (sha256 `{card['checkpoint']['sha256']}`)",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
              f"- architecture: `{json.dumps(card['architecture'], sort_keys=True)}`", ""]
    return "\n".join(lines)
