"""Prefix-tuning (layers.py: the prefixed attention; config.py: `learner.pet` with `kind: prefix`)."""

from __future__ import annotations

from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from pegp_stream.core.pet.base import Attachment, submodule
from pegp_stream.core.pet.prefix.config import PrefixConfig
from pegp_stream.core.pet.prefix.layers import PrefixAttention, attach_prefix
from pegp_stream.core.pet.registry import FeatureOf, Hook, Paradigm, register


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: each prefixed block's queries, the first third of its frozen `qkv` output, through the frozen
    attention's `q_norm` (a per-head norm)."""
    for spec in attachment.spaces:
        attn = submodule(model.blocks, f"{spec.name.split('.')[2]}.attn", PrefixAttention).base_layer
        hook(attn.qkv, spec.name, _queries(attn))


def _queries(attn: Attention) -> FeatureOf:
    """The queries through `q_norm`, (..., heads * head_dim), from the output of `attn.qkv`."""
    heads = (attn.num_heads, attn.head_dim)
    return lambda out: attn.q_norm(out[..., : out.shape[-1] // 3].unflatten(-1, heads)).flatten(-2)


register(Paradigm("prefix", PrefixConfig, attach_prefix, tiny_options={"length": 4}, gather_features=gather_features))

__all__ = ["PrefixAttention", "PrefixConfig", "attach_prefix", "gather_features"]
