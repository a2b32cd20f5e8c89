"""The MindSpore trainer: MindCV's ResNeXt50/ResNeSt50 with MindCV's recipe pieces.

`train.py` calls `run(cfg, dist)` for `--framework mindspore`. Read top to bottom:
`setup_context` (device, graph mode, cluster), `build_network`, `lr_per_batch`,
`build_train_step` (loss, AMP level, loss scale, SGD momentum, gradient all-reduce),
then `Run` (resume, epochs, progress, checkpoints, SIGTERM).

Graph mode on every device (MindCV's default `mode: 0`): the train step is compiled once,
about 6 s for ResNeXt50 on this CPU, then runs as one graph; CPU works in graph mode, data-
parallel all-reduce included. Batches are fed one call per step: MindSpore's dataset sink
(`mindspore.data_sink`) refuses the CPU target and there is no GPU here to prove a sink
path, so none is used (`dataset_sink` in a config is accepted and has no effect yet).

A "step" is one optimizer update (grad_accum batches); checkpoints are only written
between updates, so a gradient-accumulation buffer is always empty in them.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import time
from pathlib import Path

import numpy as np

from kjob_trainer.checkpoints import CheckpointDir, epoch_name, step_name
from kjob_trainer.config import TrainConfig
from kjob_trainer.dataset_index import check_num_classes, find_splits
from kjob_trainer.distributed import DistEnv
from kjob_trainer.errors import BadInput, Terminated
from kjob_trainer.metrics import MetricsLog, plot_curves, progress_line
from kjob_trainer.mindspore_data import (ImageSource, SyntheticSource, batches_per_epoch, check_bad_images,
                                         make_pipeline, shard_indices)
from kjob_trainer.mindspore_dist import ClusterMember, quiet_mindspore
from kjob_trainer.mindspore_eval import allreduce_sum, evaluate_network, read_checkpoint

# --amp -> MindCV amp_level when the config does not name one: O2 is MindCV's recipe level
# (BatchNorm kept in float32); `off` keeps everything float32.
AMP_LEVEL_FOR = {"off": "O0", "fp16": "O2", "bf16": "O2"}
SYNTHETIC_CLASSES = 1000  # ImageNet's, so synthetic runs have the real classifier head
RANK_INDEX_CAP = 10000  # sample indices kept per rank in ranks/rank-N.json (proof of sharding)
# After SIGTERM the other ranks leave this much after rank 0 is done, so that mpirun (which
# ends the job at the first failed rank) does not cut off rank 0's last message.
STOP_GRACE_S = 2.0


def setup_context(cfg: TrainConfig, dist: DistEnv) -> ClusterMember | None:
    """Device, graph mode, seeds and (for several ranks) the cluster. Returns the cluster
    membership to close at exit. Raises BadInput if --device gpu has no GPU here."""
    quiet_mindspore()
    import mindspore as ms

    target = _device_target(cfg.device)
    ms.set_device(target, dist.local_rank if target != "CPU" else None)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(cfg.seed)
    member = None
    if dist.distributed:
        Path(cfg.output_path).mkdir(parents=True, exist_ok=True)
        member = ClusterMember(dist, cfg.dist_timeout, log_path=str(Path(cfg.output_path) / "ms-scheduler.log"))
        member.join()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=dist.world_size)
    return member


def _device_target(device: str) -> str:
    import mindspore as ms

    if device == "cpu":
        return "CPU"
    for target in ("GPU", "Ascend"):
        if ms.hal.is_available(target):
            return target
    if device == "gpu":
        raise BadInput("--device gpu: MindSpore finds no GPU or Ascend device on this host")
    return "CPU"


def build_network(model: str, num_classes: int):
    """MindCV's model, randomly initialised (ResNeXt50_32x4d: 25,097,128 parameters with 1000 classes)."""
    from mindcv.models import create_model

    return create_model(model, num_classes=num_classes, pretrained=False)


