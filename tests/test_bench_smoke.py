"""Every benchmark script runs to the end at toy sizes, so bench/ cannot rot unnoticed.

Numbers are not checked (timings belong in BENCHMARKS.md, not in assertions): only that
each script exits 0 and prints its result line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from timing import scaled
from trainer_utils import REPO, trainer_env

BENCH = REPO / "bench"

# (script and toy arguments, a piece of its result line); DATA is the generated JPEG folder.
CASES = [
    (["bench_cli.py", "--runs", "1"], "`kjob render examples/resnext50.yaml`"),
    (["bench_status.py", "--repeat", "1", "--workers", "2"], "median"),
    (["cli_startup.py", "--runs", "1"], "| `kjob status bench` | this tree |"),
    (["bench_logs.py", "--lines", "2000", "--cuts", "1", "--repeat", "1"], "every line exactly once"),
    (["bench_fetch.py", "--mb", "2", "--files", "2", "--runs", "1"], "median transfer"),
    (["bench_trainer.py", "--image-size", "16", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--rounds", "1"],
     "trainer overhead"),
    (["bench_trainer_mindspore.py", "--image-size", "16", "--batch-size", "2", "--steps", "1", "--rounds", "1"],
     "full / bare"),
    (["bench_input.py", "--data", "DATA", "--images", "4", "--repeats", "1", "--size", "32",
      "--decoders", "torchvision,pil,mindspore", "--workers", "1", "--batch", "2"], "mindspore:"),
    (["bench_gpu_step.py", "--batch", "2", "--image-size", "32", "--steps", "1", "--warmup", "0", "--threads", "1",
      "--profile"], "resnest50"),
    (["bench_end_to_end.py", "--data", "DATA", "--batch", "2", "--image-size", "32", "--workers", "1", "--steps", "1",
      "--warmup", "0", "--compare"], "same step on synthetic data"),
    (["bench_end_to_end.py", "--data", "DATA", "--batch", "2", "--image-size", "32", "--workers", "1", "--steps", "1",
      "--warmup", "0", "--decoder", "dali"], "img/s end to end"),
]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "jpegs"
    done = subprocess.run([sys.executable, str(BENCH / "make_jpegs.py"), str(out), "--classes", "2", "--per-class", "6",
                           "--val-per-class", "2"], capture_output=True, text=True, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("args, expected", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_benchmark_runs(args, expected, jpegs):
    argv = [str(jpegs) if a == "DATA" else a for a in args]
    done = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=scaled(170), cwd=REPO, env=trainer_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert expected in done.stdout, done.stdout[-2000:]


def test_benchmark_bad_input_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, str(BENCH / "bench_gpu_step.py"), "--batch", "1"], capture_output=True,
                          text=True, timeout=scaled(60), cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --batch must be >= 2 (batch norm in training), --steps >= 1, --warmup >= 0"
