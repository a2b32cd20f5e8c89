"""Fast, in-process tests of the trainer's framework-neutral parts and PyTorch helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kjob_trainer.common.checkpoints import CheckpointDir, sha256_file
from kjob_trainer.common.cli_args import parse_train_args
from kjob_trainer.common.config import TrainConfig, make_config
from kjob_trainer.common.dataset_index import find_splits
from kjob_trainer.common.distributed import dist_env, hostfile_first_host, static_address
from kjob_trainer.common.errors import BadInput, DistributedError

from trainer_utils import write_tiny_folder


def test_reference_flag_spellings_map_to_the_same_settings():
    _, a = parse_train_args(["--data_path", "/d", "--output_path", "/o", "--batch_size", "8", "--epoch", "3",
                             "--arch", "resnest50", "--weight_decay", "0.01", "--device_target", "GPU",
                             "--run_distribute=1", "--amp"])
    _, b = parse_train_args(["--data-path", "/d", "--output-path", "/o", "--batch-size", "8", "--epochs", "3",
                             "--model", "resnest50", "--weight-decay", "0.01", "--device", "gpu", "--amp", "bf16"])
    assert a == b


def test_flags_override_config_file_and_file_overrides_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nbatch_size: 16\nlr_milestones: [1, 2]\n")
    cfg = make_config(str(f), {"batch_size": 4, "synthetic": True})
    assert (cfg.epochs, cfg.batch_size, cfg.lr_milestones, cfg.momentum) == (7, 4, (1, 2), TrainConfig.momentum)


@pytest.mark.parametrize("name", ["resnext50_torchvision", "resnext50_mindcv", "resnest50"])
def test_shipped_configs_load(name):
    cfg = make_config(name, {"synthetic": True})
    assert cfg.lr == 0.1 and cfg.model in ("resnext50_32x4d", "resnest50")


@pytest.mark.parametrize("text, message", [
    ("epochs: 0\n", "--epochs must be at least 1, got 0"),
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("batch_size: two\n", "batch_size must be int, got 'two'"),
])
def test_bad_config_values_name_the_key(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text + "synthetic: true\n")
    with pytest.raises(BadInput, match=message):
        make_config(str(f))


def test_unknown_flag_is_one_line_bad_input():
    with pytest.raises(BadInput, match="unrecognized arguments: --nope"):
        parse_train_args(["--nope"])


def test_lr_is_scaled_by_global_batch_and_follows_warmup_then_cosine():
    from kjob_trainer.common.schedule import LrSchedule

    cfg = make_config(None, {"synthetic": True, "batch_size": 64, "warmup_epochs": 1.0, "min_lr": 0.0})
    sched = LrSchedule.from_config(cfg, world_size=8, steps_per_epoch=10, total_steps=100)
    assert sched.base_lr == pytest.approx(0.1 * 512 / 256)
    assert sched(0) == pytest.approx(0.2 * 0.01)
    assert sched(10) == pytest.approx(0.2)
    assert sched(55) == pytest.approx(0.1)
    assert sched(100) == pytest.approx(0.0)
    step = LrSchedule.from_config(make_config(None, {"synthetic": True, "lr_schedule": "step", "lr_milestones": [2, 4]}),
                                  world_size=8, steps_per_epoch=10, total_steps=100)
    assert [round(step(s) / step.base_lr, 4) for s in (19, 20, 40)] == [1.0, 0.1, 0.01]


def test_shards_cover_the_epoch_without_overlap_and_resume_skips_exact_batches():
    from kjob_trainer.torch.data import ShardBatches

    world, n, bs = 4, 103, 5
    shards = [ShardBatches(n, bs, r, world, seed=9, train=True) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
    ids = [[i - 2 * n for b in s for i in b] for s in shards]
    flat = [i for part in ids for i in part]
    assert len(flat) == len(set(flat)) == (n // (world * bs)) * world * bs
    resumed = ShardBatches(n, bs, 1, world, seed=9, train=True)
    resumed.set_epoch(2, start_batch=3)
    assert [i - 2 * n for b in resumed for i in b] == ids[1][3 * bs:]
    assert len(resumed) == len(shards[1]) - 3


def test_dist_env_from_openmpi_then_torchrun_then_single():
    e = dist_env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                  "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_NAMESPACE": "prterun-x@1", "RANK": "0", "WORLD_SIZE": "1"})
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size, e.launcher) == (3, 8, 1, 2, "mpi")
    t = dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (t.rank, t.world_size, t.launcher) == (1, 2, "torchrun")
    assert dist_env({}).world_size == 1


def test_hostfile_first_host_is_the_rendezvous(tmp_path):
    hf = tmp_path / "hostfile"
    hf.write_text("# mpi-operator\njob-worker-0.job.ns.svc slots=8\njob-worker-1.job.ns.svc slots=8\n")
    assert hostfile_first_host(str(hf)) == "job-worker-0.job.ns.svc"
    env = dist_env({"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16"})
    assert static_address(env, {"KJOB_HOSTFILE": str(hf)}) == ("job-worker-0.job.ns.svc", 29500)


def test_ranks_on_the_workers_meet_at_the_host_the_launcher_names(tmp_path):
    # mpi-operator mounts the hostfile in the launcher only: on a worker there is none, and
    # the launcher's wrapper passes rank 0's host with mpirun -x.
    env = dist_env({"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"})
    no_hostfile = {"KJOB_HOSTFILE": str(tmp_path / "none")}
    assert static_address(env, {**no_hostfile, "KJOB_RENDEZVOUS_HOST": "job-worker-0.job.ns.svc"}) == ("job-worker-0.job.ns.svc", 29500)
    # Ranks on several hosts never fall back to a file on a shared volume.
    with pytest.raises(DistributedError, match="ranks span several hosts but nothing names rank 0's host"):
        static_address(env, no_hostfile)
    # On one host they do: rank 0 publishes a free port in the output folder.
    one_host = dist_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert static_address(one_host, no_hostfile) is None


def test_dataset_layouts_and_their_errors(tmp_path):
    write_tiny_folder(tmp_path / "ds", classes=3, per_class=2)
    train, val = find_splits(str(tmp_path / "ds"), need_val=True)
    assert (len(train), len(val), train.classes) == (6, 6, ("n00000000", "n00000001", "n00000002"))
    # The MindSpore reference passes .../train itself; its sibling val/ is found.
    train2, val2 = find_splits(str(tmp_path / "ds" / "train"), need_val=True)
    assert train2.paths == train.paths and val2 is not None
    # train_list.txt form, paths relative to the dataset root.
    lst = tmp_path / "lst"
    lst.mkdir()
    (lst / "train_list.txt").write_text("".join(f"{p} {l}\n" for p, l in zip(train.paths, train.labels)))
    assert find_splits(str(lst), need_val=False)[0].labels == train.labels
    with pytest.raises(BadInput, match="does not exist"):
        find_splits(str(tmp_path / "missing"), need_val=True)
    (tmp_path / "ds" / "val" / "n00000009").mkdir()
    (tmp_path / "ds" / "val" / "n00000009" / "x.JPEG").write_bytes(b"")
    with pytest.raises(BadInput, match="class mismatch: train has 3 classes, val has 4"):
        find_splits(str(tmp_path / "ds"), need_val=True)
    (tmp_path / "ds" / "train" / "n00000005").mkdir()
    with pytest.raises(BadInput, match="empty class folder .*n00000005"):
        find_splits(str(tmp_path / "ds"), need_val=True)


def _save(ck: CheckpointDir, name: str, payload: bytes, **kw) -> None:
    ck.save(name, lambda p: p.write_bytes(payload), **kw)


def test_index_keeps_last_n_plus_best_and_checksums(tmp_path):
    ck = CheckpointDir(tmp_path / "checkpoints", "pytorch", "resnext50_32x4d", keep=2)
    for epoch, top1 in [(1, 50.0), (2, 70.0), (3, 60.0), (4, 65.0)]:
        _save(ck, f"epoch-{epoch:04d}.pt", bytes([epoch]) * 100, epoch=epoch, step=10 * epoch, metrics={"top1": top1})
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert index["format"] == "kjob-checkpoints/v1"
    assert (index["latest"], index["best"]) == ("epoch-0004.pt", "epoch-0002.pt")
    assert [e["file"] for e in index["checkpoints"]] == ["epoch-0002.pt", "epoch-0003.pt", "epoch-0004.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0002.pt", "epoch-0003.pt", "epoch-0004.pt", "index.json"]
    for e in index["checkpoints"]:
        assert e["sha256"] == sha256_file(tmp_path / "checkpoints" / e["file"]) and e["bytes"] == 100


def test_failure_while_writing_leaves_latest_on_the_previous_good_file(tmp_path):
    ck = CheckpointDir(tmp_path / "checkpoints", "pytorch", "m", keep=3)
    _save(ck, "epoch-0001.pt", b"good" * 10, epoch=1, step=1)

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        ck.save("epoch-0002.pt", broken, epoch=2, step=2)
    assert json.loads((ck.folder / "index.json").read_text())["latest"] == "epoch-0001.pt"
    assert sorted(p.name for p in ck.folder.iterdir()) == ["epoch-0001.pt", "index.json"]
    assert ck.resolve_resume("auto") == ck.folder / "epoch-0001.pt"


def test_resume_auto_skips_a_listed_file_that_does_not_match_its_checksum(tmp_path):
    ck = CheckpointDir(tmp_path / "checkpoints", "pytorch", "m", keep=3)
    _save(ck, "epoch-0001.pt", b"a" * 10, epoch=1, step=1)
    _save(ck, "epoch-0002.pt", b"b" * 10, epoch=2, step=2)
    (ck.folder / "epoch-0002.pt").write_bytes(b"c" * 10)  # damaged behind our back
    assert ck.resolve_resume("auto") == ck.folder / "epoch-0001.pt"
    assert ck.resolve_resume("never") is None
    with pytest.raises(BadInput, match="no such checkpoint file"):
        ck.resolve_resume(str(tmp_path / "nope.pt"))


def test_model_parameter_counts_match_the_references():
    from kjob_trainer.torch.models import PARAMETER_COUNTS_1000, build_model

    for name, count in PARAMETER_COUNTS_1000.items():
        assert sum(p.numel() for p in build_model(name, 1000).parameters()) == count


def test_framework_neutral_modules_do_not_import_torch():
    import subprocess
    import sys

    # Every module of common/ and of the launcher, imported for real (import-linter reads
    # the source; this proves what actually loads).
    code = ("import importlib, pkgutil, sys, kjob_trainer.common, kjob_trainer.launch; "
            "names = [m.name for p in (kjob_trainer.common, kjob_trainer.launch) "
            "for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.') if not m.name.endswith('__main__')]; "
            "assert len(names) >= 15, names; [importlib.import_module(n) for n in names]; "
            "print(sorted(m for m in ('torch', 'mindspore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_checkpoint_its_writer_left_read_only_is_saved_by_a_non_root_trainer(request):
    """MindSpore's save_checkpoint leaves its file mode 0400; the pods' trainer is uid 1000,
    which cannot reopen such a file for writing (root, as the tests run, can): write_atomic
    must not need to. When the tests are root, the write runs with nobody's effective ids."""
    import os
    import shutil
    import tempfile

    from kjob_trainer.common.checkpoints import write_atomic

    def write(path):
        path.write_bytes(b"weights")
        os.chmod(path, 0o400)

    # Not under tmp_path: pytest's folders are root's, mode 0700, closed to nobody.
    folder = Path(tempfile.mkdtemp(prefix="kjob-ro-ckpt-"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    root = os.geteuid() == 0
    if root:
        os.chown(folder, 65534, 65534)
        os.setegid(65534)
        os.seteuid(65534)
    try:
        write_atomic(folder / "epoch-0001.ckpt", write)
    finally:
        if root:
            os.seteuid(0)
            os.setegid(0)
    assert (folder / "epoch-0001.ckpt").read_bytes() == b"weights"
    assert [p.name for p in folder.iterdir()] == ["epoch-0001.ckpt"]
