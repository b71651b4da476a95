"""Typed, frozen configuration for every area of pegp-stream, validated in one place.

A config is built from a plain mapping (parsed YAML/JSON, or the dict a caller passes to
`create_learner`); missing keys take the defaults below. `to_config` (schema.py) turns pydantic's validation
errors into a `ConfigError` whose message names the offending field as a dotted path.
The sections of `learner.pet` are defined beside their paradigms (`pet/<kind>/config.py`) and found in the
PET registry (`core/pet/registry.py`), which imports nothing of this module.

Sources and their strictness (`load`): a config file, then environment variables, then `--set` overrides.
File keys and `--set` keys are strict: an unknown key anywhere is an error naming it. An environment
variable is config only when it starts with `PEGP_` and its first level (up to the first `__`) names a
top-level key of the config being loaded (`PEGP_LEARNER__PET__KIND`, `PEGP_LOG_FORMAT`); below that level it
is as strict as the others (`PEGP_LEARNER__PET__RANKK` fails naming `learner.pet.rankk`). Any other `PEGP_`
variable is not ours (Kubernetes injects `PEGP_SERVING_SERVICE_HOST` and `_PORT*` for a Service named
`pegp-serving`): it is ignored, with one warning naming the ignored variables.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
)

from pegp_stream.core.pet import PET_CONFIGS, PetConfig
from pegp_stream.core.pet.prompt import PromptConfig
from pegp_stream.data.corrupt import CORRUPTIONS
from pegp_stream.drift import DriftConfig
from pegp_stream.errors import ConfigError
from pegp_stream.inputs.decode import DecodeLimits
from pegp_stream.schema import Fraction, Frozen, Positive, section_by_kind, to_config

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)


class BackboneConfig(BaseModel):
    """The frozen timm VisionTransformer. Keys other than those below go to `timm.create_model`
    unchanged (img_size, patch_size, embed_dim, depth, num_heads, global_pool, ...)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field("vit_tiny_patch16_224", description="timm model name (ViT or DeiT family)")
    pretrained: bool = Field(False, description="load hub weights via timm (needs a reachable hub)")
    checkpoint_path: str | None = Field(
        None, description="local safetensors file or torch state dict of the timm model (head optional)"
    )
    attention: Literal["auto", "fused", "eager"] = Field(
        "auto", description="attention kernel: fused (scaled_dot_product_attention) or eager; auto = eager under "
        "bf16 autocast on CPU, where the fused backward is slower than fp32, else fused",
    )

    @property
    def timm_kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ProjectionConfig(Frozen):
    """PEGP gradient projection and basis growth (docs/method.md sections 1 and 3)."""

    enabled: bool = Field(True, description="False gives the unprojected baseline")
    eps: Fraction = Field(0.999, description="energy threshold for d-dimensional feature spaces (0.999: segments "
                          "of 12 000 samples need it, benchmarks/RESULTS.md 'Full-size S1')")
    eps_bottleneck: Fraction = Field(
        0.999, description="energy threshold for r-dimensional spaces (adapter up, LoRA B); at 0.8 the energy "
        "left free let old features drift on 12 000-sample segments (benchmarks/RESULTS.md 'A default for "
        "eps_bottleneck'); they fill at the first boundary, after which only the d-wide tensor learns",
    )
    consolidate_every: int = Field(0, ge=0, description=(
        "also grow the bases every N learned samples inside a segment (0: only at drift boundaries). It protects "
        "the features of samples the head has already absorbed from the rest of a long segment, so the head's "
        "statistics stay valid; it is not a boundary: segments, their count and their classes are unchanged "
        "(benchmarks/RESULTS.md 'Stale statistics inside long segments')"))
    protect_head: bool = Field(True, description="project the linear head's update against old features")
    max_tokens_per_sample: int | None = Field(
        None, ge=1, description="token subsampling for covariances: CLS plus random others; None = all"
    )
    svd: Literal["randomized", "exact"] = Field("randomized", description="eigensolver for basis growth")
    oversample: int = Field(20, ge=0, description="extra columns for the randomized SVD (20: agreement >= 0.99)")
    power_iters: int = Field(2, ge=0, description="power iterations of the randomized SVD")
    prefix_per_head: bool = Field(
        True, description="prefix keys: one basis per attention head (keeps each head's logits exactly)"
    )


