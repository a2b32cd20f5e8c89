"""Trainer overhead, MindSpore: img/s of kjob's full training step vs a bare train-step loop.

Full step = `kjob_trainer.mindspore.train.Trainer` on synthetic data in this process: the
`mindspore.dataset` pipeline (sampler, batching, index column), lr bookkeeping, the stop-
flag agreement and a progress line + metrics row every --steps steps. Its img/s is the
trainer's own figure for the second log interval (the first one holds the graph compile).
Bare loop = the same network and MindCV TrainStep (graph mode, same loss/AMP/loss scale/
optimizer) called on one fixed batch, timed over the same number of steps.
Rounds alternate the order (bare then full, full then bare, ...): load drift on a shared
machine and whatever the first graph compile in a process warms up hit both alike.

    .venv/bin/python bench/bench_trainer_mindspore.py [--model resnext50_32x4d] [--image-size 64]
        [--batch-size 8] [--steps 8] [--rounds 2] [--amp off|fp16]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

from kjob_trainer.common.config import make_config  # noqa: E402
from kjob_trainer.common.distributed import DistEnv  # noqa: E402
from kjob_trainer.mindspore.setup import build_network, build_train_step, lr_table, setup_context  # noqa: E402
from kjob_trainer.mindspore.train import Trainer  # noqa: E402
from kjob_trainer.common.schedule import LrSchedule  # noqa: E402


def bare_loop(cfg, steps: int) -> float:
    """img/s of the plain train-step loop on one fixed batch."""
    from mindspore import Tensor

    net = build_network(cfg.model, cfg.num_classes)
    step = build_train_step(cfg, net, lr_table(LrSchedule.from_config(cfg, 1, 2 * steps).table(), 1), "CPU")
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((cfg.batch_size, 3, cfg.image_size, cfg.image_size), dtype=np.float32))
    y = Tensor(rng.integers(0, cfg.num_classes, cfg.batch_size).astype(np.int32))
    for _ in range(steps):  # the first call compiles the graph
        loss = step(x, y)
    loss.asnumpy()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
    loss.asnumpy()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def full_step(cfg, steps: int) -> float:
    """img/s the trainer itself reports for its second log interval."""
    job = Trainer(cfg, DistEnv(), "CPU")
    job.build()
    job.fit()
    rows = [json.loads(line) for line in (Path(cfg.output_path) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [steps, 2 * steps], train
    return float(train[1]["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps per round (and warmup steps before them)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--amp", default="off", choices=("off", "fp16"))
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    import mindcv
    import mindspore as ms

    results = {"bare": [], "full": []}
    with tempfile.TemporaryDirectory(prefix="kjob-bench-ms-") as tmp:
        base = {"framework": "mindspore", "model": args.model, "synthetic": True, "num_classes": 1000,
                "synthetic_samples": 2 * args.steps * args.batch_size, "image_size": args.image_size,
                "batch_size": args.batch_size, "epochs": 1, "log_interval": args.steps, "workers": args.workers,
                "amp": args.amp, "resume": "never", "eval": False, "device": "cpu", "keep_checkpoints": 1}
        setup_context(make_config(None, {**base, "output_path": tmp}), DistEnv())
        for r in range(args.rounds):
            cfg = make_config(None, {**base, "output_path": f"{tmp}/round{r}"})
            for kind in ("bare", "full") if r % 2 == 0 else ("full", "bare"):
                results[kind].append(bare_loop(cfg, args.steps) if kind == "bare" else full_step(cfg, args.steps))
                gc.collect()
            print(f"round {r + 1}: bare {results['bare'][-1]:.2f} img/s, full {results['full'][-1]:.2f} img/s", flush=True)

    bare, full = statistics.median(results["bare"]), statistics.median(results["full"])
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}, load {os.getloadavg()[0]:.1f}")
    print(f"versions: python {platform.python_version()}, mindspore {ms.__version__}, mindcv {mindcv.__version__}, "
          f"numpy {np.__version__}")
    print(f"settings: {args.model}, CPU, graph mode, 1 process, batch {args.batch_size}, {args.image_size} px, "
          f"amp {args.amp}, {args.steps} warmup + {args.steps} timed steps, {args.rounds} rounds (median)")
    print(f"bare train-step loop: {bare:.2f} img/s")
    print(f"kjob full step:       {full:.2f} img/s")
    print(f"full / bare: {full / bare:.3f}  (overhead {100 * (bare / full - 1):+.1f}% time per image; target <= +5%)")


if __name__ == "__main__":
    main()
