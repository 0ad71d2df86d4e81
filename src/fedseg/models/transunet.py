"""FedSegNet's transformer U-Net (2D and 3D) from MONAI blocks, registered as ``transunet``.

Architecture (methods.md, FedSegNet; the paper's Sec. 6.7): a convolutional encoder with max
pooling, a multi-head self-attention stage at the bottleneck, a decoder that mirrors the encoder
with skip connections, and a 1x1(x1) output convolution::

    x (B, C_in, *S)
    enc_0 = Block(C_in -> c_0)(x)                                  (B, c_0, *S)
    enc_i = Block(c_{i-1} -> c_i)(MaxPool_{s_i}(enc_{i-1}))        (B, c_i, *S / prod(s_1..s_i))
    z     = enc_{L-1} + P                                          P: positional embedding
    t     = LayerNorm(TransformerBlock^{n}(tokens(z)))             tokens: (B, N, c_{L-1}), N = prod(S_bottleneck)
    dec_{L-1} = reshape(t)                                         (B, c_{L-1}, *S_bottleneck)
    dec_i = UpBlock(TransposedConv_{s_{i+1}}(dec_{i+1}) ++ enc_i)  (B, c_i, *S / prod(s_1..s_i))
    logits = Conv1x1(dec_0)                                        (B, C_out, *S)

``Block`` is MONAI's ``UnetResBlock`` (two 3x3 convs + norm + LeakyReLU, residual) or
``UnetBasicBlock`` when ``num_res_units == 0``; the up blocks are ``UnetrUpBlock``; the stage at
the bottleneck is ``transformer_layers`` MONAI ``TransformerBlock``\\ s (pre-norm multi-head
self-attention ``softmax(QK^T / sqrt(d_k)) V`` + MLP, both residual), with ``heads`` heads and an
MLP of ``mlp_ratio * c_{L-1}`` units. ``transformer_layers = 0`` gives the same network without
attention (the "without transformer" ablation).

**Output.** The network returns raw logits ``(B, C_out, *S)``; the paper's softmax is applied by
the loss (Dice + CE on ``softmax(logits)``) and by inference (argmax of the logits = argmax of the
softmax probabilities), so no softmax layer sits inside the model.

**Positional information** (``pos_embed``): ``learned`` (ours: a learnable
``(1, c_{L-1}, g, ..., g)`` grid, ``g = pos_grid``, resized with (bi/tri)linear interpolation to
the bottleneck grid, so any input size divisible by ``prod(strides)`` works, as in ViT position
interpolation), ``sincos`` (MONAI's fixed sin-cos embedding computed for the actual grid; needs
``c_{L-1}`` divisible by 4 in 2D, 6 in 3D) or ``none``.

**Memory.** Attention costs O(N^2) per head, N = bottleneck voxels: with 4 pooling steps a 128^3
volume gives N = 8^3 = 512 tokens. Without dropout MONAI's attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (memory-efficient kernels on GPU); with
dropout it uses the explicit path, because MONAI's fused path also drops attention in eval mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock, UnetBasicBlock, UnetOutBlock, UnetResBlock, UnetrUpBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.layers.factories import Pool
from torch import nn

from fedseg.models.registry import MODELS
from fedseg.models.unet import norm_spec

__all__ = ["TransUNet", "BottleneckTransformer", "build_transunet"]

_SPATIAL_DIMS = (2, 3)


class BottleneckTransformer(nn.Module):
    """Multi-head self-attention over the voxels of a feature map, with positional information.

    Maps ``(B, C, *S)`` to ``(B, C, *S)``: tokens ``(B, N, C)`` with ``N = prod(S)``, plus the
    positional embedding, through ``layers`` MONAI ``TransformerBlock``\\ s and a final LayerNorm.

    Args:
        spatial_dims: 2 or 3.
        hidden: channels C (the token width); ``heads`` must divide it.
        heads: attention heads.
        layers: transformer blocks (>= 1).
        mlp_dim: hidden units of each block's MLP.
        pos_embed: ``"learned"``, ``"sincos"`` or ``"none"``.
        pos_grid: side of the learned grid.
        dropout: dropout rate inside the blocks.
    """

    def __init__(
        self,
        spatial_dims: int,
        hidden: int,
        heads: int,
        layers: int,
        mlp_dim: int,
        *,
        pos_embed: str = "learned",
        pos_grid: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.pos_embed = pos_embed
        self.pos: nn.Parameter | None = None
        if pos_embed == "learned":
            self.pos = nn.Parameter(torch.zeros(1, hidden, *([pos_grid] * spatial_dims)))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self._sincos: dict[tuple[int, ...], torch.Tensor] = {}
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden_size=hidden,
                mlp_dim=mlp_dim,
                num_heads=heads,
                dropout_rate=dropout,
                qkv_bias=True,
                use_flash_attention=dropout == 0.0,
            )
            for _ in range(layers)
        )
        for block in self.blocks:
            # MONAI builds this LayerNorm even without cross-attention and never uses it: drop the
            # dead parameters so they neither travel nor count as a (FedBN-local) norm layer
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(hidden)

    def _position(self, x: torch.Tensor) -> torch.Tensor | None:
        """Positional embedding ``(1, C, *S)`` for the grid of ``x``, or None."""
        grid = tuple(int(s) for s in x.shape[2:])
        if self.pos is not None:
            if tuple(self.pos.shape[2:]) == grid:
                return self.pos
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            return F.interpolate(self.pos, size=grid, mode=mode, align_corners=False)
        if self.pos_embed == "sincos":
            if grid not in self._sincos:  # fixed, not a parameter: cached per grid size
                with warnings.catch_warnings():  # MONAI calls torch.meshgrid without indexing=
                    warnings.simplefilter("ignore", UserWarning)
                    emb = build_sincos_position_embedding(list(grid), x.shape[1], self.spatial_dims).detach()
                self._sincos[grid] = emb.transpose(1, 2).reshape(1, x.shape[1], *grid)
            return self._sincos[grid].to(device=x.device, dtype=x.dtype)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self._position(x)
        z = x if pos is None else x + pos
        tokens = z.flatten(2).transpose(1, 2)  # (B, N, C)
        for block in self.blocks:
            tokens = block(tokens)
        out: torch.Tensor = self.norm(tokens)
        return out.transpose(1, 2).reshape(x.shape)


class TransUNet(nn.Module):
    """Convolutional U-Net with a transformer bottleneck (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        channels: width of each level, e.g. ``(16, 32, 64, 128)``; the last is the token width.
        strides: pooling factor between consecutive levels (``len(channels) - 1`` entries).
        heads, transformer_layers, mlp_ratio, pos_embed, pos_grid: the bottleneck stage.
        norm: MONAI norm spec (``"batch"``, ``("instance", {...})``, ``("group", {...})``, ``""``).
        res_block: residual conv blocks (``UnetResBlock``) or plain ones (``UnetBasicBlock``).
        dropout: dropout rate in the conv blocks and the transformer.

    Input ``(B, in_channels, *S)`` float with every side of ``S`` divisible by ``prod(strides)``;
    output logits ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        *,
        heads: int = 4,
        transformer_layers: int = 1,
        mlp_ratio: float = 2.0,
        pos_embed: str = "learned",
        pos_grid: int = 8,
        norm: tuple[str, dict[str, Any]] | str = "batch",
        res_block: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        block = UnetResBlock if res_block else UnetBasicBlock
        drop = dropout if dropout > 0 else None
        self.encoder = nn.ModuleList(
            block(spatial_dims, c_in, c_out, kernel_size=3, stride=1, norm_name=norm, dropout=drop)
            for c_in, c_out in zip([in_channels, *channels[:-1]], channels, strict=True)
        )
        pool = Pool[Pool.MAX, spatial_dims]
        self.pools = nn.ModuleList(pool(kernel_size=s, stride=s) for s in strides)
        self.bottleneck: nn.Module = nn.Identity()
        if transformer_layers > 0:
            self.bottleneck = BottleneckTransformer(
                spatial_dims,
                channels[-1],
                heads,
                transformer_layers,
                max(1, int(round(mlp_ratio * channels[-1]))),
                pos_embed=pos_embed,
                pos_grid=pos_grid,
                dropout=dropout,
            )
        # decoder[i] brings level i+1 up to level i (so decoder[0] is the last, full-resolution one)
        self.decoder = nn.ModuleList(
            UnetrUpBlock(
                spatial_dims,
                channels[i + 1],
                channels[i],
                kernel_size=3,
                upsample_kernel_size=strides[i],
                norm_name=norm,
                res_block=res_block,
            )
            for i in range(len(channels) - 1)
        )
        self.out = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for level, enc in enumerate(self.encoder):
            if level > 0:
                h = self.pools[level - 1](h)
            h = enc(h)
            skips.append(h)
        h = self.bottleneck(h)
        for level in reversed(range(len(self.decoder))):
            h = self.decoder[level](h, skips[level])
        logits: torch.Tensor = self.out(h)
        return logits


@MODELS.register("transunet")
def build_transunet(spatial_dims: int, in_channels: int, out_channels: int, *, channels: Sequence[int],
                    strides: Sequence[int], num_res_units: int = 1, norm: str = "batch", dropout: float = 0.0,
                    heads: int = 4, transformer_layers: int = 1, mlp_ratio: float = 2.0, pos_embed: str = "learned",
                    pos_grid: int = 8) -> nn.Module:
    """Build :class:`TransUNet` from plain arguments (typed config: ``fedseg.config.TransUNetConfig``).

    Args:
        spatial_dims, in_channels, out_channels, channels, strides, dropout: as :class:`TransUNet`.
        num_res_units: > 0 for residual conv blocks, 0 for plain ones.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (see :func:`norm_spec`).
        heads, transformer_layers, mlp_ratio, pos_embed, pos_grid: the bottleneck stage.

    Returns:
        The untrained network, mapping ``(B, in_channels, *S)`` to logits ``(B, out_channels, *S)``;
        ``head_module_names = ("decoder.0", "out")`` (the last decoder block and the 1x1 output
        convolution) for FedPer/FedRep.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, a channel count below 1, ``heads`` that does
            not divide ``channels[-1]``, or ``sincos`` with a width not divisible by 4 (2D) / 6 (3D).
    """
    if spatial_dims not in _SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be one of {_SPATIAL_DIMS}, got {spatial_dims!r}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    width = channels[-1]
    if transformer_layers > 0 and width % heads:
        divisors = [h for h in range(1, width + 1) if width % h == 0]
        raise ValueError(
            f"model.heads={heads} must divide the bottleneck width model.channels[-1]={width}; "
            f"allowed: {divisors}"
        )
    if transformer_layers > 0 and pos_embed == "sincos":
        need = 4 if spatial_dims == 2 else 6
        if width % need:
            raise ValueError(
                f"model.pos_embed='sincos' in {spatial_dims}D needs model.channels[-1] divisible by {need}, "
                f"got {width}; use pos_embed 'learned' or change channels[-1]"
            )
    spec = norm_spec(norm, list(channels))
    net = TransUNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels,
        strides,
        heads=heads,
        transformer_layers=transformer_layers,
        mlp_ratio=mlp_ratio,
        pos_embed=pos_embed,
        pos_grid=pos_grid,
        norm="" if spec is None else spec,  # MONAI: "" = no normalisation
        res_block=num_res_units > 0,
        dropout=dropout,
    )
    net.head_module_names = ("decoder.0", "out")  # type: ignore[assignment]  # plain attribute on the module
    return net
