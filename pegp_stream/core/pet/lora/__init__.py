"""LoRA (layers.py: the low-rank linears; config.py: `learner.pet` with `kind: lora`)."""

from __future__ import annotations

from collections.abc import Callable

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment
from pegp_stream.core.pet.lora.config import LoraConfig
from pegp_stream.core.pet.lora.layers import LoraLinear, LoraPair, attach_lora
from pegp_stream.core.pet.registry import Hook, Paradigm, register

# The frozen module whose output is the input of each linear LoRA can wrap (timm's Block, Attention and Mlp;
# attn.proj's input is attn.norm's output where the attention has no gate, as in every ViT the tests use).
_INPUT_OF: dict[str, Callable[[nn.Module], nn.Module]] = {
    "attn.qkv": lambda block: block.norm1,
    "attn.proj": lambda block: block.attn.norm,
    "mlp.fc1": lambda block: block.norm2,
    "mlp.fc2": lambda block: block.mlp.norm,
}


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: each wrapped linear's input x (every A's space on it) and, per LoRA pair, z = A x (its B's)."""
    for wrapper in attachment.modules["linears"].values():
        _, _, b, sublayer, linear = wrapper.space.split(".")
        source = _INPUT_OF[f"{sublayer}.{linear}"](model.blocks[int(b)])
        hook(source, f"{wrapper.space}.in", lambda out: out)
        for name, pair in wrapper.pairs.items():
            hook(source, f"{wrapper.space}.{name}.z", lambda out, p=pair: out @ p.A.T.to(out.dtype))


register(Paradigm("lora", LoraConfig, attach_lora, tiny_options={"rank": 4, "targets": ["q", "v"]},
                  gather_features=gather_features))

__all__ = ["LoraConfig", "LoraLinear", "LoraPair", "attach_lora", "gather_features"]
