"""The PyTorch trainer: `run(cfg, dist)`, read top to bottom.

load_data -> build model/optimizer -> resume -> for each epoch: train_one_epoch, evaluate,
checkpoint. No host synchronisation inside a step: loss/accuracy/bad-image counts stay on
the device and are all-reduced every `log_interval` steps (and at epoch end).
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as td

from kjob_trainer import data as data_mod
from kjob_trainer.checkpoints import CheckpointDir, epoch_name, step_name
from kjob_trainer.config import TrainConfig
from kjob_trainer.dataset_index import check_num_classes, find_splits
from kjob_trainer.fast_input import DataWaitMeter
from kjob_trainer.distributed import DistEnv
from kjob_trainer.errors import BadInput, Terminated
from kjob_trainer.metrics import MetricsLog, plot_curves, progress_line
from kjob_trainer.models import build_model
from kjob_trainer.torch_eval import evaluate
from kjob_trainer.torch_setup import (LrSchedule, autocast_dtype, init_process_group, make_optimizer,
                                      select_device)
from kjob_trainer.torch_state import Position, build_state, load_state, restore_model, unwrap


# Signals that mean: finish the step, save a checkpoint, stop (exit 143).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How long the other ranks stay after rank 0 has saved, on a stop (see leave_after_rank0).
STOP_GRACE_S = 2.0


@dataclass
class Data:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    classes: list[str]
    train_batches: data_mod.ShardBatches
    val_batches: data_mod.ShardBatches | None
    train_paths: tuple[str, ...] = ()


def load_data(cfg: TrainConfig, dist: DistEnv) -> Data:
    """Datasets and per-rank batch samplers. Raises BadInput for unusable datasets."""
    if cfg.synthetic:
        n_cls = cfg.num_classes or 1000
        train = data_mod.SyntheticDataset(cfg.synthetic_samples, cfg.image_size, n_cls, cfg.seed)
        val, classes, paths = None, [str(i) for i in range(n_cls)], ()
    else:
        train_split, val_split = find_splits(cfg.data_path, need_val=cfg.eval)
        check_num_classes(train_split, cfg.num_classes)
        train = data_mod.ImageDataset(train_split, data_mod.build_transforms(cfg, True), cfg.seed)
        val = data_mod.ImageDataset(val_split, data_mod.build_transforms(cfg, False), cfg.seed) if val_split else None
        classes, paths = list(train_split.classes), train_split.paths
    if len(train) < cfg.batch_size * dist.world_size:
        raise BadInput(f"dataset: {len(train)} training images are fewer than one global batch "
                       f"({cfg.batch_size} x {dist.world_size} ranks)")
    tb = data_mod.ShardBatches(len(train), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, True)
    vb = data_mod.ShardBatches(len(val), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, False) if val else None
    return Data(train, val, classes, tb, vb, paths)


@dataclass
class Tally:
    """Per-interval sums kept on the device (no sync), plus host-side counters from the
    CPU batch tensors (sample ids, bad images) that cost no device sync either."""

    device: torch.device
    sums: torch.Tensor = None  # loss*n, correct, n
    images: int = 0
    bad: int = 0
    bad_total: int = 0
    first_bad: int | None = None
    id_sum: int = 0
    id_count: int = 0
    data_wait: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.sums = torch.zeros(3, device=self.device, dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()
        self.images, self.bad, self.data_wait = 0, 0, 0.0
        self.started = time.perf_counter()


class Trainer:
    """State of one PyTorch run. `fit()` trains from `pos` to the end and returns 0."""

    def __init__(self, cfg: TrainConfig, dist: DistEnv) -> None:
        self.cfg, self.dist = cfg, dist
        self.stop_requested = False
        self.stop_signal = "SIGTERM"
        self.device = select_device(cfg, dist)
        if dist.distributed:
            init_process_group(dist, cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg, dist)
        self.log = MetricsLog(cfg.output_path, dist.is_main)
        self.ckpts = CheckpointDir.under(cfg.output_path, "pytorch", cfg.model, cfg.keep_checkpoints)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg.model, len(self.data.classes))
        self.pos = Position()
        resume_from = self.ckpts.resolve_resume(cfg.resume)
        state = load_state(resume_from) if resume_from else None
        if state is not None:
            restore_model(model, state, resume_from)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        if state is not None:
            self._resume(state, resume_from)
        self.ddp = self.model
        if dist.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True, bucket_cap_mb=cfg.bucket_cap_mb)
        self.step_model = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.compiled_ok = False
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.amp_dtype = autocast_dtype(cfg)
        self.accum = cfg.grad_accum
        self.batches_per_epoch = len(self.data.train) // (cfg.batch_size * dist.world_size)
        self.steps_per_epoch = max(1, self.batches_per_epoch // self.accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.lr_at = LrSchedule.from_config(cfg, dist.world_size, self.steps_per_epoch, cfg.epochs * self.steps_per_epoch)
        self.tally = Tally(self.device)
        self.last_metrics: dict[str, float] = {}
        self.train_input = data_mod.RankInput(self.data.train, self.data.train_batches, cfg, self.device,
                                              self.memory_format)
        self.val_input = (data_mod.RankInput(self.data.val, self.data.val_batches, cfg, self.device, self.memory_format)
                          if self.data.val is not None else None)

    def _resume(self, state: dict, path) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pos = Position(state["epoch"], state["batches"], state["step"])
        old_world = state.get("world_size", self.dist.world_size)
        old_batch = state["config"].get("batch_size", self.cfg.batch_size)
        if self.pos.batches and (old_world, old_batch) != (self.dist.world_size, self.cfg.batch_size):
            # Another job shape: keep the number of images already seen in this epoch.
            seen = self.pos.batches * old_batch * old_world
            self.pos.batches = seen // (self.cfg.batch_size * self.dist.world_size)
        self.last_metrics = dict(state.get("metrics") or {})
        self.log.print(f"resumed from {path}: epoch {self.pos.epoch + 1}, step {self.pos.step}")

    # --- signals -------------------------------------------------------------------------
    def on_sigterm(self, signum, frame) -> None:
        # Only a flag: the step in flight finishes, then rank 0 saves (see train_one_epoch).
        self.stop_requested = True
        self.stop_signal = signal.Signals(signum).name

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, name: str, metrics: dict) -> None:
        if not self.dist.is_main:
            return
        state = build_state(model=self.model, optimizer=self.optimizer, scaler=self.scaler, pos=self.pos,
                            config=self.cfg.to_dict(), classes=self.data.classes, metrics=metrics,
                            world_size=self.dist.world_size)
        path = self.ckpts.save(name, lambda tmp: torch.save(state, tmp), epoch=self.pos.epoch,
                               step=self.pos.step, metrics=metrics)
        self.log.print(f"checkpoint {path}")

    # --- reductions ----------------------------------------------------------------------
    def reduce_interval(self) -> dict:
        """All-reduce the interval's sums (the one host sync every log_interval steps)."""
        t = self.tally
        host = torch.tensor([t.images, t.bad, float(self.stop_requested)], dtype=torch.float64, device=self.device)
        vec = torch.cat([t.sums, host])
        if self.dist.distributed:
            td.all_reduce(vec)
        loss_n, correct, n, images, bad, stop = vec.tolist()
        t.bad_total += int(bad)
        out = {"loss": loss_n / max(n, 1), "train_top1": 100.0 * correct / max(n, 1), "images": int(images),
               "seconds": time.perf_counter() - t.started, "data_wait": t.data_wait, "stop": stop > 0}
        allowed = int(self.cfg.max_bad_images * len(self.data.train))
        if t.bad_total > allowed:
            where = f" (first on this rank: {self.data.train_paths[t.first_bad]})" if t.first_bad is not None else ""
            raise BadInput(f"dataset: {t.bad_total} training images could not be decoded, more than "
                           f"max_bad_images={self.cfg.max_bad_images} x {len(self.data.train)} allows{where}")
        return out

    def leave_after_rank0(self) -> None:
        """All ranks agreed to stop: the others wait until rank 0's checkpoint is on disk and
        then a moment more, since mpirun ends the whole job at the first rank that exits
        non-zero, which would cut off rank 0's save or its last message."""
        if self.dist.distributed:
            td.barrier()
            if not self.dist.is_main:
                time.sleep(STOP_GRACE_S)

    def log_interval(self, epoch: int) -> dict:
        r = self.reduce_interval()
        lr = self.lr_at(max(self.pos.step - 1, 0))
        rate = r["images"] / max(r["seconds"], 1e-9)
        per_step = r["seconds"] / max(self.cfg.log_interval, 1)
        eta = (self.total_steps - self.pos.step) * per_step
        wait_ms = 1000 * r["data_wait"] / max(self.cfg.log_interval, 1)
        extra = f"data-wait {wait_ms:.0f}ms/step"
        wait_share = r["data_wait"] / max(r["seconds"], 1e-9)
        if wait_share > DataWaitMeter.INPUT_BOUND_SHARE:  # say it plainly when the GPU starves
            extra += f" ({100 * wait_share:.0f}% of step time: input-bound, add --workers or use --decoder dali)"
        self.log.print(progress_line(epoch=epoch, epochs=self.cfg.epochs, step=self.pos.step, total_steps=self.total_steps,
                                     loss=r["loss"], lr=lr, images_per_s=rate, eta_s=eta, extra=extra))
        self.log.record("train", self.pos.step, epoch=epoch, loss=r["loss"], top1=r["train_top1"], lr=lr,
                        images_per_s=rate, data_wait_ms=wait_ms)
        self.tally.reset()
        return r

    # --- the step ------------------------------------------------------------------------
    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, sync: bool) -> None:
        if self.step_model is not self.ddp and not self.compiled_ok:
            # The first compiled step compiles forward and backward; if either fails, drop the
            # half-made gradients and run this (very first) micro-batch eagerly from then on.
            try:
                self._forward_backward(self.step_model, images, labels, sync)
                self.compiled_ok = True
                return
            except Exception as e:
                self.log.print(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                               "continuing without it")
                self.optimizer.zero_grad(set_to_none=True)
                self.step_model = self.ddp
        self._forward_backward(self.step_model, images, labels, sync)

    def _forward_backward(self, model, images: torch.Tensor, labels: torch.Tensor, sync: bool) -> None:
        no_sync = self.ddp.no_sync if (self.dist.distributed and not sync) else contextlib.nullcontext
        with no_sync():
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = model(images)
                loss = self.criterion(logits, labels)
            (self.scaler.scale(loss / self.accum) if self.scaler else loss / self.accum).backward()
        with torch.no_grad():
            n = labels.shape[0]
            correct = (logits.argmax(1) == labels).sum()
            self.tally.sums += torch.stack([loss.detach().double() * n, correct.double(),
                                            torch.tensor(n, dtype=torch.float64, device=self.device)])

    def optimizer_step(self) -> None:
        lr = self.lr_at(self.pos.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1

    def count_inputs(self, ids: torch.Tensor, bad: torch.Tensor) -> None:
        t = self.tally
        t.images += int(ids.numel())
        t.id_sum += int(ids.sum())
        t.id_count += int(ids.numel())
        nbad = int(bad.sum())
        if nbad:
            t.bad += nbad
            if t.first_bad is None:
                t.first_bad = int(ids[bad.bool()][0])

    def train_one_epoch(self, epoch: int) -> bool:
        """Train the rest of `epoch`; True if training must stop (max steps or SIGTERM)."""
        self.ddp.train()
        it = self.train_input.epoch(epoch, self.pos.batches)
        while True:
            waited = time.perf_counter()
            try:
                images, labels, ids, bad = next(it)
            except StopIteration:
                break
            self.tally.data_wait += time.perf_counter() - waited
            self.count_inputs(ids, bad)
            self.pos.batches += 1
            last_micro = self.pos.batches % self.accum == 0
            self.forward_backward(images, labels, sync=last_micro)
            if not last_micro:
                continue
            self.optimizer_step()
            stop = False
            if self.pos.step % self.cfg.log_interval == 0:
                stop = self.log_interval(epoch)["stop"]
            if self.stop_requested and self.dist.is_main or stop:
                # Step checkpoints carry no eval metrics in the index: "best" stays an evaluated one.
                self.save(step_name(self.pos.step, ".pt"), {})
                if stop:
                    self.leave_after_rank0()
                raise Terminated(f"{self.dist.where()}: {self.stop_signal}: saved a checkpoint at step {self.pos.step} and stopped")
            if self.cfg.ckpt_steps and self.pos.step % self.cfg.ckpt_steps == 0 and self.pos.batches < self.batches_per_epoch:
                self.save(step_name(self.pos.step, ".pt"), {})
            if self.pos.step >= self.total_steps:
                return True
        return False

    def end_of_epoch(self, epoch: int, stopping: bool) -> None:
        if self.tally.images:
            self.log_interval(epoch)
        if self.val_input is not None:
            if self.dist.distributed:
                # Each rank's BN running stats moved with its own last batch; score the weights
                # rank 0 is about to save, so `evaluate` on the checkpoint gives the same numbers.
                for buf in unwrap(self.model).buffers():
                    td.broadcast(buf, 0)
            m = evaluate(self.ddp, self.val_input, self.cfg, self.device)
            self.last_metrics = {"top1": m["top1"], "top5": m["top5"], "loss": m["loss"]}
            self.log.print(f"epoch {epoch + 1}/{self.cfg.epochs} eval top1 {m['top1']:.2f} top5 {m['top5']:.2f} "
                           f"loss {m['loss']:.4f} ({m['images']} images)")
            self.log.record("eval", self.pos.step, epoch=epoch, **self.last_metrics)
        complete = self.pos.batches >= self.batches_per_epoch
        if complete:
            self.pos = Position(epoch + 1, 0, self.pos.step)
        if stopping or (epoch + 1) % self.cfg.ckpt_interval == 0 or epoch + 1 == self.cfg.epochs:
            name = epoch_name(self.pos.epoch, ".pt") if complete else step_name(self.pos.step, ".pt")
            self.save(name, self.last_metrics)

    def rank_summary(self) -> None:
        """Per-rank sample counts and id sums, gathered to rank 0 (proof every rank trained)."""
        w = self.dist.world_size
        vec = torch.zeros(2 * w, dtype=torch.float64, device=self.device)
        vec[self.dist.rank] = self.tally.id_count
        vec[w + self.dist.rank] = self.tally.id_sum
        if self.dist.distributed:
            td.all_reduce(vec)
        vals = [int(v) for v in vec.tolist()]
        self.log.record("ranks", self.pos.step, world_size=w, samples=vals[:w], id_sum=vals[w:])

    def fit(self) -> int:
        cfg = self.cfg
        self.log.print(f"training {cfg.model} ({sum(p.numel() for p in self.model.parameters()):,} parameters, "
                       f"{len(self.data.classes)} classes) on {self.dist.world_size} x {self.device.type}, "
                       f"global batch {cfg.global_batch(self.dist.world_size)}, lr {self.lr_at.base_lr:.4g}, "
                       f"{self.steps_per_epoch} steps/epoch")
        if self.pos.step >= self.total_steps or self.pos.epoch >= cfg.epochs:
            self.log.print(f"nothing to do: already at step {self.pos.step} of {self.total_steps}")
            return 0
        for epoch in range(self.pos.epoch, cfg.epochs):
            stopping = self.train_one_epoch(epoch)
            self.end_of_epoch(epoch, stopping)
            if stopping:
                break
        self.rank_summary()
        if self.dist.is_main:
            plot_curves(cfg.output_path)
        self.log.print(f"done: step {self.pos.step}, metrics {self.last_metrics}")
        return 0


def run(cfg: TrainConfig, dist: DistEnv) -> int:
    """Train with PyTorch; returns the exit code. Raises TrainerError subclasses."""
    trainer = Trainer(cfg, dist)
    # SIGTERM: an eviction inside the pod. SIGUSR1: the same through mpirun, which forwards
    # it to every rank; its own SIGTERM kills the ranks within a second, before any save.
    previous = {sig: signal.signal(sig, trainer.on_sigterm) for sig in STOP_SIGNALS}
    try:
        return trainer.fit()
    except Terminated:
        raise
    except Exception as e:
        if trainer.stop_requested:  # a peer stopped first on the same SIGTERM: not an error of ours
            raise Terminated(f"{dist.where()}: {trainer.stop_signal}: stopped") from e
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        trainer.log.close()
        if td.is_available() and td.is_initialized():
            td.destroy_process_group()
