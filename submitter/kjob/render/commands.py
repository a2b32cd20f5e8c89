"""The command lines a job runs: the trainer's (`python -m kjob_trainer.train` with every
training setting of the spec written out) and mpirun's flags, in a pod and on this
machine. The manifests and the local plan both take them from here, so a local run
trains exactly as the cluster job would.
"""

from __future__ import annotations

import os

from kjob.names import TRAINER_MODULE
from kjob.spec.model import JobSpec
from kjob.spec.sizing import rank_threads_env

# mpi-operator writes the hostfile here; passing it explicitly works with OpenMPI 4 and 5.
HOSTFILE = "/etc/mpi/hostfile"
# mpirun starts ranks over ssh, which does not pass the pod's environment on: these are
# forwarded explicitly with -x (the image defines PATH, LD_LIBRARY_PATH and PYTHONPATH).
FORWARDED_ENV = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "NCCL_DEBUG", "PYTHONUNBUFFERED")



def _num(value: float | int) -> str:
    """Shortest exact text of a number: 5.0 -> '5', 0.0001 -> '0.0001'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def trainer_command(spec: JobSpec, *, data_path: str | None, output_path: str, synthetic: bool | None = None,
                    device: str | None = None) -> list[str]:
    """`python -m kjob_trainer.train ...` with the training settings of the spec: every one
    of them written out, or with train.config only those the spec writes (the config file
    gives the rest). `synthetic` defaults to spec.train.synthetic; `device` to gpu for a
    GPU job, cpu otherwise. Raises ValueError when neither data nor synthetic is given."""
    t = spec.train
    synthetic = t.synthetic if synthetic is None else synthetic
    if data_path is None and not synthetic:
        raise ValueError("trainer_command: data_path is required unless synthetic")
    cmd = ["python", "-m", TRAINER_MODULE]
    if t.config:
        cmd += ["--config", t.config]
    cmd += ["--framework", spec.framework, "--model", spec.model]
    if data_path is not None:
        cmd += ["--data-path", data_path]
    cmd += ["--output-path", output_path]
    # (spec field or None, flags): None is not a training setting and is always written.
    settings = [
        ("epochs", ["--epochs", _num(t.epochs)]),
        ("batch_size", ["--batch-size", _num(t.batch_size)]),
        ("lr", ["--lr", _num(t.lr)]),
        ("momentum", ["--momentum", _num(t.momentum)]),
        ("weight_decay", ["--weight-decay", _num(t.weight_decay)]),
        ("warmup_epochs", ["--warmup-epochs", _num(t.warmup_epochs)]),
        ("label_smoothing", ["--label-smoothing", _num(t.label_smoothing)]),
        ("lr_schedule", ["--lr-schedule", t.lr_schedule]),
        ("amp", ["--amp", t.amp]),
        ("channels_last", ["--channels-last" if t.channels_last else "--no-channels-last"]),
        ("grad_accum", ["--grad-accum", _num(t.grad_accum)]),
        ("checkpoint_interval", ["--ckpt-interval", _num(t.checkpoint_interval)]),
        ("keep_checkpoints", ["--keep-checkpoints", _num(t.keep_checkpoints)]),
        ("resume", ["--resume", t.resume]),
        ("image_size", ["--image-size", _num(t.image_size)]),
        # Loader processes size the pod (its CPUs, /dev/shm), not the recipe: always the spec's.
        (None, ["--workers", _num(spec.loader_workers)]),
        ("seed", ["--seed", _num(t.seed)]),
        (None, ["--device", device or ("gpu" if spec.gpus_per_worker else "cpu")]),
        ("eval", ["--eval" if t.eval else "--no-eval"]),
        ("num_classes", ["--num-classes", _num(t.num_classes)]),
        ("log_interval", ["--log-interval", _num(t.log_interval)]),
    ]
    for field, flags in settings:
        if field is None or t.passes(field):
            cmd += flags
    if t.compile:
        cmd.append("--compile")
    elif t.config and "compile" in t.model_fields_set:  # `compile: false` over a config's true
        cmd.append("--no-compile")
    if t.decoder is not None:  # unset: the trainer's default, and the command of older specs
        cmd += ["--decoder", t.decoder]
    if synthetic:
        cmd += ["--synthetic", "--synthetic-samples", _num(t.synthetic_samples)]
    if t.max_steps is not None:
        cmd += ["--max-steps", _num(t.max_steps)]
    if t.checkpoint_steps is not None:
        cmd += ["--ckpt-steps", _num(t.checkpoint_steps)]
    if t.dist_timeout is not None:
        cmd += ["--dist-timeout", _num(t.dist_timeout)]
    return cmd


def rank_env(spec: JobSpec) -> dict[str, str]:
    """Variables mpirun's ranks get besides the spec's env: OMP_NUM_THREADS=1 where a pod
    runs several ranks (torchrun sets it for its own), unless the spec's env sets it."""
    return {k: v for k, v in rank_threads_env(spec.procs_per_worker).items() if k not in spec.env}


def mpirun_flags(spec: JobSpec, *, local: bool) -> list[str]:
    """mpirun options (without -np and the program). In pods: the operator's hostfile,
    no binding (the pod's cgroup limits the CPUs), and -x for the variables ssh does not
    carry, then the spec's mpi.mca (--mca NAME VALUE) and mpi.args. Locally:
    oversubscription (more ranks than cores) and, as root, --allow-run-as-root."""
    flags = ["--bind-to", "none", "--map-by", "slot"]
    if local:
        flags.append("--oversubscribe")
        if os.geteuid() == 0:
            flags.append("--allow-run-as-root")
        return flags
    mpi = spec.mpi
    if mpi is not None:  # the spec's --bind-to / --map-by replace kjob's
        for option in ("--bind-to", "--map-by"):
            if any(a.lstrip("-").split("=", 1)[0] == option[2:] for a in mpi.args):
                at = flags.index(option)
                del flags[at:at + 2]
    flags = ["--hostfile", HOSTFILE] + flags
    # A Secret's variable is not forwarded: the launcher does not have it, and the ranks
    # take it from their worker pod (kjob_trainer.common.worker_env).
    for name in dict.fromkeys(FORWARDED_ENV + tuple(rank_env(spec)) + tuple(spec.plain_env)):
        flags += ["-x", name]
    if mpi is not None:
        for name, value in mpi.mca.items():
            flags += ["--mca", name, value]
        flags += mpi.args
    return flags