class OptimizerConfig(Frozen):
    """The optimizer of the PET tensors and the linear head."""

    name: Literal["sgd", "adam"] = Field("sgd", description="sgd applies the projected gradient linearly; adam "
                                         "(and any weight decay) also gets its applied update projected")
    lr: float = Field(0.1, gt=0.0, description="learning rate of the PET tensors, in the unit `lr_unit` says (in "
                      "feature units 0.1 suits all four paradigms on the evidence streams; 0.3 costs accuracy, 1.0 "
                      "wrecks them)")
    lr_unit: Literal["feature", "parameter"] = Field(
        "feature", description="feature: lr is how far a step moves the pooled features, the same in every paradigm "
        "(the learner measures the paradigm's sensitivity at the first step with a gradient of each segment: "
        "docs/method.md section 1); parameter: lr applies to the raw PET tensors (the raw rates that suit the "
        "paradigms differ by orders of magnitude)",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum; reset at each consolidation")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay (the applied update is then projected)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's moment decay rates")
    adam_eps: float = Field(1e-8, gt=0.0, description="Adam's denominator epsilon")
    grad_clip: float | None = Field(None, gt=0.0, description="clip the global gradient norm")


class HeadConfig(Frozen):
    """Class-incremental classifier over the pooled feature (docs/method.md section 5)."""

    kind: Literal["linear", "ncm", "slda", "ridge"] = Field(
        "slda", description="slda (the default: streaming LDA, class means and one shared covariance; on the frozen "
        "backbone 26 points above ncm on S1 and S2, benchmarks/RESULTS.md), ncm (cosine nearest class mean), ridge "
        "(RanPAC-style ridge regression on the Gram matrix, lambda by generalised cross-validation) or linear; "
        "slda and ridge are exact in one pass and order-free",
    )
    max_classes: Positive = Field(1024, description="label capacity; a label beyond it is rejected")
    drift_compensation: Literal["none", "sdc"] = Field(
        "sdc", description="sdc: after each step, move the stored class means (ncm, slda) by how the step moved "
        "the features of the batch's samples nearest to them (semantic drift compensation, Yu et al. 2020); costs "
        "one more forward per step without gradient",
    )
    train_through: Literal["auto", "head", "ncm", "linear"] = Field(
        "auto", description="what the PET's loss reads: the predicting head's own logits (head), cosine logits on "
        "running class means kept beside the head (ncm), or a linear classifier trained beside it by the optimizer "
        "(linear, not protected, used for nothing else); predictions always come from `kind`. auto: ncm for slda "
        "and ridge (through their own logits every moving PET collapsed, benchmarks/RESULTS.md), else head",
    )
    train_mask: Literal["none", "segment"] = Field(
        "none", description="'segment': training logits are masked to the labels seen in the current "
        "segment (L2P-style train mask); predictions always use every class",
    )
    lr_scale: float = Field(0.1, gt=0.0, description="linear head learning rate = optimizer.lr * lr_scale, in "
                            "parameter units (0.01 at the defaults)")
    ncm_temperature: float = Field(0.1, gt=0.0, description="ncm: softmax temperature on cosine similarity")
    slda_shrinkage: float = Field(1e-4, gt=0.0, lt=1.0, description="slda: covariance shrinkage s, the precision is "
                                  "((1 - s) Sigma + s I)^-1 (avalanche-lib's form and default)")
    ridge_random_features: int = Field(0, ge=0, description="ridge: width M of the fixed random projection "
                                       "ReLU(x P) before the ridge head (RanPAC); 0 = none, the head reads the "
                                       "pooled feature. The Gram matrix is M x M float64")

    @property
    def trainer(self) -> str:
        """`train_through` resolved: "head", or the kind of head kept beside it for the loss."""
        return trainer_kind(self.kind, self.train_through)


def trainer_kind(kind: str, train_through: str) -> str:
    """What the PET's loss reads for a head of `kind` (see HeadConfig.train_through): "head" or a head kind."""
    if train_through == "auto":
        train_through = "ncm" if kind in ("slda", "ridge") else "head"
    return "head" if train_through == kind else train_through


