"""The input pipeline alone: img/s per CPU core for random-resized-crop 224 of ImageNet-sized JPEGs.

    python bench/bench_input.py [--data DIR] [--images 300] [--size 224] [--workers 0]

Per core: one process, torch.set_num_threads(1), no loader workers — exactly what one
DataLoader worker does per image (read, decode, crop+resize+flip, to uint8 tensor). The
stage table splits that time; the --workers run adds a real DataLoader for the
multi-core figure. Target (issue 7): >= 250 img/s per core. Timings only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import banner, ensure_jpegs  # noqa: E402

import input_kit as kit  # noqa: E402

from kjob_trainer.torch import input as fi  # noqa: E402

TARGET_PER_CORE = 250  # img/s, issue 7


def _time_stages(paths: list[str], size: int, decoder: str) -> dict[str, float]:
    """Median CPU milliseconds per image of each stage (thread CPU time), each timed on its own.

    Medians, because the machine is shared: a stage that lost the core for a moment
    should not count as slow.
    """
    from PIL import Image
    from torchvision import transforms as T

    stages: dict[str, list[float]] = {"read": [], "decode": [], "crop+resize+flip": [], "to-tensor": []}
    train = fi.TensorTrainTransform(size)
    crop_flip = T.Compose([T.RandomResizedCrop(size, scale=fi.RRC_SCALE, ratio=fi.RRC_RATIO),
                           T.RandomHorizontalFlip()])
    to_tensor = T.PILToTensor()
    for p in paths:
        t0 = time.thread_time()
        if decoder == "torchvision":
            data = torch.from_numpy(np.fromfile(p, dtype=np.uint8))
            t1 = time.thread_time()
            img = fi.decode_rgb(data, p)
            t2 = time.thread_time()
            train(img)
            t3 = t4 = time.thread_time()
        else:
            t1 = t0  # PIL reads and decodes lazily inside convert(): both count as decode
            with Image.open(p) as img:
                img = img.convert("RGB")
            t2 = time.thread_time()
            out = crop_flip(img)
            t3 = time.thread_time()
            to_tensor(out)
            t4 = time.thread_time()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name].append(dt)
    return {k: 1000 * float(np.median(v)) for k, v in stages.items()}


CHUNK = 25  # images per timed chunk: short enough that most chunks run undisturbed


def per_core(paths: list[str], size: int, decoder: str, repeats: int) -> dict:
    """img/s of the dataset's __getitem__ on one thread, plus the per-stage split.

    The headline divides images by the CPU time this thread used (time.thread_time), so it
    is the rate of one fully-owned core even when other work shares the machine; the
    wall-clock rate (median of short chunks) is reported beside it.
    """
    ds = kit.FastImageDataset([(p, 0) for p in paths], size=size, train=True, decoder=decoder)
    for i in range(min(10, len(ds))):  # warm caches, lazy imports, page cache
        ds[i]
    wall_rates, cpu_s = [], 0.0
    for _ in range(repeats):
        for start in range(0, len(ds), CHUNK):
            idx = range(start, min(start + CHUNK, len(ds)))
            c0, t0 = time.thread_time(), time.perf_counter()
            for i in idx:
                ds[i]
            cpu_s += time.thread_time() - c0
            wall_rates.append(len(idx) / (time.perf_counter() - t0))
    stages = _time_stages(paths, size, decoder)
    per_cpu_s = repeats * len(ds) / cpu_s
    return {"decoder": decoder, "images": len(paths), "repeats": repeats,
            "img_per_s_per_core": per_cpu_s, "ms_cpu_per_image": 1000 / per_cpu_s,
            "wall_median_img_per_s": float(np.median(wall_rates)),
            "stages_ms": {k: round(v, 3) for k, v in stages.items()}}


def mindspore_pipeline(paths: list[str], size: int, repeats: int, batch: int) -> dict:
    """img/s per core of the MindSpore trainer's own pipeline (kjob_trainer.mindspore.data:
    PIL decode in a GeneratorDataset thread, then MindSpore's C++ random-resized-crop, flip,
    normalise, HWC->CHW, batch), one worker thread. Its threads live in this process, so the
    rate divides images by the process CPU time (which also counts MindSpore's own threads)."""
    import dataclasses

    from kjob_trainer.mindspore import data as md
    from kjob_trainer.common.config import TrainConfig
    from kjob_trainer.common.dataset_index import Split

    cfg = dataclasses.replace(TrainConfig(), image_size=size, workers=1, data_path="bench")
    source = md.ImageSource(Split("train", tuple(paths), tuple(0 for _ in paths), ("bench",)))
    indices = list(range(len(paths)))

    def one_pass() -> int:
        pipe = md.make_pipeline(source, indices, cfg, min(batch, len(indices)), train=True)
        return sum(b[0].shape[0] for b in pipe.create_tuple_iterator(num_epochs=1, output_numpy=True))

    one_pass()  # warm: imports, page cache, MindSpore's thread pools
    c0, t0 = time.process_time(), time.perf_counter()
    n = sum(one_pass() for _ in range(repeats))
    cpu_s, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"decoder": "mindspore", "images": len(paths), "repeats": repeats, "img_per_s_per_core": n / cpu_s,
            "ms_cpu_per_image": 1000 * cpu_s / n, "wall_img_per_s": n / wall, "cores_used": cpu_s / wall}


