"""End to end: generated ImageNet-sized JPEGs -> input pipeline -> training step, in img/s.

    python bench/bench_end_to_end.py --model resnext50_32x4d --batch 256 --workers 12 [--decoder dali]

Reads the JPEG folder (bench/make_jpegs.py; generated on first use) through the trainer's
own input path, `kjob_trainer.torch.data.RankInput` (torchvision.io decode + uint8 crop in loader
workers, or PIL, or DALI; uint8 batches normalised on the device, one batch ahead), and
trains with the same step as bench_gpu_step.py. Prints img/s, the time the step loop waited for data (DataWaitMeter) and,
with --compare, the synthetic-data rate of the same step so the input cost is visible.
On a machine without a GPU everything runs on the CPU and is labelled so.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_step import CHANNELS_LAST_AUTO, device_label, make_step, measure, sync  # noqa: E402
from speed_common import banner, ensure_jpegs  # noqa: E402

from kjob_trainer.torch import data as data_mod  # noqa: E402
from kjob_trainer.common.config import make_config  # noqa: E402
from kjob_trainer.common.dataset_index import scan_folder  # noqa: E402
from kjob_trainer.common.errors import BadInput  # noqa: E402
from kjob_trainer.common.progress import DataWaitMeter  # noqa: E402
from kjob_trainer.torch.models import build_model  # noqa: E402


def batches(args, root: Path, split, device: torch.device, channels_last: bool):
    """An endless iterator of normalised (images, labels) device batches, epoch after epoch,
    from the trainer's RankInput (one rank's view of the folder)."""
    # A real ImageNet epoch is ~5,000 batches; the generated folder holds a few hundred
    # images, so an epoch of it is one batch and the loader (which prefetches within an
    # epoch only) would feed one batch at a time from one worker. List the folder's files
    # as often as it takes for one epoch to cover every step, as in a real epoch.
    repeat = -(-(args.warmup + args.steps + 1) * args.batch // len(split))
    split = dataclasses.replace(split, paths=split.paths * repeat, labels=split.labels * repeat)
    cfg = make_config(None, {"decoder": args.decoder, "image_size": args.image_size, "batch_size": args.batch,
                             "workers": args.workers, "data_path": str(root)})
    dataset = data_mod.ImageDataset(split, data_mod.build_transforms(cfg, True), cfg.seed)
    shard = data_mod.ShardBatches(len(split), args.batch, 0, 1, cfg.seed, True)
    source = data_mod.RankInput(dataset, shard, cfg, device, torch.channels_last if channels_last else torch.contiguous_format)
    for epoch in itertools.count():
        for images, labels, _ids, _bad in source.epoch(epoch):
            yield images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="ImageNet-layout folder (default: generate one)")
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--batch", type=int, default=None, help="per device (default 256 GPU, 8 CPU)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE")
    parser.add_argument("--decoder", choices=["torchvision", "pil", "dali"], default="torchvision")
    parser.add_argument("--workers", type=int, default=None, help="loader processes (DALI: threads)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    parser.add_argument("--compare", action="store_true", help="also measure the same step on synthetic data")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if any(v is not None and v < 1 for v in (args.batch, args.steps)) or (args.warmup or 0) < 0 or (args.workers is not None and args.workers < 0):
        print("error: --batch and --steps must be >= 1, --warmup and --workers >= 0", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cudnn.benchmark = True
    args.batch = args.batch or (256 if gpu else 8)
    args.workers = args.workers if args.workers is not None else (12 if gpu else 1)
    warmup = args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    steps = args.steps = args.steps or (60 if gpu else 6)
    cl = CHANNELS_LAST_AUTO.get(args.model, True) if args.channels_last == "auto" else args.channels_last == "on"
    try:
        root = ensure_jpegs(args.data)
        split = scan_folder(root / "train", "train")
        if args.decoder == "dali":
            from kjob_trainer.torch.dali import import_dali

            import_dali()
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(banner("end to end: JPEG folder -> input pipeline -> training step", {
        "device": device_label(device), "model": args.model, "batch": args.batch, "image": args.image_size,
        "amp": args.amp, "channels_last": cl, "compile": args.compile or "off", "decoder": args.decoder,
        "workers": args.workers, "prefetch": "4 batches per worker (the trainer's)", "images in folder": len(split),
        "warmup": warmup, "steps": steps}))
    torch.manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = build_model(args.model, len(split.classes)).to(device, memory_format=fmt).train()
    step, _ = make_step(model, device, args.amp, args.compile)
    meter = DataWaitMeter(batches(args, root, split, device, cl))
    it = iter(meter)
    for _ in range(warmup):  # worker start-up, compile, cudnn autotune
        images, labels = next(it)
        step(images, labels)
    sync(device)
    meter.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        images, labels = next(it)
        loss = step(images, labels)
    sync(device)
    dt, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    result = {"model": args.model, "device": device_label(device), "decoder": args.decoder,
              "workers": args.workers, "batch": args.batch, "img_per_s": args.batch * steps / dt,
              "ms_per_step": 1000 * dt / steps, "final_loss": round(loss.item(), 4), **meter.summary()}
    if device.type == "cpu":
        # Training-process CPU time only (loader workers are other processes): on a shared
        # machine this, not wall time, compares with bench_gpu_step's img per CPU-second.
        result["img_per_cpu_s"] = args.batch * steps / cpu_s
    print(f"{args.model:>16} {result['device']}: {result['img_per_s']:8.1f} img/s end to end "
          f"({result['ms_per_step']:.0f} ms/step; {meter.report()}; trainer process used "
          f"{cpu_s / dt:.2f} cores" + (f", {result['img_per_cpu_s']:.2f} img per CPU-second" if not gpu else "") + ")")
    if args.compare:
        syn = measure(args.model, device=device, batch=args.batch, size=args.image_size, amp=args.amp,
                      channels_last=cl, compile_mode=args.compile, warmup=warmup, steps=steps, profile=False)
        result["synthetic_img_per_s"] = syn["img_per_s"]
        per_cpu = f", {syn['img_per_cpu_s']:.2f} img per CPU-second" if "img_per_cpu_s" in syn else ""
        print(f"{'':>16} same step on synthetic data: {syn['img_per_s']:8.1f} img/s{per_cpu} "
              f"(end to end reaches {100 * result['img_per_s'] / syn['img_per_s']:.0f}% of it in wall time)")
    if args.json:
        print(json.dumps({"bench": "end_to_end", "results": [result]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
