"""The Segment-Anything model for fedseg: image encoder + prompt encoder + mask decoder, whose
state dict follows the official SAM checkpoints (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), plus LoRA (``*.attn.qkv.lora_a/lora_b``) and L-MoE (``*.blocks.<i>.moe.*``).

Decisions (docs/pfedsam.md):

* Binary segmentation only: SAM's single-mask output ``m`` (first mask token) becomes the two
  class logits ``[0, m]``, so the engine's softmax losses and metrics see ``softmax = (1 - s(m), s(m))``
  (softmax Dice + CE on two channels = Dice + BCE on ``m``).
* Input: grey images are replicated to 3 channels (the official ``patch_embed.proj`` takes 3); 3
  channels pass unchanged; no pixel normalisation inside the model (the data pipeline's applies).
* Any input size: images are resized (bilinear) to ``image_size`` for the encoder and the logits
  are resized back to the input's ``(H, W)``.
* ``pos_embed`` and the global blocks' relative position tables are interpolated when a checkpoint
  was trained at another size (:meth:`SAM.adapt_init_state`, called by ``model.init_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedseg.models.sam.decoder import MaskDecoder, TwoWayTransformer
from fedseg.models.sam.encoder import ImageEncoderViT, resize_pos_embed, resize_rel_pos
from fedseg.models.sam.lora import LORA_SUFFIXES, LoRALinear
from fedseg.models.sam.moe import LocalMoE
from fedseg.models.sam.prompt import PromptEncoder

__all__ = ["SAM", "PROMPT_MODES", "boxes_from_mask", "is_lora_key", "is_moe_key", "is_extension_key"]

PROMPT_MODES: tuple[str, ...] = ("none", "full_image_box", "box_from_mask")
"""``none``: learned default embeddings only (no sparse prompt); ``full_image_box``: one box
covering the image; ``box_from_mask``: the tight box of the ground-truth foreground, passed to
``forward(image, boxes=...)`` by the caller (see :func:`boxes_from_mask`)."""


def is_lora_key(key: str) -> bool:
    """A LoRA factor (``...attn.qkv.lora_a`` / ``lora_b``)."""
    return key.endswith(LORA_SUFFIXES)


def is_moe_key(key: str) -> bool:
    """An L-MoE tensor (``image_encoder.blocks.<i>.moe.*``)."""
    return ".moe." in key


def is_extension_key(key: str) -> bool:
    """A tensor the official SAM checkpoints do not have (LoRA or L-MoE)."""
    return is_lora_key(key) or is_moe_key(key)


def boxes_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(B, 4)`` (``x0, y0, x1, y1``, pixels) of the foreground of ``mask`` ``(B, 1, H, W)``;
    an empty mask gets the whole image."""
    b, _, h, w = mask.shape
    fg = mask.reshape(b, h, w) > 0
    boxes = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]] * b, device=mask.device)
    for i in range(b):
        ys, xs = torch.nonzero(fg[i], as_tuple=True)
        if ys.numel():
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    return boxes


