"""The run protocol (run_protocol.py) that both loops follow: the same tiny schedule run by
the PyTorch loop and by the MindSpore loop must give the same lr at every step, the same
shard of sample ids, the same metric keys with the same meaning, the same `best`
checkpoint, and leave the caller's signal handlers as they were. Plus the protocol's pure
pieces (stop flag, bad-image limit, rank records, Mixup draws)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kjob_trainer.common import run_protocol as protocol
from kjob_trainer.common.augment import mixup_draw
from kjob_trainer.common.config import make_config
from kjob_trainer.common.errors import BadInput
from kjob_trainer.common.metrics import read_metrics
from kjob_trainer.common.schedule import LrSchedule
from kjob_trainer.common.sharding import shard_indices

from timing import scaled
from trainer_utils import REPO, trainer_env, write_tiny_folder

# 12 training images, batch 4, one process: 3 steps per epoch, 6 in all; warm-up over the
# first half-epoch, then cosine; a progress line (and so a `train` record) at every step.
SCHEDULE = {"image_size": 16, "batch_size": 4, "epochs": 2, "lr": 0.2, "warmup_epochs": 0.5, "log_interval": 1,
            "workers": 1, "seed": 5, "keep_checkpoints": 1, "device": "cpu", "num_classes": 2}
STEPS_PER_EPOCH = 3

RUN = """
import json, signal, sys
from kjob_trainer.common.config import make_config
from kjob_trainer.common.distributed import DistEnv

framework, data, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def caller(signum, frame):
    pass
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, caller)
cfg = make_config(None, dict(framework=framework, data_path=data, output_path=out, **settings))
if framework == "pytorch":
    from kjob_trainer.torch.train import run
else:
    from kjob_trainer.mindspore.train import run
