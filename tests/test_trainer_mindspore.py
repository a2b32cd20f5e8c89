"""The MindSpore trainer on the CPU: two ranks under real OpenMPI `mpirun` join MindSpore's
dynamic cluster, train MindCV's ResNeXt50 data-parallel and rank 0 checkpoints; `--resume
auto` continues and SIGTERM leaves a loadable checkpoint; a rank that cannot join fails in
bounded time; bad input is one line and exit 2; evaluate scores a checkpoint."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from timing import scaled
from trainer_utils import REPO, rank_process, run_trainer, trainer_cmd, trainer_env, write_tiny_folder

pytestmark = pytest.mark.mindspore

PROGRESS = re.compile(r"^epoch (\d+)/(\d+) step (\d+)/(\d+) loss [\d.]+ lr [\d.e-]+ img/s [\d.]+ eta \d+:\d\d:\d\d data-wait \d+ms/step$", re.M)
# 32 images / (2 ranks x batch 4) = 4 steps per epoch.
TINY = ("--framework", "mindspore", "--synthetic", "--synthetic-samples", "32", "--num-classes", "10",
        "--image-size", "32", "--batch-size", "4", "--epochs", "3", "--workers", "1", "--log-interval", "1")


def index_of(out: Path) -> dict:
    return json.loads((out / "checkpoints" / "index.json").read_text())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


LOAD = """
import json, sys
from kjob_trainer.mindspore.eval import _load_into, read_checkpoint
from kjob_trainer.mindspore.setup import build_network
params, info = read_checkpoint(sys.argv[1])
net = build_network(info["model"], 10)
_load_into(net, params, sys.argv[1])
print(json.dumps({"epoch": info["epoch"], "step": info["step"], "batch_size": info["config"]["batch_size"]}))
"""


def load_checkpoint(path: Path) -> dict:
    """Load a .ckpt into a fresh network in a separate process (as `evaluate` would)."""
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=scaled(120),
                          env=trainer_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_ranks_train_checkpoint_then_resume_and_sigterm(tmp_path):
    out = tmp_path / "out"
    first = run_trainer(*TINY, "--max-steps", "3", "--output-path", str(out), np_=2, timeout=420)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "mindspore 2.10.0: 2 rank(s) joined, device CPU, graph mode" in first.stdout
    assert [int(m.group(3)) for m in PROGRESS.finditer(first.stdout)] == [1, 2, 3]

    # Both ranks trained: each saw 3 x 4 samples of epoch 0, none in common, and the gradient
    # all-reduce kept their weights identical although their data differed.
    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["ranks_in_allreduce"] for r in ranks] == [2, 2]
    seen = [set(r["sample_indices"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 12 and not seen[0] & seen[1] and seen[0] | seen[1] <= set(range(32))
    assert ranks[0]["weights_abs_sum"] == pytest.approx(ranks[1]["weights_abs_sum"], rel=1e-9)

    index = index_of(out)
    assert (index["framework"], index["model"], index["latest"]) == ("mindspore", "resnext50_32x4d", "step-00000003.ckpt")
    assert [(e["file"], e["epoch"], e["step"]) for e in index["checkpoints"]] == [("step-00000003.ckpt", 0, 3)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]

    # Resume: continues at step 4, crosses the epoch boundary (epoch-0001.ckpt); then SIGTERM
    # to rank 1 alone: the ranks agree to stop after the same step and rank 0 saves it. (Not
    # to mpirun: OpenMPI 5 answers its own SIGTERM by killing the ranks at once.)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(trainer_cmd(*TINY, "--output-path", str(out), "--resume", "auto", np_=2),
                                stdout=log, stderr=subprocess.STDOUT, env=trainer_env(), cwd=REPO)
        try:
            deadline = time.monotonic() + scaled(420)
            while "step 6/" not in (tmp_path / "log").read_text():
                assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no step 6 within 420 s"
                time.sleep(0.1)
            rank_process(proc, 1).send_signal(signal.SIGTERM)
            code = proc.wait(timeout=scaled(180))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "log").read_text()
    assert code != 0 and f"resumed from {out / 'checkpoints' / 'step-00000003.ckpt'}: epoch 0 step 3" in text, text[-3000:]
    stop = re.search(r"^stopping on SIGTERM at step (\d+): checkpoint ((?:step-\d{8}|epoch-\d{4})\.ckpt) saved", text, re.M)
    assert stop, text[-3000:]
    steps = [int(m.group(3)) for m in PROGRESS.finditer(text)]
    assert steps[:3] == [4, 5, 6] and steps[-1] == int(stop.group(1))
    index = index_of(out)
    assert index["latest"] == stop.group(2)
    entries = {e["file"]: (e["epoch"], e["step"]) for e in index["checkpoints"]}
    assert entries["epoch-0001.ckpt"] == (1, 4)
    stopped_at = entries[index["latest"]][1]
    assert stopped_at >= 6 and not list((out / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(out / "checkpoints" / index["latest"]) == {
        "epoch": stopped_at // 4, "step": stopped_at, "batch_size": 4}
    # The scheduler rank 0 started (it writes ms-scheduler.log) has left too.
    deadline = time.monotonic() + scaled(60)
    while schedulers_writing(out / "ms-scheduler.log"):
        assert time.monotonic() < deadline, "the MindSpore scheduler outlived the job"
        time.sleep(1)


def schedulers_writing(log: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "kjob_trainer.mindspore.dist" in (p.info["cmdline"] or []) and \
                    any(f.path == str(log) for f in p.open_files()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.timeout(180)
def test_a_rank_that_cannot_join_fails_in_bounded_time_naming_itself(tmp_path):
    # Rank 1 of 2 alone (no rank 0, so no scheduler): it must give up after --dist-timeout.
    env = trainer_env()
    env.update(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="1",
               OMPI_COMM_WORLD_LOCAL_SIZE="2", PMIX_NAMESPACE=f"lonely-{tmp_path.name}")
    start = time.monotonic()
    proc = run_trainer(*TINY, "--dist-timeout", "5", "--output-path", str(tmp_path / "out"), env=env, timeout=150)
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and re.match(
        r"Error: rank 1/2 on host \S+ could not join the MindSpore cluster( \(scheduler at |: | at )", lines[0]), proc.stderr
    assert "127.0.0.1:" in lines[0] and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 120


def _empty_class(root: Path) -> str:
    write_tiny_folder(root)
    (root / "train" / "n99999999").mkdir()
    return f"Error: dataset: empty class folder {root / 'train' / 'n99999999'} (no .jpeg/.jpg/.png files)"


def _too_few(root: Path) -> str:
    write_tiny_folder(root)  # 2 classes x 3 images
    return "Error: dataset: 6 training images are fewer than one global batch (1 ranks x --batch-size 8)"


def _missing(root: Path) -> str:
    return f"Error: dataset folder {root / 'nope'} does not exist"


@pytest.mark.parametrize("make, data", [(_missing, "nope"), (_empty_class, ""), (_too_few, "")])
@pytest.mark.timeout(120)
def test_bad_dataset_is_one_line_and_exit_2(tmp_path, make, data):
    expected = make(tmp_path)
    proc = run_trainer("--framework", "mindspore", "--data-path", str(tmp_path / data), "--image-size", "32",
                       "--batch-size", "8", "--output-path", str(tmp_path / "out"), timeout=100)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [expected])
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.timeout(120)
def test_float16_amp_on_cpu_is_bad_input(tmp_path):
    # The MindCV recipe (O2, loss scale 1024) is for GPU/Ascend; on CPU it must say so.
    proc = run_trainer(*TINY, "--config", "resnext50_mindcv", "--output-path", str(tmp_path / "out"), timeout=100)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "Error: amp_level O2 (float16 compute) does not train on MindSpore's CPU backend; use --amp-level O0 on CPU"]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.timeout(200)
def test_corrupt_image_beyond_the_allowed_fraction_is_one_line_and_exit_2(tmp_path):
    write_tiny_folder(tmp_path / "data")  # 2 classes x 3 images
    bad = tmp_path / "data" / "train" / "n00000001" / "1.JPEG"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    proc = run_trainer("--framework", "mindspore", "--data-path", str(tmp_path / "data"), "--image-size", "32",
                       "--batch-size", "2", "--epochs", "1", "--workers", "1", "--max-bad-images", "0", "--no-eval",
                       "--output-path", str(tmp_path / "out"), timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        f"Error: dataset: 1 training images could not be decoded, more than max_bad_images=0 x 6 allows (e.g. {bad})"]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_folder_training_evaluates_and_evaluate_cli_agrees(tmp_path):
    write_tiny_folder(tmp_path / "data", classes=2, per_class=4, size=40)
    out = tmp_path / "out"
    proc = run_trainer("--framework", "mindspore", "--data-path", str(tmp_path / "data"), "--image-size", "32",
                       "--batch-size", "4", "--epochs", "1", "--workers", "1", "--output-path", str(out), timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"^epoch 1/1 eval top1 [\d.]+ top5 100\.00 loss [\d.]+ \(8 images\)$", proc.stdout, re.M), proc.stdout
    entry = index_of(out)["checkpoints"][0]
    assert entry["file"] == "epoch-0001.ckpt" and set(entry["metrics"]) >= {"top1", "top5", "loss"}
    ev = run_trainer("--checkpoint", str(out / "checkpoints" / "epoch-0001.ckpt"), "--data-path",
                     str(tmp_path / "data"), "--batch-size", "3", "--json", module="kjob_trainer.evaluate", timeout=200)
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    assert (result["images"], result["epoch"], result["step"]) == (8, 1, 2)
    assert result["top1"] == pytest.approx(entry["metrics"]["top1"])


@pytest.mark.timeout(120)
def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    write_tiny_folder(tmp_path / "data")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    proc = run_trainer("--framework", "mindspore", "--checkpoint", str(junk), "--data-path", str(tmp_path / "data"),
                       module="kjob_trainer.evaluate", timeout=100)
    assert proc.returncode == 2
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Error: checkpoint {junk}: not a readable MindSpore checkpoint")


@pytest.mark.timeout(120)
def test_mindcv_models_have_the_published_parameter_counts():
    code = ("from kjob_trainer.mindspore.setup import build_network\n"
            "for m in ('resnext50_32x4d', 'resnest50'):\n"
            "    n = build_network(m, 1000)\n"
            "    print(m, sum(p.size for p in n.get_parameters()), sum(p.size for p in n.trainable_params()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(100),
                          env=trainer_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in proc.stdout.splitlines()}
    # MindCV's table says 25.10M for ResNeXt50_32x4d: that counts BatchNorm's moving statistics;
    # the trainable ones equal torchvision's 25,028,904.
    assert counts["resnext50_32x4d"] == (25_097_128, 25_028_904)
    assert counts["resnest50"][1] == 27_483_240


PIPELINE = """
import json, sys
import numpy as np
from kjob_trainer.common.config import make_config
from kjob_trainer.common.dataset_index import find_splits
from kjob_trainer.mindspore.data import ImageSource, make_pipeline
from kjob_trainer.common.sharding import shard_indices

