"""FedOAP's perturbed boundary loss (PBL; methods.md section 3(c) and the FedOAP decisions of section 7).

Soft boundaries are morphological gradients, ``dB(p) = maxpool_k(p) - (-maxpool_k(-p))`` (dilation
minus erosion with a ``k``-wide cube, stride 1), of the foreground probability ``p`` and of the
binary target ``y``. Then::

    L = 1 - Dice(dB(p), dB(y')) + BCE(p, y') averaged over the band {dB(y') > 0}

with ``y'`` the target shifted by ``offsets`` (zero fill at the border). Dice is per sample,
``(2 sum ab + eps) / (sum a + sum b + eps)``, then averaged. [A5] The perturbation draws, every
iteration, one band width ``k`` from ``widths`` (default {3, 5, 7}) and one shift per spatial axis
from ``{-max_shift, ..., +max_shift}`` (the whole target boundary moves together; 0 is a possible
draw); the band of the BCE is the target's morphological gradient of that width. The
foreground of a multi-class output is every non-background class, ``p = 1 - softmax(logits)_0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["soft_boundary", "shift", "boundary_loss", "PerturbedBoundaryLoss", "DEFAULT_WIDTHS"]

DEFAULT_WIDTHS = (3, 5, 7)
"""Band widths k the perturbation draws from."""

EPS = 1e-6
"""Smoothing of the boundary Dice (an empty boundary on both sides gives Dice 1)."""


def soft_boundary(p: torch.Tensor, width: int) -> torch.Tensor:
    """Morphological gradient of ``p`` (B, 1, *spatial) with a ``width``-wide cube (odd): same shape."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"boundary band width must be an odd integer >= 1, got {width}")
    pool = F.max_pool2d if p.ndim == 4 else F.max_pool3d
    dilated = pool(p, kernel_size=width, stride=1, padding=width // 2)
    eroded = -pool(-p, kernel_size=width, stride=1, padding=width // 2)
    return dilated - eroded


def shift(t: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """``t`` (B, C, *spatial) translated by ``offsets`` voxels per spatial axis, zero-filled."""
    out = t
    for axis, off in enumerate(offsets, start=2):
        if off == 0:
            continue
        n = t.shape[axis]
        off = max(-n, min(n, int(off)))
        zeros = torch.zeros_like(out.narrow(axis, 0, abs(off)))
        kept = out.narrow(axis, 0, n - off) if off > 0 else out.narrow(axis, -off, n + off)
        out = torch.cat((zeros, kept) if off > 0 else (kept, zeros), dim=axis)
    return out


def boundary_loss(prob: torch.Tensor, target: torch.Tensor, width: int,
                  offsets: Sequence[int] | None = None) -> torch.Tensor:
    """``1 - Dice(dB(p), dB(y')) + BCE(p, y')`` over the band (see the module docstring).

    Args:
        prob: ``(B, 1, *spatial)`` foreground probabilities in [0, 1].
        target: ``(B, 1, *spatial)`` binary target (any dtype; > 0 is foreground).
        width: odd band width k.
        offsets: the target's shift per spatial axis (None: none).

    Returns:
        A scalar, differentiable in ``prob``; exactly 0 when ``prob`` equals an unshifted binary target.
    """
    y = (target > 0).to(prob.dtype)
    if offsets is not None:
        y = shift(y, offsets)
    bp, by = soft_boundary(prob, width), soft_boundary(y, width)
    axes = tuple(range(1, prob.ndim))
    dice = (2 * (bp * by).sum(axes) + EPS) / (bp.sum(axes) + by.sum(axes) + EPS)
    band = (by > 0).to(prob.dtype)
    bce = F.binary_cross_entropy(prob, y, reduction="none")
    return (1 - dice).mean() + (bce * band).sum() / band.sum().clamp_min(1.0)


class PerturbedBoundaryLoss:
    """PBL on logits with a fresh perturbation per call.

    Args:
        widths: band widths to draw from (odd); one entry and ``max_shift=0`` turn the
            perturbation off.
        max_shift: largest shift of the target per axis, in voxels.

    Raises:
        ValueError: an empty or even width, or a negative shift.
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, max_shift: int = 1) -> None:
        if not widths or any(w < 1 or w % 2 == 0 for w in widths):
            raise ValueError(f"PBL band widths must be odd integers >= 1, got {list(widths)}")
        if max_shift < 0:
            raise ValueError(f"PBL max_shift must be >= 0, got {max_shift}")
        self.widths = tuple(int(w) for w in widths)
        self.max_shift = int(max_shift)

    def draw(self, dims: int, generator: torch.Generator | None = None) -> tuple[int, list[int]]:
        """One perturbation: a band width and a shift per spatial axis (CPU generator)."""
        width = self.widths[int(torch.randint(len(self.widths), (1,), generator=generator))]
        offsets = torch.randint(-self.max_shift, self.max_shift + 1, (dims,), generator=generator).tolist()
        return width, [int(o) for o in offsets]

    def __call__(self, logits: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """PBL of ``logits`` (B, C, *spatial) against ``mask`` (B, 1, *spatial) class ids."""
        prob = 1.0 - torch.softmax(logits, dim=1)[:, :1]
        width, offsets = self.draw(logits.ndim - 2, generator)
        return boundary_loss(prob, mask, width, offsets)
