"""Command line: `pegp-stream replay | pretrain` (the daemon commands join as they land)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import PegpError

log = logging.getLogger("pegp_stream")


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__)
@click.option("--log-level", default="INFO", show_default=True, help="logging level")
def main(log_level: str) -> None:
    """pegp-stream: online continual learning with PEGP-projected parameter-efficient tuning."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config file")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--out", type=click.Path(dir_okay=False), help="write the summary JSON here")
def replay(config_path: str | None, overrides: tuple[str, ...], out: str | None) -> None:
    """Learn from a stream read from files (no broker): prequential accuracy, boundaries, ranks."""
    from .config import ReplayConfig, load
    from .replay_run import replay as run_replay

    try:
        config = load(ReplayConfig, config_path, os.environ, overrides)
        summary = run_replay(config, log=log.info).as_dict()
    except PegpError as exc:
        _fail(exc)
    text = json.dumps(summary, indent=2)
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")


@main.command()
@click.option("--limit-per-class", default=300, show_default=True, help="samples per class in the stream")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a replay config key")
def demo(limit_per_class: int, overrides: tuple[str, ...]) -> None:
    """The embedded default: pretrain (once) a tiny ViT on digits, then learn Split-MNIST with PEGP."""
    from .config import ReplayConfig, load
    from .demo import DEMO_BACKBONE, demo_backbone, demo_stream_datasets
    from .replay_run import replay as run_replay

    defaults = [
        *(f"learner.backbone.{k}={v}" for k, v in DEMO_BACKBONE.items()),
        f"learner.backbone.checkpoint_path={demo_backbone(log=log.info)}",
        "learner.pet.kind=adapter",
        f"stream.datasets=[{','.join(demo_stream_datasets())}]",
        f"stream.limit_per_class={limit_per_class}",
        "log_every=500",
    ]
    try:
        config = load(ReplayConfig, None, None, [*defaults, *overrides])
        summary = run_replay(config, log=log.info).as_dict()
    except PegpError as exc:
        _fail(exc)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--dataset", default="cifar10", show_default=True, help="data set to pretrain on")
@click.option("--data-dir", type=click.Path(file_okay=False), help="folder with the data files")
@click.option("--model", "model_name", default="vit_tiny_patch16_224", show_default=True, help="timm model name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="timm model keyword, e.g. img_size=32 patch_size=4 embed_dim=192 depth=6 num_heads=3")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True, help="random crop and flip")
@click.option("--limit", type=int, help="use only the first N training images")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="safetensors file to write")
def pretrain(dataset, data_dir, model_name, overrides, epochs, batch_size, lr, augment, limit, seed, out) -> None:
    """Supervised pretraining of a small timm ViT, saved for `learner.backbone.checkpoint_path`."""
    import hashlib

    import torch

    from .config import BackboneConfig, parse_overrides, to_config
    from .datasets import load_dataset
    from .pretrain import pretrain as run_pretrain
    from .pretrain import save_backbone
    from .stream.preprocess import to_model_input

    try:
        backbone = to_config(BackboneConfig, {"name": model_name, **parse_overrides(overrides)})
        train, test = (load_dataset(dataset, split=s, data_dir=data_dir) for s in ("train", "test"))
    except PegpError as exc:
        _fail(exc)
    size = backbone.timm_kwargs.get("img_size", 224)
    shape = (3, size, size)

    def tensors(part, count=None):
        images = to_model_input(part.images[:count], shape, (0.5,) * 3, (0.5,) * 3)
        return images, torch.as_tensor(part.labels[:count], dtype=torch.int64)

    model, report = run_pretrain(
        backbone, *tensors(train, limit), epochs=epochs, batch_size=batch_size, lr=lr, augment=augment,
        seed=seed, test=tensors(test), log=log.info,
    )
    path = save_backbone(model, out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {"dataset": dataset, "backbone": backbone.model_dump(), "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "augment": augment, "limit": limit, "seed": seed, "steps": report.steps,
            "seconds": round(report.seconds, 1), "test_accuracy": report.test_accuracy, "sha256": digest,
            "normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3}, "torch": torch.__version__}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    click.echo(json.dumps(meta, indent=2))
