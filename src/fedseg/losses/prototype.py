"""Pixel prototypes and the prototype alignment loss of FedBCS (and FPL, its single-level form).

FedBCS (Zhao et al., AAAI-26) follows FPL (Huang et al., CVPR'23): each client turns a feature
map into one mean feature per class (a *prototype*), the server clusters them (see
``fedseg.algorithms.finch``), and each client then pulls its foreground pixel features toward
its class's cluster prototypes (InfoNCE) and toward their mean (MSE). The constants and the
order of operations mirror the authors' code (*zxy1234321/FedBCS: fdmodels/fedbcs.py*,
``compute_L_MP`` and ``compute_L_contra``).

Shapes: features ``(B, C, *spatial)``; labels ``(B, *spatial_in)`` or ``(B, 1, *spatial_in)``
integer class ids, nearest-resized to the feature grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PrototypeAverage",
    "batch_prototypes",
    "labels_on_grid",
    "prototype_alignment_loss",
    "prototype_contrastive_loss",
]

# The authors add this to both sums of the InfoNCE ratio so that a fully saturated negative
# side (every positive exp underflows to 0) gives a large finite loss instead of inf.
_EPS = 1e-9


def labels_on_grid(labels: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Nearest-resize an integer label map to a feature grid.

    Args:
        labels: ``(B, *S)`` or ``(B, 1, *S)`` integer class ids.
        spatial: the target grid ``(h, w)`` or ``(d, h, w)``.

    Returns:
        ``(B, *spatial)`` int64 labels.

    Raises:
        ValueError: ``labels`` has neither ``len(spatial) + 1`` nor ``len(spatial) + 2`` dims.
    """
    if labels.ndim == len(spatial) + 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != len(spatial) + 1:
        raise ValueError(
            f"labels must be (B, *spatial) or (B, 1, *spatial) for a {len(spatial)}-D feature grid, "
            f"got shape {tuple(labels.shape)}"
        )
    if tuple(labels.shape[1:]) == tuple(spatial):
        return labels.long()
    resized = F.interpolate(labels[:, None].float(), size=spatial, mode="nearest")
    return resized[:, 0].long()


def _flatten(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, C, *sp)`` features and labels -> ``(N, C)`` pixel features and ``(N,)`` labels."""
    if features.ndim < 3:
        raise ValueError(f"features must be (B, C, *spatial), got shape {tuple(features.shape)}")
    grid = labels_on_grid(labels, tuple(features.shape[2:]))
    if grid.shape[0] != features.shape[0]:
        raise ValueError(f"features have batch {features.shape[0]} but labels have batch {grid.shape[0]}")
    flat = features.movedim(1, -1).reshape(-1, features.shape[1])
    return flat, grid.reshape(-1)


def batch_prototypes(features: Tensor, labels: Tensor) -> dict[int, Tensor]:
    """Mean feature of each class present in the batch, background included, without gradient.

    Args:
        features: ``(B, C, *spatial)`` float feature map.
        labels: ``(B, *S)`` or ``(B, 1, *S)`` integer class ids, nearest-resized to ``spatial``.

    Returns:
        ``{class: (C,)}`` detached means over that class's pixels (all images of the batch
        pooled), classes in increasing order.
    """
    with torch.no_grad():
        flat, lab = _flatten(features, labels)
        return {int(c): flat[lab == c].mean(dim=0) for c in torch.unique(lab)}


class PrototypeAverage:
    """Running average of batch prototypes, per class, over the batches that contain the class.

    The authors average the per-batch class means with equal weight per batch (not per pixel)
    over the batches of the last local epoch; this reproduces that without keeping the list.

    Example:
        >>> avg = PrototypeAverage()
        >>> avg.update(batch_prototypes(features, labels))  # once per batch
        >>> protos = avg.result()  # {class: (C,)}
    """

    def __init__(self) -> None:
        self._sums: dict[int, Tensor] = {}
        self._counts: dict[int, int] = {}

    def update(self, prototypes: Mapping[int, Tensor]) -> None:
        """Add one batch's ``{class: (C,)}`` prototypes.

        Raises:
            ValueError: a prototype's shape differs from earlier ones of the same class.
        """
        for cls, proto in prototypes.items():
            proto = proto.detach()
            if cls in self._sums:
                if self._sums[cls].shape != proto.shape:
                    raise ValueError(
                        f"class {cls}: prototype shape {tuple(proto.shape)} differs from the earlier "
                        f"{tuple(self._sums[cls].shape)}"
                    )
                self._sums[cls] = self._sums[cls] + proto
                self._counts[cls] += 1
            else:
                self._sums[cls] = proto.clone()
                self._counts[cls] = 1

    def result(self) -> dict[int, Tensor]:
        """``{class: (C,)}`` mean of the batch prototypes seen so far (empty before any update)."""
        return {cls: self._sums[cls] / self._counts[cls] for cls in sorted(self._sums)}


def prototype_contrastive_loss(
    features: Tensor,
    positives: Tensor,
    negatives: Tensor,
    tau: float = 0.005,
    logit_clamp: float = 20.0,
    exp_clamp: float = 1e6,
) -> Tensor:
    """InfoNCE of pixel features against positive and negative prototypes, as FedBCS computes it.

    ``-log( sum_pos exp(s) / sum_all exp(s) )`` with ``s = min(cos(f, p) / tau, logit_clamp)``
    and each ``exp`` clamped at ``exp_clamp``, averaged over pixels. With the defaults every
    cosine above ``log(1e6) * 0.005 ~ 0.07`` saturates; that is the authors' setting (spec 2(g)).

    Args:
        features: ``(N, C)`` float pixel features, ``N >= 1``.
        positives: ``(P, C)`` prototypes of the pixels' class, ``P >= 1``.
        negatives: ``(Q, C)`` prototypes of the other classes, ``Q >= 0``.
        tau: temperature, > 0.
        logit_clamp: upper clamp of ``cos / tau``.
        exp_clamp: upper clamp of each exponential.

    Returns:
        Scalar loss, >= 0 up to the ``1e-9`` guard; differentiable in ``features``.

    Raises:
        ValueError: ``tau <= 0``, no positives, or mismatched feature widths.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if positives.shape[0] == 0:
        raise ValueError("prototype_contrastive_loss needs at least one positive prototype")
    protos = torch.cat([positives, negatives.reshape(-1, positives.shape[-1])], dim=0)
    if features.shape[-1] != protos.shape[-1]:
        raise ValueError(f"features have width {features.shape[-1]} but prototypes have {protos.shape[-1]}")
    protos = protos.to(device=features.device, dtype=features.dtype)
    logits = torch.cosine_similarity(features[:, None, :], protos[None, :, :], dim=2) / tau
    exp = torch.exp(logits.clamp(max=logit_clamp)).clamp(max=exp_clamp)
    positive = exp[:, : positives.shape[0]].sum(dim=1) + _EPS
    total = exp.sum(dim=1) + _EPS
    return -torch.log(positive / total).mean()