cfg = make_config(sys.argv[2], {"data_path": sys.argv[1], "image_size": 32, "workers": 1})
train, val = find_splits(sys.argv[1], need_val=True)
out = {}
for name, split, is_train in (("train", train, True), ("val", val, False)):
    idx = shard_indices(len(split), 4, 0, 1, cfg.seed, 0, is_train)
    batches = list(make_pipeline(ImageSource(split), idx, cfg, 4, train=is_train).create_tuple_iterator(
        num_epochs=1, output_numpy=True))
    out[name] = [[list(b[0].shape), str(b[0].dtype), bool(np.isfinite(b[0]).all())] for b in batches]
print(json.dumps(out))
"""


@pytest.mark.timeout(200)
@pytest.mark.parametrize("recipe", ["resnest50", "resnext50_mindspore_zoo"])
def test_recipe_augmentations_run_in_the_mindspore_pipeline(tmp_path, recipe):
    """PaddleClas's AutoAugment (MindCV's "autoaug") and the zoo's colour jitter and square
    eval resize (MindSpore's RandomColorAdjust, Resize((N, N))) in mindspore.dataset."""
    write_tiny_folder(tmp_path / "data", classes=2, per_class=4, size=40)
    proc = subprocess.run([sys.executable, "-c", PIPELINE, str(tmp_path / "data"), recipe], capture_output=True,
                          text=True, timeout=scaled(180), env=trainer_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"train": [[[4, 3, 32, 32], "float32", True]] * 2, "val": [[[4, 3, 32, 32], "float32", True]] * 2}
