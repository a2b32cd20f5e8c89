"""`python -m kjob_trainer.train ...`: parse flags, find this rank, hand over to a framework.

Exit codes: 0 done; 2 bad input (flags, config, dataset, checkpoint); 1 other failures
(a rank could not join, a peer died); 143 stopped by SIGTERM after saving a checkpoint.
Errors are one `Error: ...` line on stderr, from rank 0 (other ranks print only errors
that are their own, such as failing to join); KJOB_DEBUG=1 shows the traceback.
An entry point only: nothing imports this module.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Sequence

from kjob_trainer.common.cli_args import parse_train_args
from kjob_trainer.common.config import TrainConfig, make_config
from kjob_trainer.common.distributed import DistEnv, dist_env
from kjob_trainer.common.errors import BadInput, TrainerError, print_error
from kjob_trainer.common.worker_env import adopt_worker_env


def framework_runner(cfg: TrainConfig) -> Callable[[TrainConfig, DistEnv], int]:
    """The `run(cfg, dist)` of cfg.framework. Raises BadInput if that framework is missing."""
    if cfg.framework == "pytorch":
        try:
            from kjob_trainer.torch import train as torch_train
        except ImportError as e:
            raise BadInput(f"--framework pytorch: PyTorch is not installed here ({e.name or e})") from e
        return torch_train.run
    try:
        from kjob_trainer.mindspore import train as mindspore_train
    except ImportError as e:
        raise BadInput(f"--framework mindspore: MindSpore support is not available here ({e.name or e})") from e
    return mindspore_train.run


def prepare_output(cfg: TrainConfig, dist: DistEnv) -> None:
    """Create the output folder and prove that this user can write in it, before any
    training: a checkpoint volume that uid 1000 cannot write would otherwise fail only at
    the first save. Raises BadInput naming the folder, its owner and mode, and the fix."""
    try:
        os.makedirs(cfg.output_path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cfg.output_path, prefix=".kjob-write-test-"):
            pass
    except PermissionError as e:
        raise BadInput(unwritable(cfg.output_path)) from e
    except OSError as e:
        raise BadInput(f"--output-path {cfg.output_path}: cannot create it ({e.strerror or e})") from e


def unwritable(path: str) -> str:
    """One line on why this user cannot write `path`: the nearest folder that exists, with
    its owner and mode, and what the volume needs."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    st = where.stat()
    uid, gid = os.geteuid(), os.getegid()
    return (f"--output-path {path}: uid {uid} (gid {gid}) cannot write in {where}, owned by {st.st_uid}:{st.st_gid} "
            f"with mode {stat.S_IMODE(st.st_mode):04o}; make the volume's root writable for uid {uid} "
            f"(chown {uid}:{gid} or chmod 1777 it once; fsGroup does not change NFS volumes)")


def main(argv: Sequence[str] | None = None) -> int:
    dist = None
    adopt_worker_env()  # before any framework reads NCCL_*, UCX_*, CUDA_*: a rank on a worker pod gets its variables
    try:
        dist = dist_env()
        config_file, overrides = parse_train_args(argv)
        cfg = make_config(config_file, overrides)
        run = framework_runner(cfg)
        prepare_output(cfg, dist)
        return run(cfg, dist)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the one place errors become exit codes
        if os.environ.get("KJOB_DEBUG"):
            traceback.print_exc()
        print_error(e, dist)
        return e.exit_code if isinstance(e, TrainerError) else 1


if __name__ == "__main__":
    sys.exit(main())
