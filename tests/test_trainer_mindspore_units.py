"""Pure parts of the MindSpore trainer (no MindSpore import): the lr table its optimizer
gets from the shared schedule, per-rank sharding as it uses it, and where the ranks find
the dynamic-cluster scheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kjob_trainer.common.config import make_config
from kjob_trainer.common.distributed import DistEnv
from kjob_trainer.common.errors import BadInput, DistributedError
from kjob_trainer.mindspore.dist import BASE_SCHED_PORT, PORT_SPREAD, cluster_address
from kjob_trainer.mindspore.setup import lr_table
from kjob_trainer.common.schedule import LrSchedule
from kjob_trainer.common.sharding import batches_per_epoch, shard_indices


def lr_per_batch(cfg, batches: int, world: int) -> np.ndarray:
    """The table the MindSpore optimizer gets (one lr per micro-batch of the run)."""
    steps = batches // cfg.grad_accum
    return lr_table(LrSchedule.from_config(cfg, world, steps).table(), cfg.grad_accum)


def cfg(**kw):
    return make_config(None, {"framework": "mindspore", "synthetic": True, **kw})


def test_lr_scales_by_global_batch_warms_up_then_follows_cosine_to_min_lr():
    c = cfg(lr=0.1, batch_size=32, epochs=10, warmup_epochs=2, warmup_start_factor=0.01, min_lr=0.001)
    lr = lr_per_batch(c, batches=5, world=16)  # global batch 512: base lr 0.2
    assert len(lr) == 50
    assert lr[0] == pytest.approx(0.2 * 0.01, rel=1e-5)
    assert lr[5] == pytest.approx(0.2 * (0.01 + 0.99 * 5 / 10), rel=1e-5)
    assert lr[10] == pytest.approx(0.2, rel=1e-5)  # warmup over: cosine starts at the base lr
    assert lr[30] == pytest.approx(0.001 + 0.5 * 0.199 * (1 + math.cos(math.pi * 20 / 40)), rel=1e-5)
    assert np.all(np.diff(lr[10:]) <= 0) and lr[-1] > 0.001


def test_grad_accumulation_repeats_each_steps_lr_for_its_micro_batches():
    c = cfg(lr=0.1, batch_size=32, epochs=2, grad_accum=2)
    lr = lr_per_batch(c, batches=4, world=8)  # 2 steps per epoch, 4 in all
    steps = LrSchedule.from_config(c, 8, 2)
    assert len(lr) == 8 and list(lr[::2]) == pytest.approx([steps.lr_at(s) for s in range(4)], rel=1e-6)
    assert list(lr[1::2]) == list(lr[::2])


def test_step_schedule_decays_at_milestones():
    c = cfg(lr=0.1, batch_size=64, epochs=6, lr_schedule="step", lr_milestones=[2, 4], lr_gamma=0.1)
    lr = lr_per_batch(c, batches=3, world=4)  # global 256: base 0.1
    assert lr[[0, 5, 6, 11, 12, 17]] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_ranks_get_disjoint_equal_shards_that_change_each_epoch(world):
    shards = [shard_indices(103, 4, r, world, seed=7, epoch=0, train=True) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == batches_per_epoch(103, 4, world) * 4
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(103))
    assert shard_indices(103, 4, 0, world, seed=7, epoch=1, train=True) != shards[0]
    assert shard_indices(103, 4, 0, world, seed=7, epoch=0, train=True) == shards[0]  # same on every restart


def test_eval_shards_cover_every_sample_once():
    shards = [shard_indices(10, 4, r, 3, seed=0, epoch=0, train=False) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_fewer_images_than_a_global_batch_is_bad_input():
    with pytest.raises(BadInput, match=r"dataset: 7 training images are fewer than one global batch \(2 ranks x --batch-size 4\)"):
        batches_per_epoch(7, 4, 2)


def _dist(rank=0, world=2, local=2, job="prterun-vm-1@1"):
    return DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=local, host="vm", launcher="mpi",
                   job_id=job)


def test_scheduler_port_is_the_same_for_every_rank_of_a_job_and_differs_between_jobs():
    a = [cluster_address(_dist(rank=r), {}) for r in range(2)]
    assert a[0] == a[1] and a[0][0] == "127.0.0.1"
    assert BASE_SCHED_PORT <= a[0][1] < BASE_SCHED_PORT + PORT_SPREAD
    assert cluster_address(_dist(job="prterun-vm-2@1"), {})[1] != a[0][1]


def test_scheduler_on_several_hosts_is_the_hostfiles_first_host(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# mpi-operator\nlocalhost slots=8\nworker-1.job slots=8\n")
    env = {"KJOB_HOSTFILE": str(hostfile), "KJOB_MS_SCHED_PORT": "9000"}
    assert cluster_address(_dist(rank=5, world=16, local=8), env) == ("127.0.0.1", 9000)
    with pytest.raises(DistributedError, match="ranks span several hosts but nothing names rank 0's host"):
        cluster_address(_dist(rank=5, world=16, local=8), {"KJOB_HOSTFILE": str(tmp_path / "none")})
    # A worker has no hostfile: the launcher's wrapper names rank 0's host instead.
    given = {"KJOB_HOSTFILE": str(tmp_path / "none"), "KJOB_RENDEZVOUS_HOST": "localhost", "KJOB_MS_SCHED_PORT": "9000"}
    assert cluster_address(_dist(rank=5, world=16, local=8), given) == ("127.0.0.1", 9000)
    with pytest.raises(BadInput, match="KJOB_MS_SCHED_PORT='x' is not a port number"):
        cluster_address(_dist(), {"KJOB_MS_SCHED_PORT": "x"})


def test_init_failing_as_the_join_timeout_fires_is_one_error_not_two(monkeypatch):
    """MindSpore's init() can give up by itself just as join()'s watchdog fires; both used to
    print an Error line (seen in CI under load). The one that speaks first wins: here init()
    fails first, so the watchdog firing afterwards neither prints nor exits."""
    import os
    import sys
    import types

    from kjob_trainer.mindspore.dist import ClusterMember

    def init():
        raise RuntimeError("Failed to initialize distributed job cluster because some processes ...")

    communication = types.ModuleType("mindspore.communication")
    communication.init = init
    monkeypatch.setitem(sys.modules, "mindspore", types.ModuleType("mindspore"))
    monkeypatch.setitem(sys.modules, "mindspore.communication", communication)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # join() sets the MS_* variables
    member = ClusterMember(_dist(rank=1), timeout=60)
    with pytest.raises(DistributedError, match="could not join the MindSpore cluster at 127.0.0.1:"):
        member.join()
    member._give_up()  # the watchdog, late: returns quietly (an os._exit would end this test run)
