"""The MindSpore loop: MindCV's ResNeXt50/ResNeSt50 with MindCV's recipe pieces, read top to bottom.

`train.py` calls `run(cfg, dist)` for `--framework mindspore`: setup (mindspore/setup.py: device,
graph mode, cluster, network, train step) -> resume -> for each epoch: train_one_epoch,
end_of_epoch (evaluate, checkpoint) -> finish. The run protocol (stop flag, what every
logged and checkpointed number means, the bad-image limit, rank records) is
`run_protocol`'s; `torch/train.py`'s Trainer has the same methods.

Graph mode on every device (MindCV's default `mode: 0`): the train step is compiled once,
about 6 s for ResNeXt50 on this CPU, then runs as one graph; CPU works in graph mode, data-
parallel all-reduce included. Batches are fed one call per step: MindSpore's dataset sink
(`mindspore.data_sink`) refuses the CPU target and there is no GPU here to prove a sink
path, so none is used (`dataset_sink` in a config is accepted and has no effect yet).

A "step" is one optimizer update (grad_accum batches); checkpoints are only written
between updates, so a gradient-accumulation buffer is always empty in them. Losses stay
on the device between progress lines (no per-step host sync).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np

from kjob_trainer.common import run_protocol as protocol
from kjob_trainer.common.augment import mixup_draw
from kjob_trainer.common.checkpoints import CheckpointDir, epoch_name, step_name
from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.dataset_index import check_num_classes, find_splits
from kjob_trainer.common.distributed import DistEnv
from kjob_trainer.common.errors import BadInput, Terminated
from kjob_trainer.common.metrics import MetricsLog, plot_curves
from kjob_trainer.mindspore.data import ImageSource, SyntheticSource, make_pipeline
from kjob_trainer.mindspore.eval import allreduce_sum, evaluate_network, read_checkpoint
from kjob_trainer.mindspore.setup import build_network, build_train_step, lr_table, setup_context, weights_abs_sum
from kjob_trainer.common.progress import DataWaitMeter
from kjob_trainer.common.schedule import LrSchedule
from kjob_trainer.common.sharding import batches_per_epoch, shard_indices
from kjob_trainer.common.synthetic import SYNTHETIC_CLASSES


def load_data(cfg: TrainConfig):
    """(train source, val source or None, class names or None); checks the dataset before
    MindSpore or the cluster start. Raises BadInput for unusable datasets."""
    if cfg.synthetic:
        return SyntheticSource(cfg.synthetic_samples, cfg.image_size, cfg.num_classes or SYNTHETIC_CLASSES,
                               cfg.seed), None, None
    train, val = find_splits(cfg.data_path, need_val=cfg.eval)
    src = ImageSource(train)
    src.num_classes = check_num_classes(train, cfg.num_classes)
    return src, (ImageSource(val) if val is not None else None), list(train.classes)


class Trainer:
    """One MindSpore run on this rank (rank 0 also logs and writes checkpoints)."""

    framework = "mindspore"

    def __init__(self, cfg: TrainConfig, dist: DistEnv, device_target: str = "CPU") -> None:
        self.cfg, self.dist, self.device_target = cfg, dist, device_target
        self.stop = protocol.StopFlag()
        self.source, self.val, self.class_names = load_data(cfg)
        self.num_classes = self.source.num_classes
        batches = batches_per_epoch(len(self.source), cfg.batch_size, dist.world_size)
        if batches < cfg.grad_accum:
            raise BadInput(f"--grad-accum {cfg.grad_accum} is more than the {batches} batches of an epoch")
        self.batches = batches - batches % cfg.grad_accum  # whole updates per epoch
        self.steps_per_epoch = self.batches // cfg.grad_accum
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.schedule = LrSchedule.from_config(cfg, dist.world_size, self.steps_per_epoch)
        self.ckpts = CheckpointDir.under(cfg.output_path, self.framework, cfg.model, cfg.keep_checkpoints)
        self.log = MetricsLog(cfg.output_path, enabled=dist.is_main)
        self.step = 0
        self.logged_step = 0
        self.batch_in_epoch = 0
        self.last_train_loss: float | None = None
        self.last_eval: dict[str, float] | None = None
        self.losses: list = []  # loss tensors of the interval (read at the progress line)
        self.bad_reported = 0
        self.bad_total = 0
        self.interval_started = time.perf_counter()
        self.meter = DataWaitMeter()
        self.ranks = protocol.RankRecord(dist.rank, dist.world_size, dist.host)

    def build(self) -> None:
        self.net = build_network(self.cfg.model, self.num_classes)
        self.train_step = build_train_step(self.cfg, self.net, lr_table(self.schedule.table(), self.cfg.grad_accum),
                                           self.device_target)

    def lr_at(self, step: int) -> float:
        return self.schedule.lr_at(step)

    def _resume(self) -> None:
        """Load the checkpoint --resume names (nothing for a fresh start)."""
        import mindspore as ms

        path = self.ckpts.resolve_resume(self.cfg.resume)
        if path is None:
            return
        params, info = read_checkpoint(str(path))
        if info["model"] != self.cfg.model:
            raise BadInput(f"--resume {path}: checkpoint is a {info['model']}, not a {self.cfg.model}")
        not_loaded, _ = ms.load_param_into_net(self.train_step, params)
        if any(not n.startswith("_grad_accumulation") for n in not_loaded):
            raise BadInput(f"--resume {path}: checkpoint does not fit this model/optimizer "
                           f"({len(not_loaded)} parameters missing, e.g. {not_loaded[0]})")
        self.step = self.logged_step = info["step"]
        epochs_done = self.step // self.steps_per_epoch
        self.batch_in_epoch = (self.step - epochs_done * self.steps_per_epoch) * self.cfg.grad_accum
        metrics = info["metrics"]
        self.last_train_loss = metrics.get("train_loss")
        self.last_eval = {k: metrics[k] for k in ("top1", "top5", "loss")} if "top1" in metrics else None
        self.log.print(protocol.resumed_line(path, epochs_done, self.step))

    # --- checkpoints ---------------------------------------------------------------------
    def save(self, name: str, metrics: dict) -> None:
        """Rank 0: checkpoint of the whole train step (weights, momentum, lr step, loss scale)."""
        if not self.dist.is_main:
            return
        import mindspore as ms

        epochs_done = self.step // self.steps_per_epoch
        extra = {"kjob_framework": self.framework, "kjob_model": self.cfg.model, "kjob_epoch": epochs_done,
                 "kjob_step": self.step, "kjob_config": json.dumps(self.cfg.to_dict()),
                 "kjob_metrics": json.dumps(metrics), "kjob_classes": json.dumps(self.class_names)}

        def write(tmp: Path) -> None:
            # save_checkpoint appends ".ckpt" to a name without it; write there and move.
            ms.save_checkpoint(self.train_step, str(tmp) + ".ckpt", append_dict=extra)
            Path(str(tmp) + ".ckpt").replace(tmp)

        path = self.ckpts.save(name, write, epoch=epochs_done, step=self.step, metrics=metrics)
        self.log.print(f"checkpoint {path}")

    # --- progress ------------------------------------------------------------------------
    def log_interval(self, epoch: int) -> protocol.Reduced:
        """All-reduce the interval (every rank calls this at the same steps, so it never meets
        a peer's gradient all-reduce), apply the bad-image limit, print the progress line and
        write the `train` record."""
        batch = self.cfg.batch_size
        loss_sum = float(sum(float(loss.asnumpy()) for loss in self.losses)) * batch
        bad = self.source.bad - self.bad_reported
        self.bad_reported = self.source.bad
        vec = protocol.interval_vector(loss_sum=loss_sum, correct=0.0, samples=len(self.losses) * batch, bad=bad,
                                       stop=self.stop)
        r = protocol.Reduced.read(allreduce_sum(np.asarray(vec, dtype=np.float64), self.dist.distributed).tolist())
        self.bad_total += r.bad
        example = self.source.bad_files[0] if self.source.bad_files else None
        protocol.check_bad_images(self.bad_total, len(self.source), self.cfg.max_bad_images, example)
        line, record = protocol.interval_record(
            r, seconds=time.perf_counter() - self.interval_started, meter=self.meter, epoch=epoch,
            epochs=self.cfg.epochs, step=self.step, steps_in_interval=self.step - self.logged_step,
            total_steps=self.total_steps, lr=self.lr_at(max(self.step - 1, 0)), count_top1=False)
        self.log.print(line)
        self.log.record("train", self.step, **record)
        self.last_train_loss = r.loss
        self.logged_step = self.step
        self.losses = []
        self.meter.reset()
        self.interval_started = time.perf_counter()
        return r

    def leave_after_rank0(self) -> None:
        """All ranks agreed to stop: wait until rank 0's checkpoint is on disk, then
        protocol.STOP_GRACE_S more for the others (see there)."""
        if self.dist.distributed:
            allreduce_sum(np.ones(1), True)
            if not self.dist.is_main:
                time.sleep(protocol.STOP_GRACE_S)

    # --- the step ------------------------------------------------------------------------
    def _mixup(self, images: np.ndarray, labels: np.ndarray, epoch: int):
        """(images, targets) of this micro-batch: Mixup's (augment.mixup_draw) when it is on."""
        if not self.cfg.mixup_alpha:
            return images, labels
        draw = mixup_draw(self.cfg.mixup_alpha, len(labels), seed=self.cfg.seed, epoch=epoch,
                          batch=self.batch_in_epoch, rank=self.dist.rank)
        mixed = (draw.lam * images + (1 - draw.lam) * images[draw.perm]).astype(np.float32)
        return mixed, draw.mix_targets(labels.astype(np.int64), self.num_classes)

    def train_one_epoch(self, epoch: int) -> bool:
        """Train the rest of `epoch`; True if training must stop (max steps). Raises
        Terminated after saving when a stop signal arrived."""
        from mindspore import Tensor

        cfg = self.cfg
        indices = shard_indices(len(self.source), cfg.batch_size, self.dist.rank, self.dist.world_size, cfg.seed,
                                epoch, True)[:self.batches * cfg.batch_size]
        pipe = make_pipeline(self.source, indices, cfg, cfg.batch_size, train=True,
                             start_batch=self.batch_in_epoch)
        batches = pipe.create_tuple_iterator(num_epochs=1, output_numpy=True)
        for images, labels, index in self.meter.over(batches):
            inputs, targets = self._mixup(images, labels, epoch)
            self.losses.append(self.train_step(Tensor(inputs), Tensor(targets)))
            self.ranks.count(index.tolist())
            self.batch_in_epoch += 1
            if self.batch_in_epoch % cfg.grad_accum:
                continue
            self.step += 1
            agreed = None
            if self.step % cfg.log_interval == 0:
                agreed = self.log_interval(epoch).stop_signal
            if self.stop.requested and self.dist.is_main or agreed:
                self.save(step_name(self.step, ".ckpt"), protocol.checkpoint_metrics(self.last_train_loss, None))
                self.log.print(protocol.stopping_line(self.stop.signal_name or agreed, self.step,
                                                      self.ckpts.read_index()["latest"]))
                if agreed:
                    self.leave_after_rank0()
                raise Terminated(protocol.stopped_message(self.dist.where(), self.stop.signal_name or agreed,
                                                          self.step))
            if cfg.ckpt_steps and self.step % cfg.ckpt_steps == 0 and self.batch_in_epoch < self.batches:
                self.save(step_name(self.step, ".ckpt"), protocol.checkpoint_metrics(self.last_train_loss, None))
            if self.step >= self.total_steps:
                return True
            if self.batch_in_epoch >= self.batches:
                break
        return False

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Top-1/top-5/loss on the val split (all ranks), printed and recorded."""
        cfg = self.cfg
        idx = shard_indices(len(self.val), cfg.batch_size, self.dist.rank, self.dist.world_size, cfg.seed, 0, False)
        m = evaluate_network(self.net, make_pipeline(self.val, idx, cfg, cfg.batch_size, train=False),
                             self.dist.distributed)
        self.log.print(protocol.eval_line(epoch, cfg.epochs, m))
        self.log.record("eval", self.step, epoch=epoch, top1=m["top1"], top5=m["top5"], loss=m["loss"])
        return m

    def end_of_epoch(self, epoch: int, stopping: bool) -> None:
        if self.losses:
            self.log_interval(epoch)
        if self.val is not None:
            self.last_eval = self.evaluate(epoch)
        complete = self.batch_in_epoch >= self.batches
        if complete:
            self.batch_in_epoch = 0
        if stopping or (epoch + 1) % self.cfg.ckpt_interval == 0 or epoch + 1 == self.cfg.epochs:
            name = epoch_name(epoch + 1, ".ckpt") if complete else step_name(self.step, ".ckpt")
            self.save(name, protocol.checkpoint_metrics(self.last_train_loss, self.last_eval))

    def finish(self) -> None:
        """Every rank's record (ranks/rank-N.json), the `ranks` row and curves.png on rank 0.
        The all-reduce is the last collective: no rank leaves before rank 0 has written
        everything (mpirun ends the job when the first rank exits with an error)."""
        reduced = allreduce_sum(np.asarray(self.ranks.vector() + [1.0]), self.dist.distributed).tolist()
        self.log.record("ranks", self.step, **self.ranks.summary(reduced[:-1]))
        self.ranks.write(self.cfg.output_path, step=self.step, ranks_in_allreduce=int(round(reduced[-1])),
                         weights_abs_sum=weights_abs_sum(self.net),
                         last_metrics=protocol.checkpoint_metrics(self.last_train_loss, self.last_eval))
        if self.dist.is_main:
            plot_curves(self.cfg.output_path)

    def fit(self) -> int:
        cfg = self.cfg
        self._resume()
        self.log.print(protocol.header_line(
            model=cfg.model, parameters=sum(p.size for p in self.net.trainable_params()), classes=self.num_classes,
            world_size=self.dist.world_size, device=self.device_target.lower(),
            global_batch=cfg.global_batch(self.dist.world_size), lr=self.schedule.base_lr,
            steps_per_epoch=self.steps_per_epoch))
        if self.step >= self.total_steps:
            self.log.print(f"nothing to do: already at step {self.step} of {self.total_steps}")
            return 0
        for epoch in range(self.step // self.steps_per_epoch, cfg.epochs):
            stopping = self.train_one_epoch(epoch)
            self.end_of_epoch(epoch, stopping)
            if stopping:
                break
        self.finish()
        self.log.print(protocol.done_line(self.step, protocol.checkpoint_metrics(self.last_train_loss,
                                                                                 self.last_eval)))
        return 0


def run(cfg: TrainConfig, dist: DistEnv) -> int:
    """Train with MindSpore. Returns 0; raises BadInput (exit 2), DistributedError (1) or
    Terminated (143, after saving a checkpoint)."""
    trainer = Trainer(cfg, dist)  # the dataset is checked before MindSpore or the cluster start
    member = setup_context(cfg, dist)
    try:
        import mindspore as ms

        trainer.device_target = ms.get_context("device_target")
        joined = int(allreduce_sum(np.ones(1), dist.distributed)[0])
        trainer.log.print(f"mindspore {ms.__version__}: {joined} rank(s) joined, device {trainer.device_target}, "
                          f"graph mode, model {cfg.model}, global batch {cfg.global_batch(dist.world_size)}, "
                          f"lr {cfg.scaled_lr(dist.world_size):.5g}")
        if cfg.dataset_sink and trainer.device_target != "CPU":
            trainer.log.print("dataset_sink: not implemented by kjob's MindSpore trainer (it could not be run on "
                              "CPU, where MindSpore refuses it); batches are fed one step at a time")
        trainer.build()
        with trainer.stop:
            return trainer.fit()
    finally:
        trainer.log.close()
        del trainer
        gc.collect()  # free MindSpore cells now: at interpreter exit their __del__ prints errors
        if member is not None:
            member.close()