class LearnerConfig(Frozen):
    """The online learner: frozen backbone, PET paradigm, projection, optimizer and head."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    pet: SerializeAsAny[PetConfig] = Field(default_factory=PromptConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast for backbone and PET compute where native; state stays fp32/fp64"
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N, mps or auto (checked against this "
                        "machine: a device it does not have is a config error)")
    seed: int = Field(0, description="seeds the random initialisation (backbone when not loaded, PET tensors), token "
                      "subsampling and the randomized SVD")

    @field_validator("pet", mode="before")
    @classmethod
    def _pet_by_kind(cls, value: Any) -> Any:
        return section_by_kind(value, PET_CONFIGS, default="prompt", what="PET kind")

    @field_validator("device")
    @classmethod
    def _device_exists(cls, name: str) -> str:
        if name != "auto":
            _check_device(name)
        return name


def _check_device(name: str) -> None:
    """Raise ValueError unless `name` is a torch device of a supported type that this machine has."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name!r} is not a supported torch device; use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name!r}: CUDA is not available on this machine (torch.cuda.is_available() is False); "
                         "use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r}: MPS is not available on this machine; use cpu or auto")


class StreamConfig(Frozen):
    """A labelled stream built from data sets (what `produce` sends and `replay` reads): class-incremental,
    or domain-incremental when `corruptions` is set (every class in every segment, the input drifting)."""

    datasets: tuple[str, ...] = Field(("digits",), min_length=1, description="data sets, streamed one after another")
    data_dir: str | None = Field(None, description=(
        "folder with local data files (default: $PEGPSTREAM_DATA, else ../shared/data); a data set found in "
        "none is downloaded by torchvision into ~/.cache/pegp-stream/torchvision"))
    split: Literal["train", "test"] = Field("train", description="which split of the data sets to stream")
    classes_per_segment: Positive = Field(2, description="classes per segment (per data set)")
    shuffle_classes: bool = Field(False, description="seeded shuffle of the class order")
    blurry: float = Field(0.0, ge=0.0, lt=0.5, description="fraction of each segment mixed with its neighbours")
    limit_per_class: int | None = Field(None, ge=1, description="cap on samples per class")
    markers: bool = Field(True, description="send the segment id with each record (explicit boundaries)")
    seed: int = Field(0, description="seeds the class order (if shuffled), the per-class subsets, the sample "
                      "order, the blurry mixing and the corruption noise")
    corruptions: tuple[str, ...] = Field((), description=(
        "domain-incremental when set: one segment per listed corruption type of the imagecorruptions package "
        "(the bench extra), every class in every segment, each segment from its own disjoint pool of each "
        "class's rows of `split`, corrupted; classes_per_segment and shuffle_classes are unused. Types: "
        + ", ".join(CORRUPTIONS)))
    severity: int = Field(1, ge=1, le=5, description="strength of every corruption (the package's 1-5)")
    holdout: Fraction = Field(0.25, description=(
        "domain streams: share of each segment's pool held out for `eval`'s test data (a class-incremental "
        "stream's test data is the test split instead)"))

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in names if name not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption {', '.join(map(repr, unknown))}; valid: {', '.join(CORRUPTIONS)}")
        return names


