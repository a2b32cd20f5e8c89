"""PyTorch evaluation: top-1/top-5 of a model over a validation set (sharded across ranks
with no overlap or padding, so the all-reduced counts are exactly the dataset's), and of a
`.pt` checkpoint on its own (what `python -m kjob_trainer.evaluate` calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as td

from kjob_trainer.torch import data as torch_data
from kjob_trainer.common.config import TrainConfig, make_config
from kjob_trainer.common.dataset_index import find_val_split
from kjob_trainer.common.distributed import DistEnv, dist_env
from kjob_trainer.common.errors import BadInput
from kjob_trainer.torch.state import load_state, restore_model, unwrap


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: torch_data.RankInput, cfg: TrainConfig, device: torch.device) -> dict:
    """{"top1", "top5" (percent), "loss", "images"} over the whole set (all ranks);
    `source` holds the validation split and this rank's share of it."""
    net = unwrap(model)  # DDP's forward would expect every rank to run the same number of batches
    was_training = net.training
    net.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1, top5, n
    for images, labels, _ids, _bad in source.epoch(0):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        sums += torch.stack([loss.double(), hit[:, 0].sum().double(), hit.any(1).sum().double(),
                             torch.tensor(labels.shape[0], dtype=torch.float64, device=device)])
    if td.is_available() and td.is_initialized():
        td.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    net.train(was_training)
    n = max(n, 1)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "images": int(n)}


def evaluate_checkpoint(checkpoint: str, data_path: str, *, batch_size: int = 64, device: str = "auto",
                        workers: int = 4, dist: DistEnv | None = None) -> dict[str, Any]:
    """Top-1/top-5 of a kjob PyTorch checkpoint on the val images of `data_path`
    (dataset_index.find_val_split). The model, image size and classes come from the
    checkpoint. Returns {"checkpoint", "model", "epoch", "step", "top1", "top5", "loss",
    "images"}. Raises BadInput for batch size < 1, a missing or unreadable checkpoint, or
    classes that differ from training's."""
    from kjob_trainer.torch.models import build_model
    from kjob_trainer.torch.setup import init_process_group, select_device

    if batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {batch_size}")
    path = Path(checkpoint)
    if not path.is_file():
        raise BadInput(f"--checkpoint {path}: no such file")
    state = load_state(path)
    saved = {k: v for k, v in state["config"].items() if k != "config_file"}
    cfg = make_config(None, {**saved, "batch_size": batch_size, "workers": workers, "device": device,
                             "data_path": data_path, "synthetic": False})
    split = find_val_split(data_path)
    if list(split.classes) != list(state["classes"]):
        raise BadInput(f"dataset {data_path} has {len(split.classes)} classes, the checkpoint was trained "
                       f"on {len(state['classes'])} (or with other class names)")
    dist = dist or dist_env()
    dev = select_device(cfg, dist)
    if dist.distributed:
        init_process_group(dist, cfg, dev)
    model = build_model(cfg.model, len(split.classes))
    restore_model(model, state, path)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format)
    dataset = torch_data.ImageDataset(split, torch_data.build_transforms(cfg, False), cfg.seed)
    batches = torch_data.ShardBatches(len(split), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, False)
    result = evaluate(model, torch_data.RankInput(dataset, batches, cfg, dev, memory_format), cfg, dev)
    return {"checkpoint": str(path), "model": cfg.model, "epoch": state["epoch"], "step": state["step"], **result}
