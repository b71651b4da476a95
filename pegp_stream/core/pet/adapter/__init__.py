"""Bottleneck adapters (layers.py: the parallel adapter; config.py: `learner.pet` with `kind: adapter`)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from pegp_stream.core.pet.adapter.config import AdapterConfig
from pegp_stream.core.pet.adapter.layers import ParallelAdapter, adapter_modules, attach_adapter
from pegp_stream.core.pet.base import Attachment
from pegp_stream.core.pet.registry import FeatureOf, Hook, Paradigm, register


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: each adapter's input x, the output of the frozen norm before its sub-layer (W_down's space),
    and act(W_down x) (W_up's space)."""
    for b, adapter in adapter_modules(attachment).items():
        block = model.blocks[int(b)]
        placement, norm = ("mlp", "norm2") if adapter is block.mlp else ("attn", "norm1")
        space = f"adapter.blocks.{b}.{placement}"
        hook(block.get_submodule(norm), f"{space}.down", lambda out: out)
        hook(block.get_submodule(norm), f"{space}.up", _bottleneck(adapter))


def _bottleneck(adapter: ParallelAdapter) -> FeatureOf:
    """act(W_down x) from the adapter's input x."""
    return lambda out: adapter.act(out @ adapter.down.weight.T.to(out.dtype))


register(Paradigm("adapter", AdapterConfig, attach_adapter, tiny_options={"rank": 8}, gather_features=gather_features))

__all__ = ["AdapterConfig", "ParallelAdapter", "adapter_modules", "attach_adapter", "gather_features"]