class ReplayConfig(Frozen):
    """`pegp-stream replay`: the learner over a stream read from files, no broker involved."""

    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig, description="boundary policy (markers follow stream)")
    batch_size: Positive = Field(16, description="records per learning step")
    log_every: Positive = Field(500, description="print progress every N records")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["learner.pet.kind=lora", "batch_size=8"]` -> nested dict; values are parsed as YAML scalars."""
    import yaml

    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(pair, "an override must look like key.path=value")
        _put(tree, key.strip().split("."), yaml.safe_load(raw) if raw else "")
    return tree


def env_overrides(
    environ: Mapping[str, str], prefix: str = "PEGP_", keys: Collection[str] | None = None
) -> dict[str, Any]:
    """`PEGP_LEARNER__PET__KIND=lora` -> {"learner": {"pet": {"kind": "lora"}}} (values parsed as YAML).

    With `keys` (the config's top-level keys), a variable whose first level is not one of them is skipped and
    the skipped names are logged in one warning (see the module docstring); without, every variable counts."""
    import yaml

    tree: dict[str, Any] = {}
    ignored = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        path = name[len(prefix) :].lower().split("__")
        if keys is not None and path[0] not in keys:
            ignored.append(name)
            continue
        _put(tree, path, yaml.safe_load(raw) if raw else "")
    if ignored:
        log.warning("ignoring environment variables that name no config key: %s", ", ".join(ignored))
    return tree


def load(
    model: type[T],
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build `model` from a YAML/JSON file, then environment variables (PEGP_ prefix, __ between levels),
    then `key=value` overrides, later sources winning; validate once and name any bad field. Environment
    variables that name no top-level key are ignored with a warning (module docstring)."""
    import yaml

    tree: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                tree = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError("--config", f"{path} must hold a mapping at the top level")
    for layer in (env_overrides(environ or {}, keys=model.model_fields), parse_overrides(overrides)):
        tree = merge_tree(tree, layer)
    return to_config(model, tree)


def _put(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(".".join(keys), f"{key} is set both as a value and as a section")
    tree[keys[-1]] = value


def merge_tree(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`, nested mappings merged key by key (neither is modified)."""
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_tree(merged[key], value)
        else:
            merged[key] = value
    return merged


class KafkaConfig(Frozen):
    """Where the labelled samples come from and where bad records go. Security settings pass through to
    kafka-python unchanged; secrets are masked when the config is printed."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    topic: str = Field("pegp-samples", min_length=1, description="input topic of labelled samples")
    dead_letter_topic: str | None = Field(None, description="bad records go here (default: <topic>.dlq)")
    dead_letter_max_bytes: Positive = Field(
        1_000_000, description="largest dead letter (value, key and headers); what does not fit is left out and "
        "named in its pegp.omitted header (the broker's message.max.bytes must allow this plus 4 KiB)",
    )
    client_id: str = Field("pegp-stream", description="Kafka client id of the consumer and the producer")
    group_id: str = Field(
        "pegp-stream-learner", description="consumer group offsets are committed under (for lag tooling only; "
        "the learner assigns partitions itself and never joins the group)",
    )
    batch_size: Positive = Field(16, description="records per learning step")
    max_wait_ms: int = Field(200, ge=0, description="wait at most this long to fill a batch once caught up")
    lag_interval_s: float = Field(5.0, gt=0, description="how often end offsets are fetched for lag")
    retry_initial_s: float = Field(0.5, gt=0, description="first backoff when the broker is unreachable")
    retry_max_s: float = Field(10.0, gt=0, description="longest backoff when the broker is unreachable")
    offset_reset: Literal["fail", "earliest", "latest"] = Field(
        "fail", description="when the checkpointed offset is not in the log (the log was lost, truncated or the "
        "topic recreated): fail (exit 2, nothing skipped), earliest (read the new log from its start) or latest "
        "(skip to its end)",
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed skips aborted transactions where the broker honours it "
        "(the embedded broker does not)",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients talk to the brokers")
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers (PEM file)")
    ssl_certfile: str | None = Field(None, description="client certificate (PEM file) for mutual TLS")
    ssl_keyfile: str | None = Field(None, description="client private key (PEM file) for mutual TLS")
    ssl_password: SecretStr | None = Field(None, description="password of the client private key")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = Field(
        None, description="SASL mechanism (with a SASL_* security_protocol)")
    sasl_plain_username: str | None = Field(None, description="SASL username (PLAIN and SCRAM)")
    sasl_plain_password: SecretStr | None = Field(None, description="SASL password (PLAIN and SCRAM)")

    @field_validator("dead_letter_topic")
    @classmethod
    def _dead_letters_elsewhere(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("topic"):
            raise ValueError(f"{value!r} is the input topic: each dead letter would be read again as input")
        return value

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"

    def client_options(self) -> dict[str, Any]:
        """Connection and security keyword arguments shared by consumer and producer."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers.split(","),
                                   "client_id": self.client_id, "security_protocol": self.security_protocol}
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_mechanism", "sasl_plain_username"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        for name in ("ssl_password", "sasl_plain_password"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name).get_secret_value()
        return options


class CheckpointConfig(Frozen):
    """Where and how often the learned state is written with its offsets."""

    dir: str = Field("checkpoints", description="directory of checkpoint files")
    every_records: Positive = Field(1000, description="checkpoint after at least this many records")
    every_seconds: float | None = Field(60.0, gt=0, description="and at least this often while records flow")
    keep: Positive = Field(3, description="checkpoints kept (older ones are deleted)")


class HttpConfig(Frozen):
    """The HTTP API: predictions, model info, boundaries, health and metrics."""

    enabled: bool = Field(True, description="serve predictions and metrics")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    snapshot_every_updates: Positive = Field(20, description="publish a snapshot after this many updates")
    snapshot_max_age_s: float = Field(
        1.0, gt=0, description="publish learned updates at the latest this long after the last snapshot (also at "
        "every checkpoint and boundary, and as soon as the stream goes idle)",
    )
    max_instances: Positive = Field(64, description="images per prediction request")
    max_body_bytes: Positive = Field(16 * 2**20, description="largest request body, counted while it arrives "
                                     "(chunked and multipart too); 413 beyond it")
    max_request_pixels: Positive = Field(4096 * 4096, description="decoded pixels (H * W) summed over one "
                                         "request's images, checked on each image's declared size before decoding "
                                         "it; 413 beyond it")
    max_connections: Positive = Field(256, description="open connections (and requests in progress) the server "
                                      "takes; a request beyond it gets 503")
    request_timeout_s: float = Field(10.0, gt=0, description="a connection that has not sent a request's headers "
                                     "this long after connecting (or after its last response) is closed; a body "
                                     "that stops arriving for this long gets 408")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this long")
    top_k: Positive = Field(3, description="default number of classes in each answer's top_k")
    boundary_token: SecretStr | None = Field(None, description="bearer token for POST /v1/boundary (unset: off)")
    stall_after_s: float = Field(60.0, gt=0, description="readyz fails when the learner loop is silent this long "
                                 "while records are waiting")


class DistributedConfig(Frozen):
    """Several learner ranks (`torchrun --nproc-per-node N -m pegp_stream run`): read only when torchrun's
    WORLD_SIZE is above 1 (docs/operations.md, "Several ranks")."""

    idle_wait_ms: int = Field(
        50, ge=0, description="with several ranks: how long a rank whose partitions have nothing new waits for a "
        "record before it takes part in the step with an empty micro-batch (replaces kafka.max_wait_ms); every step "
        "waits for the slowest rank, so this bounds how long an idle rank holds the others back",
    )
    timeout_s: float = Field(
        300.0, gt=0, description="how long a rank waits in a collective for the other ranks before it fails (a "
        "rank that died or hangs); torchrun then stops the group and restarts it if --max-restarts allows",
    )


class DaemonConfig(Frozen):
    """`pegp-stream run`: the learner daemon. Keys also come from PEGP_* environment variables and --set."""

    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    decode: DecodeLimits = Field(default_factory=DecodeLimits)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    exit_when_idle_s: float | None = Field(
        None, gt=0, description="stop (checkpointed) once caught up and idle this long; None = run until stopped"
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line, with context")


class EvalConfig(Frozen):
    """`pegp-stream eval`: a learner over a stream with held-out test data per segment, for the accuracy
    matrix (docs/method.md section 7). With `stream.markers` off the learner is told no boundary and relies
    on `drift` (a detector); the runner still evaluates where each true segment's training data ends."""

    name: str = Field("run", description="label of the run in reports")
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig, description="boundary policy (markers follow stream)")
    batch_size: Positive = Field(16, description="records per learning step")
    test_limit_per_class: int | None = Field(None, ge=1, description="cap on held-out samples per class")
    eval_batch_size: Positive = Field(256, description="rows per prediction batch when evaluating")
    joint_epochs: int = Field(
        0, ge=0, description="> 0: offline reference instead: all training data shuffled, this many epochs, no "
        "boundaries, evaluated once at the end",
    )
    probe: bool = Field(
        False, description="also score a nearest-class-mean readout refit on the current features at each "
        "segment end (means from half of each class's held-out data, accuracy on the other half): forgetting "
        "that the probe does not show is in the head, not in the features",
    )
    refit: bool = Field(
        False, description="also score, after the last segment, a head of the learner's kind refit on the final "
        "features of every training sample (an oracle: it rereads the whole stream, which the learner cannot): "
        "what the final features hold once no stored statistic is stale; a linear head is kept as it is",
    )