def prototype_alignment_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Mapping[int, Tensor],
    tau: float = 0.005,
    logit_clamp: float = 20.0,
    exp_clamp: float = 1e6,
    num_pixels: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FedBCS's per-level loss ``L_MP``: mean over foreground classes of InfoNCE + MSE.

    Over the foreground pixels (label != 0) of ``features``, for each class ``c`` present:
    ``L_contra`` (:func:`prototype_contrastive_loss` with ``P_c = prototypes[c]`` as positives
    and every other class's prototypes, background included, as negatives) plus
    ``L_consis = MSE(f, mean(P_c))`` (mean over pixels and channels). The sum is divided by the
    number of foreground classes present, counting those without prototypes, which add 0 (as
    the authors' code does).

    Args:
        features: ``(B, C, *spatial)`` float feature map.
        labels: ``(B, *S)`` or ``(B, 1, *S)`` integer class ids, nearest-resized to ``spatial``.
        prototypes: ``{class: (K_c, C)}`` cluster prototypes from the server (detached here).
        tau: temperature of the contrastive term, > 0.
        logit_clamp: upper clamp of ``cos / tau``.
        exp_clamp: upper clamp of each exponential.
        num_pixels: if set, use a uniform random subset of this many foreground pixels (all of
            them when fewer): bounds memory for full-resolution feature maps.
        generator: random source for the subset (seed it for reproducible runs).

    Returns:
        Scalar loss; an exact 0 still attached to ``features``' graph when there is no
        foreground pixel or no prototype.

    Raises:
        ValueError: bad shapes, ``tau <= 0`` or ``num_pixels < 1``.
    """
    if num_pixels is not None and num_pixels < 1:
        raise ValueError(f"num_pixels must be >= 1 or None (all pixels), got {num_pixels}")
    flat, lab = _flatten(features, labels)
    fg = torch.nonzero(lab != 0).flatten()
    if num_pixels is not None and fg.numel() > num_pixels:
        pick = torch.randperm(fg.numel(), generator=generator)[:num_pixels]
        fg = fg[pick.to(fg.device)]
    zero = features.sum() * 0.0
    if fg.numel() == 0 or not prototypes:
        return zero
    flat, lab = flat[fg], lab[fg]
    bank = {int(c): p.detach().reshape(-1, flat.shape[1]) for c, p in prototypes.items()}
    classes = torch.unique(lab)
    total = zero
    for c in classes.tolist():
        if c not in bank or bank[c].shape[0] == 0:
            continue
        pixels = flat[lab == c]
        positives = bank[c].to(device=flat.device, dtype=flat.dtype)
        negatives = [p.to(device=flat.device, dtype=flat.dtype) for k, p in bank.items() if k != c]
        contra = prototype_contrastive_loss(
            pixels,
            positives,
            torch.cat(negatives) if negatives else positives[:0],
            tau=tau,
            logit_clamp=logit_clamp,
            exp_clamp=exp_clamp,
        )
        consis = F.mse_loss(pixels, positives.mean(dim=0, keepdim=True).expand_as(pixels))
        total = total + contra + consis
    mean: Tensor = total / classes.numel()
    return mean
