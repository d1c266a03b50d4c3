"""One model-agnostic training loop for both stages.

A stage supplies a ``net`` whose ``forward(**inputs)`` returns ``(loss, logs)`` and an
``inputs(batch, rnd)`` method that turns a data batch into tensors (augmentations, noise,
timesteps) from a :class:`StepRandom`. The loop owns everything else: optimizer, warm-up,
clipping, accumulation, bf16 autocast, EMA, DDP, validation, logs, checkpoints, resume,
Ctrl-C, and an optional :class:`Budget` that ends a run early as if its steps were done.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cdiff_cli.config import TrainConfig
from cdiff_cli.console import info, make_progress, progress_enabled
from cdiff_cli.errors import CdiffError
from cdiff_cli.train.checkpoint import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from cdiff_cli.train.distributed import DistInfo, StepRandom, derive_seed
from cdiff_cli.train.lr import lr_at


class Stage(Protocol):
    name: str
    net: torch.nn.Module
    ema_prefixes: tuple[str, ...]  # parameter-name prefixes of ``net`` that get an EMA

    def inputs(self, batch: dict[str, Any], rnd: StepRandom) -> dict[str, torch.Tensor]: ...

    def export(self, weights: dict[str, torch.Tensor], result: dict[str, Any]) -> Path: ...


class TrainingInterrupted(CdiffError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; not an error of the user's."""

    exit_code = 130
    label = ""


