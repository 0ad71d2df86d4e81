"""The local training loop (the engine's implementation of :class:`LocalTrainer`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from fedseg.algorithms.base import Batch, BatchLoss, EpochHook, ExtraLoss
from fedseg.config import SampleDPConfig, TrainConfig
from fedseg.data.augment import BatchAugmenter
from fedseg.data.base import SegmentationSet
from fedseg.data.loader import Item, case_loader, resolve_num_workers
from fedseg.data.patches import PatchSampler, pad_to_size
from fedseg.engine.dpsgd import SampleDP, private_training
from fedseg.engine.evaluate import SlidingWindow, evaluate
from fedseg.engine.schedule import RoundPosition, Stepper
from fedseg.engine.seeding import derive_seed
from fedseg.models.taps import capture_outputs, check_captured
from fedseg.types import ClientState

__all__ = ["Trainer", "make_optimizer", "resolve_device", "EpochCallback", "SCALER_SUFFIX"]

SCALER_SUFFIX = "_scaler"
"""Client-state key suffix of ``train.amp: fp16``'s grad scaler (``optimizer`` -> ``optimizer_scaler``)."""

EpochCallback = Callable[[int, int, float], None]
"""``(epoch, total_epochs, mean_loss)`` after each local epoch (progress display)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class Trainer:
    """Mini-batch training over one client's training split.

    A split stacked in memory is moved to the device once per round and indexed there (the fast
    path of small data); a split streamed from the case cache is read case by case through a
    ``DataLoader`` with ``cfg.num_workers`` workers (:mod:`fedseg.data.loader`; pinned memory on
    CUDA), and only each batch goes to the device. Both give the same batches. Batches are drawn
    by a permutation from a generator seeded per (run seed, round, client), so a round is
    reproducible on its own.

    With ``cfg.patch_size`` every batch is a set of random patches (:class:`PatchSampler`; a
    fraction ``cfg.fg_oversample`` centred on foreground) and an epoch is
    ``cfg.samples_per_volume`` patches per case; volumes smaller than a patch are zero-padded
    once. With ``cfg.augment.enabled`` the batches of :meth:`fit` (never those of :meth:`batches`
    or evaluation) are augmented on the device by :class:`BatchAugmenter`. Patch positions and
    augmentation draw from their own generators seeded from ``seed``, so a run stays
    bit-identical on resume; with both off the batches are exactly the whole-image ones.

    Args:
        data: the training split, ``(N, C, *spatial)`` images and ``(N, 1, *spatial)`` masks. A
            weakly-supervised split (``data.supervision``) has no masks: its batches carry none
            (``Batch.mask`` raises) and its weak labels ride in ``Batch.extras``; it needs a
            ``loss`` in :meth:`fit` and refuses patches and augmentation.
        loss_fn: ``(logits, mask) -> scalar`` task loss.
        cfg: the ``train`` section.
        epochs: default local epochs of :meth:`fit`.
        device: training device.
        seed: per-(run seed, round, client) seed of every random choice of the round.
        state: persistent client state (optimizer state when it persists).
        on_epoch: progress callback.
        eval_sets: splits :meth:`evaluate` may use (the validation split only).
        num_classes: classes including background.
        eval_batch_size: cases per evaluation forward pass.
        window: sliding-window settings for evaluation (``None``: whole images).
        dp: ``privacy.sample``: when enabled, :meth:`fit` trains with DP-SGD (Poisson batches,
            per-sample clipping and noise; :mod:`fedseg.engine.dpsgd`).
    """

    def __init__(
        self,
        data: SegmentationSet,
        loss_fn: nn.Module,
        cfg: TrainConfig,
        *,
        epochs: int,
        device: torch.device,
        seed: int,
        state: ClientState,
        on_epoch: EpochCallback | None = None,
        eval_sets: dict[str, SegmentationSet] | None = None,
        num_classes: int = 2,
        eval_batch_size: int = 16,
        window: SlidingWindow | None = None,
        dp: SampleDPConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.loss_fn = loss_fn
        self.epochs = epochs
        self.device = device
        self.state = state
        self.num_examples = len(data)
        self.on_epoch = on_epoch
        self.eval_sets = eval_sets or {}
        self.num_classes = num_classes
        self.eval_batch_size = eval_batch_size
        self.window = window
        self.supervision = data.supervision
        self._cases = data.cases
        self._streamed = not data.in_memory
        self._workers = resolve_num_workers(cfg.num_workers, device)
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        if not self._streamed:  # stacked in memory: moved to the device once per round
            self._images = data.images.to(device)
            # a weakly-supervised training split has no masks (None), only its weak labels
            self._masks = data.masks.to(device) if data.masks is not None else None
        self._weak = {k: v.to(device) for k, v in data.weak.items()}
        if not data.has_masks and self.num_examples > 0 and (cfg.patch_size is not None or cfg.augment.enabled):
            raise ValueError(
                f"train.patch_size and train.augment need pixel masks, but this training split is "
                f"{data.supervision}-supervised (data.supervision); weak labels are whole-image: unset "
                "train.patch_size and set train.augment.enabled: false"
            )
        self._gen = torch.Generator()
        self._gen.manual_seed(seed)
        self._patches: PatchSampler | None = None
        self._patch_gen: torch.Generator | None = None
        self._augment: BatchAugmenter | None = None
        spatial = list(data.shape_of(0)) if self._streamed else list(data.images.shape[2:])
        if self._streamed and cfg.patch_size is None and len(set(data.cases.shapes())) > 1:
            raise ValueError("the cases of this training split differ in shape; train on patches "
                             "(train.patch_size) or resize them to one shape (data.image_size)")
        if cfg.patch_size is not None and self.num_examples > 0:
            if len(cfg.patch_size) != len(spatial):
                raise ValueError(
                    f"train.patch_size {cfg.patch_size} has {len(cfg.patch_size)} entries but the images are "
                    f"{len(spatial)}D {spatial}; give one size per spatial axis"
                )
            if self._streamed:  # patches read case by case (each padded on its own)
                self._patches = PatchSampler.for_cases(data.cases, cfg.patch_size, num_classes, cfg.fg_oversample)
            else:
                self._images = pad_to_size(data.images.to(device), cfg.patch_size)
                self._masks = pad_to_size(data.pixel_masks().to(device), cfg.patch_size)
                self._patches = PatchSampler(self._masks, cfg.patch_size, num_classes, cfg.fg_oversample)
            self._patch_gen = torch.Generator()
            self._patch_gen.manual_seed(derive_seed(seed, 1))
            spatial = list(cfg.patch_size)
        if cfg.augment.enabled and self.num_examples > 0:
            self._augment = BatchAugmenter(cfg.augment, spatial, derive_seed(seed, 2), device)
        self._dp = (SampleDP(dp, num_examples=self.num_examples, train=cfg, seed=derive_seed(seed, 3), device=device,
                             state=state) if dp is not None and dp.enabled and self.num_examples > 0 else None)

    def task_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = self.loss_fn(logits, mask)
        return loss

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        if split not in self.eval_sets:
            raise KeyError(f"no {split!r} split for this client; available: {', '.join(self.eval_sets) or 'none'}")
        was_training = model.training
        try:
            return evaluate(model, self.eval_sets[split], num_classes=self.num_classes, device=self.device,
                            batch_size=self.eval_batch_size, window=self.window)
        finally:
            model.train(was_training)

    def batches(self, *, shuffle: bool = False) -> Iterator[Batch]:
        """One pass over the training data: whole images, or ``samples_per_volume`` patches per case."""
        return self._batches(shuffle=shuffle, augment=False)

    def _per_sample(self, idx: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weak labels, caller extras and positions of the samples ``idx`` (device indices)."""
        out = {k: v.index_select(0, idx) for k, v in self._weak.items()}
        out.update({k: v.index_select(0, idx.to(v.device)) for k, v in extras.items()})
        out["index"] = idx
        return out

    def _batches(
        self,
        *,
        shuffle: bool,
        augment: bool,
        extras: Mapping[str, torch.Tensor] | None = None,
        subset: torch.Tensor | None = None,
        dp: SampleDP | None = None,
    ) -> Iterator[Batch]:
        n, bs = self.num_examples, self.cfg.batch_size
        extras = extras or {}
        for key, value in extras.items():
            if value.shape[0] != n:
                raise ValueError(f"fit extras[{key!r}] has {value.shape[0]} samples; the training split has {n}")
        if (extras or subset is not None) and (self._patches is not None or self._augment is not None):
            raise ValueError("per-sample extras and subsets need whole, unaugmented images: unset train.patch_size "
                             "and set train.augment.enabled: false")
        if dp is not None and subset is not None:
            raise ValueError("DP-SGD draws Poisson batches over the whole training split; fit(subset=...) is refused")
        if subset is not None:
            subset = subset.to(torch.int64).cpu()
            pick = torch.randperm(len(subset), generator=self._gen) if shuffle else torch.arange(len(subset))
            order = subset[pick]
        elif self._patches is None:
            order = torch.randperm(n, generator=self._gen) if shuffle else torch.arange(n)
        else:
            total = n * self.cfg.samples_per_volume
            order = (torch.randperm(total, generator=self._gen) if shuffle else torch.arange(total)) % n
        if self._streamed:
            yield from self._streamed_batches(order, dp, augment=augment, extras=extras)
            return
        if self._images is None:
            raise RuntimeError("internal: an in-memory training split without its tensors")
        if self._patches is None and self._augment is None:
            # the plain path: index the device tensors directly (what the throughput benchmark measures)
            order = order.to(self.device)
            for idx in self._chunks(order, dp):
                idx = idx.to(self.device)
                mask = None if self._masks is None else self._masks.index_select(0, idx)
                yield Batch(image=self._images.index_select(0, idx), mask=mask, extras=self._per_sample(idx, extras))
            return
        masks = self._masks
        if masks is None:  # refused in __init__; kept for the type checker
            raise ValueError("patches and augmentation need pixel masks")
        for chunk in self._chunks(order, dp):
            cases = chunk.tolist()
            if self._patches is not None and self._patch_gen is not None:
                image, mask = self._patches.sample(self._images, masks, cases, self._patch_gen)
            else:
                idx = torch.tensor(cases, device=self.device)
                image, mask = self._images.index_select(0, idx), masks.index_select(0, idx)
            if augment and self._augment is not None:
                image, mask = self._augment(image, mask)
            yield Batch(image=image, mask=mask)

    def _streamed_batches(
        self, order: torch.Tensor, dp: SampleDP | None, *, augment: bool, extras: Mapping[str, torch.Tensor]
    ) -> Iterator[Batch]:
        """The batches of a split streamed from disk: the plan (case order, patch starts) is drawn
        here, in order, from the same generators as the in-memory path; the loader's workers only
        read and crop (:mod:`fedseg.data.loader`). Only the batch goes to the device."""
        patches, patch_gen = self._patches, self._patch_gen

        def plan() -> Iterator[list[Item]]:
            for chunk in self._chunks(order, dp):
                cases = [int(c) for c in chunk.tolist()]
                if patches is not None and patch_gen is not None:
                    yield [(c, tuple(s)) for c, s in zip(cases, patches.starts(cases, patch_gen), strict=True)]
                else:
                    yield [(c, None) for c in cases]

        pin = self.device.type == "cuda"
        loader = case_loader(self._cases, plan(), patch_size=None if patches is None else patches.patch_size,
                             num_workers=self._workers, pin_memory=pin)
        for loaded in loader:
            if loaded is None:  # an empty Poisson batch of DP-SGD
                shape = patches.patch_size if patches is not None else self._cases.shape_of(0)
                loaded = (torch.zeros(0, dtype=torch.int64), torch.zeros((0, self._cases.channels, *shape)),
                          torch.zeros((0, 1, *shape), dtype=torch.int64) if self._cases.has_masks else None)
            idx, image, mask = loaded
            image = image.to(self.device, non_blocking=pin)
            mask = None if mask is None else mask.to(self.device, non_blocking=pin)
            if patches is None and self._augment is None:
                yield Batch(image=image, mask=mask, extras=self._per_sample(idx.to(self.device), extras))
                continue
            if mask is None:  # refused in __init__; kept for the type checker
                raise ValueError("patches and augmentation need pixel masks")
            if augment and self._augment is not None:
                image, mask = self._augment(image, mask)
            yield Batch(image=image, mask=mask)

    def _chunks(self, order: torch.Tensor, dp: SampleDP | None) -> Iterator[torch.Tensor]:
        """Each batch's indices: consecutive slices of ``order``, or DP-SGD's Poisson draws of cases."""
        bs = self.cfg.batch_size
        return dp.batches() if dp is not None else (order[s : s + bs] for s in range(0, len(order), bs))

    position: RoundPosition = RoundPosition()
    """The round's place in the run, for ``train.lr_schedule`` (the client runtime sets it; a
    trainer built alone schedules each :meth:`fit` call as a run of one round)."""

    def _steps_per_epoch(self, subset: torch.Tensor | None) -> int:
        """Optimizer steps of one local epoch of :meth:`fit` (DP-SGD: its fixed number of Poisson draws)."""
        if self._dp is not None:
            return self._dp.steps_per_epoch
        if subset is not None:
            count = len(subset)
        else:
            count = self.num_examples * (self.cfg.samples_per_volume if self.cfg.patch_size is not None else 1)
        return max(1, math.ceil(count / self.cfg.batch_size))

    def fit(
        self,
        model: nn.Module,
        *,
        epochs: int | None = None,
        extra_loss: ExtraLoss | None = None,
        trainable: set[str] | None = None,
        optimizer_key: str = "optimizer",
        loss: BatchLoss | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
        subset: torch.Tensor | None = None,
        aux_outputs: Mapping[str, str] | None = None,
        on_epoch_start: EpochHook | None = None,
        on_epoch_end: EpochHook | None = None,
    ) -> dict[str, float]:
        epochs = self.epochs if epochs is None else epochs
        steps_per_round = epochs * self._steps_per_epoch(subset)
        named = list(model.named_parameters())
        frozen = [p for n, p in named if trainable is not None and n not in trainable and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        # parameters already off (an algorithm's frozen keys) are never optimised
        params = [p for _, p in named if p.requires_grad]
        optimizer = make_optimizer(params, self.cfg)
        persist = self.cfg.optimizer_state == "persist"
        scaler_key = f"{optimizer_key}{SCALER_SUFFIX}"  # fp16's grad scaler persists beside its optimizer
        if persist and optimizer_key in self.state:
            optimizer.load_state_dict(self.state[optimizer_key])
        outputs = dict(aux_outputs or {})
        model.train()
        total = task_total = 0.0
        steps = 0
        try:
            with (capture_outputs(model, outputs) as captured,
                  private_training(self._dp, model, optimizer) as optimizer):  # DP-SGD: the DPOptimizer
                stepper = Stepper(self.cfg, optimizer, params, device=self.device, position=self.position,
                                  steps_per_round=steps_per_round)
                if persist:
                    stepper.load_scaler(self.state.get(scaler_key))
                for epoch in range(1, epochs + 1):
                    if on_epoch_start is not None:
                        on_epoch_start(model, epoch, epochs)
                    epoch_loss = 0.0
                    epoch_steps = 0
                    for batch in self._batches(shuffle=True, augment=True, extras=extras, subset=subset, dp=self._dp):
                        optimizer.zero_grad(set_to_none=True)
                        with stepper.autocast():  # train.amp (a no-op when off)
                            logits = model(batch.image)
                            if outputs:
                                check_captured(captured, outputs)
                                batch.aux = dict(captured)
                                captured.clear()
                            # batch.mask raises MissingMaskError on a weakly-supervised site's batch
                            task = self.loss_fn(logits, batch.mask) if loss is None else loss(model, batch, logits)
                            step_loss = task
                            if extra_loss is not None:
                                extra = extra_loss(model, batch, logits)
                                if extra is not None:
                                    step_loss = step_loss + extra
                        stepper.backward_step(step_loss)  # schedule, AMP scaling, grad clip, optimizer step
                        value = float(step_loss.detach())
                        epoch_loss += value
                        total += value
                        task_total += float(task.detach())
                        epoch_steps += 1
                        steps += 1
                    if on_epoch_end is not None:
                        on_epoch_end(model, epoch, epochs)
                    if self.on_epoch is not None:
                        self.on_epoch(epoch, epochs, epoch_loss / max(epoch_steps, 1))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if persist:
            self.state[optimizer_key] = _to_cpu(optimizer.state_dict())
            if stepper.scaler is not None:
                self.state[scaler_key] = stepper.scaler.state_dict()
        metrics = {"loss": total / max(steps, 1), "task_loss": task_total / max(steps, 1), "steps": float(steps)}
        return metrics if self._dp is None else self._dp.released(metrics)
