"""LoRA: a low-rank update s * B A beside chosen frozen linears (or output slices of the fused qkv).

Protected spaces per wrapped linear: its input x (d_in) for every A on it; per LoRA pair the bottleneck
z = A x (r-dim) for its B. With dA x_old = 0, z_old never changes, so dB z_old = 0 keeps old outputs
exactly (pegp-method.md section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import LoraConfig
from .base import Attachment, FeatureTaps, SpaceSpec, block_indices, check_rank


class LoraPair(nn.Module):
    """A (r x d_in) and B (d_out x r, zero-initialised) writing into output columns [start, stop)."""

    def __init__(self, d_in: int, start: int, stop: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(stop - start, rank))
        nn.init.kaiming_uniform_(self.A, a=5**0.5)
        self.start, self.stop = start, stop


class LoraLinear(nn.Module):
    """`base_layer(x)` plus, for each pair, `scale * B (A x)` added to that pair's output columns."""

    def __init__(
        self, base_layer: nn.Linear, pairs: dict[str, LoraPair], scale: float, taps: FeatureTaps, space: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.pairs = nn.ModuleDict(pairs)
        self.scale = scale
        self.taps = taps
        self.space = space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        self.taps.record(f"{self.space}.in", x)
        updates = []
        for name, pair in self.pairs.items():
            z = F.linear(x, pair.A.to(x.dtype))
            self.taps.record(f"{self.space}.{name}.z", z)
            updates.append((pair, F.linear(z, pair.B.to(x.dtype)) * self.scale))
        return out + torch.cat(_place(updates, out), dim=-1)


def _place(updates: list[tuple[LoraPair, torch.Tensor]], out: torch.Tensor) -> list[torch.Tensor]:
    """Lay the pairs' outputs side by side over `out`'s width, zeros where no pair writes."""
    pieces, cursor, lead = [], 0, out.shape[:-1]
    for pair, update in sorted(updates, key=lambda item: item[0].start):
        if pair.start > cursor:
            pieces.append(out.new_zeros(*lead, pair.start - cursor))
        pieces.append(update)
        cursor = pair.stop
    if cursor < out.shape[-1]:
        pieces.append(out.new_zeros(*lead, out.shape[-1] - cursor))
    return pieces


def _target_linears(block: nn.Module, target: str) -> tuple[nn.Module, str, int, int]:
    """(parent module, attribute, output start, output stop) of a LoRA target inside a timm Block."""
    if target in ("qkv", "q", "k", "v"):
        qkv = block.attn.qkv
        third = qkv.out_features // 3
        start = {"qkv": 0, "q": 0, "k": third, "v": 2 * third}[target]
        return block.attn, "qkv", start, qkv.out_features if target == "qkv" else start + third
    if target == "proj":
        return block.attn, "proj", 0, block.attn.proj.out_features
    linear = getattr(block.mlp, target)
    return block.mlp, target, 0, linear.out_features


def attach_lora(model: VisionTransformer, config: LoraConfig, taps: FeatureTaps) -> Attachment:
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
