"""PyTorch plumbing the training loop needs: device, process group, optimizer, autocast dtype
(the lr schedule is framework-free: common/schedule.py)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.distributed import (DistEnv, local_address, publish_address, rendezvous_file,
                                      static_address, wait_for_address)
from kjob_trainer.common.errors import BadInput, DistributedError
from kjob_trainer.torch.models import parameter_groups


def select_device(cfg: TrainConfig, dist: DistEnv) -> torch.device:
    """cuda:<local rank> or cpu. Raises BadInput for --device gpu without a visible GPU."""
    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if cfg.device == "gpu" and not has_gpu:
        raise BadInput("--device gpu: no CUDA device is visible to this process")
    if cfg.device == "cpu" or not has_gpu:
        return torch.device("cpu")
    index = dist.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _store(dist: DistEnv, cfg: TrainConfig, timeout: timedelta):
    from torch.distributed import TCPStore

    fixed = static_address(dist)
    if fixed is not None:
        host, port = fixed
        # Under torchrun the agent already serves the store at MASTER_PORT: every rank is a client.
        serve = dist.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        return TCPStore(host, port, dist.world_size, serve, timeout=timeout, wait_for_workers=False), f"{host}:{port}"
    path = rendezvous_file(cfg.output_path, dist)
    if dist.is_main:
        # Port 0: the OS picks a free port, so concurrent local jobs never collide.
        store = TCPStore("0.0.0.0", 0, dist.world_size, True, timeout=timeout, wait_for_workers=False)
        host = local_address(dist)
        publish_address(path, host, store.port)
        return store, f"{host}:{store.port}"
    host, port = wait_for_address(path, dist, cfg.dist_timeout)
    return TCPStore(host, port, dist.world_size, False, timeout=timeout), f"{host}:{port}"


def init_process_group(dist: DistEnv, cfg: TrainConfig, device: torch.device) -> None:
    """Join the job's process group (NCCL on GPU, gloo on CPU). Raises DistributedError,
    naming this rank and host, if the group is not complete within cfg.dist_timeout."""
    import torch.distributed as td

    timeout = timedelta(seconds=cfg.dist_timeout)
    where = "?"
    try:
        store, where = _store(dist, cfg, timeout)
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=dist.rank,
                              world_size=dist.world_size, timeout=timeout)
        td.barrier()
    except DistributedError:
        raise
    except (RuntimeError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"{dist.where()} could not join the process group at {where} "
                               f"within {cfg.dist_timeout:.0f} s: {first}") from e
    if dist.is_main and static_address(dist) is None:
        rendezvous_file(cfg.output_path, dist).unlink(missing_ok=True)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; fused kernel on GPU, foreach (multi-tensor) on CPU."""
    groups = parameter_groups(model, cfg.weight_decay, cfg.bn_bias_decay)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