class SAM(nn.Module):
    """SAM mapping ``(B, 1 or 3, H, W)`` images to binary logits ``(B, 2, H, W)``.

    Args:
        in_channels: 1 (replicated to 3) or 3.
        image_size: encoder input side (1024 for the released weights; smaller works).
        prompt_mode: one of :data:`PROMPT_MODES`.
        encoder: keyword arguments of :class:`~fedseg.models.sam.encoder.ImageEncoderViT` other than
            ``img_size`` and ``out_chans``.
        prompt_embed_dim: neck / prompt / decoder width (256 in SAM).
        decoder_depth, decoder_heads, decoder_mlp_dim, iou_head_hidden_dim, mask_in_chans,
            num_multimask_outputs: decoder and prompt-encoder sizes (SAM: 2, 8, 2048, 256, 16, 3).
    """

    def __init__(self, *, in_channels: int, image_size: int, prompt_mode: str, encoder: Mapping[str, Any],
                 prompt_embed_dim: int, decoder_depth: int, decoder_heads: int, decoder_mlp_dim: int,
                 iou_head_hidden_dim: int, mask_in_chans: int, num_multimask_outputs: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"model sam takes 1 (grey, replicated to 3) or 3 input channels, got {in_channels}")
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"model.prompt_mode {prompt_mode!r} is not one of {', '.join(PROMPT_MODES)}")
        self.in_channels = in_channels
        self.prompt_mode = prompt_mode
        self.image_size = image_size
        self.image_encoder = ImageEncoderViT(img_size=image_size, out_chans=prompt_embed_dim, **encoder)
        grid = image_size // self.image_encoder.patch_embed.proj.stride[0]
        self.prompt_encoder = PromptEncoder(prompt_embed_dim, (grid, grid), (image_size, image_size), mask_in_chans)
        self.mask_decoder = MaskDecoder(
            prompt_embed_dim,
            TwoWayTransformer(decoder_depth, prompt_embed_dim, decoder_heads, decoder_mlp_dim),
            num_multimask_outputs=num_multimask_outputs, iou_head_hidden_dim=iou_head_hidden_dim)

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Two-class logits ``(B, 2, H, W)`` for images ``(B, C, H, W)``.

        Args:
            image: float images, ``C`` = ``in_channels``.
            boxes: ``(B, 4)`` boxes in the input's pixels, required with ``prompt_mode:
                box_from_mask`` (e.g. :func:`boxes_from_mask` of the target) and ignored otherwise.
        """
        b, _, h, w = image.shape
        x = image.expand(-1, 3, -1, -1) if self.in_channels == 1 else image
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        prompt = self._boxes(boxes, b, h, w, x.device)
        sparse, dense = self.prompt_encoder(prompt, b)
        low = self.mask_decoder(self.image_encoder(x), self.prompt_encoder.dense_pe(), sparse, dense)
        mask = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([torch.zeros_like(mask), mask], dim=1)

    def _boxes(self, boxes: torch.Tensor | None, b: int, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """The box prompt in encoder-input pixels, or None (``prompt_mode: none``)."""
        if self.prompt_mode == "none":
            return None
        if self.prompt_mode == "full_image_box":
            return torch.tensor([[0.0, 0.0, self.image_size - 1.0, self.image_size - 1.0]] * b, device=device)
        if boxes is None:
            raise ValueError("model.prompt_mode box_from_mask needs boxes: call model(image, boxes=boxes_from_mask(mask)); "
                             "fedseg's training and evaluation loops pass images only, so use prompt_mode none or "
                             "full_image_box there")
        scale = torch.tensor([self.image_size / w, self.image_size / h] * 2, device=device)
        return boxes.to(device).float() * scale

    # ------------------------------------------------------------------ parameter kinds
    def lora_layers(self) -> list[LoRALinear]:
        """The encoder's LoRA-adapted qkv layers."""
        return [m for m in self.image_encoder.modules() if isinstance(m, LoRALinear) and m.rank]

    def moe_layers(self) -> list[LocalMoE]:
        """The encoder's L-MoE modules."""
        return [m for m in self.image_encoder.modules() if isinstance(m, LocalMoE)]

    def frozen_state_keys(self) -> set[str]:
        """The pretrained image and prompt encoders (everything there except LoRA and L-MoE)."""
        return {k for k in self.state_dict() if k.startswith(("image_encoder.", "prompt_encoder."))
                and not is_extension_key(k)}

    def moe_state_keys(self) -> set[str]:
        """L-MoE tensors: pFedSAM's local part."""
        return {k for k in self.state_dict() if is_moe_key(k)}

    @contextmanager
    def experts(self, enabled: bool) -> Iterator[None]:
        """L-MoE on or off inside the block (off: the teacher / global model ``SAM + LoRA + decoder``)."""
        layers = self.moe_layers()
        saved = [m.enabled for m in layers]
        for m in layers:
            m.enabled = enabled
        try:
            yield
        finally:
            for m, value in zip(layers, saved, strict=True):
                m.enabled = value

    def balance_loss(self) -> torch.Tensor | None:
        """Mean over the L-MoE layers of the load-balancing loss of the last forward (None: no L-MoE ran)."""
        losses = [m.balance_loss for m in self.moe_layers() if m.enabled and m.balance_loss is not None]
        return torch.stack(losses).mean() if losses else None

    # ------------------------------------------------------------------ checkpoints
    def adapt_init_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official-layout state dict made to fit this model, for ``model.init_checkpoint``.

        ``pos_embed`` (bicubic) and relative position tables (linear) of another input size are
        resized; LoRA and L-MoE tensors the file lacks are taken from this model (their init: LoRA
        B = 0 and expert outputs 0, so the loaded model equals the pretrained one). Every other
        key is left as it is, so the strict check still refuses a file of another architecture.
        """
        own = self.state_dict()
        out = dict(state)
        for key, value in state.items():
            if key not in own or own[key].shape == value.shape:
                continue
            if key.endswith("pos_embed") and value.dim() == 4:
                out[key] = resize_pos_embed(value, own[key].shape[1])
            elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2 and value.shape[1] == own[key].shape[1]:
                out[key] = resize_rel_pos(value, own[key].shape[0])
        for key, value in own.items():
            if key not in out and is_extension_key(key):
                out[key] = value.detach().clone()
        return out

    def official_state_dict(self, merge_lora: bool = False) -> dict[str, torch.Tensor]:
        """The state dict in the official layout (no LoRA or L-MoE keys); ``merge_lora`` folds the
        LoRA updates into ``qkv.weight`` first (then the file reproduces the model without L-MoE)."""
        deltas = {f"{name}.weight": m.delta_weight().detach() for name, m in self.named_modules()
                  if isinstance(m, LoRALinear) and m.rank and not m.merged} if merge_lora else {}
        return {k: (v + deltas[k] if k in deltas else v).detach().clone()
                for k, v in self.state_dict().items() if not is_extension_key(k)}


def encoder_arguments(*, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
                      window_size: int, global_attn_indexes: Sequence[int], use_rel_pos: bool, lora_rank: int,
                      lora_alpha: float | None, lora_blocks: Sequence[int] | None, moe_experts: int, moe_top_k: int,
                      moe_bottleneck: int, moe_every: int) -> dict[str, Any]:
    """The encoder's keyword arguments, checked as one group."""
    return dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                window_size=window_size, global_attn_indexes=tuple(global_attn_indexes), use_rel_pos=use_rel_pos,
                lora_rank=lora_rank, lora_alpha=lora_alpha, lora_blocks=lora_blocks, moe_experts=moe_experts,
                moe_top_k=moe_top_k, moe_bottleneck=moe_bottleneck, moe_every=moe_every)
