"""The trainer's errors. Each carries the process exit code (2 = bad input).

`train.main` turns any of these into one `Error: ...` line on stderr (rank 0 only, or the
rank that found it) and exits with `exit_code`; a traceback is shown only with KJOB_DEBUG=1.
Framework-neutral: the MindSpore trainer raises the same classes.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class: a failure with a message meant for people, not a bug."""

    exit_code = 1


class BadInput(TrainerError):
    """Flags, config file, dataset or checkpoint the user gave are not usable (exit 2)."""

    exit_code = 2


class DistributedError(TrainerError):
    """A rank could not join the job, or a peer went away (exit 1)."""

    exit_code = 1


class Terminated(TrainerError):
    """SIGTERM was received and handled (checkpoint saved where possible); exit 143 = 128+15."""

    exit_code = 143


def print_error(error: BaseException, dist) -> None:
    """Print the one `Error:` (or `Stopped:`) line of a failed run or evaluation.

    Rank 0 prints every error; another rank prints only its own, such as failing to join
    (`dist` is the DistEnv, or None before it is known)."""
    import sys

    own = isinstance(error, DistributedError) or not isinstance(error, TrainerError)
    if dist is not None and not dist.is_main and not own:
        return
    if isinstance(error, TrainerError):
        text = str(error)
    else:
        first = (str(error).strip().splitlines() or [""])[0]
        text = f"{type(error).__name__}: {first}"
        if dist is not None and dist.distributed:
            text = f"{dist.where()}: {text}"
    prefix = "Stopped" if isinstance(error, Terminated) else "Error"
    print(f"{prefix}: {text}", file=sys.stderr, flush=True)