def with_workers(paths: list[str], size: int, decoder: str, workers: int, batch: int) -> dict:
    """img/s through a real DataLoader with `workers` processes (one epoch after a warm-up one)."""
    ds = kit.FastImageDataset([(p, 0) for p in paths], size=size, train=True, decoder=decoder)
    opts = kit.LoaderOptions(num_workers=workers, pin_memory=False, persistent_workers=True,
                            prefetch_factor=4, drop_last=False)
    loader = kit.make_loader(ds, batch, shuffle=True, options=opts, seed=0)
    for _ in loader:  # start the workers and warm them
        pass
    t0 = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    dt = time.perf_counter() - t0
    return {"decoder": decoder, "workers": workers, "img_per_s": n / dt, "img_per_s_per_worker": n / dt / workers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="ImageNet-layout folder (default: generate one)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images per decoder")
    parser.add_argument("--decoders", default="torchvision,pil",
                        help="from torchvision, pil, mindspore (the MindSpore trainer's pipeline)")
    parser.add_argument("--workers", type=int, default=0, help="also run a DataLoader with N workers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON line of results too")
    args = parser.parse_args(argv)
    decoders = args.decoders.split(",")
    if args.images < 1 or args.workers < 0 or args.batch < 1 or args.repeats < 1 or any(d not in ("torchvision", "pil", "mindspore") for d in decoders):
        print("error: --images, --batch and --repeats must be >= 1, --workers >= 0, --decoders from "
              "torchvision,pil,mindspore", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # per-core numbers: one thread, as in a loader worker
    root = ensure_jpegs(args.data)
    samples, _ = kit.scan_image_folder(root / "train")
    paths = [p for p, _ in samples][: args.images]
    sizes = [Path(p).stat().st_size for p in paths]
    print(banner("input pipeline: random-resized-crop + flip to uint8 tensor",
                 {"images": len(paths), "mean JPEG KiB": round(np.mean(sizes) / 1024, 1),
                  "size": args.size, "repeats": args.repeats, "data": root}))
    results = []
    for decoder in decoders:
        if decoder == "mindspore":
            r = mindspore_pipeline(paths, args.size, args.repeats, args.batch)
            results.append(r)
            print(f"{decoder:>12}: {r['img_per_s_per_core']:7.1f} img/s per core (process CPU time: "
                  f"{r['ms_cpu_per_image']:.2f} ms/image); wall clock {r['wall_img_per_s']:.0f} img/s "
                  f"using {r['cores_used']:.2f} cores")
            continue
        r = per_core(paths, args.size, decoder, args.repeats)
        results.append(r)
        verdict = "meets" if r["img_per_s_per_core"] >= TARGET_PER_CORE else "below"
        print(f"{decoder:>12}: {r['img_per_s_per_core']:7.1f} img/s per core (CPU time: "
              f"{r['ms_cpu_per_image']:.2f} ms/image; {verdict} the {TARGET_PER_CORE} img/s target); "
              f"wall clock {r['wall_median_img_per_s']:.0f} img/s (median of {CHUNK}-image chunks)")
        print(" " * 14 + "median CPU ms/image by stage: "
              + ", ".join(f"{k} {v}" for k, v in r["stages_ms"].items()))
    if args.workers:
        for decoder in (d for d in decoders if d != "mindspore"):
            r = with_workers(paths, args.size, decoder, args.workers, args.batch)
            results.append(r)
            print(f"{decoder:>12}: {r['img_per_s']:7.1f} img/s with {args.workers} loader workers "
                  f"({r['img_per_s_per_worker']:.1f} per worker)")
    if args.json:
        print(json.dumps({"bench": "input", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
