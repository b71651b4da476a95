"""LoRA: a low-rank update s * B A beside chosen frozen linears (or output slices of the fused qkv).

Protected spaces per wrapped linear: its input x (d_in) for every A on it; per LoRA pair the bottleneck
z = A x (r-dim) for its B. With dA x_old = 0, z_old never changes, so dB z_old = 0 keeps old outputs
exactly (docs/method.md section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, FeatureTaps, block_indices, check_rank, submodule
from pegp_stream.core.pet.lora.config import LoraConfig
from pegp_stream.core.pet.registry import ProjectionOptions
from pegp_stream.core.projection.spec import SpaceSpec


class LoraPair(nn.Module):
    """A (r x d_in) and B (d_out x r, zero-initialised) writing into output columns [start, stop)."""

    def __init__(self, d_in: int, start: int, stop: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(stop - start, rank))
        nn.init.kaiming_uniform_(self.A, a=5**0.5)
        self.start, self.stop = start, stop


class LoraLinear(nn.Module):
    """`base_layer(x)` plus, for each pair, `scale * B (A x)` added to that pair's output columns.

    All pairs of one linear run as one low-rank product: z = x [A_1; A_2; ...]^T, then z times a
    block-structured B (each pair's B in its own output rows and rank columns, zeros elsewhere)."""

    def __init__(
        self, base_layer: nn.Linear, pairs: dict[str, LoraPair], scale: float, taps: FeatureTaps, space: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.pairs = nn.ModuleDict(pairs)
        self.scale = scale
        self.taps = taps
        self.space = space
        self.rank = next(iter(pairs.values())).A.shape[0]

    def named_pairs(self) -> list[tuple[str, LoraPair]]:
        """The LoRA pairs by name, in insertion order."""
        return [(name, submodule(self.pairs, name, LoraPair)) for name in self.pairs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = [pair for _, pair in self.named_pairs()]
        a = torch.cat([pair.A for pair in pairs]).to(x.dtype)
        z = F.linear(x, a)
        if self.taps.active:
            self.taps.record(f"{self.space}.in", x)
            for i, name in enumerate(self.pairs):
                self.taps.record(f"{self.space}.{name}.z", z[..., i * self.rank : (i + 1) * self.rank])
        b = x.new_zeros(self.base_layer.out_features, len(pairs) * self.rank)
        for i, pair in enumerate(pairs):
            b[pair.start : pair.stop, i * self.rank : (i + 1) * self.rank] = pair.B.to(x.dtype)
        frozen: torch.Tensor = self.base_layer(x)
        return frozen + F.linear(z, b) * self.scale


def _target_linears(block: nn.Module, target: str) -> tuple[nn.Module, str, int, int]:
    """(parent module, attribute, output start, output stop) of a LoRA target inside a timm Block."""
    if target in ("qkv", "q", "k", "v"):
        qkv = submodule(block, "attn.qkv", nn.Linear)
        third = qkv.out_features // 3
        start = {"qkv": 0, "q": 0, "k": third, "v": 2 * third}[target]
        return block.get_submodule("attn"), "qkv", start, qkv.out_features if target == "qkv" else start + third
    if target == "proj":
        return block.get_submodule("attn"), "proj", 0, submodule(block, "attn.proj", nn.Linear).out_features
    return block.get_submodule("mlp"), target, 0, submodule(block, f"mlp.{target}", nn.Linear).out_features


def attach_lora(
    model: VisionTransformer, config: LoraConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    blocks = block_indices(config.blocks, len(model.blocks), "pet.blocks")
    wrappers = nn.ModuleDict()
    attachment = Attachment(modules=nn.ModuleDict({"linears": wrappers}), spaces=[])
    for b in blocks:
        grouped: dict[tuple[int, str], tuple[nn.Module, str, dict[str, LoraPair]]] = {}
        for target in config.targets:
            parent, attr, start, stop = _target_linears(model.blocks[b], target)
            linear = getattr(parent, attr)
            check_rank(config.rank, min(linear.in_features, stop - start), "pet.rank")
            entry = grouped.setdefault((id(parent), attr), (parent, attr, {}))
            entry[2][target] = LoraPair(linear.in_features, start, stop, config.rank)
        for parent, attr, pairs in grouped.values():
            space = f"lora.blocks.{b}.{'attn' if parent is model.blocks[b].attn else 'mlp'}.{attr}"
            linear = getattr(parent, attr)
            wrapper = LoraLinear(linear, pairs, config.alpha / config.rank, taps, space)
            wrappers[space.replace(".", "_")] = wrapper
            attachment.wrap(parent, attr, wrapper)
            attachment.spaces.append(SpaceSpec(f"{space}.in", linear.in_features, [p.A for p in pairs.values()]))
            attachment.spaces += [
                SpaceSpec(f"{space}.{name}.z", config.rank, [pair.B], bottleneck=True)
                for name, pair in pairs.items()
            ]
    return attachment
