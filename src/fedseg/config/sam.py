"""The ``sam`` model section: Segment-Anything with LoRA and a local mixture of experts
(:mod:`fedseg.models.sam`). Registered in :data:`MODEL_CONFIGS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from fedseg.config.model import _NOT_ARGUMENTS, MODEL_CONFIGS, ModelConfig

__all__ = ["SAMConfig"]


@MODEL_CONFIGS.register("sam")
class SAMConfig(ModelConfig):
    """Segment-Anything with LoRA and pFedSAM's L-MoE (:mod:`fedseg.models.sam`), 2D, binary.

    Defaults are a tiny size for tests and CPU runs; SAM ViT-B (``sam_vit_b_01ec64.pth``) is
    ``image_size 1024, patch_size 16, embed_dim 768, depth 12, num_heads 12, window_size 14,
    global_attn_indexes [2, 5, 8, 11], prompt_embed_dim 256, decoder_heads 8, decoder_mlp_dim 2048,
    iou_head_hidden_dim 256`` (docs/pfedsam.md). ``channels``/``strides`` are fixed to
    ``[embed_dim]``/``[]`` (the model resizes any input to ``image_size`` itself); ``norm`` is
    ``none`` (LayerNorm only).
    """

    name: Literal["sam"] = "sam"
    image_size: int = Field(64, ge=8, description="encoder input side; inputs are resized to it (SAM: 1024)")
    patch_size: int = Field(8, ge=1, description="ViT patch side (SAM: 16)")
    embed_dim: int = Field(32, ge=1, description="ViT width (ViT-B: 768)")
    depth: int = Field(2, ge=1, description="ViT blocks (ViT-B: 12)")
    num_heads: int = Field(2, ge=1, description="ViT heads (ViT-B: 12)")
    mlp_ratio: float = Field(4.0, gt=0, description="ViT MLP width / embed_dim")
    window_size: int = Field(0, ge=0, description="window attention side of non-global blocks (0: all global; SAM: 14)")
    global_attn_indexes: list[int] = Field(default_factory=list, description="global-attention blocks (ViT-B: 2,5,8,11)")
    use_rel_pos: bool = Field(True, description="decomposed relative position terms (SAM: true)")
    prompt_embed_dim: int = Field(32, ge=8, description="neck/prompt/decoder width (SAM: 256)")
    decoder_depth: int = Field(2, ge=1, description="two-way transformer blocks (SAM: 2)")
    decoder_heads: int = Field(2, ge=1, description="decoder heads (SAM: 8)")
    decoder_mlp_dim: int = Field(64, ge=1, description="decoder MLP width (SAM: 2048)")
    iou_head_hidden_dim: int = Field(32, ge=1, description="IoU head width (SAM: 256)")
    mask_in_chans: int = Field(16, ge=4, description="mask-prompt downscaling width (SAM: 16)")
    num_multimask_outputs: int = Field(3, ge=0, description="extra mask tokens (SAM: 3; only the first token is used)")
    prompt_mode: Literal["none", "full_image_box", "box_from_mask"] = Field(
        "none", description="none: learned default embeddings; full_image_box; box_from_mask (boxes passed by the "
        "caller of forward: not available in fedseg's training/evaluation loops)")
    lora_rank: int = Field(4, ge=0, description="LoRA rank on the encoder's qkv (0: no LoRA)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default: = rank, scale 1)")
    lora_blocks: list[int] | None = Field(None, description="encoder blocks with LoRA (default: all)")
    moe_experts: int = Field(4, ge=0, description="L-MoE experts per adapted block (0: no L-MoE)")
    moe_top_k: int = Field(2, ge=1, description="experts per token")
    moe_bottleneck: int = Field(4, ge=1, description="expert hidden width = embed_dim // moe_bottleneck")
    moe_every: int = Field(1, ge=1, description="L-MoE in blocks 0, k, 2k, ... (1: every block)")
    num_res_units: int = Field(0, ge=0, le=0, description="fixed: not a U-Net")
    norm: Literal["none"] = Field("none", description="fixed: LayerNorm only (no BatchNorm)")
    dropout: float = Field(0.0, ge=0, le=0, description="fixed: no dropout")

    @model_validator(mode="before")
    @classmethod
    def _derive_common(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        dim = out.get("embed_dim", 32)  # a bad embed_dim is reported at its own key
        out["channels"] = [dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else 32]
        out["strides"] = []
        return out

    @model_validator(mode="after")
    def _sizes_fit(self) -> SAMConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} must be a multiple of model.patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.num_heads {self.num_heads} must divide model.embed_dim {self.embed_dim}")
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ValueError(f"model.moe_top_k {self.moe_top_k} exceeds model.moe_experts {self.moe_experts}")
        if (self.prompt_embed_dim // 2) % self.decoder_heads or self.prompt_embed_dim % 8:
            raise ValueError(f"model.prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 and of "
                             f"2 * model.decoder_heads ({2 * self.decoder_heads})")
        blocks = [*self.global_attn_indexes, *(self.lora_blocks or [])]
        if any(not 0 <= i < self.depth for i in blocks):
            raise ValueError(f"model.global_attn_indexes / lora_blocks must be block indexes 0..{self.depth - 1}, "
                             f"got {blocks}")
        return self

    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments: the SAM fields (not the U-Net fields)."""
        skip = _NOT_ARGUMENTS | {"channels", "strides", "num_res_units", "norm", "dropout"}
        return {key: getattr(self, key) for key in type(self).model_fields if key not in skip}
