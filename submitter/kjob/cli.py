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
from kjob.errors import InvalidInput, KjobError

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


# --- spec -> manifests (issue 2) ----------------------------------------------------------


def spec_paths_argument(func):
    """SPEC...: one or more spec files."""
    return click.argument("specs", nargs=-1, required=True, metavar="SPEC...")(func)


def format_option(func):
    return click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
                        help="Output format: multi-document YAML, or JSON (a v1 List on stdout).")(func)


def _render_all(paths, namespace: str | None = None) -> list[dict]:
    """Load every spec (all problems reported together), then render them all."""
    from kjob.render import render_objects
    from kjob.spec import load_specs, with_namespace

    return [obj for spec in load_specs(paths) for obj in render_objects(with_namespace(spec, namespace))]


@cli.command()
@spec_paths_argument
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Write one file per object plus kustomization.yaml into this directory (replaced as a whole) instead of printing.")
@format_option
@click.option("-n", "--namespace", help="Set metadata.namespace (overrides the specs').")
def render(specs, output_dir, fmt, namespace) -> None:
    """Render job specs to MPIJob/PyTorchJob manifests.

    Prints multi-document YAML (or a JSON List), or with -o writes a kustomize-ready
    directory for GitOps (Argo CD, Flux). Nothing is written if any spec is invalid.
    """
    from kjob.gitops import check_unique, dump_objects, write_gitops_dir

    objects = _render_all(specs, namespace)
    if output_dir:
        for path in write_gitops_dir(objects, output_dir, fmt):
            click.echo(f"wrote {path}", err=True)
    else:
        check_unique(objects)
        click.echo(dump_objects(objects, fmt), nl=False)


@cli.command()
@spec_paths_argument
def validate(specs) -> None:
    """Check job specs without contacting a cluster.

    Reports every problem as FILE:LINE:COL: field.path: message (exit code 2);
    prints one line per valid spec.
    """
    from kjob.render import render_objects
    from kjob.spec import load_specs

    for path, spec in zip(specs, load_specs(specs)):
        render_objects(spec)  # a spec that validates must also render
        gpus = f"{spec.gpus_per_worker} GPU{'s' if spec.gpus_per_worker != 1 else ''}" if spec.gpus_per_worker else "CPU only"
        workers = f"{spec.workers} worker{'s' if spec.workers != 1 else ''}"
        click.echo(f"{path}: ok ({spec.kind} {spec.name}, {spec.framework}, {workers} x {gpus})")


@cli.command()
@click.option("-o", "--output", type=click.File("w"), default="-", help="Write the schema to this file (default: stdout).")
def schema(output) -> None:
    """Print the job spec's JSON Schema.

    \b
    For editor completion and checks, put this first line in a spec file:
      # yaml-language-server: $schema=<path or URL of the schema>
    """
    import json

    from kjob.spec import json_schema

    output.write(json.dumps(json_schema(), indent=2) + "\n")


@cli.command()
@click.argument("spec_file", metavar="SPEC")
@click.option("--dry-run", is_flag=True, help="Print the objects that would be sent (exactly those) and stop.")
@format_option
@click.option("-f", "--follow", is_flag=True, help="Stream the job's log until it ends; exit 1 if it failed. Ctrl-C stops following, not the job.")
@click.option("--replace", is_flag=True, help="Replace a job of the same name (a different spec, or a finished local run).")
@local_option
@kube_options
def submit(spec_file, dry_run, fmt, follow, replace, local, kubeconfig, kube_context, namespace) -> None:
    """Submit a job: validate the spec, render it and create the MPIJob/PyTorchJob
    (or with --local, run it under mpirun on this machine, in ./kjob-runs/NAME)."""
    from kjob.render import render_objects
    from kjob.spec import load_spec, with_namespace

    spec = with_namespace(load_spec(spec_file), namespace)
    if dry_run:
        from kjob.gitops import dump_objects

        click.echo(dump_objects(render_objects(spec), fmt), nl=False)
    elif local:
        _submit_local(spec, follow=follow, replace=replace)
    else:
        _submit_cluster(spec, render_objects(spec), kubeconfig=kubeconfig, context=kube_context)


def _submit_local(spec, *, follow: bool, replace: bool) -> None:
    """The --local branch of submit: kjob.local (detached, or followed to the end)."""
    from kjob.local import submit_local

    code = submit_local(spec, follow, replace=replace, write=click.echo)
    if code:
        raise click.exceptions.Exit(code)


def _submit_cluster(spec, objects: list[dict], *, kubeconfig: str | None, context: str | None) -> None:
    """The cluster branch of submit (H4: kjob.cluster): sends exactly `objects`."""
    raise InvalidInput("kjob submit to a cluster is not available in this build yet; use --dry-run or `kjob render`")


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
