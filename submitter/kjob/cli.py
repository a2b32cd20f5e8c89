"""The `kjob` command line: thin Click commands over the library.

Each command parses flags, calls one library function and prints. Every KjobError
becomes `Error: ...` on stderr and its exit code (errors.py); nothing else reaches the
user as a traceback unless KJOB_DEBUG=1. Heavy imports (kubernetes, torch) happen inside
the commands that need them, never at import time: `kjob --help` and `kjob render`
stay fast.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from kjob import __version__
from kjob.errors import KjobError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "KJOB"}


def kube_options(func):
    """--kubeconfig/--context/--namespace, as kubectl users expect them."""

    @click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).")
    @click.option("--context", "kube_context", help="Kubeconfig context to use (default: the current one).")
    @click.option("-n", "--namespace", help="Namespace (default: the spec's, then the context's, then 'default').")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def local_option(func):
    """--local: act on runs of this machine (./kjob-runs) instead of a cluster."""
    return click.option("--local", is_flag=True, help="Use the local backend (mpirun on this machine, runs in ./kjob-runs).")(func)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="kjob")
def cli() -> None:
    """Submit distributed ResNeXt/ResNeSt training to Kubeflow (MPIJob, PyTorchJob),
    or run the same job locally under mpirun.

    \b
    Exit codes: 0 ok, 1 job failed, 2 bad input, 3 cluster unreachable,
    4 forbidden (RBAC), 5 not found, 6 conflict, 7 checkpoint verification failed.
    """


def main() -> None:
    """Entry point: run the CLI and turn kjob's errors into messages and exit codes."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KjobError as e:
        if os.environ.get("KJOB_DEBUG"):
            raise
        for line in e.lines():
            click.echo(f"Error: {line}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # `kjob logs ... | head` closes the pipe: not an error.
        sys.stderr.close()
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("KJOB_DEBUG"):
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (KJOB_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
