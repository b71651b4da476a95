"""Prefix-tuning: learned key and value prefixes concatenated to each chosen attention's K and V.

Protected space per block: the queries q = LN(x) W_Q + b_Q of old inputs (after timm's q_norm, i.e. as
they enter the logits), one basis per head by default, since each head's logits q_h . k_h use only that
head's slice. Value prefixes have no feature space to annihilate; docs/method.md section 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, FeatureTaps, block_indices
from pegp_stream.core.pet.prefix.config import PrefixConfig
from pegp_stream.core.pet.registry import ProjectionOptions
from pegp_stream.core.projection.spec import SpaceSpec
from pegp_stream.errors import ConfigError


class PrefixAttention(nn.Module):
    """timm `Attention` with learned key/value prefixes; the frozen module stays as `base_layer`.

    Follows timm's forward step by step (fused scaled_dot_product_attention where timm uses it).
    """

    def __init__(
        self, base_layer: Attention, key: nn.Parameter, value: nn.Parameter, taps: FeatureTaps, space: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.key = key
        self.value = value
        self.taps = taps
        self.space = space

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("prefix attention does not support attention masks")
        base = self.base_layer
        B, N, _ = x.shape
        H, hd = base.num_heads, base.head_dim
        gate = base.gate(x).sigmoid() if base.gate is not None else None
        q, k, v = base.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = base.q_norm(q), base.k_norm(k)
        if self.taps.active:
            self.taps.record(self.space, q.transpose(1, 2).reshape(B, N, H * hd))
        prefix_k = self.key.to(k.dtype).view(1, -1, H, hd).transpose(1, 2).expand(B, -1, -1, -1)
        prefix_v = self.value.to(v.dtype).view(1, -1, H, hd).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
        if base.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=base.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * base.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = base.attn_drop(attn) @ v
        x = base.norm(x.transpose(1, 2).reshape(B, N, H * hd))
        if gate is not None:
            x = x * gate
        out: torch.Tensor = base.proj_drop(base.proj(x))
        return out


def attach_prefix(
    model: VisionTransformer, config: PrefixConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    blocks = block_indices(config.blocks, len(model.blocks), "pet.blocks")
    keys, values = nn.ParameterDict(), nn.ParameterDict()
    attachment = Attachment(modules=nn.ModuleDict({"key_prefixes": keys, "value_prefixes": values}), spaces=[])
    for b in blocks:
        attn = model.blocks[b].attn
        if type(attn) is not Attention:
            raise ConfigError("pet.kind", f"prefix needs timm's Attention in block {b}, found {type(attn).__name__}")
        width = attn.num_heads * attn.head_dim
        keys[str(b)] = nn.Parameter(torch.randn(config.length, width) * config.init_std)
        values[str(b)] = nn.Parameter(torch.randn(config.length, width) * config.init_std)
        space = f"prefix.blocks.{b}.query"
        attachment.wrap(model.blocks[b], "attn", PrefixAttention(attn, keys[str(b)], values[str(b)], taps, space))
        groups = attn.num_heads if projection.prefix_per_head else 1
        attachment.spaces.append(SpaceSpec(space, width, [keys[str(b)]], groups=groups))
    if config.freeze_values_after_consolidation:

        def freeze_values(_count: int) -> None:
            values.requires_grad_(False)

        attachment.on_consolidate.append(freeze_values)
    return attachment
