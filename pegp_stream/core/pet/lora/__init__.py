"""LoRA (layers.py: the low-rank linears; config.py: `learner.pet` with `kind: lora`)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, submodule
from pegp_stream.core.pet.lora.config import LoraConfig
from pegp_stream.core.pet.lora.layers import LoraLinear, LoraPair, attach_lora
from pegp_stream.core.pet.registry import FeatureOf, Hook, Paradigm, register

# The frozen module (its path in the block) whose output is the input of each linear LoRA can wrap (timm's Block,
# Attention and Mlp; attn.proj's input is attn.norm's output where the attention has no gate, as in every ViT the
# tests use).
_INPUT_OF: dict[str, str] = {
    "attn.qkv": "norm1",
    "attn.proj": "attn.norm",
    "mlp.fc1": "norm2",
    "mlp.fc2": "mlp.norm",
}


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: each wrapped linear's input x (every A's space on it) and, per LoRA pair, z = A x (its B's)."""
    for wrapper in lora_linears(attachment):
        _, _, b, sublayer, linear = wrapper.space.split(".")
        source = model.blocks[int(b)].get_submodule(_INPUT_OF[f"{sublayer}.{linear}"])
        hook(source, f"{wrapper.space}.in", lambda out: out)
        for name, pair in wrapper.named_pairs():
            hook(source, f"{wrapper.space}.{name}.z", _bottleneck(pair))


def lora_linears(attachment: Attachment) -> list[LoraLinear]:
    """The wrapped linears of a LoRA attachment, in attachment order."""
    linears = submodule(attachment.modules, "linears", nn.ModuleDict)
    return [submodule(linears, key, LoraLinear) for key in linears]


def _bottleneck(pair: LoraPair) -> FeatureOf:
    """z = A x from a wrapped linear's input x."""
    return lambda out: out @ pair.A.T.to(out.dtype)


register(Paradigm("lora", LoraConfig, attach_lora, tiny_options={"rank": 4, "targets": ["q", "v"]},
                  gather_features=gather_features))

__all__ = ["LoraConfig", "LoraLinear", "LoraPair", "attach_lora", "gather_features", "lora_linears"]
