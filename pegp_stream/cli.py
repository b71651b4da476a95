"""Command line: `pegp-stream run | serve | broker | produce | replay | eval | demo | pretrain`."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from pegp_stream import __version__
from pegp_stream.errors import PegpError

log = logging.getLogger("pegp_stream")
DATA_DIR_HELP = ("folder with local data files (default: $PEGPSTREAM_DATA, else ../shared/data); data sets found "
                 "in none are downloaded by torchvision into ~/.cache/pegp-stream/torchvision")


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__)
@click.option("--log-level", default="INFO", show_default=True, help="logging level")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="default: the config's")
@click.pass_context
def main(ctx: click.Context, log_level: str, log_format: str | None) -> None:
    """pegp-stream: online continual learning with PEGP-projected parameter-efficient tuning."""
    from pegp_stream.logs import configure

    configure(log_level, log_format or "text")
    ctx.obj = {"log_level": log_level, "log_format": log_format}


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config file")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Run the learner daemon: Kafka in, checkpoints with offsets, boundaries, dead letters."""
    from pegp_stream.config import DaemonConfig, load
    from pegp_stream.logs import configure

    try:
        config = load(DaemonConfig, config_path, os.environ, overrides)
    except PegpError as exc:
        _fail(exc)
    if ctx.obj["log_format"] is None:
        configure(ctx.obj["log_level"], config.log_format)
    sys.exit(_run_daemon(config))


def _run_daemon(config) -> int:
    """Build and run the daemon; any PegpError on the way (a bad setting found at start, a checkpoint that does
    not fit the config, the HTTP port in use) is one line on stderr and exit status 2, never a traceback."""
    import signal

    try:
        daemon = _daemon(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: daemon.request_stop())
        log.info("learner daemon on topic %s at %s", config.kafka.topic, config.kafka.bootstrap_servers)
        return daemon.run()
    except PegpError as exc:
        _fail(exc)


def _daemon(config):
    """The daemon of a plain run; under torchrun (WORLD_SIZE above 1) this process's rank of N
    (pegp_stream/daemon_ranks.py), which joins the process group first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pegp_stream.daemon_ranks import join_ranks

        return join_ranks(config)
    from pegp_stream.daemon import Daemon

    return Daemon(config)


def _follow_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An http(s) URL as given; anything else must be usable as a directory."""
    if value.startswith(("http://", "https://")):
        return value
    return str(click.Path(file_okay=False).convert(value, param, ctx))


@main.command()
@click.option("--follow", "follow", required=True, metavar="DIR|URL", callback=_follow_target,
              help="the learner's checkpoint directory, or its http(s) URL (e.g. http://pegp-learner:8080: "
                   "fetches GET /v1/checkpoint/latest, no shared volume needed)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config (http.* keys)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--poll", default=0.5, show_default=True, help="seconds between looks for a newer checkpoint")
def serve(follow: str, config_path: str | None, overrides: tuple[str, ...], poll: float) -> None:
    """A read-only serving replica: follows the learner's checkpoints and serves the same HTTP API; never learns."""
    import signal

    from pegp_stream.config import DaemonConfig, load
    from pegp_stream.serving.app import HttpServer, create_app
    from pegp_stream.serving.follow import CheckpointFollower

    try:
        config = load(DaemonConfig, config_path, os.environ, overrides)
    except PegpError as exc:
        _fail(exc)
    try:
        follower = CheckpointFollower(follow, poll_s=poll)
        for sig in (signal.SIGTERM, signal.SIGINT):  # before the line that says it serves: a stop may follow at once
            signal.signal(sig, lambda *_: follower.stop())
        server = HttpServer(create_app(config.http, follower.snapshots, limits=config.decode), config.http.host,
                            config.http.port).start()
    except PegpError as exc:  # e.g. the HTTP port in use
        _fail(exc)
    log.info("serving replica on %s, following %s", server.url, follow)
    follower.run()
    server.stop()


