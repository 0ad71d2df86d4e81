"""``fedseg export``: a trained run's model as a stand-alone file, with a model card beside it.

The exported network is the one ``fedseg predict`` runs (:mod:`fedseg.runtime.trained`): the
selected checkpoint, sent through the run's broadcast and prepared by the algorithm, either the
method's model for new data (the global model for methods without local state) or ``--client``'s
personalised model. It maps a preprocessed ``(B, C, *spatial)`` float32 image to ``(B, K,
*spatial)`` logits; the preprocessing (resampling, normalisation) and the spatial-size divisor are
in the model card (:mod:`fedseg.runtime.export_card`).

Formats (each needs the ``[export]`` extra, imported only when used):

* ``safetensors``: the state dict (rebuild the network with fedseg and the card's ``model``);
* ``torchscript``: a traced module (``torch.jit.load``), via MONAI's ``convert_to_torchscript``;
* ``onnx``: opset 17 with dynamic batch and spatial axes (onnxruntime), via torch's
  TorchScript-based exporter (``dynamo=False``, so no ``onnxscript`` is needed).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedseg.io.atomic import atomic_write_text
from fedseg.runtime.export_card import card_markdown, model_card
from fedseg.runtime.trained import EvalError, TrainedRun, open_run

__all__ = ["FORMATS", "SUFFIXES", "Exported", "ExportError", "export_run", "example_input", "file_sha256",
           "require_extra"]

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "torchscript", "onnx")
"""Values of ``--format``."""

SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".ts", "onnx": ".onnx"}
"""File suffix of each format (``model<suffix>``)."""

_NEEDS = {"safetensors": ("safetensors",), "torchscript": (), "onnx": ("onnx", "onnxruntime")}


class ExportError(EvalError):
    """The run, the requested model or the format cannot be exported (the message says why)."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote: the model file, the card (JSON and markdown) and the card's content."""

    model_path: Path
    card_json: Path
    card_md: Path
    card: dict[str, Any]


def require_extra(module: str, extra: str = "export") -> Any:
    """Import an optional dependency, or fail naming the extra that installs it.

    Raises:
        ExportError: ``module`` is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: it comes with fedseg's [{extra}] extra "
                          f"(pip install 'fedseg[{extra}]')") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def example_input(trained: TrainedRun) -> torch.Tensor:
    """A ``(1, C, *spatial)`` input of the size the model saw in the run: the sliding-window
    size, else the data's target shape (synthetic: the generator's size), else 4 times the
    model's size divisor per axis; zero-mean noise from a fixed generator."""
    cfg, info = trained.cfg, trained.info
    dims = int(info["spatial_dims"])
    sw = cfg.eval.sliding_window
    shape = sw.roi_size if sw.roi_size is not None else cfg.train.patch_size
    if shape is None:
        shape = [cfg.data.synthetic.size] * dims if cfg.data.source == "synthetic" else cfg.data.target_shape()
    if shape is None:
        shape = [4 * d for d in cfg.model.size_divisors(dims)]
    gen = torch.Generator().manual_seed(0)
    return torch.randn((1, int(info["in_channels"]), *shape), generator=gen)


class _Logits(nn.Module):
    """The network with a plain tensor output (a deep-supervision model's first head; eval mode)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        first: torch.Tensor = out[0] if isinstance(out, (list, tuple)) else out
        return first


def _write_model(model: nn.Module, fmt: str, path: Path, example: torch.Tensor) -> None:
    for module in _NEEDS[fmt]:
        require_extra(module)
    model = model.cpu().eval()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
        return
    from monai.networks.utils import convert_to_torchscript

    wrapped = _Logits(model).eval()
    if fmt == "torchscript":
        convert_to_torchscript(wrapped, str(path), use_trace=True, inputs=[example])
        return
    axes = {0: "batch", **{2 + i: f"spatial{i}" for i in range(example.dim() - 2)}}
    # torch's TorchScript-based exporter: MONAI's convert_to_onnx takes torch's default (dynamo)
    # path in torch 2.13, which needs onnxscript
    torch.onnx.export(wrapped, (example,), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamic_axes={"image": axes, "logits": axes}, dynamo=False)


def export_run(
    run_dir: Path, fmt: str, *, out: Path | None = None, client: str | None = None, selection: str | None = None,
) -> Exported:
    """Export a finished run's model to ``out/model<suffix>`` with ``model_card.json`` and
    ``MODEL_CARD.md`` beside it.

    Args:
        run_dir: a finished run directory.
        fmt: one of :data:`FORMATS`.
        out: output folder; default ``RUN_DIR/export/<client or "new-site">_<selection>``.
        client: export this client's personalised model; default the model ``fedseg predict``
            uses on new data (the global model for methods without local state).
        selection: ``best`` or ``last``; default the run's ``eval.select``.

    Raises:
        ExportError: unknown format, missing extra, or a model the run does not hold.
        EvalError: not a finished run, unknown client or checkpoint.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}; allowed: {', '.join(FORMATS)}")
    for module in _NEEDS[fmt]:
        require_extra(module)
    trained = open_run(run_dir, selection)
    scored = trained.load(None, client=client)
    out = out or run_dir / "export" / f"{client or 'new-site'}_{trained.selection}"
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"model{SUFFIXES[fmt]}"
    example = example_input(trained)
    _write_model(trained.model, fmt, model_path, example)
    ckpt = run_dir / "checkpoints" / ("best.pt" if trained.selection == "best_val" and
                                      (run_dir / "checkpoints" / "best.pt").is_file() else "last.pt")
    card = model_card(trained, fmt=fmt, model_file=model_path.name, model_sha256=file_sha256(model_path),
                      checkpoint=ckpt, checkpoint_sha256=file_sha256(ckpt), kind=scored.kind,
                      selected_round=scored.selected_round, client=client, example_shape=list(example.shape))
    card_json, card_md = out / "model_card.json", out / "MODEL_CARD.md"
    atomic_write_text(card_json, json.dumps(card, indent=2, sort_keys=True) + "\n")
    atomic_write_text(card_md, card_markdown(card))
    logger.info("exported %s (%s) to %s", run_dir, fmt, model_path)
    return Exported(model_path, card_json, card_md, card)
