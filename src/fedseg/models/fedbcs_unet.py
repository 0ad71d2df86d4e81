"""FedBCS's U-Net with frequency-domain style recalibration (FSR), registered as ``fedbcs_unet``.

Architecture (methods.md section 2(c) and section 7, read from the authors' ``backbone/models.py``
and ``backbone/dac.py``); 2D only. With ``features = [c_1, ..., c_n, c_b]`` (default
``[32, 64, 128, 256, 512]``, so n = 4 encoder stages and a bottleneck of 512)::

    enc_1 = Block(C_in -> c_1)(x)                                (B, c_1, H, W)
    enc_i = FSR_i(Block(c_{i-1} -> c_i)(MaxPool2(enc_{i-1})))    (B, c_i, H / 2^(i-1)), i = 2..n
    b     = Block(c_n -> c_b)(MaxPool2(enc_n))
    dec_n = Block(2 c_n -> c_n)([ConvT2(b) ; enc_n])             "dec4", the first decoder stage
    dec_i = Block(2 c_i -> c_i)([ConvT2(dec_{i+1}) ; enc_i])     i = n-1..1 ("dec3", "dec2", "dec1")
    logits = Conv1x1(dec_1)                                      (B, C_out, H, W)

``Block`` is conv3x3 (no bias) -> BN -> ReLU, twice. BN is ``affine=False,
track_running_stats=False`` (batch statistics at test time too, as the authors; results then
depend on the evaluation batch size) unless ``bn_running_stats`` is set. FSR sits after every
encoder stage but the first (enc2, enc3, enc4 by default), before pooling; its output is also the
skip. ``fsr=False`` leaves it out (no FSR parameters).

**Indexing.** Stages are numbered from 1 at full resolution: ``enc4`` (= enc_n) is the deepest
encoder stage before the bottleneck, ``dec4`` (= dec_n) the first decoder stage (at enc4's
resolution), ``dec1`` the last (full resolution).

**Feature levels** (the prototype levels of CDPA, layer_config "0,1,2,3"; all resizing nearest)::

    E = concat_{i=1..n-1} up_H( Fuse^E_i([enc_i ; up_{enc_i}(enc_n)]) )          (B, 3*256, H, W)
    D = concat_{j=n-1..1} resize_{dec_{n-1}}( Fuse^D_j([dec_j ; up_{dec_j}(dec_n)]) )  (B, 3*256, H/4, W/4)

with every ``Fuse`` a Conv1x1 (with bias) to ``fusion_channels`` = 256 channels. For D, dec2 and
dec1 are *down*-sampled to the dec3 grid. The fusion convs always exist (they are parameters of
the model, aggregated like the rest) but E and D are computed only when asked: by
:meth:`FedBCSUNet.forward_features`, or in :meth:`~FedBCSUNet.forward` when a forward hook sits on
the tap module ``enc_features`` / ``dec_features`` (what the engine's trainer installs for an
algorithm whose ``aux_outputs`` names them; see :mod:`fedseg.models.taps`). Plain training and
evaluation compute neither. The offered names are :attr:`FedBCSUNet.aux_outputs`: ``"encoder"``
-> E, ``"decoder"`` -> D, ``"last"`` -> dec1 (tap ``last_features``, the input of the head).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.models.registry import MODELS

__all__ = ["FSR", "FedBCSFeatures", "FedBCSUNet", "build_fedbcs_unet", "replace_tiny"]

TINY = 1e-5
"""Values with ``|v| < TINY`` become ``TINY`` before ``sqrt``/``atan2`` (the authors' ``replace_denormals``)."""

FSR_TEMPERATURE = 0.1
"""The fixed softmax temperature T of FSR's mixing weights."""

DEFAULT_FUSION_CHANNELS = 256
"""Output channels of each feature-level fusion conv (the authors' 256)."""


def replace_tiny(v: torch.Tensor, threshold: float = TINY) -> torch.Tensor:
    """``v`` with every entry of ``|v| < threshold`` replaced by ``+threshold`` (out of place)."""
    return torch.where(v.abs() < threshold, torch.full_like(v, threshold), v)


class FSR(nn.Module):
    """Frequency-domain style recalibration: ``y = Re(F^-1(A e^{i phi})) * gamma + beta``.

    ``A = w_0 |F(IN(x))| + w_1 |F(x)|`` and ``phi = angle F(x)``, with ``w = softmax(h / T)``,
    ``h`` learnable (init zeros, so w = 0.5/0.5), ``T = 0.1``, ``F`` the 2-D FFT per channel and
    ``IN`` instance norm without affine. Per-channel ``gamma`` (init 1) and ``beta`` (init 0).
    As the authors: ``|z| = sqrt(r(re^2 + im^2))`` and ``angle z = atan2(im, r(re))`` with ``r`` =
    :func:`replace_tiny` (``|v| < 1e-5 -> 1e-5``). The spectrum of a real map is Hermitian, so it
    is computed with ``rfft2``/``irfft2`` (the authors' ``irfft2`` reads the same half spectrum).
    With ``w_0 = 0``, ``gamma = 1``, ``beta = 0`` it returns ``x`` up to FFT round-off (and the
    magnitude floor ``sqrt(1e-5)`` on near-zero Fourier coefficients).

    Args:
        channels: channels C of the ``(B, C, H, W)`` input.
        temperature: T.
    """

    def __init__(self, channels: int, temperature: float = FSR_TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature
        self.h = nn.Parameter(torch.zeros(2))
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def mixing_weights(self) -> torch.Tensor:
        """``softmax(h / T)``: the weights of ``|F(IN(x))|`` and ``|F(x)|``."""
        return torch.softmax(self.h / self.temperature, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recalibrate ``x`` (B, C, H, W); same shape out."""
        w = self.mixing_weights()
        size = x.shape[-2:]
        spec = torch.fft.rfft2(x, norm="backward")
        spec_in = torch.fft.rfft2(F.instance_norm(x), norm="backward")
        amp = w[0] * _amplitude(spec_in) + w[1] * _amplitude(spec)
        phase = torch.atan2(spec.imag, replace_tiny(spec.real))
        y: torch.Tensor = torch.fft.irfft2(torch.polar(amp, phase), s=size, norm="backward")
        shape = (1, -1, 1, 1)
        return y * self.gamma.view(shape) + self.beta.view(shape)


def _amplitude(spec: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(replace_tiny(spec.real.square() + spec.imag.square()))


def _block(in_channels: int, out_channels: int, running_stats: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k, c_in in ((1, in_channels), (2, out_channels)):
        layers[f"conv{k}"] = nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False)
        layers[f"bn{k}"] = nn.BatchNorm2d(out_channels, affine=False, track_running_stats=running_stats)
        layers[f"relu{k}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class FedBCSFeatures(NamedTuple):
    """What :meth:`FedBCSUNet.forward_features` returns."""

    logits: torch.Tensor
    encoder: torch.Tensor
    decoder: torch.Tensor


def _nearest(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t if t.shape[-2:] == like.shape[-2:] else F.interpolate(t, size=like.shape[-2:], mode="nearest")


def _fuse(convs: nn.ModuleList, stages: Sequence[torch.Tensor], deepest: torch.Tensor) -> torch.Tensor:
    """concat_k resize_{stages[0]}(convs[k]([stages[k] ; up(deepest)]))."""
    fused = [conv(torch.cat((s, _nearest(deepest, s)), dim=1)) for conv, s in zip(convs, stages, strict=True)]
    return torch.cat([_nearest(f, stages[0]) for f in fused], dim=1)


class FedBCSUNet(nn.Module):
    """The FedBCS U-Net (see the module docstring for the layout and the feature levels).

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        out_channels: classes including background.
        features: encoder widths then the bottleneck width (at least 3 entries).
        fsr: FSR after encoder stages 2..n.
        bn_running_stats: BN with running statistics (eval mode uses them) instead of batch
            statistics at test time.
        fusion_channels: output channels of each fusion conv.
    """

    aux_outputs = {"encoder": "enc_features", "decoder": "dec_features", "last": "last_features"}
    """Offered auxiliary outputs (:mod:`fedseg.models.taps`): E, D and ``last``, the last decoder
    feature map before the head (dec1, (B, c_1, H, W); the single-level FPL/FedProto level)."""

    head_module_names = ("head",)
    """The 1x1 output conv: the "head" of personalised FL."""

    def __init__(self, in_channels: int, out_channels: int, features: Sequence[int], *, fsr: bool = True,
                 bn_running_stats: bool = False, fusion_channels: int = DEFAULT_FUSION_CHANNELS) -> None:
        super().__init__()
        widths = list(features)
        enc, bottom = widths[:-1], widths[-1]
        self.encoders = nn.ModuleList(
            _block(c_in, c, bn_running_stats) for c_in, c in zip([in_channels, *enc[:-1]], enc, strict=True)
        )
        self.fsr = nn.ModuleList(FSR(c) if fsr and i > 0 else nn.Identity() for i, c in enumerate(enc))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _block(enc[-1], bottom, bn_running_stats)
        ups = list(reversed(enc))  # c_n, ..., c_1
        self.upconvs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c, kernel_size=2, stride=2)
            for c_in, c in zip([bottom, *ups[:-1]], ups, strict=True)
        )
        self.decoders = nn.ModuleList(_block(2 * c, c, bn_running_stats) for c in ups)
        self.head = nn.Conv2d(enc[0], out_channels, kernel_size=1)
        # E: enc_1..enc_{n-1} each with enc_n; D: dec_{n-1}..dec_1 each with dec_n
        self.encoder_fusions = nn.ModuleList(nn.Conv2d(c + enc[-1], fusion_channels, 1) for c in enc[:-1])
        self.decoder_fusions = nn.ModuleList(nn.Conv2d(c + enc[-1], fusion_channels, 1) for c in ups[1:])
        self.enc_features = nn.Identity()
        self.dec_features = nn.Identity()
        self.last_features = nn.Identity()

    def _stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Logits, encoder stages [enc_1..enc_n] and decoder stages [dec_n..dec_1]."""
        skips: list[torch.Tensor] = []
        h = x
        for i, (block, fsr) in enumerate(zip(self.encoders, self.fsr, strict=True)):
            h = fsr(block(h if i == 0 else self.pool(h)))
            skips.append(h)
        h = self.bottleneck(self.pool(h))
        decs: list[torch.Tensor] = []
        for up, block, skip in zip(self.upconvs, self.decoders, reversed(skips), strict=True):
            h = block(torch.cat((up(h), skip), dim=1))
            decs.append(h)
        return self.head(h), skips, decs

    def encoder_level(self, encs: Sequence[torch.Tensor]) -> torch.Tensor:
        """E from the encoder stages ``[enc_1..enc_n]``: (B, (n-1) * fusion_channels, H, W)."""
        return _fuse(self.encoder_fusions, encs[:-1], encs[-1])

    def decoder_level(self, decs: Sequence[torch.Tensor]) -> torch.Tensor:
        """D from the decoder stages ``[dec_n..dec_1]``: (B, (n-1) * fusion_channels, *dec_{n-1} grid)."""
        return _fuse(self.decoder_fusions, decs[1:], decs[0])

    def forward_features(self, x: torch.Tensor) -> FedBCSFeatures:
        """Logits, E and D of ``x`` (B, C_in, H, W), H and W divisible by 2^n."""
        logits, encs, decs = self._stages(x)
        return FedBCSFeatures(logits, self.encoder_level(encs), self.decoder_level(decs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C_out, H, W); E/D pass through their taps only when a hook waits on a tap."""
        logits, encs, decs = self._stages(x)
        if self.enc_features._forward_hooks:
            self.enc_features(self.encoder_level(encs))
        if self.dec_features._forward_hooks:
            self.dec_features(self.decoder_level(decs))
        if self.last_features._forward_hooks:
            self.last_features(decs[-1])
        return logits


@MODELS.register("fedbcs_unet")
def build_fedbcs_unet(spatial_dims: int, in_channels: int, out_channels: int, *, features: Sequence[int],
                      fsr: bool = True, bn_running_stats: bool = False,
                      fusion_channels: int = DEFAULT_FUSION_CHANNELS) -> nn.Module:
    """Build :class:`FedBCSUNet` (typed config: ``fedseg.config.FedBCSUNetConfig``).

    Raises:
        ValueError: ``spatial_dims`` is not 2 (3D is not implemented), a channel count is below 1
            or ``features`` has fewer than 3 entries.
    """
    if spatial_dims != 2:
        raise ValueError(f"model fedbcs_unet is 2D only (spatial_dims 2), got spatial_dims={spatial_dims!r}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if len(features) < 3 or min(features) < 1:
        raise ValueError(f"model.features needs >= 3 positive widths (encoder stages, then the bottleneck), "
                         f"got {list(features)}")
    return FedBCSUNet(in_channels, out_channels, features, fsr=fsr, bn_running_stats=bn_running_stats,
                      fusion_channels=fusion_channels)
