"""The PyTorch loop: `run(cfg, dist)`, read top to bottom.

load_data -> build model/optimizer -> resume -> for each epoch: train_one_epoch,
end_of_epoch (evaluate, checkpoint) -> finish. The run protocol (stop flag, what every
logged and checkpointed number means, the bad-image limit, rank records) is
`run_protocol`'s; `mindspore/train.py`'s Trainer has the same methods. No host synchronisation
inside a step: loss/accuracy stay on the device and are all-reduced with the host counts
every `log_interval` steps (and at epoch end).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as td

from kjob_trainer.common import run_protocol as protocol
from kjob_trainer.torch import data as torch_data
from kjob_trainer.common.augment import mixup_draw
from kjob_trainer.common.checkpoints import CheckpointDir, epoch_name, step_name
from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.dataset_index import check_num_classes, find_splits
from kjob_trainer.common.distributed import DistEnv
from kjob_trainer.common.errors import BadInput, Terminated
from kjob_trainer.common.metrics import MetricsLog, plot_curves
from kjob_trainer.common.progress import DataWaitMeter
from kjob_trainer.common.schedule import LrSchedule
from kjob_trainer.common.sharding import batches_per_epoch
from kjob_trainer.common.synthetic import SYNTHETIC_CLASSES
from kjob_trainer.torch.eval import evaluate
from kjob_trainer.torch.models import build_model
from kjob_trainer.torch.setup import autocast_dtype, init_process_group, make_optimizer, select_device
from kjob_trainer.torch.state import Position, build_state, load_state, restore_model, unwrap


@dataclass
class Data:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    classes: list[str]
    train_batches: torch_data.ShardBatches
    val_batches: torch_data.ShardBatches | None
    train_paths: tuple[str, ...] = ()


def load_data(cfg: TrainConfig, dist: DistEnv) -> Data:
    """Datasets and per-rank batch samplers. Raises BadInput for unusable datasets."""
    if cfg.synthetic:
        n_cls = cfg.num_classes or SYNTHETIC_CLASSES
        train = torch_data.SyntheticDataset(cfg.synthetic_samples, cfg.image_size, n_cls, cfg.seed)
        val, classes, paths = None, [str(i) for i in range(n_cls)], ()
    else:
        train_split, val_split = find_splits(cfg.data_path, need_val=cfg.eval)
        check_num_classes(train_split, cfg.num_classes)
        train = torch_data.ImageDataset(train_split, torch_data.build_transforms(cfg, True), cfg.seed)
        val = (torch_data.ImageDataset(val_split, torch_data.build_transforms(cfg, False), cfg.seed)
               if val_split else None)
        classes, paths = list(train_split.classes), train_split.paths
    batches_per_epoch(len(train), cfg.batch_size, dist.world_size)  # raises BadInput for less than one batch
    tb = torch_data.ShardBatches(len(train), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, True)
    vb = torch_data.ShardBatches(len(val), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, False) if val else None
    return Data(train, val, classes, tb, vb, paths)


class Trainer:
    """One PyTorch run on this rank. `fit()` trains from `pos` to the end and returns 0."""

    framework = "pytorch"

    def __init__(self, cfg: TrainConfig, dist: DistEnv) -> None:
        self.cfg, self.dist = cfg, dist
        self.stop = protocol.StopFlag()
        self.device = select_device(cfg, dist)
        if dist.distributed:
            init_process_group(dist, cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg, dist)
        self.log = MetricsLog(cfg.output_path, dist.is_main)
        self.ckpts = CheckpointDir.under(cfg.output_path, self.framework, cfg.model, cfg.keep_checkpoints)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg.model, len(self.data.classes))
        self.pos = Position()
        self.last_train_loss: float | None = None
        self.last_eval: dict[str, float] | None = None
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
        self.schedule = LrSchedule.from_config(cfg, dist.world_size, self.steps_per_epoch)
        # The interval since the last progress line: loss*n, hits, n on the device (no sync),
        # bad images and wall time on the host.
        self.sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        self.bad = 0
        self.bad_total = 0
        self.first_bad: int | None = None
        self.interval_started = time.perf_counter()
        self.logged_step = self.pos.step
        self.meter = DataWaitMeter()
        self.ranks = protocol.RankRecord(dist.rank, dist.world_size, dist.host)
        self.train_input = torch_data.RankInput(self.data.train, self.data.train_batches, cfg, self.device,
                                                self.memory_format)
        self.val_input = (torch_data.RankInput(self.data.val, self.data.val_batches, cfg, self.device,
                                               self.memory_format) if self.data.val is not None else None)

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
        metrics = dict(state.get("metrics") or {})
        self.last_train_loss = metrics.get("train_loss")
        self.last_eval = {k: metrics[k] for k in ("top1", "top5", "loss")} if "top1" in metrics else None
        self.log.print(protocol.resumed_line(path, self.pos.epoch, self.pos.step))

    def lr_at(self, step: int) -> float:
        return self.schedule.lr_at(step)

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, name: str, metrics: dict) -> None:
        """Rank 0: one checkpoint (torch/state.py's dict) into the checkpoint folder."""
        if not self.dist.is_main:
            return
        state = build_state(model=self.model, optimizer=self.optimizer, scaler=self.scaler, pos=self.pos,
                            config=self.cfg.to_dict(), classes=self.data.classes, metrics=metrics,
                            world_size=self.dist.world_size)
        path = self.ckpts.save(name, lambda tmp: torch.save(state, tmp), epoch=self.pos.epoch,
                               step=self.pos.step, metrics=metrics)
        self.log.print(f"checkpoint {path}")

    # --- progress ------------------------------------------------------------------------
    def log_interval(self, epoch: int) -> protocol.Reduced:
        """All-reduce the interval (the one host sync every log_interval steps), apply the
        bad-image limit, print the progress line and write the `train` record."""
        host = torch.tensor(protocol.interval_vector(loss_sum=0.0, correct=0.0, samples=0, bad=self.bad,
                                                     stop=self.stop)[3:], dtype=torch.float64, device=self.device)
        vec = torch.cat([self.sums, host])
        if self.dist.distributed:
            td.all_reduce(vec)
        r = protocol.Reduced.read(vec.tolist())
        self.bad_total += r.bad
        example = self.data.train_paths[self.first_bad] if self.first_bad is not None else None
        protocol.check_bad_images(self.bad_total, len(self.data.train), self.cfg.max_bad_images, example)
        line, record = protocol.interval_record(
            r, seconds=time.perf_counter() - self.interval_started, meter=self.meter, epoch=epoch,
            epochs=self.cfg.epochs, step=self.pos.step, steps_in_interval=self.pos.step - self.logged_step,
            total_steps=self.total_steps, lr=self.lr_at(max(self.pos.step - 1, 0)), count_top1=True)
        self.log.print(line)
        self.log.record("train", self.pos.step, **record)
        self.last_train_loss = r.loss
        self.logged_step = self.pos.step
        self.sums.zero_()
        self.bad = 0
        self.meter.reset()
        self.interval_started = time.perf_counter()
        return r

    def leave_after_rank0(self) -> None:
        """All ranks agreed to stop: the others wait until rank 0's checkpoint is on disk and
        then protocol.STOP_GRACE_S more (see there)."""
        if self.dist.distributed:
            td.barrier()
            if not self.dist.is_main:
                time.sleep(protocol.STOP_GRACE_S)

    # --- the step ------------------------------------------------------------------------
    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, sync: bool, epoch: int) -> None:
        if self.step_model is not self.ddp and not self.compiled_ok:
            # The first compiled step compiles forward and backward; if either fails, drop the
            # half-made gradients and run this (very first) micro-batch eagerly from then on.
            try:
                self._forward_backward(self.step_model, images, labels, sync, epoch)
                self.compiled_ok = True
                return
            except Exception as e:
                self.log.print(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                               "continuing without it")
                self.optimizer.zero_grad(set_to_none=True)
                self.step_model = self.ddp
        self._forward_backward(self.step_model, images, labels, sync, epoch)

    def _mixup(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        """(images, targets) of this micro-batch: Mixup's (augment.mixup_draw) when it is on."""
        if not self.cfg.mixup_alpha:
            return images, labels
        draw = mixup_draw(self.cfg.mixup_alpha, labels.shape[0], seed=self.cfg.seed, epoch=epoch,
                          batch=self.pos.batches - 1, rank=self.dist.rank)
        perm = torch.as_tensor(draw.perm, device=images.device)
        one_hot = torch.nn.functional.one_hot(labels, len(self.data.classes)).to(images.dtype)
        return (draw.lam * images + (1 - draw.lam) * images[perm],
                draw.lam * one_hot + (1 - draw.lam) * one_hot[perm])

    def _forward_backward(self, model, images: torch.Tensor, labels: torch.Tensor, sync: bool, epoch: int) -> None:
        inputs, targets = self._mixup(images, labels, epoch)
        no_sync = self.ddp.no_sync if (self.dist.distributed and not sync) else contextlib.nullcontext
        with no_sync():
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = model(inputs)
                loss = self.criterion(logits, targets)
            (self.scaler.scale(loss / self.accum) if self.scaler else loss / self.accum).backward()
        with torch.no_grad():
            n = labels.shape[0]
            correct = (logits.argmax(1) == labels).sum()
            self.sums += torch.stack([loss.detach().double() * n, correct.double(),
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
        self.ranks.count(ids.tolist())
        nbad = int(bad.sum())
        if nbad:
            self.bad += nbad
            if self.first_bad is None:
                self.first_bad = int(ids[bad.bool()][0])

    def train_one_epoch(self, epoch: int) -> bool:
        """Train the rest of `epoch`; True if training must stop (max steps). Raises
        Terminated after saving when a stop signal arrived."""
        self.ddp.train()
        for images, labels, ids, bad in self.meter.over(self.train_input.epoch(epoch, self.pos.batches)):
            self.count_inputs(ids, bad)
            self.pos.batches += 1
            last_micro = self.pos.batches % self.accum == 0
            self.forward_backward(images, labels, sync=last_micro, epoch=epoch)
            if not last_micro:
                continue
            self.optimizer_step()
            agreed = None
            if self.pos.step % self.cfg.log_interval == 0:
                agreed = self.log_interval(epoch).stop_signal
            if self.stop.requested and self.dist.is_main or agreed:
                # Step checkpoints carry no eval metrics: `best` stays an evaluated one.
                self.save(step_name(self.pos.step, ".pt"), protocol.checkpoint_metrics(self.last_train_loss, None))
                self.log.print(protocol.stopping_line(self.stop.signal_name or agreed, self.pos.step,
                                                      self.ckpts.read_index()["latest"]))
                if agreed:
                    self.leave_after_rank0()
                raise Terminated(protocol.stopped_message(self.dist.where(), self.stop.signal_name or agreed,
                                                          self.pos.step))
            if self.cfg.ckpt_steps and self.pos.step % self.cfg.ckpt_steps == 0 and self.pos.batches < self.batches_per_epoch:
                self.save(step_name(self.pos.step, ".pt"), protocol.checkpoint_metrics(self.last_train_loss, None))
            if self.pos.step >= self.total_steps:
                return True
        return False

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Top-1/top-5/loss on the val split (all ranks), printed and recorded."""
        if self.dist.distributed:
            # Each rank's BN running stats moved with its own last batch; score the weights
            # rank 0 is about to save, so `evaluate` on the checkpoint gives the same numbers.
            for buf in unwrap(self.model).buffers():
                td.broadcast(buf, 0)
        m = evaluate(self.ddp, self.val_input, self.cfg, self.device)
        self.log.print(protocol.eval_line(epoch, self.cfg.epochs, m))
        self.log.record("eval", self.pos.step, epoch=epoch, top1=m["top1"], top5=m["top5"], loss=m["loss"])
        return m

    def end_of_epoch(self, epoch: int, stopping: bool) -> None:
        if self.meter.steps:
            self.log_interval(epoch)
        if self.val_input is not None:
            self.last_eval = self.evaluate(epoch)
        complete = self.pos.batches >= self.batches_per_epoch
        if complete:
            self.pos = Position(epoch + 1, 0, self.pos.step)
        if stopping or (epoch + 1) % self.cfg.ckpt_interval == 0 or epoch + 1 == self.cfg.epochs:
            name = epoch_name(self.pos.epoch, ".pt") if complete else step_name(self.pos.step, ".pt")
            self.save(name, protocol.checkpoint_metrics(self.last_train_loss, self.last_eval))

    def finish(self) -> None:
        """Every rank's record (ranks/rank-N.json), the `ranks` row and curves.png on rank 0."""
        vec = torch.tensor(self.ranks.vector() + [1.0], dtype=torch.float64, device=self.device)
        if self.dist.distributed:
            td.all_reduce(vec)
        reduced = vec.tolist()
        self.log.record("ranks", self.pos.step, **self.ranks.summary(reduced[:-1]))
        with torch.no_grad():
            weights = float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))
        self.ranks.write(self.cfg.output_path, step=self.pos.step, ranks_in_allreduce=int(reduced[-1]),
                         weights_abs_sum=weights, last_metrics=protocol.checkpoint_metrics(self.last_train_loss,
                                                                                           self.last_eval))
        if self.dist.is_main:
            plot_curves(self.cfg.output_path)

    def fit(self) -> int:
        cfg = self.cfg
        self.log.print(protocol.header_line(
            model=cfg.model, parameters=sum(p.numel() for p in self.model.parameters()), classes=len(self.data.classes),
            world_size=self.dist.world_size, device=self.device.type, global_batch=cfg.global_batch(self.dist.world_size),
            lr=self.schedule.base_lr, steps_per_epoch=self.steps_per_epoch))
        if self.pos.step >= self.total_steps or self.pos.epoch >= cfg.epochs:
            self.log.print(f"nothing to do: already at step {self.pos.step} of {self.total_steps}")
            return 0
        for epoch in range(self.pos.epoch, cfg.epochs):
            stopping = self.train_one_epoch(epoch)
            self.end_of_epoch(epoch, stopping)
            if stopping:
                break
        self.finish()
        self.log.print(protocol.done_line(self.pos.step, protocol.checkpoint_metrics(self.last_train_loss,
                                                                                     self.last_eval)))
        return 0


def run(cfg: TrainConfig, dist: DistEnv) -> int:
    """Train with PyTorch; returns the exit code. Raises TrainerError subclasses."""
    trainer = Trainer(cfg, dist)
    try:
        with trainer.stop:
            try:
                return trainer.fit()
            except Terminated:
                raise
            except Exception as e:
                if trainer.stop.requested:  # a peer stopped first on the same signal: not an error of ours
                    raise Terminated(f"{dist.where()}: {trainer.stop.signal_name}: stopped") from e
                raise
    finally:
        trainer.log.close()
        if td.is_available() and td.is_initialized():
            td.destroy_process_group()