def lr_per_batch(cfg: TrainConfig, batches: int, world: int) -> np.ndarray:
    """Learning rate for every batch of the run: linear warmup from warmup_start_factor,
    then cosine to min_lr or step decay; base lr scaled by global batch / 256."""
    base = cfg.scaled_lr(world)
    total = cfg.epochs * batches
    t = np.arange(total, dtype=np.float64)
    warm = int(cfg.warmup_epochs * batches)
    if cfg.lr_schedule == "cosine":
        progress = np.clip((t - warm) / max(1, total - warm), 0.0, 1.0)
        lr = cfg.min_lr + 0.5 * (base - cfg.min_lr) * (1 + np.cos(math.pi * progress))
    else:
        passed = np.searchsorted(np.array(cfg.lr_milestones), t // batches, side="right")
        lr = base * cfg.lr_gamma ** passed
    if warm:
        factor = cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * t / warm
        lr = np.where(t < warm, lr * factor, lr)
    return lr.astype(np.float32)


def build_train_step(cfg: TrainConfig, net, lr: np.ndarray, device_target: str):
    """MindCV's TrainStep: label-smoothed CE, AMP level, fixed/dynamic loss scale, SGD with
    momentum, gradient accumulation; gradients are all-reduced (mean) in data-parallel mode.
    Raises BadInput for a loss-scale type MindSpore cannot run on this device."""
    import mindspore as ms
    from mindcv.loss import create_loss
    from mindcv.utils.trainer_factory import add_loss_network
    from mindcv.utils.train_step import TrainStep
    from mindspore import nn

    level = cfg.amp_level or AMP_LEVEL_FOR[cfg.amp]
    if level != "O0" and device_target == "CPU":
        # MindSpore's mixed precision targets GPU/Ascend; on its CPU kernels an O2 ResNeXt50
        # loses all signal within two steps (loss = ln(classes)), so refuse rather than
        # train garbage. MindCV's own auto_mixed_precision does the same here.
        raise BadInput(f"amp_level {level} (float16 compute) does not train on MindSpore's CPU backend; "
                       "use --amp-level O0 on CPU")
    if level != "O0":
        ms.amp.auto_mixed_precision(net, level, dtype=ms.bfloat16 if cfg.amp == "bf16" else ms.float16)
    decay, no_decay = [], []
    for p in net.trainable_params():
        (decay if cfg.bn_bias_decay or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = nn.Momentum(groups, learning_rate=ms.Tensor(lr), momentum=cfg.momentum)
    loss = create_loss(name="CE", label_smoothing=cfg.label_smoothing)
    scale = cfg.loss_scale if level != "O0" else 1.0
    if cfg.loss_scale_type == "dynamic":
        if device_target == "CPU":
            raise BadInput("loss_scale_type dynamic: MindSpore supports only a fixed loss scale on CPU")
        sense = nn.DynamicLossScaleUpdateCell(loss_scale_value=scale, scale_factor=2, scale_window=2000)
    else:
        sense = ms.Tensor(scale, ms.float32)
    return TrainStep(add_loss_network(net, loss, level), opt, scale_sense=sense,
                     gradient_accumulation_steps=cfg.grad_accum).set_train()


def _sum_weights(net) -> float:
    return float(sum(np.abs(p.asnumpy().astype(np.float64)).sum() for p in net.trainable_params()))


class Run:
    """One training run on this rank (rank 0 also logs and writes checkpoints)."""

    def __init__(self, cfg: TrainConfig, dist: DistEnv, device_target: str) -> None:
        self.cfg, self.dist, self.device_target = cfg, dist, device_target
        self.source, self.val = _sources(cfg)
        self.num_classes = self.source.num_classes
        self.class_names = list(self.source.split.classes) if isinstance(self.source, ImageSource) else None
        batches = batches_per_epoch(len(self.source), cfg.batch_size, dist.world_size)
        if batches < cfg.grad_accum:
            raise BadInput(f"--grad-accum {cfg.grad_accum} is more than the {batches} batches of an epoch")
        self.batches = batches - batches % cfg.grad_accum  # whole updates per epoch
        self.steps_per_epoch = self.batches // cfg.grad_accum
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.lr = lr_per_batch(cfg, self.batches, dist.world_size)
        self.ckpts = CheckpointDir.under(cfg.output_path, "mindspore", cfg.model, cfg.keep_checkpoints)
        self.log = MetricsLog(cfg.output_path, enabled=dist.is_main)
        self.step = 0
        self.seen: list[int] = []
        self.stop_signal: int | None = None
        self.stopping = False
        self.data_wait = 0.0  # seconds waiting for batches since the last progress line

    def build(self) -> None:
        self.net = build_network(self.cfg.model, self.num_classes)
        self.train_step = build_train_step(self.cfg, self.net, self.lr, self.device_target)

    def resume(self) -> int:
        """Load the checkpoint --resume names; returns the batch to start the epoch at."""
        import mindspore as ms

        path = self.ckpts.resolve_resume(self.cfg.resume)
        if path is None:
            return 0
        params, info = read_checkpoint(str(path))
        if info["model"] != self.cfg.model:
            raise BadInput(f"--resume {path}: checkpoint is a {info['model']}, not a {self.cfg.model}")
        not_loaded, _ = ms.load_param_into_net(self.train_step, params)
        if any(not n.startswith("_grad_accumulation") for n in not_loaded):
            raise BadInput(f"--resume {path}: checkpoint does not fit this model/optimizer "
                           f"({len(not_loaded)} parameters missing, e.g. {not_loaded[0]})")
        self.step = info["step"]
        self.log.print(f"resumed from {path.name}: epoch {info['epoch']} step {self.step}")
        return self.step * self.cfg.grad_accum - (self.step // self.steps_per_epoch) * self.batches

    def save(self, epoch_done: int, metrics: dict[str, float], at_epoch_end: bool) -> None:
        """Rank 0: checkpoint of the whole train step (weights, momentum, lr step, loss scale)."""
        if not self.dist.is_main:
            return
        import mindspore as ms

        extra = {"kjob_framework": "mindspore", "kjob_model": self.cfg.model, "kjob_epoch": epoch_done,
                 "kjob_step": self.step, "kjob_config": json.dumps(self.cfg.to_dict()),
                 "kjob_metrics": json.dumps(metrics), "kjob_classes": json.dumps(self.class_names)}

        def write(tmp: Path) -> None:
            # save_checkpoint appends ".ckpt" to a name without it; write there and move.
            ms.save_checkpoint(self.train_step, str(tmp) + ".ckpt", append_dict=extra)
            Path(str(tmp) + ".ckpt").replace(tmp)

        name = epoch_name(epoch_done, ".ckpt") if at_epoch_end else step_name(self.step, ".ckpt")
        self.ckpts.save(name, write, epoch=epoch_done, step=self.step, metrics=metrics)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_signal = signum

    def _agree_to_stop(self) -> bool:
        """True once any rank has had SIGTERM. Every rank calls this at the same steps (log
        points), so this all-reduce never meets a peer's gradient all-reduce, and all ranks
        stop after the same step; between log points no extra host sync is added."""
        if self.dist.distributed:
            flag = np.array([1.0 if self.stop_signal is not None else 0.0])
            self.stopping = bool(allreduce_sum(flag, True)[0] > 0)
        else:
            self.stopping = self.stop_signal is not None
        return self.stopping

    def train(self) -> None:
        """Epochs from the resume point to the end (or max_steps / SIGTERM)."""
        cfg = self.cfg
        start_batch = self.resume()
        # SIGUSR1 too: mpirun forwards it to the ranks, while its own SIGTERM kills them at once.
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_sigterm)
        epoch = self.step // self.steps_per_epoch
        metrics: dict[str, float] = {}
        while self.step < self.total_steps and not self.stopping:
            metrics = self.train_epoch(epoch, start_batch)
            start_batch = 0
            if self.step % self.steps_per_epoch == 0:
                epoch += 1
                if cfg.eval and self.val is not None and not self.stopping:
                    metrics.update(self.evaluate(epoch))
                if epoch % cfg.ckpt_interval == 0 or self.step >= self.total_steps or self.stopping:
                    self.save(epoch, metrics, at_epoch_end=True)
            elif self.step >= self.total_steps or self.stopping:
                self.save(epoch, metrics, at_epoch_end=False)
        if self.stopping:
            self.log.print(f"stopping on SIGTERM at step {self.step}: checkpoint {self.ckpts.read_index()['latest']} "
                           "saved, resume with --resume auto")
        self.finish(metrics)
        if self.stopping:
            cause = f"signal {self.stop_signal}" if self.stop_signal else "SIGTERM to another rank"
            raise Terminated(f"{self.dist.where()}: stopped by {cause} at step {self.step}; "
                             "checkpoint saved, resume with --resume auto")

    def train_epoch(self, epoch: int, start_batch: int) -> dict[str, float]:
        """Batches of one epoch; returns {"loss": mean of the last log interval}."""
        from mindspore import Tensor

        cfg, world = self.cfg, self.dist.world_size
        indices = shard_indices(len(self.source), cfg.batch_size, self.dist.rank, world, cfg.seed, epoch, True)
        indices = indices[:self.batches * cfg.batch_size]
        pipe = make_pipeline(self.source, indices, cfg, cfg.batch_size, train=True, start_batch=start_batch)
        losses, t0, batch_in_epoch, mean = [], time.perf_counter(), start_batch, float("nan")
        for images, labels, index in self._timed(pipe.create_tuple_iterator(num_epochs=1, output_numpy=True)):
            losses.append(self.train_step(Tensor(images), Tensor(labels)))
            batch_in_epoch += 1
            if len(self.seen) < RANK_INDEX_CAP:
                self.seen.extend(int(i) for i in index)
            if batch_in_epoch % cfg.grad_accum:
                continue
            self.step += 1
            last = self.step >= self.total_steps or batch_in_epoch == self.batches
            if self.step % cfg.log_interval == 0 or last:
                mean = self.report(epoch, losses, t0, batch_in_epoch)
                losses, t0 = [], time.perf_counter()
                self._agree_to_stop()
            if cfg.ckpt_steps and self.step % cfg.ckpt_steps == 0 and not (last or self.stopping):
                self.save(epoch, {"loss": float(losses[-1].asnumpy()) if losses else mean}, at_epoch_end=False)
            if last or self.stopping:
                break
        check_bad_images(self.source, len(indices), cfg)
        return {"loss": mean}

    def _timed(self, batches):
        """The pipeline's batches, adding the time spent waiting for each to self.data_wait."""
        iterator = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.data_wait += time.perf_counter() - t
            yield item

    def report(self, epoch: int, losses: list, t0: float, batch_in_epoch: int) -> float:
        """Rank 0's progress line and metrics row for the batches since the last one."""
        cfg = self.cfg
        mean = float(np.mean([float(l.asnumpy()) for l in losses])) if losses else float("nan")
        elapsed = max(time.perf_counter() - t0, 1e-9)
        images_per_s = len(losses) * cfg.batch_size * self.dist.world_size / elapsed
        step_s = elapsed / max(1, len(losses) / cfg.grad_accum)
        lr = float(self.lr[min(len(self.lr) - 1, epoch * self.batches + batch_in_epoch - 1)])
        eta = (self.total_steps - self.step) * step_s
        wait_ms = 1000 * self.data_wait / max(1, len(losses))
        self.data_wait = 0.0
        self.log.print(progress_line(epoch=epoch, epochs=cfg.epochs, step=self.step, total_steps=self.total_steps,
                                     loss=mean, lr=lr, images_per_s=images_per_s, eta_s=eta,
                                     extra=f"data-wait {wait_ms:.0f}ms/step"))
        self.log.record("train", self.step, epoch=epoch, loss=mean, lr=lr, images_per_s=round(images_per_s, 2),
                        data_wait_ms=round(wait_ms, 2))
        return mean

    def evaluate(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        idx = shard_indices(len(self.val), cfg.batch_size, self.dist.rank, self.dist.world_size, cfg.seed, 0, False)
        result = evaluate_network(self.net, make_pipeline(self.val, idx, cfg, cfg.batch_size, train=False),
                                  self.dist.distributed)
        self.log.print(f"eval epoch {epoch}/{cfg.epochs} top1 {result['top1']:.2f} top5 {result['top5']:.2f} "
                       f"loss {result['loss']:.4f} images {result['images']}")
        self.log.record("eval", self.step, epoch=epoch, top1=result["top1"], top5=result["top5"], loss=result["loss"])
        return {k: result[k] for k in ("top1", "top5")} | {"val_loss": result["loss"]}

    def finish(self, metrics: dict[str, float]) -> None:
        """Every rank: a record of what it did (ranks/rank-N.json); rank 0: curves.png. The
        all-reduce is the last collective: no rank leaves before rank 0 has written
        everything (mpirun ends the job when the first rank exits with an error)."""
        weights = _sum_weights(self.net)
        if self.dist.is_main:
            self.log.close()
            plot_curves(self.cfg.output_path)
        joined = int(allreduce_sum(np.ones(1), self.dist.distributed)[0])
        out = Path(self.cfg.output_path) / "ranks"
        out.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.dist.rank, "world_size": self.dist.world_size, "host": self.dist.host,
                  "ranks_in_allreduce": joined, "step": self.step, "weights_abs_sum": weights,
                  "sample_indices": self.seen[:RANK_INDEX_CAP], "last_metrics": metrics}
        (out / f"rank-{self.dist.rank}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        if self.stopping and not self.dist.is_main:
            time.sleep(STOP_GRACE_S)


def _sources(cfg: TrainConfig):
    """(train source, val source or None); checks the dataset before MindSpore starts."""
    if cfg.synthetic:
        classes = cfg.num_classes or SYNTHETIC_CLASSES
        src = SyntheticSource(cfg.synthetic_samples, cfg.image_size, classes, cfg.seed)
        src.num_classes = classes
        return src, None
    train, val = find_splits(cfg.data_path, need_val=cfg.eval)
    classes = check_num_classes(train, cfg.num_classes)
    src = ImageSource(train)
    src.num_classes = classes
    return src, (ImageSource(val) if val is not None else None)


def run(cfg: TrainConfig, dist: DistEnv) -> int:
    """Train with MindSpore. Returns 0; raises BadInput (exit 2), DistributedError (1) or
    Terminated (143, after saving a checkpoint)."""
    job = Run(cfg, dist, "CPU")  # the dataset is checked before MindSpore or the cluster start
    member = setup_context(cfg, dist)
    try:
        import mindspore as ms

        job.device_target = ms.get_context("device_target")
        joined = int(allreduce_sum(np.ones(1), dist.distributed)[0])
        job.log.print(f"mindspore {ms.__version__}: {joined} rank(s) joined, device {job.device_target}, graph mode, "
                      f"model {cfg.model}, global batch {cfg.global_batch(dist.world_size)}, "
                      f"lr {cfg.scaled_lr(dist.world_size):.5g}")
        if cfg.dataset_sink and job.device_target != "CPU":
            job.log.print("dataset_sink: not implemented by kjob's MindSpore trainer (it could not be run on "
                          "CPU, where MindSpore refuses it); batches are fed one step at a time")
        job.build()
        job.train()
    finally:
        job.log.close()
        del job
        gc.collect()  # free MindSpore cells now: at interpreter exit their __del__ prints errors
        if member is not None:
            member.close()
    return 0
