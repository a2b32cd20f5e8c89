"""MindSpore evaluation: top-1/top-5 of a network, and of a `.ckpt` file on its own.

`evaluate_checkpoint` is what `python -m kjob_trainer.evaluate --framework mindspore`
calls. Under mpirun every rank scores its round-robin share of the val set and the
counts are all-reduced, so the result is the same for any number of ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kjob_trainer.common.errors import BadInput
from kjob_trainer.mindspore.dist import quiet_mindspore

# Extra keys kjob stores in a .ckpt beside the parameters (MindSpore's append_dict).
META_KEYS = ("kjob_framework", "kjob_model", "kjob_epoch", "kjob_step", "kjob_config", "kjob_metrics",
             "kjob_classes")


def allreduce_sum(values: np.ndarray, distributed: bool) -> np.ndarray:
    """Sum a small float array over every rank (identity for one process)."""
    if not distributed:
        return values
    from mindspore import Tensor, ops

    return ops.AllReduce()(Tensor(values.astype(np.float32))).asnumpy().astype(np.float64)


def evaluate_network(net, pipeline, distributed: bool) -> dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy of `net` over `pipeline`, over all ranks."""
    from mindspore import Tensor

    net.set_train(False)
    totals = np.zeros(4)  # images, top-1 hits, top-5 hits, summed loss
    for images, labels, _ in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True):
        logits = net(Tensor(images)).asnumpy().astype(np.float64)
        top = np.argsort(-logits, axis=1)[:, :5]
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        totals += [len(labels), (top[:, 0] == labels).sum(), (top == labels[:, None]).any(axis=1).sum(),
                   -logp[np.arange(len(labels)), labels].sum()]
    net.set_train(True)
    totals = allreduce_sum(totals, distributed)
    n = max(totals[0], 1.0)
    return {"top1": round(100.0 * totals[1] / n, 3), "top5": round(100.0 * totals[2] / n, 3),
            "loss": round(totals[3] / n, 5), "images": int(totals[0])}


def read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameters, kjob metadata) of a kjob `.ckpt`. Raises BadInput for a missing file,
    one MindSpore cannot read, or one that kjob did not write."""
    quiet_mindspore()
    import mindspore as ms

    if not Path(path).is_file():
        raise BadInput(f"checkpoint {path}: no such file")
    try:
        params = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as e:
        raise BadInput(f"checkpoint {path}: not a readable MindSpore checkpoint "
                       f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from e
    meta = {k: params.pop(k) for k in META_KEYS if k in params}
    if "kjob_config" not in meta:
        raise BadInput(f"checkpoint {path}: has no kjob metadata (was it written by kjob's MindSpore trainer?)")
    info = {"framework": str(meta.get("kjob_framework", "mindspore")), "model": str(meta["kjob_model"]),
            "epoch": int(meta["kjob_epoch"].asnumpy()), "step": int(meta["kjob_step"].asnumpy()),
            "config": json.loads(meta["kjob_config"]), "metrics": json.loads(meta.get("kjob_metrics") or "{}"),
            "classes": json.loads(meta.get("kjob_classes") or "null")}
    return params, info


def evaluate_checkpoint(checkpoint: str, data_path: str, *, batch_size: int = 32, device: str = "auto",
                        workers: int = 2, dist=None) -> dict[str, Any]:
    """Top-1/top-5 of a kjob MindSpore checkpoint on the val images of `data_path`
    (DIR/val/<class>/, DIR/val_list.txt, or DIR holding class folders: dataset_index.find_val_split).

    Returns {"model", "checkpoint", "epoch", "step", "top1", "top5", "loss", "images"}. Raises
    BadInput for an unreadable checkpoint, batch size < 1, or classes that differ from training's."""
    import dataclasses

    from kjob_trainer.common.config import TrainConfig
    from kjob_trainer.common.dataset_index import find_val_split
    from kjob_trainer.common.distributed import dist_env
    from kjob_trainer.mindspore.data import ImageSource, make_pipeline
    from kjob_trainer.mindspore.setup import build_network, setup_context
    from kjob_trainer.common.sharding import shard_indices

    if batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {batch_size}")
    dist = dist or dist_env()
    val = find_val_split(data_path)
    params, info = read_checkpoint(checkpoint)
    if info["classes"] is not None and list(val.classes) != info["classes"]:
        raise BadInput(f"dataset {data_path} has {len(val.classes)} classes, the checkpoint was trained on "
                       f"{len(info['classes'])} (or with other class names)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    stored = {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items() if k in known}
    cfg = dataclasses.replace(TrainConfig(**stored), data_path=data_path, batch_size=batch_size, device=device,
                              workers=workers, synthetic=False)
    member = setup_context(cfg, dist)
    try:
        net = build_network(info["model"], len(val.classes))
        _load_into(net, params, checkpoint)
        indices = shard_indices(len(val), batch_size, dist.rank, dist.world_size, cfg.seed, 0, train=False)
        result = evaluate_network(net, make_pipeline(ImageSource(val), indices, cfg, batch_size, train=False),
                                  dist.distributed)
    finally:
        if member is not None:
            member.close()
    return {"model": info["model"], "checkpoint": str(checkpoint), "epoch": info["epoch"], "step": info["step"],
            **result}


def _load_into(net, params: dict[str, Any], checkpoint: str) -> None:
    """Load the network's weights from a train-step checkpoint (names carry the train cell's prefix)."""
    import mindspore as ms

    wanted = {p.name for p in net.get_parameters()}
    missing = sorted(wanted - set(params))
    if missing:
        raise BadInput(f"checkpoint {checkpoint} does not fit the model: {len(missing)} parameters missing, "
                       f"e.g. {missing[0]}")
    try:
        ms.load_param_into_net(net, {k: v for k, v in params.items() if k in wanted}, strict_load=True)
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"checkpoint {checkpoint} does not fit the model: {str(e).strip().splitlines()[0]}") from e
