"""Named auxiliary outputs of a model: intermediate tensors (features at chosen layers, router
logits) captured during a forward pass, so that losses can use them.

An output is named by the **exact** ``named_modules`` path of the module that produces it (never a
substring). A model may offer default names for its useful outputs with a class attribute
``aux_outputs: Mapping[str, str]`` (name -> module path); :func:`offered_outputs` reads it. To
expose a tensor that is not the output of a module, pass it through an ``nn.Identity`` attribute
(a "tap") inside ``forward``. The engine's trainer registers the forward hooks itself around each
training forward pass and removes them afterwards (:func:`capture_outputs`), so no algorithm
installs or removes hooks by hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedseg.registry import suggest

__all__ = ["AUX_OUTPUTS_ATTR", "AuxOutputError", "capture_outputs", "check_captured", "offered_outputs"]

AUX_OUTPUTS_ATTR = "aux_outputs"
"""The optional model attribute naming its auxiliary outputs: ``{name: module path}``."""


class AuxOutputError(RuntimeError):
    """An auxiliary output names no module, is not a tensor, or was not computed exactly once."""


def offered_outputs(model: nn.Module, names: list[str] | None = None) -> dict[str, str]:
    """The auxiliary outputs ``model`` offers (its ``aux_outputs`` attribute), or those of ``names``.

    Raises:
        AuxOutputError: a name in ``names`` is not offered by the model (the message lists those
            that are).
    """
    offered = dict(getattr(model, AUX_OUTPUTS_ATTR, None) or {})
    if names is None:
        return offered
    missing = [n for n in names if n not in offered]
    if missing:
        raise AuxOutputError(
            f"{type(model).__name__} offers no auxiliary output {', '.join(map(repr, missing))}; it offers: "
            f"{', '.join(sorted(offered)) or 'none'} (attribute {AUX_OUTPUTS_ATTR!r}).{suggest(missing[0], list(offered))}"
        )
    return {n: offered[n] for n in names}


@contextmanager
def capture_outputs(model: nn.Module, outputs: Mapping[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on the modules of ``outputs`` for the duration of the ``with`` block.

    The yielded dict is filled by every forward pass with ``{name: module output}`` (with its
    autograd graph, so losses on it train the layers below). The caller clears it between passes;
    a module that runs twice in one pass (a reused module) is an error, since which call is meant
    would be ambiguous. Every hook is removed when the block exits, also on an exception.

    Args:
        outputs: ``{name: exact named_modules path}``.

    Raises:
        AuxOutputError: a path names no module, or a module's output is not a tensor.
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, path in outputs.items():
            module = modules.get(path)
            if module is None:
                raise AuxOutputError(
                    f"auxiliary output {name!r}: the model has no module {path!r} (give an exact named_modules "
                    f"path).{suggest(path, list(modules))}"
                )

            def hook(_m: nn.Module, _inputs: Any, output: Any, name: str = name, path: str = path) -> None:
                if not isinstance(output, torch.Tensor):
                    raise AuxOutputError(
                        f"auxiliary output {name!r}: module {path!r} returned a {type(output).__name__}, not a "
                        "tensor; tap the tensor you need with an nn.Identity module"
                    )
                if name in captured:
                    raise AuxOutputError(
                        f"auxiliary output {name!r}: module {path!r} ran more than once in one forward pass; tap a "
                        "module that runs once"
                    )
                captured[name] = output

            handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def check_captured(captured: Mapping[str, torch.Tensor], outputs: Mapping[str, str]) -> None:
    """Raise :class:`AuxOutputError` if a forward pass did not compute every output of ``outputs``."""
    missing = [n for n in outputs if n not in captured]
    if missing:
        raise AuxOutputError(
            f"auxiliary output(s) {', '.join(map(repr, missing))} (module(s) "
            f"{', '.join(repr(outputs[n]) for n in missing)}) were not computed by the forward pass"
        )
