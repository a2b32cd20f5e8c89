"""What a PyTorch checkpoint holds, and putting it back.

A checkpoint is one `torch.save` dict that describes itself (nanoGPT-style): the model's
weights (without DDP/compile prefixes), optimizer and grad-scaler state, where training
stood (epoch, micro-batches done in it, optimizer step), the full TrainConfig, the class
names, and the metrics at that point. The lr schedule is a pure function of the step, and
augmentation is seeded per sample, so this is everything an exact resume needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kjob_trainer.common.errors import BadInput

FORMAT = "kjob-pytorch/v1"


@dataclass
class Position:
    """Where training stands: `batches` micro-batches of `epoch` are done; `step`
    optimizer steps in all (global step, drives the lr schedule)."""

    epoch: int = 0
    batches: int = 0
    step: int = 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_state(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, pos: Position,
                config: dict, classes: list[str], metrics: dict, world_size: int) -> dict:
    return {
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": pos.epoch, "batches": pos.batches, "step": pos.step,
        "config": config, "classes": list(classes), "num_classes": len(classes),
        "metrics": dict(metrics), "world_size": world_size,
    }


def load_state(path: Path) -> dict:
    """Read a checkpoint on the CPU. Raises BadInput if it is not a kjob PyTorch checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file (pickle, zip, runtime)
        raise BadInput(f"checkpoint {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"checkpoint {path}: not a kjob PyTorch checkpoint (format {FORMAT!r} expected)")
    return state


def restore_model(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load weights. Raises BadInput when the checkpoint is of another model/class count."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as e:
        raise BadInput(f"checkpoint {path} does not fit this model ({state['config'].get('model')}, "
                       f"{state.get('num_classes')} classes): {str(e).splitlines()[0]}") from e
