"""Prompt-tuning: learned tokens inserted after the prefix (CLS/register) tokens.

Protected space per prompted block: the tokens entering that block (without the prompt slots), stacked
with the rows of the prompt itself (conditions X_old dP^T = 0 and P dP^T = 0, docs/method.md section 2).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, FeatureTaps, block_indices
from pegp_stream.core.pet.prompt.config import PromptConfig
from pegp_stream.core.pet.registry import ProjectionOptions
from pegp_stream.core.projection.spec import SpaceSpec


class PromptedBlock(nn.Module):
    """Runs `base_layer` (a timm Block) on the tokens with this block's prompts in the prompt slots.

    The first prompted block inserts the slots after the `start` prefix tokens; later ones (VPT-deep)
    overwrite the slots the previous blocks produced.
    """

    def __init__(
        self, base_layer: nn.Module, prompt: nn.Parameter, start: int, insert: bool, taps: FeatureTaps, space: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.prompt = prompt
        self.start = start
        self.insert = insert
        self.taps = taps
        self.space = space

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        s, length = self.start, self.prompt.shape[0]
        rest = x[:, s:] if self.insert else x[:, s + length :]
        if self.taps.active:
            self.taps.record(self.space, torch.cat([x[:, :s], rest], dim=1))
        prompt = self.prompt.to(x.dtype).expand(x.shape[0], -1, -1)
        out: torch.Tensor = self.base_layer(torch.cat([x[:, :s], prompt, rest], dim=1), **kwargs)
        return out


class DropPromptSlots(nn.Module):
    """Wraps the final norm: removes the prompt slots so pooling sees the original token layout."""

    def __init__(self, base_layer: nn.Module, start: int, length: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.start = start
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, : self.start], x[:, self.start + self.length :]], dim=1)
        out: torch.Tensor = self.base_layer(x)
        return out


def attach_prompt(
    model: VisionTransformer, config: PromptConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    blocks = block_indices(config.blocks, len(model.blocks), "pet.blocks")
    start, dim = model.num_prefix_tokens, model.embed_dim
    prompts = nn.ParameterDict(
        {str(b): nn.Parameter(torch.randn(config.length, dim) * config.init_std) for b in blocks}
    )
    attachment = Attachment(modules=nn.ModuleDict({"prompts": prompts}), spaces=[])
    for i, b in enumerate(blocks):
        space = f"prompt.blocks.{b}"
        prompt = prompts[str(b)]
        wrapper = PromptedBlock(model.blocks[b], prompt, start, insert=i == 0, taps=taps, space=space)
        attachment.wrap(model.blocks, str(b), wrapper)
        attachment.spaces.append(
            SpaceSpec(space, dim, [prompt], required_rows=prompt.detach)
        )
    attachment.wrap(model, "norm", DropPromptSlots(model.norm, start, config.length))
    return attachment
