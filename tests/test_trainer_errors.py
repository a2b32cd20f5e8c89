"""Bad inputs to `python -m kjob_trainer.train` (and evaluate): one `Error:` line, exit 2,
no traceback. Each starts a real process (a few seconds: importing torch)."""

from __future__ import annotations

import os
import subprocess

import pytest

from timing import scaled
from trainer_utils import REPO, run_trainer, trainer_cmd, trainer_env, write_tiny_folder

TINY = ["--image-size", "16", "--batch-size", "2", "--workers", "0", "--epochs", "1", "--log-interval", "1"]


def assert_one_line_error(proc, expected: str, code: int = 2) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert lines == [lines[0]] and lines[0].startswith("Error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.timeout(180)
def test_missing_dataset(tmp_path):
    proc = run_trainer("--data-path", str(tmp_path / "nope"), "--output-path", str(tmp_path / "out"), *TINY)
    assert_one_line_error(proc, f"dataset folder {tmp_path / 'nope'} does not exist")


@pytest.mark.timeout(180)
def test_empty_class_folder(tmp_path):
    write_tiny_folder(tmp_path / "ds")
    (tmp_path / "ds" / "train" / "n09999999").mkdir()
    proc = run_trainer("--data-path", str(tmp_path / "ds"), "--output-path", str(tmp_path / "out"), *TINY)
    assert_one_line_error(proc, f"empty class folder {tmp_path / 'ds' / 'train' / 'n09999999'}")


@pytest.mark.timeout(180)
def test_unknown_model_and_zero_batch(tmp_path):
    proc = run_trainer("--synthetic", "--model", "resnet9000", "--output-path", str(tmp_path / "o"))
    assert_one_line_error(proc, "argument --model/--arch/-a: invalid choice: 'resnet9000'")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet9000\n")
    proc = run_trainer("--synthetic", "--config", str(cfg), "--output-path", str(tmp_path / "o"))
    assert_one_line_error(proc, "unknown model 'resnet9000' (choose from resnext50_32x4d, resnest50)")
    proc = run_trainer("--synthetic", "--batch-size", "0", "--output-path", str(tmp_path / "o"))
    assert_one_line_error(proc, "--batch-size must be at least 1, got 0")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_corrupt_jpeg_fails_past_the_threshold_with_its_name(tmp_path):
    write_tiny_folder(tmp_path / "ds")
    bad = tmp_path / "ds" / "train" / "n00000001" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out"
    proc = run_trainer("--data-path", str(tmp_path / "ds"), "--output-path", str(out), *TINY,
                       "--batch-size", "7", "--no-eval")
    assert_one_line_error(proc, "dataset: 1 training images could not be decoded, more than max_bad_images=0.0001 x 7")
    assert "broken.JPEG" in proc.stderr
    assert not (out / "checkpoints").exists()
    # Within the threshold the image is skipped and training completes.
    ok = run_trainer("--data-path", str(tmp_path / "ds"), "--output-path", str(out), *TINY,
                     "--batch-size", "7", "--no-eval", "--max-bad-images", "0.2")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.timeout(180)
def test_a_rank_that_cannot_join_fails_in_bounded_time_naming_itself(tmp_path):
    # Rank 1 of 2 with no rank 0 anywhere: it must give up after --dist-timeout.
    env = trainer_env()
    env.update(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="1",
               OMPI_COMM_WORLD_LOCAL_SIZE="2", PMIX_NAMESPACE="lonely@1", KJOB_HOSTFILE=str(tmp_path / "none"))
    proc = run_trainer("--synthetic", "--output-path", str(tmp_path / "o"), "--dist-timeout", "3", *TINY, env=env)
    assert_one_line_error(proc, "rank 1/2 on host ", code=1)
    assert "could not join the job" in proc.stderr and "within 3 s" in proc.stderr


@pytest.mark.timeout(180)
def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    write_tiny_folder(tmp_path / "ds")
    fake = tmp_path / "x.pt"
    fake.write_bytes(b"not a checkpoint")
    proc = run_trainer("--checkpoint", str(fake), "--data-path", str(tmp_path / "ds"), module="kjob_trainer.evaluate")
    assert_one_line_error(proc, f"checkpoint {fake}: cannot be read")


@pytest.mark.timeout(400)
@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another owner needs root (CI runs as root)")
def test_a_checkpoint_volume_that_uid_1000_cannot_write_is_named_at_start(tmp_path):
    # An NFS volume whose root is someone else's 0755 (kubelet's fsGroup changes nothing
    # there). Root writes anywhere, so the trainer runs as uid 1000 of a user namespace: its
    # kernel uid owns nothing in `volume` and gets EACCES, as uid 1000 in a pod does.
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, 12345, 12345)
    volume.chmod(0o755)
    tmp_path.chmod(0o755)
    proc = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000",
                           *trainer_cmd("--synthetic", "--output-path", str(volume / "resnext50"), *TINY)],
                          capture_output=True, text=True, timeout=scaled(300), env=trainer_env(), cwd=REPO)
    # The owner is not mapped into the namespace: the kernel shows it as the overflow uid.
    assert_one_line_error(proc, f"--output-path {volume / 'resnext50'}: uid 1000 (gid 1000) cannot write in {volume}, "
                                "owned by 65534:65534 with mode 0755; make the volume's root writable for uid 1000")
    assert "step" not in proc.stdout
