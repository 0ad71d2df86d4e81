"""Helpers over parameter dicts: selecting state-dict keys by module, and the weighted average."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedseg.registry import suggest
from fedseg.types import Params

__all__ = ["norm_layer_keys", "module_keys", "shared_params", "ordered_keys", "weighted_average"]


def norm_layer_keys(model: nn.Module) -> set[str]:
    """State-dict keys (affine parameters and running statistics) of every normalisation layer,
    selected by module type, never by name."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    keys: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, norm_types):
            prefix = f"{mod_name}." if mod_name else ""
            keys.update(prefix + k for k in module.state_dict(keep_vars=True))
    return keys


def module_keys(model: nn.Module, module_names: Sequence[str]) -> set[str]:
    """State-dict keys of the named submodules (exact ``named_modules`` names, not substrings)."""
    modules = dict(model.named_modules())
    keys: set[str] = set()
    for name in module_names:
        if name not in modules:
            raise KeyError(
                f"module {name!r} not found in the model; modules with parameters include "
                f"{', '.join(n for n, m in list(modules.items())[-6:] if n)}.{suggest(name, list(modules))}"
            )
        prefix = f"{name}." if name else ""
        keys.update(prefix + k for k in modules[name].state_dict(keep_vars=True))
    return keys


def shared_params(model: nn.Module, local: set[str]) -> Params:
    """CPU copies of every state-dict entry that is not local."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in local}


def ordered_keys(updates: Sequence[Params]) -> list[str]:
    """Every key of the updates, once, in first-seen order."""
    return list(dict.fromkeys(k for p in updates for k in p))


def weighted_average(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """``sum_k w_k * params_k / sum_k w_k``, key by key, accumulated in float64.

    Floating tensors are averaged; integer buffers (e.g. ``num_batches_tracked``) take the
    maximum. Callers sort updates by client id first so that the result is bit-identical for any
    arrival order. Keys missing from some updates are averaged over the updates that have them.
    """
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    out: Params = {}
    for key in ordered_keys(updates):
        items = [(p[key], float(w)) for p, w in zip(updates, weights, strict=True) if key in p]
        first = items[0][0]
        if first.is_floating_point():
            total = sum(w for _, w in items)
            if total <= 0:
                raise ValueError(f"aggregation weights for {key!r} sum to {total}; they must be positive")
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for tensor, w in items:
                acc += tensor.to(torch.float64) * (w / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = torch.stack([t for t, _ in items]).amax(dim=0)
    return out
