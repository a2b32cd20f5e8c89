"""Trainer overhead: img/s of kjob's full PyTorch training step vs a bare loop.

Full step = `kjob_trainer.torch.train.Trainer` on synthetic data in one process: loader and
collate, per-sample id/bad-image tallies, device-side loss/accuracy sums, lr schedule,
optimizer step, and a metrics reduction + progress line every --log-interval steps.
Bare loop = the same model, optimizer, loss, AMP and memory format on one fixed batch:
zero_grad / forward / backward / step, nothing else.
Runs alternate (bare, full, bare, full, ...) so load drifts on a shared machine hit both.

    .venv/bin/python bench/bench_trainer.py [--model resnext50_32x4d] [--image-size 112]
        [--batch-size 16] [--steps 10] [--rounds 2] [--device cpu|gpu] [--amp off|bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

from kjob_trainer.common.config import make_config
from kjob_trainer.common.distributed import DistEnv
from kjob_trainer.torch.models import build_model
from kjob_trainer.torch.setup import autocast_dtype, make_optimizer
from kjob_trainer.torch.train import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(cfg, device: torch.device, steps: int, warmup: int) -> float:
    """img/s of the plain step loop."""
    torch.manual_seed(cfg.seed)
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.model, cfg.num_classes).to(device, memory_format=mf).train()
    opt = make_optimizer(model, cfg, device)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device).to(memory_format=mf)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
    dtype = autocast_dtype(cfg)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def full_step(cfg, steps: int, warmup: int) -> float:
    """img/s of the trainer's own loop (Trainer.train_one_epoch) over `steps` steps."""
    trainer = Trainer(cfg, DistEnv())
    trainer.total_steps = warmup
    trainer.train_one_epoch(0)
    sync(trainer.device)
    t0 = time.perf_counter()
    trainer.total_steps = warmup + steps
    trainer.train_one_epoch(0)
    sync(trainer.device)
    rate = steps * cfg.batch_size / (time.perf_counter() - t0)
    trainer.log.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--log-interval", type=int, default=20)
    # 0 = the synthetic batches are made in the training process. On a GPU that serial work
    # showed up as data-wait (H200, 2026-11-30: 13-39 ms of an 86 ms step), so GPU runs
    # default to loader processes as a real job has.
    p.add_argument("--workers", type=int, default=None, help="loader processes (default 0 CPU, 8 GPU)")
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="bench-trainer-")
    samples = a.batch_size * (a.warmup + a.steps + 1)
    workers = a.workers if a.workers is not None else (8 if a.device == "gpu" else 0)
    cfg = make_config(None, dict(
        model=a.model, image_size=a.image_size, batch_size=a.batch_size, device=a.device, amp=a.amp,
        channels_last=a.channels_last, synthetic=True, synthetic_samples=samples, num_classes=1000,
        workers=workers, epochs=1, log_interval=a.log_interval, output_path=out, resume="never", eval=False))
    device = torch.device("cuda" if a.device == "gpu" else "cpu")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, GPU {gpu}; load avg {os.getloadavg()[0]:.1f}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"settings: {a.model} image {a.image_size} batch {a.batch_size} amp {a.amp} channels_last {a.channels_last} "
          f"device {device.type} workers {workers}; {a.steps} timed steps after {a.warmup} warmup, {a.rounds} rounds, log every {a.log_interval}")
    bare, full = [], []
    for r in range(a.rounds):
        bare.append(bare_loop(cfg, device, a.steps, a.warmup))
        full.append(full_step(cfg, a.steps, a.warmup))
        print(f"round {r + 1}: bare {bare[-1]:.1f} img/s, trainer {full[-1]:.1f} img/s", flush=True)
    b, f = max(bare), max(full)
    print(f"best: bare {b:.1f} img/s, trainer {f:.1f} img/s, trainer overhead {100 * (b / f - 1):+.1f}% "
          f"(target <= +5%)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
