"""MindSpore plumbing the training loop needs: device and graph mode, the cluster, MindCV's
network, and MindCV's train step (loss, AMP level, loss scale, SGD momentum, gradient
all-reduce and accumulation). The loop itself is mindspore/train.py; the lr table comes
from the framework-free common/schedule.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.distributed import DistEnv
from kjob_trainer.common.errors import BadInput
from kjob_trainer.mindspore.dist import ClusterMember, quiet_mindspore

# --amp -> MindCV amp_level when the config does not name one: O2 is MindCV's recipe level
# (BatchNorm kept in float32); `off` keeps everything float32.
AMP_LEVEL_FOR = {"off": "O0", "fp16": "O2", "bf16": "O2"}


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


def lr_table(lr_per_step: list[float], grad_accum: int) -> np.ndarray:
    """The optimizer's lr array from the per-step schedule: MindCV's gradient accumulation
    advances the optimizer's lr index on every micro-batch (and applies the update on the
    last one of a step), so each step's lr is repeated grad_accum times."""
    return np.repeat(np.asarray(lr_per_step, dtype=np.float32), grad_accum)


def weights_abs_sum(net) -> float:
    """Sum of |w| over the trainable parameters (ranks compare it: the all-reduce kept them equal)."""
    return float(sum(np.abs(p.asnumpy().astype(np.float64)).sum() for p in net.trainable_params()))
