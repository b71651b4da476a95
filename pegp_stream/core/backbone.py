"""Build and freeze a timm VisionTransformer: from hub weights, a local checkpoint file, or random."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import TypeVar

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from pegp_stream.config import BackboneConfig
from pegp_stream.errors import CheckpointError, ConfigError


def build_backbone(config: BackboneConfig) -> VisionTransformer:
    """Create the timm model named in `config`, load its weights, and freeze it (eval mode, no grads).

    The classifier head is dropped (`num_classes=0`): pegp-stream owns the head. Only the ViT/DeiT family
    (`timm.models.vision_transformer.VisionTransformer`) is supported, since PET attaches to its blocks.
    """
    _check_geometry(config)
    if config.pretrained:
        _check_hub_reachable(config.name)
    try:
        model = timm.create_model(
            config.name, pretrained=config.pretrained, num_classes=0, **config.timm_kwargs
        )
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise ConfigError("backbone.name", str(exc)) from None
    except TypeError as exc:  # an unknown keyword reaches the model's __init__
        raise ConfigError("backbone", f"timm.create_model rejected the options: {exc}") from None
    except Exception as exc:  # the hub's errors when weights cannot be fetched (HF_HUB_OFFLINE, 404, network)
        if not config.pretrained:
            raise
        raise ConfigError("backbone.pretrained", f"cannot get the weights of {config.name!r} "
                          f"({type(exc).__name__}: {_first_line(exc)}); {OFFLINE_HINT}") from None
    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            "backbone.name", f"{config.name!r} is a {type(model).__name__}; a timm VisionTransformer is needed"
        )
    if config.checkpoint_path:
        load_backbone_weights(model, config.checkpoint_path)
    return freeze(model)


OFFLINE_HINT = (
    "without network, set backbone.pretrained=false and backbone.checkpoint_path to a local safetensors or torch "
    "file of the timm model (downloaded where the hub is reachable, or written by `pegp-stream pretrain`), or fill "
    "the Hugging Face cache (HF_HOME) where the hub is reachable and set HF_HUB_OFFLINE=1"
)
HUB_PROBE_TIMEOUT_S = 5.0


def _check_hub_reachable(name: str) -> None:
    """Fail fast when `name`'s weights must come from the Hugging Face Hub, are not in its local cache, and
    the hub does not answer one request: the hub client would otherwise retry every file for about a minute
    before failing. Proxy settings in the environment apply (urllib reads them, as the hub client does)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _hub_weights_cached(name) is not False:
        return
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # the hub answered (any status): reachable
    except OSError as exc:  # URLError, timeouts, refused connections, unknown hosts
        reason = getattr(exc, "reason", exc)
        raise ConfigError("backbone.pretrained", f"the weights of {name!r} are not in the local Hugging Face cache "
                          f"and the hub at {constants.ENDPOINT} is unreachable ({reason}); {OFFLINE_HINT}") from None


def _hub_weights_cached(name: str) -> bool | None:
    """Whether timm would load `name`'s weights from the Hugging Face cache; None when they do not come from
    the hub (unknown name, or another source)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict:
        return None
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str) for f in files)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def freeze(model: ModuleT) -> ModuleT:
    """Switch off gradients and training behaviour (dropout, drop-path) for every backbone weight."""
    model.requires_grad_(False)
    return model.eval()


def load_backbone_weights(model: VisionTransformer, path: str | Path) -> None:
    """Load a safetensors file or a torch state dict (optionally nested under 'state_dict'/'model') into
    `model`. Head tensors are ignored; position embeddings are resampled by timm when sizes differ; any
    other mismatch raises CheckpointError listing the keys."""
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:  # timm's filter reshapes tensors and fails on foreign layouts
        raise CheckpointError(f"{path}: not a checkpoint of a timm VisionTransformer ({exc})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{path}: does not fit backbone: {exc}") from None
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a torch file, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file formats raise many types
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return state


def _check_geometry(config: BackboneConfig) -> None:
    kwargs = config.timm_kwargs
    img_size, patch_size = kwargs.get("img_size"), kwargs.get("patch_size")
    if img_size is None or patch_size is None:
        return
    sizes = img_size if isinstance(img_size, list | tuple) else (img_size, img_size)
    if any(int(s) % int(patch_size) for s in sizes):
        raise ConfigError("backbone.img_size", f"{img_size} is not a multiple of patch_size {patch_size}")
