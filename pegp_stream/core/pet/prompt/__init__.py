"""Prompt-tuning (layers.py: the prompted blocks; config.py: `learner.pet` with `kind: prompt`)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from pegp_stream.core.pet.base import Attachment
from pegp_stream.core.pet.prompt.config import PromptConfig
from pegp_stream.core.pet.prompt.layers import DropPromptSlots, PromptedBlock, attach_prompt
from pegp_stream.core.pet.registry import FeatureOf, Hook, Paradigm, register


def gather_features(model: VisionTransformer, attachment: Attachment, hook: Hook) -> None:
    """Test hook: the tokens entering each prompted block, without prompt slots. The first prompted block's are
    the output of the module before it (`norm_pre` or the frozen block before it); a later one's are the output
    of the frozen block before it with the prompt slots removed."""
    start = model.num_prefix_tokens
    for i, spec in enumerate(attachment.spaces):
        b = int(spec.name.rsplit(".", 1)[1])
        before = getattr(model.blocks[b - 1], "base_layer", model.blocks[b - 1]) if b else model.norm_pre
        if i == 0:
            hook(before, spec.name, lambda out: out)
        else:
            stop = start + spec.params[0].shape[0]
            hook(before, spec.name, _without_slots(start, stop))


def _without_slots(start: int, stop: int) -> FeatureOf:
    """The tokens with the prompt slots [start, stop) removed."""
    return lambda out: torch.cat([out[:, :start], out[:, stop:]], dim=1)


register(Paradigm("prompt", PromptConfig, attach_prompt, tiny_options={"length": 4}, gather_features=gather_features))

__all__ = ["DropPromptSlots", "PromptConfig", "PromptedBlock", "attach_prompt", "gather_features"]
