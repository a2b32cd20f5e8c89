"""`python -m kjob_trainer.evaluate --checkpoint PATH --data-path DIR [--json]`

Top-1/top-5 of a PyTorch checkpoint on a validation set: DIR/val/<class>/*, DIR/val_list.txt,
or DIR itself holding class folders (as the references pass `.../imagenet/val`). Under
mpirun every rank scores its own shard and the counts are all-reduced. The model, image
size and classes come from the checkpoint (it describes itself). Exit codes as train.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from kjob_trainer.cli_args import OneLineParser
from kjob_trainer.config import DEVICES, make_config
from kjob_trainer.dataset_index import Split, read_list, scan_folder
from kjob_trainer.distributed import dist_env
from kjob_trainer.errors import BadInput, TrainerError
from kjob_trainer.train import report


def parse_args(argv: Sequence[str] | None):
    p = OneLineParser(prog="kjob_trainer.evaluate", description="Top-1/top-5 of a kjob checkpoint.")
    p.add_argument("--checkpoint", "--checkpoint_file_path", "--ckpt_path", required=True, metavar="PATH")
    p.add_argument("--data-path", "--data_path", "--data_dir", dest="data_path", required=True, metavar="DIR")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64, metavar="N")
    p.add_argument("--workers", "-j", type=int, default=4, metavar="N")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--framework", choices=("pytorch", "mindspore"), help="default: mindspore for .ckpt files")
    return p.parse_args(argv)


def find_val_split(data_path: str) -> Split:
    """The validation images under DIR. Raises BadInput if there are none."""
    root = Path(data_path)
    if not root.is_dir():
        raise BadInput(f"dataset folder {data_path} does not exist")
    if (root / "val").is_dir():
        return scan_folder(root / "val", "val")
    if (root / "val_list.txt").is_file():
        return read_list(root, root / "val_list.txt", "val")
    return scan_folder(root, "val")


def run(args) -> dict:
    if args.framework == "mindspore" or (args.framework is None and args.checkpoint.endswith(".ckpt")):
        from kjob_trainer.mindspore_eval import evaluate_checkpoint

        return evaluate_checkpoint(args.checkpoint, args.data_path, batch_size=args.batch_size, device=args.device,
                                   workers=args.workers)
    import torch

    from kjob_trainer import data as data_mod
    from kjob_trainer.models import build_model
    from kjob_trainer.torch_eval import evaluate
    from kjob_trainer.torch_setup import init_process_group, select_device
    from kjob_trainer.torch_state import load_state, restore_model

    if args.batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {args.batch_size}")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise BadInput(f"--checkpoint {path}: no such file")
    state = load_state(path)
    saved = {k: v for k, v in state["config"].items() if k != "config_file"}
    cfg = make_config(None, {**saved, "batch_size": args.batch_size, "workers": args.workers,
                             "device": args.device, "data_path": args.data_path, "synthetic": False})
    split = find_val_split(args.data_path)
    if list(split.classes) != list(state["classes"]):
        raise BadInput(f"dataset {args.data_path} has {len(split.classes)} classes, the checkpoint was trained "
                       f"on {len(state['classes'])} (or with other class names)")
    dist = dist_env()
    device = select_device(cfg, dist)
    if dist.distributed:
        init_process_group(dist, cfg, device)
    model = build_model(cfg.model, len(split.classes))
    restore_model(model, state, path)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    dataset = data_mod.ImageDataset(split, data_mod.build_transforms(cfg, False), cfg.seed)
    batches = data_mod.ShardBatches(len(split), cfg.batch_size, dist.rank, dist.world_size, cfg.seed, False)
    result = evaluate(model, data_mod.RankInput(dataset, batches, cfg, device, memory_format), cfg, device)
    return {"checkpoint": str(path), "model": cfg.model, "epoch": state["epoch"], "step": state["step"], **result}


def main(argv: Sequence[str] | None = None) -> int:
    dist = None
    try:
        dist = dist_env()
        result = run(parse_args(argv))
    except Exception as e:
        if os.environ.get("KJOB_DEBUG"):
            traceback.print_exc()
        report(e, dist)
        return e.exit_code if isinstance(e, TrainerError) else 1
    if dist.is_main:
        if "--json" in (argv if argv is not None else sys.argv[1:]):
            print(json.dumps(result))
        else:
            print(f"{result['model']} {result['checkpoint']}: top1 {result['top1']:.2f} top5 {result['top5']:.2f} "
                  f"loss {result['loss']:.4f} ({result['images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
