"""Bottleneck adapters in parallel to a block's attention or MLP sub-layer.

Protected spaces per adapter: the input x (d-dim) for W_down and the bottleneck y = act(W_down x)
(r-dim) for W_up (docs/method.md section 2). Both conditions together keep old outputs exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.adapter.config import AdapterConfig
from pegp_stream.core.pet.base import Attachment, FeatureTaps, block_indices, check_rank, submodule
from pegp_stream.core.pet.registry import ProjectionOptions
from pegp_stream.core.projection.spec import SpaceSpec

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ParallelAdapter(nn.Module):
    """`base_layer(x) + scale * up(act(down(x)))`; `up` starts at zero, so attaching changes nothing."""

    def __init__(
        self, base_layer: nn.Module, dim: int, config: AdapterConfig, taps: FeatureTaps, space: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.down = nn.Linear(dim, config.rank, bias=False)
        self.act = _ACTIVATIONS[config.activation]()
        self.up = nn.Linear(config.rank, dim, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)
        self.scale = config.scale
        self.taps = taps
        self.space = space

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        hidden = self.act(F.linear(x, self.down.weight.to(x.dtype)))
        self.taps.record(f"{self.space}.down", x)
        self.taps.record(f"{self.space}.up", hidden)
        frozen: torch.Tensor = self.base_layer(x, **kwargs)
        return frozen + self.scale * F.linear(hidden, self.up.weight.to(x.dtype))


def attach_adapter(
    model: VisionTransformer, config: AdapterConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    blocks = block_indices(config.blocks, len(model.blocks), "pet.blocks")
    dim = model.embed_dim
    check_rank(config.rank, dim, "pet.rank")
    adapters = nn.ModuleDict()
    attachment = Attachment(modules=nn.ModuleDict({"adapters": adapters}), spaces=[])
    for b in blocks:
        block = model.blocks[b]
        space = f"adapter.blocks.{b}.{config.placement}"
        adapter = ParallelAdapter(getattr(block, config.placement), dim, config, taps, space)
        adapters[str(b)] = adapter
        attachment.wrap(block, config.placement, adapter)
        attachment.spaces += [
            SpaceSpec(f"{space}.down", dim, [adapter.down.weight]),
            SpaceSpec(f"{space}.up", config.rank, [adapter.up.weight], bottleneck=True),
        ]
    return attachment


def adapter_modules(attachment: Attachment) -> dict[str, ParallelAdapter]:
    adapters = submodule(attachment.modules, "adapters", nn.ModuleDict)
    return {b: submodule(adapters, b, ParallelAdapter) for b in adapters}
