"""Proxy training of one child: build, train for a few epochs, evaluate top-1/top-5 on the held-out split.

Fast on purpose (proxy training dominates a search's cost): batches are gathered from the prepared uint8 memmap by
a background thread while the model trains (so data loading overlaps compute), normalised on the fly, and the model
runs channels_last; on a GPU the loader uses pinned memory and non-blocking copies and training uses mixed
precision; ``compile`` turns on torch.compile where it pays (long GPU runs). On CPU a run is deterministic for a
given seed and thread count.

A child that fails (non-finite loss, out of memory, an exception while building) comes back as
``TrainResult(status="failed", error=...)``; ``train_child`` never raises for a bad child.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mnas_common.checks import (is_number, non_negative_int, non_negative_number, one_of, positive_int,
                                 positive_number)
from mnas_common.errors import first_line
from mnas_common.serial import Serializable

# What a training computes, as a number: raise it with any change to this module that changes a trained child's
# result for the same config (loss, schedule, data order, evaluation). Stored proxy-fidelity results
# (scripts/bench_proxy.py) are keyed by it, so results of an older trainer are never mixed with a newer one's.
TRAINING_REVISION = 1
OPTIMIZERS = ("sgd", "rmsprop")
LOADER_POLL_SECONDS = 0.5  # how soon a consumer waiting for a batch notices that the loader thread has died
LOADER_NOTE = "raised in the batch loader thread, reading the prepared images"  # a child's error says where
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainerConfig:
    """Hyper-parameters of proxy training (``configs/trainer/*.yaml``)."""

    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"          # sgd (momentum, nesterov) | rmsprop (the paper: decay 0.9, momentum 0.9)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    schedule: str = "cosine"        # cosine (to 0 over the run) | constant
    warmup_steps: int = 0
    dropout: float = 0.2
    augment: bool = True            # random horizontal flip + random crop with padding
    eval_batch_size: int = 512
    max_steps: int | None = None    # cap on optimisation steps (quick proxies)
    channels_last: bool = True
    amp: str = "auto"               # auto: bfloat16/float16 autocast on GPU only | on | off
    compile: bool = False           # torch.compile the child (pays off only for long GPU runs)
    prefetch: int = 4               # batches prepared ahead by the loader thread
    device: str | None = None       # null: cuda if available else cpu

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "prefetch"):
            positive_int(f"trainer.{name}", getattr(self, name))
        positive_int("trainer.max_steps", self.max_steps, allow_none=True)
        non_negative_int("trainer.warmup_steps", self.warmup_steps)
        one_of("trainer.optimizer", self.optimizer, OPTIMIZERS)
        one_of("trainer.schedule", self.schedule, SCHEDULES)
        one_of("trainer.amp", self.amp, ("auto", "on", "off"))
        positive_number("trainer.lr", self.lr)
        non_negative_number("trainer.weight_decay", self.weight_decay)
        # caught here, not by torch inside train_child: there every child of a search would come back "failed"
        for name in ("momentum", "label_smoothing", "dropout"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise ValueError(f"trainer.{name} must be in [0, 1), got {value!r}")
        for name in ("augment", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"trainer.{name} must be true or false, got {getattr(self, name)!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"trainer.device must be null, cpu or cuda[:N], got {self.device!r}")

    def total_steps(self, num_train: int) -> int:
        """Optimisation steps of a child trained on ``num_train`` images: what the learning-rate schedule spans
        (a last partial batch is dropped, unless there is only one)."""
        per_epoch = num_train // self.batch_size if num_train >= self.batch_size else math.ceil(num_train / self.batch_size)
        return min(self.epochs * per_epoch, self.max_steps or self.epochs * per_epoch)

    def schedule_note(self, num_train: int) -> str | None:
        """Why the schedule does not do what the settings say on ``num_train`` images (a warning), or None."""
        total = self.total_steps(num_train)
        if self.warmup_steps and self.warmup_steps >= total:
            # equal: the peak at the last step alone (warm-up step i runs at (i + 1) / warmup_steps of lr)
            return (f"trainer.warmup_steps {self.warmup_steps} >= the {total} steps a child trains on {num_train} "
                    f"images: the whole training is warm-up (the learning rate reaches trainer.lr {self.lr:g} at the "
                    "last step at best, and the cosine decay never starts); lower warmup_steps")
        return None


@dataclass
class TrainResult(Serializable):
    status: str = "ok"
    error: str | None = None
    top1: float | None = None
    top5: float | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    images_per_second: float = 0.0
    data_wait_fraction: float = 0.0
    epochs: int = 0
    steps: int = 0
    final_loss: float | None = None
    params: int | None = None
    num_train: int = 0
    num_val: int = 0
    device: str = "cpu"
    transient: bool = False  # failed for a reason of the moment (out of memory beside other work), not the child's


class ChildFailed(RuntimeError):
    pass


class BatchLoader:
    """Shuffled batches from a uint8 NHWC memmap, gathered in a background thread (numpy releases the GIL).

    Yields float tensors N x C x H x W normalised with the dataset's mean/std, plus int64 labels; tracks the time
    the consumer waited, which is what ``data_wait_fraction`` reports.
    """

    def __init__(self, split, batch_size: int, *, mean, std, device: torch.device, generator: np.random.Generator | None,
                 augment: bool, prefetch: int, channels_last: bool, drop_last: bool):
        self.split, self.batch_size = split, batch_size
        self.device = device
        self.rng = generator
        self.augment = augment
        self.prefetch = prefetch
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _batches(self):
        n = len(self.split)
        order = self.rng.permutation(n) if self.rng is not None else np.arange(n)
        for b in range(len(self)):
            idx = np.sort(order[b * self.batch_size : (b + 1) * self.batch_size])  # sorted: sequential memmap reads
            x = torch.from_numpy(np.ascontiguousarray(self.split.x[idx]))
            y = torch.from_numpy(self.split.y[idx])
            if self.augment:
                x = self._augment(x)
            if self.device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random horizontal flip and a random crop from a 1/8-padded image, per sample (uint8 NHWC)."""
        n, h, w, _ = x.shape
        flip = torch.from_numpy(self.rng.random(n) < 0.5)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
        dy = self.rng.integers(0, 2 * pad + 1, n)
        dx = self.rng.integers(0, 2 * pad + 1, n)
        return torch.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        sentinel = object()
        failure: list[BaseException] = []  # the producer's exception, raised in the consumer

        def work():
            try:
                for item in self._batches():
                    if stop.is_set():
                        return
                    q.put(item)
            except BaseException as exc:
                failure.append(exc)  # kept first: the consumer finds it even if the put below fails too
            q.put(sentinel)

        mean, std = self.mean.to(self.device), self.std.to(self.device)
        thread = threading.Thread(target=work, daemon=True, name="batch-loader")
        thread.start()
        try:
            while True:
                start = time.perf_counter()
                item = self._next(q, thread, failure)
                self.wait_seconds += time.perf_counter() - start
                if item is sentinel:
                    if failure:
                        raise _from_loader(failure[0])
                    return
                x, y = item
                x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = (x - mean) / std
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=True)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    @staticmethod
    def _next(q: queue.Queue, thread: threading.Thread, failure: list[BaseException]):
        """The next item from the producer. If it died without handing one over (its put failed, e.g. out of memory
        while handing over its own error), a plain ``q.get()`` would wait forever and hang the search: its
        exception is raised instead. Polling costs nothing while batches flow: ``get`` returns as soon as one is put."""
        while True:
            try:
                return q.get(timeout=LOADER_POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive() and q.empty():  # dead first, then empty: nothing more can arrive
                    if failure:
                        raise _from_loader(failure[0])
                    raise RuntimeError("the batch loader thread died before its last batch")


def _from_loader(exc: BaseException) -> BaseException:
    """``exc`` with :data:`LOADER_NOTE` added (once): a child's error then says that the images could not be read,
    not that the model failed. The exception itself is unchanged, so out of memory is still recognised as such."""
    if LOADER_NOTE not in getattr(exc, "__notes__", ()):
        exc.add_note(LOADER_NOTE)
    return exc


def _where(exc: BaseException) -> str:
    """`` (raised in the batch loader thread, ...)`` for an error the loader raised, else nothing."""
    return f" ({LOADER_NOTE})" if LOADER_NOTE in getattr(exc, "__notes__", ()) else ""


def check_device(device: str | None) -> str | None:
    """A problem with the configured training device (``cuda`` on a machine without a GPU), or None."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        return f"trainer.device {device!r} is not a torch device ({str(exc).splitlines()[0]})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"trainer.device={device} but this machine has no CUDA GPU that torch can use"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"trainer.device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)"
    if dev.type == "mps" and not torch.backends.mps.is_available():  # passed, and then every child failed
        return f"trainer.device={device} but torch cannot use an Apple GPU (MPS) on this machine"
    if dev.type not in ("cpu", "cuda", "mps"):
        return f"trainer.device={device}: only cpu, cuda and mps are supported"
    return None


def _device(config: TrainerConfig, device: str | None) -> torch.device:
    name = device or config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, alpha=0.9, eps=0.0316, momentum=config.momentum)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def _lr_factor(step: int, total: int, config: TrainerConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, num_classes: int, autocast,
             step_guard: Callable[[], AbstractContextManager] = nullcontext) -> tuple[float, float | None]:
    model.eval()
    correct1 = correct5 = total = 0
    k = min(5, num_classes)
    for x, y in loader:
        with step_guard(), autocast():
            logits = model(x)
        top = logits.float().topk(k, dim=1).indices
        hit = top.eq(y.view(-1, 1))
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
        total += len(y)
    top5 = correct5 / total if num_classes > 5 else None
    return correct1 / total, top5


def _is_oom(exc: BaseException) -> bool:
    """Out of memory on any device: CUDA's, the CPU allocator's RuntimeError ("DefaultCPUAllocator: can't allocate
    memory ... Error code 12 (Cannot allocate memory)") and Python's or numpy's MemoryError. All are a failure of the
    moment (other work holds the memory), so the child is recorded transient, to be tried again, not as broken."""
    text = str(exc).lower()
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            or any(s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory")))


def train_child(arch: str, data: Any, config: TrainerConfig, *, seed: int = 0, device: str | None = None,
                step_guard: Callable[[], AbstractContextManager] = nullcontext) -> TrainResult:
    """Proxy-train ``arch`` (an architecture string or reference name) on ``data``; never raises for a bad child.

    ``step_guard()`` wraps every optimisation step and evaluation batch: the search passes the latency service's
    host gate (``latency.quiet``), so a host timing never runs while a step computes and no step starts while a
    timing runs. A step is tens of milliseconds: a timing waits at most that long.
    """
    from search_spaces import build_model

    dev = _device(config, device)
    result = TrainResult(num_train=len(data.train), num_val=len(data.val), device=str(dev))
    try:
        torch.manual_seed(seed)
        try:
            model = build_model(arch, num_classes=data.num_classes, in_channels=data.channels, dropout=config.dropout)
        except ValueError as exc:
            raise ChildFailed(f"invalid architecture: {exc}") from None
        except Exception as exc:
            raise ChildFailed(f"build failed: {exc.__class__.__name__}: {exc}") from None
        result.params = sum(p.numel() for p in model.parameters())
        model = model.to(dev)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        use_amp = config.amp == "on" or (config.amp == "auto" and dev.type == "cuda")
        amp_dtype = torch.bfloat16 if dev.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16

        def autocast():
            return torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp)

        step_model = torch.compile(model) if config.compile else model
        rng = np.random.default_rng(seed)
        train_loader = BatchLoader(data.train, config.batch_size, mean=data.mean, std=data.std, device=dev,
                                   generator=rng, augment=config.augment, prefetch=config.prefetch,
                                   channels_last=config.channels_last, drop_last=len(data.train) >= config.batch_size)
        total_steps = config.total_steps(len(data.train))
        optimizer = _optimizer(model, config)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)

        step, seen, loss_value = 0, 0, None
        start = time.perf_counter()
        for epoch in range(config.epochs):
            model.train()
            for x, y in train_loader:
                if step >= total_steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * _lr_factor(step, total_steps, config)
                with step_guard():
                    with autocast():
                        loss = criterion(step_model(x), y)
                    if not torch.isfinite(loss):
                        raise ChildFailed(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                loss_value = float(loss.detach())
                step += 1
                seen += len(y)
            result.epochs = epoch + 1
            if step >= total_steps:
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        result.train_seconds = time.perf_counter() - start
        result.steps, result.final_loss = step, loss_value
        result.images_per_second = seen / result.train_seconds if result.train_seconds > 0 else 0.0
        result.data_wait_fraction = train_loader.wait_seconds / result.train_seconds if result.train_seconds else 0.0

        start = time.perf_counter()
        val_loader = BatchLoader(data.val, config.eval_batch_size, mean=data.mean, std=data.std, device=dev,
                                 generator=None, augment=False, prefetch=config.prefetch,
                                 channels_last=config.channels_last, drop_last=False)
        result.top1, result.top5 = evaluate(step_model, val_loader, data.num_classes, autocast, step_guard)
        result.eval_seconds = time.perf_counter() - start
    except ChildFailed as exc:
        result.status, result.error = "failed", str(exc)
    except Exception as exc:
        if _is_oom(exc):
            # first_line: a bare MemoryError has no message (splitlines()[0] raised IndexError here)
            result.status, result.error = "failed", f"out of memory on {dev}: {first_line(exc, limit=200)}{_where(exc)}"
            result.transient = True
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        else:
            result.status, result.error = ("failed", f"{exc.__class__.__name__}: "
                                           f"{str(exc).splitlines()[0][:300] if str(exc) else ''}{_where(exc)}")
    return result