@main.command()
@click.option("--port", default=9092, show_default=True, help="port on 127.0.0.1")
@click.option("--host", default="127.0.0.1", show_default=True)
def broker(port: int, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until stopped. SIGTERM or SIGINT stop
    it and exit 0; if the broker exits by itself, its exit status is returned."""
    import signal

    from pegp_stream.kafka.broker import EmbeddedBroker

    embedded = EmbeddedBroker(port=port, host=host)
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the start: a broker in its own session must not outlive us
        signal.signal(sig, lambda *_: embedded.request_stop())
    try:
        embedded.start()
    except PegpError as exc:
        _fail(exc)
    click.echo(f"broker listening on {embedded.bootstrap_servers}")
    sys.exit(embedded.wait())  # 0 after SIGTERM/SIGINT; the broker's own status if it exits by itself


@main.command()
@click.option("--dataset", "datasets", multiple=True, required=True, help="data set(s), streamed in order")
@click.option("--topic", required=True)
@click.option("--bootstrap-servers", default="127.0.0.1:9092", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help=DATA_DIR_HELP)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--partitions", default=1, show_default=True, help="partitions of the topic if it is created")
@click.option("--classes-per-segment", default=2, show_default=True)
@click.option("--shuffle-classes", is_flag=True, help="seeded shuffle of the class order")
@click.option("--markers/--no-markers", default=True, show_default=True, help="send segment markers")
@click.option("--blurry", default=0.0, show_default=True, help="fraction of each segment mixed with neighbours")
@click.option("--limit-per-class", type=int, help="cap on samples per class")
@click.option("--format", "fmt", type=click.Choice(["json", "binary"]), default="json", show_default=True)
@click.option("--image-format", type=click.Choice(["png", "jpeg", "raw"]), default="png", show_default=True)
@click.option("--rate", type=float, help="records per second (default: as fast as possible)")
@click.option("--repeat", default=1, show_default=True, help="send the stream this many times")
@click.option("--seed", default=0, show_default=True)
def produce(datasets, topic, bootstrap_servers, data_dir, split, partitions, classes_per_segment, shuffle_classes,
            markers, blurry, limit_per_class, fmt, image_format, rate, repeat, seed) -> None:
    """Feed a real labelled stream, split by classes into segments, into a Kafka topic."""
    from pegp_stream.config import StreamConfig, to_config
    from pegp_stream.data.streams import build_stream
    from pegp_stream.kafka.produce import ProduceOptions
    from pegp_stream.kafka.produce import produce as send

    try:
        stream_config = to_config(StreamConfig, {
            "datasets": datasets, "data_dir": data_dir, "split": split, "classes_per_segment": classes_per_segment,
            "shuffle_classes": shuffle_classes, "blurry": blurry, "limit_per_class": limit_per_class,
            "markers": markers, "seed": seed,
        })
        stream = build_stream(stream_config)
    except PegpError as exc:
        _fail(exc)
    options = ProduceOptions(topic=topic, bootstrap_servers=bootstrap_servers, partitions=partitions,
                             markers=markers, fmt=fmt, image_format=image_format, rate=rate, repeat=repeat)
    sent = send(stream, options, progress=lambda n: log.info("sent %d records", n))
    click.echo(json.dumps({"topic": topic, "records": sent, "segments": len({i.segment for i in stream.items})}))


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config file")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--out", type=click.Path(dir_okay=False), help="write the summary JSON here")
def replay(config_path: str | None, overrides: tuple[str, ...], out: str | None) -> None:
    """Learn from a stream read from files (no broker): prequential accuracy, boundaries, ranks."""
    from pegp_stream.config import ReplayConfig, load
    from pegp_stream.evaluation.replay import replay as run_replay

    try:
        config = load(ReplayConfig, config_path, os.environ, overrides)
        summary = run_replay(config, log=log.info).as_dict()
    except PegpError as exc:
        _fail(exc)
    text = json.dumps(summary, indent=2)
    click.echo(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")


@main.command("eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config file")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for result.json, matrix.csv, curve.csv and the plots")
@click.option("--plots/--no-plots", default=True, show_default=True, help="write PNG plots (needs matplotlib)")
def evaluate(config_path: str | None, overrides: tuple[str, ...], out: str, plots: bool) -> None:
    """Learn a stream once and evaluate held-out data of every seen segment at each true segment end:
    accuracy matrix, average accuracy, forgetting, BWT, prequential accuracy, throughput."""
    from pegp_stream.config import EvalConfig, load
    from pegp_stream.evaluation.run import run_eval

    try:
        config = load(EvalConfig, config_path, os.environ, overrides)
        result = run_eval(config, log=log.info)
        result.write(out, plots=plots)
    except PegpError as exc:
        _fail(exc)
    click.echo(json.dumps({
        "name": result.name, "average_accuracy": round(result.average_accuracy, 4),
        "forgetting": None if result.forgetting is None else round(result.forgetting, 4),
        "backward_transfer": None if result.backward_transfer is None else round(result.backward_transfer, 4),
        "prequential_accuracy": None if result.prequential_accuracy is None else round(result.prequential_accuracy, 4),
        "records_per_second": round(result.records_per_second, 1), "learner_boundaries": len(result.learner_boundaries),
        "out": out}, indent=2))


@main.command()
@click.option("--limit-per-class", default=300, show_default=True, help="samples per class in the stream")
@click.option("--workdir", default="pegp-demo", show_default=True, type=click.Path(file_okay=False),
              help="checkpoints go here")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a daemon config key")
def demo(limit_per_class: int, workdir: str, overrides: tuple[str, ...]) -> None:
    """The embedded default: the embedded broker, a real Split-MNIST stream produced into it, and the learner
    daemon on it (a tiny ViT pretrained once on digits, adapters, PEGP, nearest-class-mean head), serving
    predictions and metrics over HTTP until stopped (Ctrl-C)."""
    import threading

    from pegp_stream.config import DaemonConfig, StreamConfig, load
    from pegp_stream.data.demo import DEMO_BACKBONE, demo_backbone, demo_stream_datasets
    from pegp_stream.data.streams import build_stream
    from pegp_stream.kafka.broker import EmbeddedBroker, free_port
    from pegp_stream.kafka.produce import ProduceOptions, produce

    backbone = demo_backbone(log=log.info)
    with EmbeddedBroker(port=free_port(), log_path=Path(workdir).absolute() / "broker.log") as embedded:
        stream = build_stream(StreamConfig(datasets=demo_stream_datasets(), limit_per_class=limit_per_class))
        options = ProduceOptions(topic="pegp-demo", bootstrap_servers=embedded.bootstrap_servers, rate=400.0)
        producer = threading.Thread(target=produce, args=(stream, options), daemon=True)
        producer.start()
        defaults = [
            *(f"learner.backbone.{k}={v}" for k, v in DEMO_BACKBONE.items()),
            f"learner.backbone.checkpoint_path={backbone}", "learner.pet.kind=adapter", "learner.head.kind=ncm",
            f"kafka.bootstrap_servers={embedded.bootstrap_servers}", "kafka.topic=pegp-demo",
            f"checkpoint.dir={Path(workdir) / 'checkpoints'}", "checkpoint.every_records=500", "http.port=8080",
        ]
        try:
            config = load(DaemonConfig, None, None, [*defaults, *overrides])
        except PegpError as exc:
            _fail(exc)
        log.info("demo: %d records of %s into topic pegp-demo on %s (broker log: %s/broker.log)", len(stream),
                 "+".join(demo_stream_datasets()), embedded.bootstrap_servers, workdir)
        code = _run_daemon(config)
    click.echo(json.dumps(_demo_summary(Path(workdir) / "checkpoints"), indent=2))
    sys.exit(code)


def _demo_summary(checkpoints: Path) -> dict:
    from pegp_stream.checkpoint import CheckpointStore

    latest = CheckpointStore(checkpoints).load_latest()
    if latest is None:
        return {}
    state = latest.state
    accuracy = state["prequential"]
    return {"checkpoint": str(latest.path), "records_learned": state["stats"]["learned"],
            "boundaries": state["stats"]["boundaries"], "dead_letters": state["stats"]["dead_letters"],
            "prequential_accuracy": round(accuracy["correct"] / max(1, accuracy["total"]), 4),
            "segment_accuracy": {k: round(c / n, 4) for k, (c, n) in accuracy["per_segment"].items()},
            "ranks": {name: int(space["ranks"].sum()) for name, space in state["learner"]["spaces"].items()}}


@main.command()
@click.option("--dataset", default="cifar10", show_default=True, help="data set to pretrain on")
@click.option("--data-dir", type=click.Path(file_okay=False), help=DATA_DIR_HELP)
@click.option("--model", "model_name", default="vit_tiny_patch16_224", show_default=True, help="timm model name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="timm model keyword, e.g. img_size=32 patch_size=4 embed_dim=192 depth=6 num_heads=3")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True, help="random crop and flip")
@click.option("--limit", type=int, help="use N training images drawn at random (seeded by --seed)")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="safetensors file to write")
def pretrain(dataset, data_dir, model_name, overrides, epochs, batch_size, lr, augment, limit, seed, out) -> None:
    """Supervised pretraining of a small timm ViT, saved for `learner.backbone.checkpoint_path`."""
    import hashlib

    import torch

    from pegp_stream.config import BackboneConfig, parse_overrides, to_config
    from pegp_stream.core.prepare import to_model_input
    from pegp_stream.core.pretrain import pretrain as run_pretrain
    from pegp_stream.core.pretrain import save_backbone
    from pegp_stream.data.datasets import load_dataset

    try:
        backbone = to_config(BackboneConfig, {"name": model_name, **parse_overrides(overrides)})
        train, test = (load_dataset(dataset, split=s, data_dir=data_dir) for s in ("train", "test"))
    except PegpError as exc:
        _fail(exc)
    size = backbone.timm_kwargs.get("img_size", 224)
    shape = (3, size, size)

    def tensors(part):
        images = to_model_input(part.images, shape, (0.5,) * 3, (0.5,) * 3)
        return images, torch.as_tensor(part.labels, dtype=torch.int64)

    model, report = run_pretrain(  # a random draw: a split may be stored sorted by class
        backbone, *tensors(train.sample(limit, seed)), epochs=epochs, batch_size=batch_size, lr=lr, augment=augment,
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


if __name__ == "__main__":
    main()
