"""Prefix-tuning (layers.py: the prefixed attention; config.py: `learner.pet` with `kind: prefix`)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from pegp_stream.core.pet.base import Attachment
from pegp_stream.core.pet.prefix.config import PrefixConfig
from pegp_stream.core.pet.prefix.layers import PrefixAttention, attach_prefix
from pegp_stream.core.pet.registry import Hook, Paradigm, register


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: each prefixed block's queries, the first third of its frozen `qkv` output, through the frozen
    attention's `q_norm` (a per-head norm)."""
    for spec in attachment.spaces:
        attn = model.blocks[int(spec.name.split(".")[2])].attn.base_layer
        heads = (attn.num_heads, attn.head_dim)
        hook(attn.qkv, spec.name, lambda out, a=attn, h=heads: a.q_norm(out[..., : out.shape[-1] // 3].unflatten(
            -1, h)).flatten(-2))


register(Paradigm("prefix", PrefixConfig, attach_prefix, tiny_options={"length": 4}, gather_features=gather_features))

__all__ = ["PrefixAttention", "PrefixConfig", "attach_prefix", "gather_features"]
