"""FedOAP's U-Net: a plain U-Net with decoupled cross-attention (DCA) and a spatial adapter at the
bottleneck, registered as ``fedoap_unet`` (2D and 3D).

FedOAP (Tashdeed et al., arXiv 2511.18847) has no public code; methods.md section 3 and the FedOAP
decisions of section 7 fix what is assumed here (labels A1-A6 as in ``docs/algorithms.md``).
With ``features = [c_1, ..., c_n, d]`` (default ``[32, 64, 128, 256]``)::

    enc_1 = Block(C_in -> c_1)(x);  enc_i = Block(c_{i-1} -> c_i)(MaxPool2(enc_{i-1}))
    b     = Block(c_n -> d)(MaxPool2(enc_n))                         (B, d, *S), n_tok = prod(S)
    z     = Adapter(DCA(b))                                          (same shape)
    dec_n = Block(2 c_n -> c_n)([ConvT2(z) ; enc_n]); ... dec_1
    logits = Conv1x1(dec_1)                                           "head"

``Block`` is conv3x3 (no bias) -> BatchNorm (affine, running statistics) -> ReLU, twice.

**DCA** (:class:`DecoupledCrossAttention`; [A1] pre-norm, no positional embedding): tokens
``X = flatten(b)`` (B, n_tok, d), ``H = LayerNorm(X)``, ``Q = H W_Q`` (the client's own
projection), ``K = [H W_K ; K_bank]``, ``V = [H W_V ; V_bank]`` (live tokens first, so W_K and
W_V receive gradient; the bank is whatever :meth:`FedOAPUNet.set_bank` last set, none by
default), multi-head attention with ``heads`` heads of width ``d / heads`` and scale
``1/sqrt(d / heads)``, then ``Z = X + W_O(attention)``. Without a bank this is standard
pre-norm self-attention (``torch.nn.MultiheadAttention`` with the same weights).

**Bank** (:meth:`FedOAPUNet.bank`): ``H`` pooled by adaptive average pooling to ``m`` tokens
(a grid of ``m^(1/dims)`` per axis; m = 64 is 8x8 in 2D, 4x4x4 in 3D) and projected by W_K and
W_V: the per-sample ``(B, m, d)`` keys and values a client averages into its bank. Projection
and pooling commute (both linear), so this equals pooling ``H W_K``.

**Adapter** (:class:`SpatialAdapter`): ``A(Z) = Z + Conv1x1(DWConv3x3(Z))``, the 1x1 conv
zero-initialised (weight and bias), so ``A`` is the identity at init.

The parts an algorithm keeps local are named by module (:attr:`FedOAPUNet.head_module_names`,
:attr:`~FedOAPUNet.query_module_names`, :attr:`~FedOAPUNet.adapter_module_names`,
:attr:`~FedOAPUNet.attention_module_names`), never by substring.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.models.registry import MODELS

__all__ = ["DecoupledCrossAttention", "SpatialAdapter", "FedOAPUNet", "build_fedoap_unet", "attend", "token_grid"]

DEFAULT_HEADS = 8
"""Attention heads of the DCA block (the paper's 8)."""

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention, heads split from the channel axis.

    Args:
        q: ``(B, n_q, d)``.
        k, v: ``(B, n_k, d)``.
        heads: divides ``d``.

    Returns:
        ``(B, n_q, d)``: ``concat_h softmax(q_h k_h^T / sqrt(d / heads)) v_h``.
    """
    b, n_q, d = q.shape
    dh = d // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, dh).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(dh)
    out = torch.softmax(scores, dim=-1) @ split(v)
    return out.transpose(1, 2).reshape(b, n_q, d)


def token_grid(tokens: int, dims: int) -> tuple[int, ...]:
    """The pooling grid of ``tokens`` bank tokens in ``dims`` spatial dimensions (``g`` per axis).

    Raises:
        ValueError: ``tokens`` is not a ``dims``-th power of an integer >= 1.
    """
    side = round(tokens ** (1.0 / dims)) if tokens >= 1 else 0
    if side < 1 or side**dims != tokens:
        raise ValueError(f"bank_tokens must be a perfect {'square' if dims == 2 else 'cube'} in {dims}D "
                         f"(e.g. 64), got {tokens}")
    return (side,) * dims


class DecoupledCrossAttention(nn.Module):
    """DCA at the bottleneck: local ``q_proj`` (W_Q); shared ``k_proj``, ``v_proj``, ``out_proj``,
    ``norm`` (see the module docstring). The key/value bank is a plain attribute, not state: it
    is never in the state dict, so never aggregated, checkpointed with the weights, or sent.

    Args:
        dim: token width d (the bottleneck channels).
        heads: attention heads (divides ``dim``).
    """

    def __init__(self, dim: int, heads: int = DEFAULT_HEADS) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dca_heads {heads} must divide the bottleneck width {dim} (model.features[-1])")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.bank_key: torch.Tensor | None = None
        self.bank_value: torch.Tensor | None = None

    def set_bank(self, key: torch.Tensor | None, value: torch.Tensor | None) -> None:
        """Attend to ``(M, d)`` extra keys/values besides the live tokens (None: none)."""
        if (key is None) != (value is None) or (key is not None and value is not None and key.shape != value.shape):
            raise ValueError("the key and value banks must both be given, with the same (M, d) shape")
        if key is not None and (key.ndim != 2 or key.shape[1] != self.q_proj.in_features):
            raise ValueError(f"a key/value bank is (M, {self.q_proj.in_features}), got {tuple(key.shape)}")
        self.bank_key, self.bank_value = key, value

    @staticmethod
    def tokens(x: torch.Tensor) -> torch.Tensor:
        """``(B, d, *S)`` -> ``(B, prod(S), d)``."""
        return x.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``X + W_O(MHA(Q, [K; K_bank], [V; V_bank]))`` on the tokens of ``x`` (B, d, *S); same shape out."""
        t = self.tokens(x)
        h = self.norm(t)
        k, v = self.k_proj(h), self.v_proj(h)
        if self.bank_key is not None and self.bank_value is not None:
            b = t.shape[0]
            k = torch.cat((k, self.bank_key.to(k).expand(b, -1, -1)), dim=1)
            v = torch.cat((v, self.bank_value.to(v).expand(b, -1, -1)), dim=1)
        z: torch.Tensor = t + self.out_proj(attend(self.q_proj(h), k, v, self.heads))
        return z.transpose(1, 2).reshape(x.shape)

    def bank(self, x: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample pooled keys and values of ``x`` (B, d, *S): two ``(B, m, d)`` tensors."""
        dims = x.ndim - 2
        h = self.norm(self.tokens(x)).transpose(1, 2).reshape(x.shape)
        grid = token_grid(tokens, dims)
        pooled = self.tokens(F.adaptive_avg_pool2d(h, grid[0]) if dims == 2 else F.adaptive_avg_pool3d(h, grid[0]))
        return self.k_proj(pooled), self.v_proj(pooled)


class SpatialAdapter(nn.Module):
    """``A(Z) = Z + Conv1x1(DWConv3x3(Z))``, the 1x1 conv zero-initialised: the identity at init.

    Args:
        channels: channels of ``Z``.
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        self.depthwise = conv(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.pointwise = conv(channels, channels, kernel_size=1)
        nn.init.zeros_(self.pointwise.weight)
        nn.init.zeros_(self.pointwise.bias)  # type: ignore[arg-type]  # bias=True above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.pointwise(self.depthwise(x))
        return out


def _block(c_in: int, c_out: int, dims: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k, c in ((1, c_in), (2, c_out)):
        layers[f"conv{k}"] = _CONV[dims](c, c_out, kernel_size=3, padding=1, bias=False)
        layers[f"bn{k}"] = _BN[dims](c_out)
        layers[f"relu{k}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class FedOAPUNet(nn.Module):
    """The FedOAP U-Net (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        features: encoder widths then the bottleneck width d (at least 2 entries).
        heads: DCA heads (divide d).
        dca: the DCA block at the bottleneck (False: the "without DCA" ablation).
        adapter: the spatial adapter after it.
    """

    head_module_names = ("head",)
    """The 1x1 classifier: the "head" of personalised FL."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, features: Sequence[int], *,
                 heads: int = DEFAULT_HEADS, dca: bool = True, adapter: bool = True) -> None:
        super().__init__()
        dims = spatial_dims
        widths = list(features)
        enc, bottom = widths[:-1], widths[-1]
        self.encoders = nn.ModuleList(_block(c_in, c, dims) for c_in, c in zip([in_channels, *enc[:-1]], enc,
                                                                                 strict=True))
        self.pool = _POOL[dims](kernel_size=2, stride=2)
        self.bottleneck = _block(enc[-1], bottom, dims)
        self.dca = DecoupledCrossAttention(bottom, heads) if dca else None
        self.adapter = SpatialAdapter(bottom, dims) if adapter else None
        ups = list(reversed(enc))
        self.upconvs = nn.ModuleList(_CONVT[dims](c_in, c, kernel_size=2, stride=2)
                                     for c_in, c in zip([bottom, *ups[:-1]], ups, strict=True))
        self.decoders = nn.ModuleList(_block(2 * c, c, dims) for c in ups)
        self.head = _CONV[dims](enc[0], out_channels, kernel_size=1)
        self.query_module_names: tuple[str, ...] = ("dca.q_proj",) if dca else ()
        """W_Q: the client's own query projection."""
        self.adapter_module_names: tuple[str, ...] = ("adapter",) if adapter else ()
        self.attention_module_names: tuple[str, ...] = ("dca",) if dca else ()
        """The whole DCA block (its LayerNorm is shared, unlike the U-Net's BatchNorms)."""

    def set_bank(self, key: torch.Tensor | None, value: torch.Tensor | None) -> None:
        """The other clients' ``(M, d)`` key/value bank for the DCA block (None: none; no-op without DCA)."""
        if self.dca is not None:
            self.dca.set_bank(key, value)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        h = x
        for i, block in enumerate(self.encoders):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        return self.bottleneck(self.pool(h)), skips

    def bank(self, x: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample pooled bottleneck keys and values of images ``x`` (B, C_in, *spatial):
        two ``(B, tokens, d)`` tensors (encoder and bottleneck only; the caller sets no_grad/eval).

        Raises:
            ValueError: the model has no DCA block.
        """
        if self.dca is None:
            raise ValueError("this fedoap_unet has no DCA block (model.dca: false), so it has no key/value bank")
        b, _ = self._encode(x)
        return self.dca.bank(b, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C_out, *spatial)`` of ``x`` (B, C_in, *spatial), sides divisible by 2^n."""
        h, skips = self._encode(x)
        if self.dca is not None:
            h = self.dca(h)
        if self.adapter is not None:
            h = self.adapter(h)
        for up, block, skip in zip(self.upconvs, self.decoders, reversed(skips), strict=True):
            h = block(torch.cat((up(h), skip), dim=1))
        out: torch.Tensor = self.head(h)
        return out


@MODELS.register("fedoap_unet")
def build_fedoap_unet(spatial_dims: int, in_channels: int, out_channels: int, *, features: Sequence[int],
                      dca_heads: int = DEFAULT_HEADS, dca: bool = True, adapter: bool = True) -> nn.Module:
    """Build :class:`FedOAPUNet` (typed config: ``fedseg.config.model.FedOAPUNetConfig``).

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, a channel count below 1, fewer than 2
            ``features``, or ``dca_heads`` not dividing the bottleneck width.
    """
    if spatial_dims not in _CONV:
        raise ValueError(f"model fedoap_unet needs spatial_dims 2 or 3, got {spatial_dims!r}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if len(features) < 2 or min(features) < 1:
        raise ValueError(f"model.features needs >= 2 positive widths (encoder stages, then the bottleneck), "
                         f"got {list(features)}")
    if dca_heads < 1 or features[-1] % dca_heads:
        raise ValueError(f"model.dca_heads must be >= 1 and divide the bottleneck width {features[-1]} "
                         f"(model.features[-1]), got {dca_heads}")
    return FedOAPUNet(spatial_dims, in_channels, out_channels, features, heads=dca_heads, dca=dca, adapter=adapter)