code = run(cfg, DistEnv())
restored = all(signal.getsignal(sig) is caller for sig in (signal.SIGTERM, signal.SIGUSR1))
print("PROTOCOL " + json.dumps({"code": code, "restored": restored}))
"""


@pytest.fixture(scope="module")
def digits_free_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocol") / "data"
    write_tiny_folder(root, classes=2, per_class=6, size=20)
    return root


@pytest.mark.timeout(420)
@pytest.mark.parametrize("framework", ["pytorch", pytest.param("mindspore", marks=pytest.mark.mindspore)])
def test_both_loops_follow_the_same_protocol(framework, digits_free_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", RUN, framework, str(digits_free_data), str(out), json.dumps(SCHEDULE)],
                          capture_output=True, text=True, timeout=scaled(400), env=trainer_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("PROTOCOL ", 1)[1])
    # The loop put back the handlers it found (StopFlag.restore).
    assert result == {"code": 0, "restored": True}

    rows = read_metrics(out / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    cfg = make_config(None, {"synthetic": True, **SCHEDULE})
    schedule = LrSchedule.from_config(cfg, 1, STEPS_PER_EPOCH)

    # lr per step: the pure schedule's, step by step (record at step s = after s updates).
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in train] == pytest.approx([schedule.lr_at(s) for s in range(6)], rel=1e-6)
    # Warm-up over round(1.5) = 2 steps, then cosine from the scaled base lr.
    assert schedule.warmup_steps == 2 and schedule.lr_at(0) < schedule.lr_at(1) < schedule.lr_at(2)
    assert schedule.lr_at(2) == pytest.approx(0.2 * 4 / 256) and schedule.lr_at(5) < schedule.lr_at(2)

    # Shard ids: exactly sharding.shard_indices of each epoch, in order.
    rank0 = json.loads((out / "ranks" / "rank-0.json").read_text())
    expected = [i for epoch in (0, 1) for i in shard_indices(12, 4, 0, 1, 5, epoch, True)]
    assert rank0["sample_indices"] == expected and rank0["samples"] == 24 and rank0["id_sum"] == sum(expected)
    assert [r for r in rows if r["kind"] == "ranks"][-1]["samples"] == [24]

    # Metric keys: what run_protocol says, and nothing else.
    train_keys = set(protocol.TRAIN_RECORD) | ({protocol.TRAIN_TOP1} if framework == "pytorch" else set())
    assert all(set(r) - {"kind", "step", "time"} == train_keys for r in train)
    assert [set(r) - {"kind", "step", "time"} for r in evals] == [set(protocol.EVAL_RECORD)] * 2
    assert [r["epoch"] for r in evals] == [0, 1] and [r["step"] for r in evals] == [3, 6]
    index = json.loads((out / "checkpoints" / "index.json").read_text())
    for entry in index["checkpoints"]:
        assert set(entry["metrics"]) == set(protocol.CHECKPOINT_METRICS)
        epoch = entry["epoch"] - 1
        # The same meaning: a checkpoint's numbers are its epoch's eval record and last train record.
        assert entry["metrics"]["top1"] == pytest.approx(evals[epoch]["top1"])
        assert entry["metrics"]["loss"] == pytest.approx(evals[epoch]["loss"])
        last_train = [r for r in train if r["epoch"] == epoch][-1]
        assert entry["metrics"]["train_loss"] == pytest.approx(last_train["loss"])
    # `best` is the highest val top-1 (the later one on a tie), whatever the framework.
    best_epoch = max(reversed(range(2)), key=lambda e: evals[e]["top1"])
    assert index["best"] == f"epoch-{best_epoch + 1:04d}.{'pt' if framework == 'pytorch' else 'ckpt'}"
    assert index["latest"].startswith("epoch-0002")


def test_stop_flag_sets_on_either_signal_and_restores_the_handlers():
    def mine(signum, frame):
        pass

    before = {sig: signal.signal(sig, mine) for sig in protocol.STOP_SIGNALS}
    try:
        with protocol.StopFlag() as stop:
            assert all(signal.getsignal(sig) == stop._on_signal for sig in protocol.STOP_SIGNALS)
            signal.raise_signal(signal.SIGUSR1)
            assert (stop.requested, stop.signal_name) == (True, "SIGUSR1")
        assert all(signal.getsignal(sig) is mine for sig in protocol.STOP_SIGNALS)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_reduced_interval_names_the_stop_every_rank_agrees_on():
    stop = protocol.StopFlag()
    rank0 = protocol.interval_vector(loss_sum=4.0, correct=1.0, samples=4, bad=0, stop=stop)
    stop.signal_name = "SIGTERM"
    rank1 = protocol.interval_vector(loss_sum=2.0, correct=3.0, samples=4, bad=1, stop=stop)
    r = protocol.Reduced.read([a + b for a, b in zip(rank0, rank1)])
    assert (r.loss, r.correct, r.samples, r.bad, r.stop_signal) == (0.75, 4.0, 8, 1, "SIGTERM")


def test_bad_image_limit_counts_every_rank_against_the_whole_training_set():
    protocol.check_bad_images(12, 128_000, 0.0001, None)  # 12 of 12.8 allowed
    with pytest.raises(BadInput, match=r"^dataset: 13 training images could not be decoded, more than "
                                       r"max_bad_images=0.0001 x 128000 allows \(e\.g\. /d/x\.JPEG\)$"):
        protocol.check_bad_images(13, 128_000, 0.0001, "/d/x.JPEG")


def test_rank_record_sums_exactly_even_in_float32():
    world = 3
    records = [protocol.RankRecord(r, world, "h") for r in range(world)]
    for r, rec in enumerate(records):
        rec.count(range(r * 10_000_000, r * 10_000_000 + 5000))
    summed = np.sum([np.asarray(rec.vector(), dtype=np.float32) for rec in records], axis=0, dtype=np.float32)
    got = records[0].summary(summed.tolist())
    assert got == {"world_size": 3, "samples": [5000] * 3, "id_sum": [rec.id_sum for rec in records]}
    assert len(records[0].indices) == 5000


def test_mixup_draw_is_fixed_by_its_batch_and_mixes_targets_to_one():
    a = mixup_draw(0.2, 8, seed=1, epoch=2, batch=3, rank=0)
    b = mixup_draw(0.2, 8, seed=1, epoch=2, batch=3, rank=0)
    c = mixup_draw(0.2, 8, seed=1, epoch=2, batch=4, rank=0)
    assert a.lam == b.lam and list(a.perm) == list(b.perm) and (a.lam, list(a.perm)) != (c.lam, list(c.perm))
    assert sorted(a.perm) == list(range(8)) and 0 <= a.lam <= 1
    targets = a.mix_targets(np.arange(8) % 3, 3)
    assert targets.shape == (8, 3) and np.allclose(targets.sum(1), 1.0)
