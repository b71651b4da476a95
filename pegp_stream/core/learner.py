"""The online learner: predict-then-learn on a frozen ViT with PET tensors, PEGP-projected updates,
segment feature statistics and basis growth at drift boundaries. No I/O happens here.

One `learn_many` call is one step, read top to bottom: validate, forward (recording features), prequential
predictions, loss, backward, project, optimizer step, project the applied update (optimizers that are not
linear in the gradient), accumulate features.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config

from pegp_stream.config import HeadConfig, LearnerConfig, to_config, trainer_kind
from pegp_stream.core.backbone import build_backbone
from pegp_stream.core.heads import Compensating, Head, LinearHead, build_head
from pegp_stream.core.pet import attach
from pegp_stream.core.pet.base import FeatureTaps
from pegp_stream.core.prepare import to_model_input
from pegp_stream.core.projection.space import ProtectedSpace
from pegp_stream.core.projection.spec import SpaceSpec
from pegp_stream.core.update import build_optimizer, build_update_projection
from pegp_stream.distributed import Collective, SingleProcess
from pegp_stream.errors import CheckpointError, LabelCapacityError, StateMismatchError
from pegp_stream.inputs.decode import canonical_label

log = logging.getLogger(__name__)
Label = int | str
STATE_FORMAT = 1
# Trained tensors (PET and head) are kept in float64 and cast to the compute dtype in the forward. With
# float32 masters, rounding W_old + delta would add a component inside span(M) of order ulp(W) at every
# step; float64 keeps the applied update orthogonal to old features to ~1e-12 over long streams, for the
# price of a few MB (these tensors are small next to the frozen backbone).
MASTER_DTYPE = torch.float64


@dataclass(frozen=True)
class LearnResult:
    """Outcome of one `learn_many` step.

    predictions: per input row, the label predicted *before* the update from the same forward (None when
    no class was known before this batch, or the row was rejected); loss: mean loss over the accepted rows
    (nan if none); rejected: row index -> reason, for rows that did not take part in the update.
    """

    predictions: list[Label | None]
    loss: float
    rejected: dict[int, str]
    sample_losses: list[float | None] = field(default_factory=list)
    features: torch.Tensor | None = None

    """sample_losses: per input row, the loss of the pre-update prediction (None for rejected rows);
    features: (rows, d) pooled features from the same forward, NaN rows for rejected rows. Both feed drift
    detectors without a second forward."""


@dataclass(frozen=True)
class Prediction:
    """labels: the arg-max class per row (None while no class is known); probs: (rows, len(classes))."""

    labels: list[Label | None]
    probs: torch.Tensor
    classes: list[Label]


def create_learner(config: LearnerConfig | Mapping[str, Any] | None = None,
                   collective: Collective | None = None) -> Learner:
    """Build a learner from a typed config or a plain mapping (missing keys take defaults); `collective`: the
    ranks it learns with (one, by default)."""
    return Learner(to_config(LearnerConfig, config), collective)


class Learner:
    def __init__(self, config: LearnerConfig, collective: Collective | None = None) -> None:
        self.config = config
        # the ranks that take every step together (docs/method.md section 9); alone, every collective is the identity
        self.collective = collective or SingleProcess()
        self.device = _resolve_device(config.device)
        self.autocast_dtype = _resolve_precision(config.precision, self.device)
        self.taps = FeatureTaps()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.backbone = build_backbone(config.backbone)
            self.backbone_digest = weights_digest(self.backbone)  # before PET attaches (it may wrap modules)
            self.attachment = attach(self.backbone, config.pet, self.taps, config.projection)
        dim = self.backbone.num_features
        self.head = build_head(config.head, dim, seed=config.seed, linear_dtype=MASTER_DTYPE)
        self.trainer = _trainer(config.head, self.head, dim, config.seed)
        # every head that observes the features: the predicting one, and the one the loss reads if another
        self.heads = [self.head] if self.trainer is self.head else [self.head, self.trainer]
        compensating = config.head.drift_compensation == "sdc"
        self._compensated = [head for head in self.heads if compensating and isinstance(head, Compensating)]
        self.input_size = (self.backbone.patch_embed.proj.in_channels, *self.backbone.patch_embed.img_size)
        _choose_attention(self.backbone, config.backbone.attention, self.device, self.autocast_dtype)
        self.backbone.to(self.device)
        self.attachment.modules.to(self.device)
        for head in self.heads:
            head.to(self.device)
        self.pet_parameters = self.attachment.pet_parameters()
        for param in self.pet_parameters.values():
            param.data = param.data.to(MASTER_DTYPE)
        self.spaces = [ProtectedSpace(spec, config.projection, self.device) for spec in self._space_specs()]
        head_parameters = [param for head in self.heads for param in head.parameters()]
        self.optimizer = build_optimizer(config, list(self.pet_parameters.values()), head_parameters)
        self.update_projection = build_update_projection(config, self.spaces)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.classes: list[Label] = []
        self._class_index: dict[Label, int] = {}
        self.segment_classes: set[int] = set()
        self.updates = 0
        self.samples_learned = 0
        self.consolidations = 0  # drift boundaries: segment k of the stream follows the k-th
        self.growths = 0  # basis growths: one per boundary, plus those inside segments (`consolidate_every`)
        self.grown_at = 0  # samples_learned at the last growth
        # PET lr per unit of optimizer.lr (lr_unit "feature"): measured at each segment's first step with a gradient
        self.lr_factor: float | None = None if self._calibrates else 1.0
        self._set_learning_rates()

    # ----------------------------------------------------------------------------------------------------
    # the step

    def learn_many(self, images: torch.Tensor, labels: Sequence[Label]) -> LearnResult:
        """Predict each row with the current model, then take one projected step on the batch. Labels are
        taken in canonical form (`inputs.decode.canonical_label`): 7 and "7" are one class, reported as 7."""
        images = self._check_images(images)
        if len(labels) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        labels = [canonical_label(label) for label in labels]  # 7 and "7" are one class
        rejected = {i: "non-finite pixel values" for i in _nonfinite_rows(images)}
        rows = [i for i in range(images.shape[0]) if i not in rejected]
        predictions: list[Label | None] = [None] * images.shape[0]
        known = len(self.classes)
        targets = self._targets([labels[i] for i in rows])
        step = self._forward(images if len(rows) == images.shape[0] else images[rows], targets, known)
        if not torch.isfinite(step.per_sample_loss).all():
            bad = (~torch.isfinite(step.per_sample_loss)).nonzero().flatten().tolist()
            rejected.update({rows[j]: "non-finite loss" for j in bad})
            keep = [j for j in range(len(rows)) if j not in bad]
            rows, targets = [rows[j] for j in keep], targets[keep]
            step = self._forward(images[rows], targets, known)
        sample_losses: list[float | None] = [None] * images.shape[0]
        count, mean_loss = self._global_loss(step)
        if count == 0:
            return LearnResult(predictions, math.nan, dict(sorted(rejected.items())), sample_losses)
        features = torch.full((images.shape[0], step.features["head"].shape[1]), math.nan)
        features[rows] = step.features["head"].cpu()
        for row, predicted, loss in zip(rows, step.predicted, step.per_sample_loss.tolist(), strict=True):
            predictions[row], sample_losses[row] = predicted, loss
        learned = images if len(rows) == images.shape[0] else images[rows]
        self._update(step, learned)
        if self._compensated and step.loss.requires_grad:
            self._compensate(step, learned)
        self._observe(step, targets)
        every = self.config.projection.consolidate_every
        if every and self.samples_learned - self.grown_at >= every:
            self._grow()
        return LearnResult(predictions, mean_loss, dict(sorted(rejected.items())), sample_losses, features)

    def _forward(self, images: torch.Tensor, targets: torch.Tensor, known: int) -> _Step:
        """The training forward on this rank's rows (none is allowed: another rank may have some)."""
        with self.taps.recording() as features, self._autocast():
            pooled = self._pooled(images)
        pooled = pooled.float()
        if self.lr_factor is None and pooled.requires_grad:
            pooled.retain_grad()  # the loss's gradient on the features calibrates the PET's lr (`_calibrate`)
        features["head"] = pooled.detach()
        logits = self.trainer(pooled, len(self.classes))
        if self.trainer is not self.head:
            with torch.no_grad():
                scores = self.head(pooled.detach(), known)
        else:
            scores = logits.detach()
        predicted = scores[:, :known].argmax(dim=1).tolist() if known else [None] * len(targets)
        per_sample = F.cross_entropy(self._train_mask(logits), targets, reduction="none")
        labels = [self.classes[i] if i is not None else None for i in predicted]
        return _Step(labels, per_sample, per_sample.mean(), dict(features), pooled)

    def _global_loss(self, step: _Step) -> tuple[int, float]:
        """(rows, mean loss) of the step over all ranks; sets `step.loss` to this rank's share of the mean loss:
        its rows' summed loss over the global count, so the ranks' gradients sum to the gradient of the mean."""
        losses = step.per_sample_loss
        mine = torch.tensor([len(losses), losses.detach().double().sum().item()], dtype=torch.float64,
                            device=self.device)
        count, total = self.collective.all_reduce([mine])[0].tolist()
        step.loss = losses.sum() / max(count, 1.0)
        return int(count), total / max(count, 1.0)

    def _update(self, step: _Step, images: torch.Tensor) -> None:
        loss = step.loss
        if not loss.requires_grad:  # nothing trained by gradient (no PET tensors, a head without parameters)
            self.updates += 1
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # the ranks' summed gradient is the whole batch's: every rank then takes the same projected step
        self.collective.all_reduce([p.grad for group in self.optimizer.param_groups for p in group["params"]
                                    if p.grad is not None])
        if self.lr_factor is None and step.pooled.grad is not None:
            self._calibrate(images, step.pooled.grad)
        for space in self.spaces:
            space.project_params_grad_()
        if self.config.optimizer.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.optimizer.grad_clip)
        with self.update_projection.around_step():
            self.optimizer.step()
        self.updates += 1

    @torch.no_grad()
    def _calibrate(self, images: torch.Tensor, feature_grad: torch.Tensor) -> None:
        """Set the PET's lr so that `optimizer.lr` means a step in feature space (lr_unit "feature"); run at the
        first step with a gradient of every segment.

        With J the Jacobian of the batch's pooled features F in the PET tensors, v = dL/dF and g = J^T v the
        gradient, an SGD step of size eta moves F by eta J g. SGD on F itself at rate lr would move it by
        lr |v|; the two agree in length when eta = lr |v| / (|g| |J u|), u = g / |g|. In general g is the step
        the optimizer would apply at lr 1 (`_unit_step`: Adam's, momentum included) before the projection: the
        factor is the paradigm's sensitivity; the projection then removes what would move old features (sized on
        the projected step instead, it would grow the step along the protected span's leftovers). |J u| is
        measured by a central difference along u in fp32 (`_feature_sensitivity`); the factor depends on the
        paradigm's sensitivity, not on the loss's size, and is kept in the learned state."""
        params = list(self.pet_parameters.values())
        steps = self._unit_step(params)
        d_norm = _norm(steps)
        v_norm = self.collective.norm(feature_grad)
        if not (d_norm > 0 and math.isfinite(d_norm) and v_norm > 0):
            return
        directional = self._feature_sensitivity(images, params, [d / d_norm for d in steps])
        if directional > 0 and math.isfinite(directional):
            self.lr_factor = v_norm / (d_norm * directional)
            self._set_learning_rates()

    def _unit_step(self, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """The step the optimizer would apply to `params` (the PET tensors) at lr 1 with the current gradient:
        taken, then undone (tensors and optimizer state as they were)."""
        saved = copy.deepcopy(self.optimizer.state_dict())
        everything = [p for group in self.optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in everything]
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = 1.0 if i == 0 else 0.0
        self.optimizer.step()
        steps = [p.detach() - old for p, old in zip(params, before, strict=False)]
        for p, old in zip(everything, before, strict=True):
            p.copy_(old)
        self.optimizer.load_state_dict(saved)
        return steps

    def _feature_sensitivity(self, images: torch.Tensor, params: list[torch.nn.Parameter],
                             direction: list[torch.Tensor]) -> float:
        """|J u|: how far the batch's pooled features move per unit step of the PET tensors along `direction`
        (a unit vector), by a central difference whose step is grown or shrunk until the features move by
        about 1e-3 of their size (well above fp32 rounding, well inside the linear range)."""
        saved = [p.detach().clone() for p in params]
        size = self.collective.norm(self._pooled(images).float())  # norms over all ranks' rows: one factor
        h, moved = 1e-3, 0.0
        for _ in range(4):
            shifted = []
            for sign in (1.0, -1.0):
                for p, d, old in zip(params, direction, saved, strict=True):
                    p.copy_(old + sign * h * d)
                shifted.append(self._pooled(images).float())
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
            moved = self.collective.norm(shifted[0] - shifted[1]) / 2
            if not 1e-4 < moved / max(size, 1e-12) < 1e-2:
                h *= 1e-3 * size / max(moved, 1e-12 * size) if moved > 0 else 1e3
                continue
            break
        return moved / h

    def _set_learning_rates(self) -> None:
        """The configured rates (after a resume, the optimizer's saved ones would otherwise win): PET at
        optimizer.lr times the measured factor, the linear head at optimizer.lr * head.lr_scale."""
        opt = self.config.optimizer
        self.optimizer.param_groups[0]["lr"] = opt.lr * (self.lr_factor or 0.0)
        for group in self.optimizer.param_groups[1:]:
            group["lr"] = opt.lr * self.config.head.lr_scale

    @torch.no_grad()
    def _compensate(self, step: _Step, images: torch.Tensor) -> None:
        """Semantic drift compensation: the step just moved the features; move the stored class means with
        them, estimated from the batch, and let the batch itself be observed at its new features."""
        with self._autocast():
            after = self._pooled(images).float()
        before, shifted = self.collective.all_gather([step.features["head"], after])  # every rank's rows
        for head in self._compensated:
            head.compensate(before, shifted - before)
        step.features["head"] = after

    @torch.no_grad()
    def _observe(self, step: _Step, targets: torch.Tensor) -> None:
        for space in self.spaces:
            space.accumulate(self._subsample_tokens(step.features[space.name]))
        # every rank's heads observe the whole batch (slda's merge and sdc's weights are not sums of shares)
        features, targets = self.collective.all_gather([step.features["head"], targets])
        for head in self.heads:
            head.observe(features, targets)
        self.samples_learned += len(targets)

    # ----------------------------------------------------------------------------------------------------
    # boundaries, inference, state

    def consolidate(self) -> dict[str, int]:
        """A drift boundary: grow every basis from the covariance of the features since the last growth,
        reset the covariances and the optimizer state (momentum), start a segment. Returns the rank of every
        protected space."""
        self.consolidations += 1
        self.segment_classes.clear()
        return self._grow()

    def _grow(self) -> dict[str, int]:
        """Grow every basis (a boundary's, or one inside a segment every `projection.consolidate_every`
        samples): the features seen since the last growth join the protected spaces, momentum restarts (it
        holds directions the new bases forbid) and the PET's sensitivity is measured again."""
        ranks = {}
        # every rank grows its bases from the whole segment's features, with the same seeds: the same bases
        self.collective.all_reduce([space.covariance for space in self.spaces])
        for i, space in enumerate(self.spaces):
            ranks[space.name] = space.consolidate(seed=self.config.seed * 1_000_003 + self.growths * 7919 + i)
        self.collective.check_equal("protected bases", [space.basis for space in self.spaces])
        self.optimizer.state.clear()
        if self._calibrates:  # the PET's sensitivity changes as it learns: measured again after each growth
            self.lr_factor = None
        self.growths += 1
        self.grown_at = self.samples_learned
        for hook in self.attachment.on_consolidate:
            hook(self.growths)
        return ranks

    @torch.no_grad()
    def predict_many(self, images: torch.Tensor) -> Prediction:
        """Class probabilities for each row; changes no state."""
        images = self._check_images(images)
        n = len(self.classes)
        with self._autocast():
            pooled = self._pooled(images)
        probs = self.head(pooled.float(), n).softmax(dim=1) if n else torch.zeros(images.shape[0], 0)
        labels = [self.classes[i] for i in probs.argmax(dim=1).tolist()] if n else [None] * images.shape[0]
        return Prediction(labels, probs.cpu(), list(self.classes))

    @torch.no_grad()
    def refit_head(self, batches: Iterable[tuple[torch.Tensor, Sequence[Label]]]) -> None:
        """Offline use only (the joint reference): rebuild the predicting head's statistics from `batches` of
        already-seen labels at the current features, replacing statistics gathered while the features moved.
        A linear head has no statistics and is kept as it is."""
        if isinstance(self.head, LinearHead):
            return
        fresh = build_head(self.config.head, self.backbone.num_features, seed=self.config.seed,
                           linear_dtype=MASTER_DTYPE).to(self.device)
        for images, labels in batches:
            targets = torch.tensor([self._class_index[canonical_label(label)] for label in labels], device=self.device)
            with self._autocast():
                fresh.observe(self._pooled(self._check_images(images)).float(), targets)
        self.head.load_state_dict(fresh.state_dict())

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads (PET applied), one float32 row per image; changes no state."""
        images = self._check_images(images)
        with self._autocast():
            return self._pooled(images).float().cpu()

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded uint8 images ((H, W), (H, W, 1), (H, W, 3) or (H, W, 4), any size) as this learner's model
        input: (B, C, H, W) float32 at `input_size`, normalised with the backbone's mean and std
        (`core.prepare.to_model_input`)."""
        spec = self.input_config
        return to_model_input(images, spec["input_size"], spec["mean"], spec["std"])

    def frozen_copy(self) -> Learner:
        """A copy that predicts (`predict_many`, `features`, `prepare`) as this learner does now, whatever it
        learns later: its own PET tensors, head and classes; the frozen backbone tensors are shared, not copied.
        For reading only: its optimizer and bases are this learner's, so it must never learn or consolidate
        (`refit_head` replaces only the copy's own head)."""
        trained = {id(p) for p in self.pet_parameters.values()}
        frozen_tensors = [*self.backbone.parameters(), *self.backbone.buffers()]
        shared = {id(t): t for t in frozen_tensors if id(t) not in trained}
        frozen = copy.copy(self)
        frozen.backbone = copy.deepcopy(self.backbone, memo=shared)
        frozen.head = copy.deepcopy(self.head)
        frozen.classes = list(self.classes)
        return frozen

    @property
    def _calibrates(self) -> bool:
        return self.config.optimizer.lr_unit == "feature" and bool(self.pet_parameters)

    @property
    def ranks(self) -> dict[str, int]:
        return {space.name: space.rank for space in self.spaces}

    @property
    def input_config(self) -> dict[str, Any]:
        """What the images fed to the learner must look like: input_size (C, H, W), mean, std (from the
        model's pretrained config), interpolation."""
        return {**resolve_data_config(model=self.backbone), "input_size": self.input_size}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bitwise: PET tensors, head, label map, optimizer state, bases,
        segment covariances, RNG state and counters. Tensors are copies (safe to keep while learning).

        With several ranks this is a collective (every rank calls it at the same step) and every rank gets the
        state one rank fed the global batches holds: the one per-rank part, each space's segment covariance
        and row count, is summed over the ranks; everything else is the same on every rank already."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.model_dump(mode="json"),
            "layout": self.layout,
            "pet": {name: p.detach().clone() for name, p in self.pet_parameters.items()},
            "head": {k: v.detach().clone() for k, v in self.head.state_dict().items()},
            "trainer": {k: v.detach().clone() for head in self.heads[1:] for k, v in head.state_dict().items()},
            "classes": list(self.classes),
            "segment_classes": sorted(self.segment_classes),
            "optimizer": _clone(self.optimizer.state_dict()),
            "spaces": self._spaces_state(),
            "generator": self.generator.get_state(),
            "lr_factor": self.lr_factor if self._calibrates else None,
            "counters": {"updates": self.updates, "samples_learned": self.samples_learned,
                         "consolidations": self.consolidations, "growths": self.growths, "grown_at": self.grown_at},
        }

    def _spaces_state(self) -> dict[str, dict[str, Any]]:
        """Each space's state with its segment covariance and rows summed over the ranks (copies: the ranks'
        own shares stay as they are, so learning continues as if no state had been taken)."""
        spaces = {space.name: space.state_dict() for space in self.spaces}
        if self.collective.world_size > 1:
            rows = torch.tensor([space["rows"] for space in spaces.values()], dtype=torch.float64, device=self.device)
            self.collective.all_reduce([*(space["covariance"] for space in spaces.values()), rows])
            for space, total in zip(spaces.values(), rows.tolist(), strict=True):
                space["rows"] = int(total)
        return spaces

    def _spaces_share(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """This rank's share of a state's segment statistics: all of them on rank 0, none on the others. Every
        use of a covariance sums it over the ranks first (`consolidate`, `_spaces_state`), so the sum the ranks
        resume from is the saved one, and the ranks' later rows add to it as they would have."""
        if self.collective.rank == 0:
            return dict(state)
        return {**state, "covariance": torch.zeros_like(state["covariance"]), "rows": 0}

    @property
    def layout(self) -> dict[str, Any]:
        """What a learned state is only valid with, as dotted config field -> value (JSON types): the backbone's
        name, timm options and weights (a digest), PET kind and options, the head's kind and size, which spaces
        are protected, the optimizer, and the seed (it drew a random backbone and seeds each consolidation, so a
        resumed run continues bitwise only with it). Learning rates, eps and the like may change between runs."""
        return {**config_layout(self.config.model_dump(mode="json")), BACKBONE_DIGEST: self.backbone_digest}

    def check_layout(self, state: Mapping[str, Any]) -> None:
        """Raise StateMismatchError naming every layout field in which `state` differs from this learner. A
        state without a layout record (older versions) is checked on the config it carries, without weights."""
        recorded = state.get("layout")
        if recorded is None and isinstance(state.get("config"), Mapping):
            log.warning("learner state has no record of its backbone weights (an older version): not verified")
            recorded = {**config_layout(state["config"]), BACKBONE_DIGEST: self.backbone_digest}
        if recorded is None:
            log.warning("learner state records no config: its layout is not verified")
            return
        mine = self.layout
        recorded = {**_LAYOUT_DEFAULTS, **recorded}  # a field newer than the state: it was made at its default
        differences = {key: (recorded.get(key, UNSET), mine.get(key, UNSET)) for key in {**recorded, **mine}
                       if recorded.get(key, UNSET) != mine.get(key, UNSET)}
        if "learner.pet.kind" in differences:  # another paradigm: its options differ as a matter of course
            differences = {k: v for k, v in differences.items() if not k.startswith("learner.pet.")
                           or k == "learner.pet.kind"}
        if differences:
            found = "; ".join(f"{field}: checkpoint has {old!r}, config has {new!r}"
                              for field, (old, new) in sorted(differences.items()))
            raise StateMismatchError(f"{found} (use the config the state was made with, or start without it)",
                                     dict(sorted(differences.items())))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` taken from a learner whose `layout` is the same; a state of another layout
        raises StateMismatchError before anything changes. With several ranks every rank loads the same state
        (whatever number of ranks made it) and holds its share of the segment statistics (`_spaces_share`)."""
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"unsupported learner state format {state.get('format')!r}")
        self.check_layout(state)
        try:
            with torch.no_grad():
                _load_tensors(self.pet_parameters, state["pet"], "pet")
                self.head.load_state_dict(state["head"])
                for head in self.heads[1:]:
                    head.load_state_dict(state["trainer"])
            missing = {s.name for s in self.spaces} ^ set(state["spaces"])
            if missing:
                raise CheckpointError(f"protected spaces differ from the checkpoint's: {sorted(missing)}")
            for space in self.spaces:
                space.load_state_dict(self._spaces_share(state["spaces"][space.name]))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"learner state does not fit this learner: {exc}") from None
        self.classes = _canonical_classes(state["classes"])
        self._class_index = {label: i for i, label in enumerate(self.classes)}
        self.segment_classes = set(state["segment_classes"])
        self.generator.set_state(state["generator"])
        # a state from before lr_unit, or of lr_unit "parameter" resumed as "feature", is calibrated anew
        self.lr_factor = state.get("lr_factor") if self._calibrates else 1.0
        self._set_learning_rates()
        counters = state["counters"]
        self.updates, self.samples_learned = counters["updates"], counters["samples_learned"]
        self.consolidations = counters["consolidations"]
        # states from before consolidate_every grew only at boundaries; the segment under way started its count
        self.growths = counters.get("growths", self.consolidations)
        self.grown_at = counters.get("grown_at", self.samples_learned)
        for hook in self.attachment.on_consolidate if self.growths else ():
            hook(self.growths)

    # ----------------------------------------------------------------------------------------------------
    # helpers

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _space_specs(self) -> list[SpaceSpec]:
        if not self.config.projection.enabled:
            return []
        specs = list(self.attachment.spaces)
        if self.config.projection.protect_head and isinstance(self.head, LinearHead):
            specs.append(SpaceSpec("head", self.backbone.num_features, [self.head.weight]))
        return specs

    def _targets(self, labels: Sequence[Label]) -> torch.Tensor:
        """This rank's rows as class indices; every rank's labels are registered, in rank order, so all ranks
        hold one class map (the one a single rank fed the ranks' rows in that order would hold)."""
        everyone = [label for share in self.collective.all_gather_object(list(labels)) for label in share]
        new = list(dict.fromkeys(label for label in everyone if label not in self._class_index))
        if len(self.classes) + len(new) > self.config.head.max_classes:
            raise LabelCapacityError(
                f"label(s) {new[:5]} exceed head.max_classes={self.config.head.max_classes}"
            )
        for label in new:
            self._class_index[label] = len(self.classes)
            self.classes.append(label)
        self.segment_classes.update(self._class_index[label] for label in everyone)
        targets = [self._class_index[label] for label in labels]
        return torch.tensor(targets, dtype=torch.int64, device=self.device)

    def _train_mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.head.train_mask == "none":
            return logits
        mask = torch.full_like(logits, -math.inf)
        mask[:, sorted(self.segment_classes)] = 0.0
        return logits + mask

    def _subsample_tokens(self, features: torch.Tensor) -> torch.Tensor:
        limit = self.config.projection.max_tokens_per_sample
        if limit is None or features.dim() < 3 or features.shape[1] <= limit:
            return features
        others = torch.randperm(features.shape[1] - 1, generator=self.generator)[: limit - 1] + 1
        keep = torch.cat([torch.zeros(1, dtype=torch.int64), others.sort().values]).to(features.device)
        return features.index_select(1, keep)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        expected = self.input_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, {', '.join(map(str, expected))}); got {shape}")
        return images.to(self.device, torch.float32)


@dataclass
class _Step:
    predicted: list[Label | None]
    per_sample_loss: torch.Tensor
    loss: torch.Tensor  # the mean over this rank's rows; `_global_loss` makes it the rank's share of the global mean
    features: dict[str, torch.Tensor]
    pooled: torch.Tensor  # the features the loss read, in the graph


def _trainer(config: HeadConfig, head: Head, dim: int, seed: int) -> Head:
    """The module whose logits the PET's loss reads (`head.train_through`): the head itself, or a head of
    another kind kept beside it, observing the same features."""
    if config.trainer == "head":
        return head
    return build_head(config.model_copy(update={"kind": config.trainer}), dim, seed=seed, linear_dtype=MASTER_DTYPE)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def _nonfinite_rows(images: torch.Tensor) -> list[int]:
    if torch.isfinite(images.sum()):  # one reduction for the common case (any NaN or inf makes the sum so)
        return []
    return (~torch.isfinite(images).flatten(1).all(dim=1)).nonzero().flatten().tolist()


def _choose_attention(model: torch.nn.Module, mode: str, device: torch.device, dtype: torch.dtype | None) -> None:
    """Set timm's fused/eager attention switch (the prefix wrapper follows the same switch). Measured on
    these CPUs: under bf16 autocast the fused backward is slower than fp32, eager is ~2x faster."""
    if mode == "auto":
        mode = "eager" if device.type == "cpu" and dtype == torch.bfloat16 else "fused"
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            # torch types Module.__setattr__'s value as Tensor | Module; timm's switch is a plain bool attribute
            module.fused_attn = mode == "fused"  # type: ignore[assignment]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` picks bf16 where the hardware runs it natively."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.bfloat16 if native else None


BACKBONE_DIGEST = "learner.backbone weights (sha256 prefix)"
UNSET = "<unset>"
_LAYOUT_SECTIONS = ("backbone", "pet", "head")
_NOT_LAYOUT = {  # settings that may change between runs; the digest covers the weights the backbone sources give
    "backbone": {"pretrained", "checkpoint_path", "attention"},
    "head": {"lr_scale", "ncm_temperature", "train_mask", "slda_shrinkage", "drift_compensation"},  # applied per step
}
_LAYOUT_FIELDS = ("projection.enabled", "projection.protect_head", "projection.prefix_per_head", "optimizer.name")


def config_layout(config: Mapping[str, Any]) -> dict[str, Any]:
    """The layout fields (see `Learner.layout`) of a learner config dumped as JSON, the digest aside. A field
    not listed as free to change in `_NOT_LAYOUT` counts (a new option is checked until known to be safe)."""
    layout = {f"learner.{section}.{k}": v for section in _LAYOUT_SECTIONS for k, v in config[section].items()
              if k not in _NOT_LAYOUT.get(section, ())}
    for path in _LAYOUT_FIELDS:
        section, name = path.split(".")
        layout[f"learner.{path}"] = config[section][name]
    head = config["head"]  # what the loss reads, resolved: "auto" and an explicit choice of the same are one layout
    layout["learner.head.train_through"] = trainer_kind(head["kind"], head.get("train_through", "head"))
    layout["learner.seed"] = config["seed"]  # it draws a random backbone, and seeds every later consolidation
    return layout


# Layout fields with the value every earlier state had (added since, defaulting to what was done before).
_LAYOUT_DEFAULTS = {"learner.head.train_through": "head"}


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every tensor of `model`'s state dict (name, dtype, shape and bytes, in name order); the
    first 16 hex digits (64 bits: plenty to tell weights apart, short enough for a message)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _canonical_classes(classes: Sequence[Label]) -> list[Label]:
    """A state's labels in canonical form (states before that rule may hold "7" for 7), unless that would
    merge two of its classes: then as they are, with a warning."""
    canonical = [canonical_label(label) for label in classes]
    if len(set(canonical)) == len(canonical):
        return canonical
    log.warning("learner state holds labels that differ only in form (e.g. 7 and '7'); kept as they are")
    return list(classes)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def _load_tensors(params: Mapping[str, torch.nn.Parameter], state: Mapping[str, torch.Tensor], where: str) -> None:
    if set(params) != set(state):
        raise CheckpointError(f"{where}: tensor names differ: {sorted(set(params) ^ set(state))[:8]}")
    for name, param in params.items():
        if param.shape != state[name].shape:
            raise CheckpointError(f"{where}.{name}: shape {tuple(state[name].shape)} != {tuple(param.shape)}")
        param.copy_(state[name])
