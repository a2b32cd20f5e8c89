"""`python -m kjob_trainer.evaluate --checkpoint PATH --data-path DIR [--json]`

Top-1/top-5 of a checkpoint on a validation set: DIR/val/<class>/*, DIR/val_list.txt, or
DIR itself holding class folders (as the references pass `.../imagenet/val`). Under mpirun
every rank scores its own shard and the counts are all-reduced. `.pt` files go to
`torch/eval.py`'s `evaluate_checkpoint`, `.ckpt` files (or --framework mindspore) to
`mindspore/eval.py`'s. Exit codes as train. An entry point only: nothing
imports this module.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Sequence

from kjob_trainer.common.cli_args import OneLineParser
from kjob_trainer.common.config import DEVICES
from kjob_trainer.common.distributed import dist_env
from kjob_trainer.common.errors import TrainerError, print_error


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


def run(args, dist) -> dict:
    """The framework's evaluate_checkpoint. Raises TrainerError subclasses."""
    if args.framework == "mindspore" or (args.framework is None and args.checkpoint.endswith(".ckpt")):
        from kjob_trainer.mindspore.eval import evaluate_checkpoint
    else:
        from kjob_trainer.torch.eval import evaluate_checkpoint
    return evaluate_checkpoint(args.checkpoint, args.data_path, batch_size=args.batch_size, device=args.device,
                               workers=args.workers, dist=dist)


def main(argv: Sequence[str] | None = None) -> int:
    dist = None
    try:
        dist = dist_env()
        args = parse_args(argv)
        result = run(args, dist)
    except Exception as e:
        if os.environ.get("KJOB_DEBUG"):
            traceback.print_exc()
        print_error(e, dist)
        return e.exit_code if isinstance(e, TrainerError) else 1
    if dist.is_main:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['model']} {result['checkpoint']}: top1 {result['top1']:.2f} top5 {result['top5']:.2f} "
                  f"loss {result['loss']:.4f} ({result['images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