@dataclass
class Budget:
    """An end for a run beside ``cfg.steps``: when it is spent, the loop stops at the step boundary
    and exports the model exactly as at its last step, with a checkpoint that a later ``--resume``
    (with a larger budget or none) continues from. At least one step is always made.

    ``steps``: optimizer steps made in this run (not counting those it resumed from).
    ``seconds``: of ``clock``, counted from the budget's creation (so data loading counts, as it
    does for a user waiting); any callable works: ``time.monotonic``, ``time.process_time``, a
    fake clock in a test. ``stop(step)``: any other condition, asked after every step.
    """

    steps: int | None = None
    seconds: float | None = None
    clock: Callable[[], float] = time.monotonic
    stop: Callable[[int], bool] | None = None
    started: float = field(init=False)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"a budget of {self.steps} steps: give at least 1")
        self.started = self.clock()

    def spent(self, steps_made: int, step: int) -> bool:
        if self.steps is not None and steps_made >= self.steps:
            return True
        if self.seconds is not None and self.clock() - self.started >= self.seconds:
            return True
        return self.stop is not None and bool(self.stop(step))


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (``auto`` or ``bf16``); on the CPU only when asked (``bf16``): whether it
    is faster there depends on the processor (benchmarks/bench_train.py measures it)."""
    if (device.type == "cuda" and amp in ("auto", "bf16")) or (device.type == "cpu" and amp == "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def speed_up(net: torch.nn.Module, cfg: TrainConfig) -> None:
    """Apply the recipe's speed options to a stage net in place (weights and results unchanged).

    Only the ``unet`` / ``encoder`` / ``ae`` submodules are compiled, in place (``Module.compile``,
    so parameter names stay as they are): compiling the whole stage net returned a loss without
    grad in torch 2.14.1. Checkpoints are written contiguous, so channels_last weights save too.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)  # 4-D weights only; the rest is unchanged
    if cfg.compile:
        for name in ("unet", "encoder", "ae"):
            module = getattr(net, name, None)
            if isinstance(module, torch.nn.Module):
                module.compile()


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class EMA:
    """Exponential moving average of the selected trainable parameters and of the persistent buffers
    under the same prefixes (float ones kept in float32).

    Float buffers (BatchNorm running mean and variance) are averaged with the same decay as the
    weights, so that the exported running statistics go with the exported (averaged) weights of a
    jointly trained encoder; integer buffers (``num_batches_tracked``) follow the live ones.
    """

    def __init__(self, net: torch.nn.Module, prefixes: tuple[str, ...], decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.params = {n: p for n, p in net.named_parameters() if n.startswith(prefixes) and p.requires_grad}
        persistent = set(net.state_dict())
        self.buffers = {n: b for n, b in net.named_buffers() if n.startswith(prefixes) and n in persistent}
        self.shadow = {n: t.detach().float().clone() if t.is_floating_point() else t.detach().clone()
                       for n, t in {**self.params, **self.buffers}.items()}

    def decay_at(self, step: int) -> float:
        """The decay of the update that follows ``step`` earlier ones. With warm-up it is
        min(decay, (1 + step) / (10 + step)): the initial weights' share after n updates is
        prod (1 + t) / (10 + t) = 9! n! / (n + 9)!, 1e-3 at n = 20 (a constant 0.999 keeps 98 % of it)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current weights; ``step``: the number of optimizer updates before this one."""
        decay = self.decay_at(step)
        for name, t in {**self.params, **self.buffers}.items():
            if t.is_floating_point():
                self.shadow[name].lerp_(t.detach().float(), 1.0 - decay)
            else:
                self.shadow[name].copy_(t)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.shadow:
            if name in state:
                self.shadow[name].copy_(state[name])
            elif name in self.buffers:  # a checkpoint from before buffers had an EMA: the net's loaded ones
                self.shadow[name].copy_(self.buffers[name])
            else:
                raise CdiffError(f"checkpoint EMA lacks {name}")

    def apply_to(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(state)
        for name, value in self.shadow.items():
            out[name] = value.to(state[name].dtype)
        return out


def apply_update(net: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, grad_clip: float,
                 step: int = 0) -> None:
    """One optimizer update from the accumulated gradients: clip, step, clear, EMA (``step``: the
    updates made before this one, for the EMA's warm-up)."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(step)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _batches(ds: Dataset, cfg: TrainConfig, seed: int, dist_info: DistInfo, epoch: int, skip: int) -> Iterator[dict]:
    """One epoch of this rank's micro-batches, skipping the first ``skip`` (exact resume)."""
    sampler = DistributedSampler(ds, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    loader = DataLoader(ds, batch_sampler=chunks[skip:], num_workers=cfg.num_workers,
                        persistent_workers=False)
    yield from loader


def _all_true(flag: bool, dist_info: DistInfo, device: torch.device) -> bool:
    if not dist_info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class _Logger:
    def __init__(self, folder: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "log.csv"
        self.tb = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            if not self.csv.exists():
                self.csv.write_text("step,split,loss,lr,images_per_s,seconds\n")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(folder / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not progress_enabled():  # no live bar (a log file, CI): one line per logged step instead
            rate = f", {row['images_per_s']} img/s" if "images_per_s" in row else ""
            info(f"step {row['step']} {row['split']} loss {row['loss']:.4f}{rate}")
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.csv.open("a") as f:
            f.write(f"{row['step']},{row['split']},{row['loss']:.6g},{row.get('lr', '')},"
                    f"{row.get('images_per_s', '')},{row.get('seconds', '')}\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{row['split']}/{key}", value, row["step"])


@torch.no_grad()
def _validate(stage: Stage, val_ds: Dataset, cfg: TrainConfig, seed: int, device: torch.device) -> float:
    stage.net.eval()
    one = DistInfo()
    loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, drop_last=False)
    losses = []
    for i, batch in enumerate(loader):
        if i >= cfg.val_batches:
            break
        rnd = StepRandom(derive_seed(seed, "val"), i, 0, one, len(batch["image"]), device)
        with autocast_for(device, cfg.amp):
            loss, _ = stage.net(**stage.inputs(batch, rnd))
        losses.append(float(loss))
    stage.net.train()
    return sum(losses) / max(len(losses), 1)


def fit(
    stage: Stage,
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset | None,
    out_dir: Path,
    seed: int,
    recipe_hash: str,
    device: torch.device,
    dist_info: DistInfo = DistInfo(),
    resume: bool = False,
    stop_after: int | None = None,
    on_start: Callable[[], None] | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Train ``stage.net`` for ``cfg.steps`` optimizer steps, or until ``budget`` is spent; return a
    summary (``stopped_by``: ``"steps"`` or ``"budget"``).

    ``stop_after`` ends the run early (as if interrupted) after that many steps: tests use it
    to check that an interrupted-and-resumed run equals an uninterrupted one. ``on_start`` runs
    once the checkpoints are checked and loaded, before anything is written: a run that fails
    on them leaves its folder as it was.
    """
    net = stage.net.to(device)
    net.train()
    speed_up(net, cfg)
    ckpt_root = out_dir / "checkpoints"
    per_step = cfg.batch_size * dist_info.world_size * cfg.grad_accum
    n_batches = len(train_ds) // (cfg.batch_size * dist_info.world_size)
    if n_batches == 0:
        raise CdiffError(
            f"{stage.name}: {len(train_ds)} training slices are fewer than one global batch "
            f"({cfg.batch_size} x {dist_info.world_size} processes); lower the batch size or add data"
        )
    optimizer = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
    ema = EMA(net, stage.ema_prefixes, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    state = TrainState(recipe_hash=recipe_hash, stage=stage.name, world_size=dist_info.world_size)
    existing = list_checkpoints(ckpt_root)
    if resume and existing:
        state, ema_state = load_checkpoint(existing[-1], {"net": net}, optimizer, recipe_hash)
        if ema is not None and ema_state is not None:
            ema.load({k.removeprefix("net."): v for k, v in ema_state.items()})
        if dist_info.is_main:
            info(f"{stage.name}: resuming from {existing[-1]} (step {state.step})")
    elif resume:
        if dist_info.is_main:
            info(f"{stage.name}: no checkpoint in {ckpt_root}; starting from scratch")
    elif existing:
        raise CdiffError(f"{out_dir} already holds checkpoints (latest {existing[-1].name}): pass --resume to "
                         "continue, or choose another run name (name=...)")
    if on_start is not None:
        on_start()
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.enabled else net
    logger = _Logger(out_dir, dist_info.is_main)

    def checkpoint() -> Path | None:
        if not dist_info.is_main:
            return None
        shadow = {f"net.{k}": v for k, v in ema.shadow.items()} if ema else None
        return save_checkpoint(ckpt_root, state, {"net": net}, optimizer, shadow, cfg.keep_last)

    loss_value = math.nan
    first_step, stopped_by = state.step, "steps"
    seen_images, t_start = 0, time.perf_counter()
    epoch_iter = _batches(train_ds, cfg, seed, dist_info, state.epoch, state.batch_in_epoch)
    with _StopFlag() as stop, make_progress() as bar:
        task = bar.add_task(stage.name, total=cfg.steps, completed=state.step)
        while state.step < cfg.steps:
            lr = lr_at(cfg, state.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(derive_seed(seed, "step", state.step, dist_info.rank))  # dropout etc.
            total = 0.0
            for micro in range(cfg.grad_accum):
                batch = next(epoch_iter, None)
                if batch is None:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    epoch_iter = _batches(train_ds, cfg, seed, dist_info, state.epoch, 0)
                    batch = next(epoch_iter)
                state.batch_in_epoch += 1
                rnd = StepRandom(seed, state.step, micro, dist_info, cfg.batch_size, device)
                sync = micro == cfg.grad_accum - 1 or not dist_info.enabled
                ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[union-attr]
                with ctx:
                    with autocast_for(device, cfg.amp):
                        loss, logs = model(**stage.inputs(batch, rnd))
                    if not torch.isfinite(loss):
                        raise CdiffError(f"{stage.name}: loss became {float(loss)} at step {state.step}; "
                                         "lower the learning rate or check the data")
                    (loss / cfg.grad_accum).backward()
                total += float(loss.detach()) / cfg.grad_accum
            apply_update(net, optimizer, ema, cfg.grad_clip, state.step)
            state.step += 1
            seen_images += per_step
            loss_value = total
            elapsed = time.perf_counter() - t_start
            bar.update(task, completed=state.step,
                       description=f"{stage.name} loss {loss_value:.4f} {seen_images / max(elapsed, 1e-9):.1f} img/s")
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                logger.write({"step": state.step, "split": "train", "loss": loss_value, "lr": lr,
                              "images_per_s": round(seen_images / max(elapsed, 1e-9), 2),
                              "seconds": round(elapsed, 2), **{k: float(v) for k, v in logs.items()}})
            if val_ds is not None and cfg.val_every and state.step % cfg.val_every == 0 and dist_info.is_main:
                logger.write({"step": state.step, "split": "val",
                              "loss": _validate(stage, val_ds, cfg, seed, device)})
            interrupted = _all_true(stop.requested, dist_info, device)
            if state.step % cfg.ckpt_every == 0 or interrupted or state.step == stop_after:
                path = checkpoint()
                if interrupted or state.step == stop_after:
                    raise TrainingInterrupted(f"{stage.name} stopped at step {state.step}; checkpoint "
                                              f"{path}; continue with --resume")
            if budget is not None and state.step < cfg.steps and _all_true(
                    budget.spent(state.step - first_step, state.step), dist_info, device):
                stopped_by = "budget"
                break
    last = checkpoint()
    weights = net.state_dict()
    if ema is not None:
        weights = ema.apply_to(weights)
    result = {"stage": stage.name, "steps": state.step, "final_loss": loss_value,
              "images_per_s": round(seen_images / max(time.perf_counter() - t_start, 1e-9), 2),
              "checkpoint": str(last) if last else None, "world_size": dist_info.world_size,
              "stopped_by": stopped_by}
    if dist_info.is_main:
        result["model"] = str(stage.export(weights, result))
    return result
