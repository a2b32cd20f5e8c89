"""Top-1/top-5 over a validation set, sharded across ranks with no overlap or padding,
so the all-reduced counts are exactly the dataset's."""

from __future__ import annotations

import torch
import torch.distributed as td

from kjob_trainer import data as data_mod
from kjob_trainer.config import TrainConfig
from kjob_trainer.torch_state import unwrap


@torch.no_grad()
def evaluate(model: torch.nn.Module, source: data_mod.RankInput, cfg: TrainConfig, device: torch.device) -> dict:
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
