"""core/pet/prefix/layers.py re-implements timm's `Attention.forward` to put learned keys and values in front of K
and V. With prefixes of length zero it must be timm's own forward: checked on every timm ViT family the tests and
benchmarks build and on every option of timm's `Attention` (qk_norm, the attention-output norm, the gate),
with fused and unfused attention. A timm release that changes `Attention.forward` fails here instead of
silently changing what the prefixes learn (pyproject pins the timm range this passes on)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import TINY_BACKBONE
from timm.layers import Attention
from torch import nn

from pegp_stream.core.pet.base import FeatureTaps
from pegp_stream.core.pet.prefix import PrefixAttention

TINY = {k: v for k, v in TINY_BACKBONE.items() if k != "name"}
FAMILIES = {  # name -> (timm model, create_model kwargs)
    "tests' tiny vit": ("vit_tiny_patch16_224", TINY),
    "evidence's vit": ("vit_tiny_patch16_224", {**TINY, "embed_dim": 128, "depth": 6}),
    "deit tiny 224": ("deit_tiny_patch16_224", {}),
    "qk_norm": ("vit_tiny_patch16_224", {**TINY, "qk_norm": True}),
    "attention-output norm": ("vit_tiny_patch16_224", {**TINY, "scale_attn_norm": True}),
    "registers": ("vit_tiny_patch16_224", {**TINY, "reg_tokens": 4, "no_embed_class": True}),
    "no class token": ("vit_tiny_patch16_224", {**TINY, "class_token": False, "global_pool": "avg"}),
}


def without_prefixes(attn: Attention, taps: FeatureTaps | None = None) -> PrefixAttention:
    """`attn` wrapped with key and value prefixes of length zero (the config's length is at least 1)."""
    width = attn.num_heads * attn.head_dim
    return PrefixAttention(attn, nn.Parameter(torch.empty(0, width)), nn.Parameter(torch.empty(0, width)),
                           taps or FeatureTaps(), "prefix.test.query")


def set_fused(model: nn.Module, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = fused


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_prefixes_are_timms_attention_in_every_block(family, fused):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    set_fused(model, fused)
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for block in model.blocks]
    size = model.patch_embed.img_size
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model.forward_features(images)
        for hook in hooks:
            hook.remove()
        for block, x in zip(model.blocks, inputs, strict=True):
            torch.testing.assert_close(without_prefixes(block.attn)(x), block.attn(x), rtol=0, atol=1e-6)
        wrapped = copy.deepcopy(model)
        for block in wrapped.blocks:
            block.attn = without_prefixes(block.attn)
        torch.testing.assert_close(wrapped.forward_features(images), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("options", [
    {}, {"qk_norm": True}, {"scale_norm": True}, {"gated": True}, {"qkv_bias": True, "proj_bias": False},
    {"qk_norm": True, "scale_norm": True, "gated": True, "qkv_bias": True},
], ids=["plain", "qk_norm", "scale_norm", "gated", "biases", "all"])
def test_zero_prefixes_are_timms_attention_with_every_option(options, fused):
    """Options of timm's Attention that no ViT config here reaches (the gate), and all of them together."""
    torch.manual_seed(1)
    attn = Attention(64, num_heads=4, norm_layer=nn.LayerNorm, **options).eval()
    attn.fused_attn = fused
    for module in attn.modules():  # LayerNorm's default affine (1, 0) would hide a skipped norm's parameters
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    x = torch.randn(3, 17, 64)
    taps = FeatureTaps()
    with torch.no_grad(), taps.recording() as features:
        out, expected = without_prefixes(attn, taps)(x), attn(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert features["prefix.test.query"].shape == (3, 17, 64)  # the protected space's features: q after q_norm
