"""A rank on an MPIJob worker pod takes the worker container's variables
(kjob_trainer.common.worker_env), read from a PID 1 laid out like /proc/1 in a pod."""

from __future__ import annotations

import pytest

from kjob.render.manifests import WORKER_COMMAND
from kjob_trainer.common.worker_env import WORKER_PID1, adopt_worker_env

WORKER_ARGV = ["python", "-m", "kjob_trainer.launch", "--hold", "--hold-limit", "110", "--", "/usr/sbin/sshd", "-De"]


def pid1(tmp_path, argv, env: dict[str, str] | None):
    """A /proc/1 stand-in: cmdline, and environ unless env is None (unreadable)."""
    proc = tmp_path / "1"
    proc.mkdir()
    (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    if env is not None:
        (proc / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    return str(proc)


def test_the_worker_command_kjob_renders_is_the_one_recognised():
    assert all(word.decode() in WORKER_COMMAND for word in WORKER_PID1)


def test_a_rank_adds_the_worker_variables_it_lacks(tmp_path):
    proc = pid1(tmp_path, WORKER_ARGV, {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "WANDB_API_KEY": "k=v=w", "PATH": "/worker/bin",
                                         "OMPI_MCA_plm_rsh_args": "-p 2222", "PMIX_X": "1", "UCX_NET_DEVICES": "mlx5_0:1"})
    rank = {"OMPI_COMM_WORLD_RANK": "1", "PATH": "/from/mpirun"}
    assert adopt_worker_env(rank, proc) == ["NCCL_IB_HCA", "UCX_NET_DEVICES", "WANDB_API_KEY"]
    # What mpirun passed wins; mpirun's own names are never taken from the pod.
    assert rank == {"OMPI_COMM_WORLD_RANK": "1", "PATH": "/from/mpirun", "NCCL_IB_HCA": "mlx5_0,mlx5_1",
                    "UCX_NET_DEVICES": "mlx5_0:1", "WANDB_API_KEY": "k=v=w"}


@pytest.mark.parametrize("argv, rank", [
    (WORKER_ARGV, {"PATH": "/bin"}),  # not an MPI rank (the launcher's own python, a local tool)
    (["/sbin/init"], {"OMPI_COMM_WORLD_RANK": "0"}),  # this machine's init: a local run
    (["torchrun", "--module", "kjob_trainer.train"], {"OMPI_COMM_WORLD_RANK": "0"}),
    (["python", "-m", "kjob_trainer.launch", "--", "mpirun"], {"OMPI_COMM_WORLD_RANK": "0"}),  # the launcher
])
def test_nothing_is_added_outside_a_worker_pod(tmp_path, argv, rank):
    proc = pid1(tmp_path, argv, {"SECRET": "s"})
    before = dict(rank)
    assert adopt_worker_env(rank, proc) == [] and rank == before


def test_a_worker_environment_that_cannot_be_read_is_one_line_without_values(tmp_path, capsys):
    rank = {"OMPI_COMM_WORLD_RANK": "3"}
    assert adopt_worker_env(rank, pid1(tmp_path, WORKER_ARGV, None)) == [] and rank == {"OMPI_COMM_WORLD_RANK": "3"}
    err = capsys.readouterr().err
    assert err.startswith("kjob: warning: cannot read the worker pod's environment (No such file or directory)")
    assert err.count("\n") == 1
    assert adopt_worker_env({"OMPI_COMM_WORLD_RANK": "3"}, str(tmp_path / "gone")) == []  # no PID 1 to look at


def test_the_trainer_takes_the_worker_env_before_anything_else(monkeypatch):
    import kjob_trainer.train as train

    calls = []

    def dist_env():
        calls.append("dist_env")
        raise KeyboardInterrupt  # main's first step after it: stop there (exit 130)

    monkeypatch.setattr(train, "adopt_worker_env", lambda: calls.append("adopt_worker_env"))
    monkeypatch.setattr(train, "dist_env", dist_env)
    assert train.main([]) == 130 and calls == ["adopt_worker_env", "dist_env"]
