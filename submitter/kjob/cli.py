"""The `kjob` command line: thin Click commands over the library.

Each command parses flags, calls one library function and prints. Every KjobError
becomes `Error: ...` on stderr and its exit code (errors.py); nothing else reaches the
user as a traceback unless KJOB_DEBUG=1. The library is imported inside the commands
that use it, never at import time: `kjob --help` loads Click alone, and `kjob render`
never loads the Kubernetes client.
"""

from __future__ import annotations

import functools
import sys

import click

from kjob import __version__, settings
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
    settings.current()  # a bad KJOB_* value is bad input (exit 2) before anything runs


# --- spec -> manifests ---------------------------------------------------------------------


def spec_paths_argument(func):
    """SPEC...: one or more spec files."""
    return click.argument("specs", nargs=-1, required=True, metavar="SPEC...")(func)


def format_option(func):
    # Named `format` (not fmt) so that the environment variable is KJOB_<CMD>_FORMAT.
    return click.option("--format", "format", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
                        help="Output format: multi-document YAML, or JSON (a v1 List on stdout).")(func)


def _render_all(paths, namespace: str | None = None) -> list[dict]:
    """Load every spec (all problems reported together), then render them all: kjob's
    ClusterTrainingRuntimes that their TrainJobs use first (each once), then the jobs."""
    from kjob.render.manifests import render_objects, runtime_objects
    from kjob.spec.load import load_specs, with_namespace

    specs = [with_namespace(spec, namespace) for spec in load_specs(paths)]
    return runtime_objects(specs) + [obj for spec in specs for obj in render_objects(spec)]


@cli.command()
@spec_paths_argument
@click.option("-o", "--output-dir", type=click.Path(), help="Write one file per object plus kustomization.yaml into this directory (replaced as a whole) instead of printing.")
@format_option
@click.option("-n", "--namespace", help="Set metadata.namespace (overrides the specs').")
def render(specs, output_dir, format, namespace) -> None:  # noqa: A002 - the option's name
    """Render job specs to MPIJob/PyTorchJob/TrainJob manifests.

    Prints multi-document YAML (or a JSON List), or with -o writes a kustomize-ready
    directory for GitOps (Argo CD, Flux). Nothing is written if any spec is invalid.
    A SPEC of - is read from standard input.
    """
    from kjob.render.text import check_unique, dump_objects, write_gitops_dir

    objects = _render_all(specs, namespace)
    if output_dir:
        for path in write_gitops_dir(objects, output_dir, format):
            click.echo(f"wrote {path}", err=True)
    else:
        check_unique(objects)
        click.echo(dump_objects(objects, format), nl=False)


@cli.command()
@spec_paths_argument
def validate(specs) -> None:
    """Check job specs without contacting a cluster.

    Reports every problem as FILE:LINE:COL: field.path: message (exit code 2);
    prints one line per valid spec, and on stderr a warning for what is valid but likely
    to fail on a cluster (an NFS server given by a cluster DNS name). A SPEC of - is read
    from standard input.
    """
    from kjob.render.manifests import render_objects
    from kjob.spec.checks import warnings
    from kjob.spec.load import load_specs

    for path, spec in zip(specs, load_specs(specs)):
        render_objects(spec)  # a spec that validates must also render
        for warning in warnings(spec):
            click.echo(f"{path}: warning: {warning}", err=True)
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

    from kjob.spec.model import json_schema

    output.write(json.dumps(json_schema(), indent=2) + "\n")


@cli.command()
@click.argument("spec_file", metavar="SPEC")
@click.option("--dry-run", is_flag=True, help="Print what would be done and stop: the objects that would be sent (exactly those), or with --local the command line and environment that would run.")
@format_option
@click.option("-f", "--follow", is_flag=True, help="Stream the job's log until it ends; exit 1 if it failed. Ctrl-C stops following, not the job.")
@click.option("--replace", is_flag=True, help="Replace a job of the same name (a different spec, or a finished local run).")
@click.option("--wait", is_flag=True, help="Return when the job Succeeded (exit 0) or Failed (exit 1).")
@local_option
@kube_options
def submit(spec_file, dry_run, format, follow, replace, wait, local, kubeconfig, kube_context, namespace) -> None:
    """Submit a job: validate the spec, render it and create the MPIJob/PyTorchJob
    (or with --local, run it under mpirun on this machine, in ./kjob-runs/NAME)."""
    from kjob.plan import cluster_plan, local_plan
    from kjob.spec.load import load_spec, with_namespace

    spec = with_namespace(load_spec(spec_file), namespace)
    plan = local_plan(spec) if local else cluster_plan(spec, format)
    if dry_run:
        click.echo(plan.text(), nl=False)
        return
    code = get_backend(local, kubeconfig, kube_context, namespace).submit(plan, replace=replace, follow=follow, wait=wait, write=click.echo)
    if code:
        raise click.exceptions.Exit(code)


# --- running jobs: status, list, delete, logs, fetch-ckpt ---------------------------------------
def get_backend(local: bool, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None):
    """The local backend or the cluster one, imported here so that commands which do not
    need the Kubernetes client never load it."""
    if local:
        from kjob.local.backend import LocalBackend

        return LocalBackend()
    from kjob.cluster.backend import ClusterBackend

    return ClusterBackend(kubeconfig, context, namespace)


def _say_final(name: str, state: str | None) -> None:
    if state is None:
        return
    click.echo(f"job {name} {state}", err=True)
    if state == "Failed":
        raise click.exceptions.Exit(1)


OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True, help="Output format.")


@cli.command()
@click.argument("name")
@OUTPUT
@local_option
@kube_options
def status(name, output, local, kubeconfig, kube_context, namespace) -> None:
    """Show one job's state, its pods, and why a pod is pending or failing."""
    from kjob.report import dump, format_status

    st = get_backend(local, kubeconfig, kube_context, namespace).status(name)
    click.echo(format_status(st) if output == "text" else dump(st, output))


@cli.command(name="list")
@click.option("-A", "--all-namespaces", is_flag=True, help="Jobs of every namespace.")
@OUTPUT
@local_option
@kube_options
def list_(all_namespaces, output, local, kubeconfig, kube_context, namespace) -> None:
    """List the jobs made by kjob (label app.kubernetes.io/managed-by=kjob)."""
    from kjob.report import dump, format_list

    jobs = get_backend(local, kubeconfig, kube_context, namespace).list_jobs(all_namespaces)
    click.echo(format_list(jobs, all_namespaces) if output == "text" else dump(jobs, output))


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--wait", is_flag=True, help="Return when the job and its pods are gone.")
@click.option("--grace", metavar="DURATION", help="How long a running trainer gets to write its checkpoint before the job is deleted anyway (90s, 5m; default 120s, 20s with --local).")
@click.option("--now", is_flag=True, help="Delete at once, without asking the trainer for a checkpoint first.")
@local_option
@kube_options
def delete(names, wait, grace, now, local, kubeconfig, kube_context, namespace) -> None:
    """Delete jobs; says what happens to their pods (cleanPodPolicy, garbage collection).

    A running MPIJob, or a TrainJob on kjob's Open MPI runtime, is first asked for a
    checkpoint: SIGUSR1 to mpirun in the launcher (kubectl exec ... kill -USR1 1), which
    the trainer answers by saving and exiting; the job is deleted when the launcher has
    stopped or after --grace. A TrainJob on kjob's torch runtime gets SIGTERM to
    torchrun in node-0 the same way. A PyTorchJob's trainer checkpoints on the SIGTERM
    its pods get.
    """
    grace_s = _duration(grace, "--grace")
    backend = get_backend(local, kubeconfig, kube_context, namespace)
    failed: list[KjobError] = []
    for name in names:
        try:
            click.echo(backend.delete(name, wait=wait, grace=grace_s, now=now))
        except KjobError as e:
            if len(names) == 1:
                raise
            failed.append(e)
            click.echo(f"Error: {e.message}", err=True)
    if failed:
        raise click.exceptions.Exit(max(e.exit_code for e in failed))


def _duration(text: str | None, option: str) -> int | None:
    """'90', '90s', '5m', '2h' -> seconds (the value of `option`)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
    except (ValueError, OverflowError):  # OverflowError: 'inf'
        seconds = -1
    if seconds < 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 5m, 2h", param_hint=option)
    return seconds


@cli.command()
@click.argument("name")
@click.option("--replica", help="Which pod: launcher, master-0, worker-3, node-1 (default: the launcher of an MPIJob or an Open MPI TrainJob, master-0 of a PyTorchJob, node-0 of a torch TrainJob).")
@click.option("--all", "all_replicas", is_flag=True, help="Every pod, each line prefixed with its replica.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming (across reconnects and restarts) until the job ends.")
@click.option("--since", help="Only lines newer than this (30s, 5m, 2h).")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with the kubelet's timestamp.")
@click.option("--previous", is_flag=True, help="The log of the previous (crashed) container.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="Also write every pod's log to DIR/POD.log.")
@local_option
@kube_options
def logs(name, replica, all_replicas, follow, since, tail, timestamps, previous, save_dir, local, kubeconfig, kube_context, namespace) -> None:
    """Show or follow a job's logs; with -f, waits for the pod (saying why it is pending)
    and ends when the job ends, printing its final state (exit 1 if it failed)."""
    from pathlib import Path

    from kjob.backend import LogOptions

    if previous and follow:
        raise click.UsageError("--previous and --follow cannot be combined")
    if replica and all_replicas:
        raise click.UsageError("--replica and --all cannot be combined")
    options = LogOptions(replica=replica, all_replicas=all_replicas, follow=follow, since_seconds=_duration(since, "--since"), tail=tail,
                         timestamps=timestamps, previous=previous, save_dir=Path(save_dir) if save_dir else None, color=sys.stdout.isatty())
    final = get_backend(local, kubeconfig, kube_context, namespace).logs(name, options, click.echo)
    _say_final(name, final)


@cli.command(name="fetch-ckpt")
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), default="checkpoints", show_default=True, help="Folder to put the checkpoints in.")
@click.option("--latest", "which", flag_value="latest", default=True, help="The newest checkpoint (default).")
@click.option("--all", "which", flag_value="all", help="Every checkpoint in the index.")
@click.option("--best", "which", flag_value="best", help="The checkpoint with the best metric.")
@click.option("--epoch", type=click.IntRange(min=0), help="The checkpoint of this epoch.")
@click.option("--list", "list_only", is_flag=True, help="Show the checkpoints (epoch, size, metrics, time) without downloading.")
@click.option("--overwrite", is_flag=True, help="Replace differing files already in --dest.")
@local_option
@kube_options
def fetch_ckpt(name, dest, which, epoch, list_only, overwrite, local, kubeconfig, kube_context, namespace) -> None:
    """Fetch checkpoints of a job, verified against the trainer's sha256 index (exit 7
    on a mismatch); an interrupted fetch resumes, skipping verified files."""
    from pathlib import Path

    from kjob.backend import FetchOptions

    # --list shows every checkpoint the index holds, whatever the selection flags say.
    which = "all" if list_only else "epoch" if epoch is not None else which
    options = FetchOptions(dest=Path(dest), which=which, epoch=epoch, list_only=list_only,
                           overwrite=overwrite, progress=sys.stderr.isatty())
    entries = get_backend(local, kubeconfig, kube_context, namespace).fetch_checkpoints(name, options)
    for e in entries:
        metrics = " ".join(f"{k}={v}" for k, v in (e.get("metrics") or {}).items())
        if list_only:
            click.echo(f"epoch {e.get('epoch')}  {e['file']}  {e.get('bytes', 0)} bytes  {metrics}  {e.get('time', '')}".rstrip())
        else:
            click.echo(f"{Path(dest) / e['file']}  (epoch {e.get('epoch')}, sha256 verified)")


def main() -> None:
    """Entry point: run the CLI and turn kjob's errors into messages and exit codes."""
    try:
        # With standalone_mode=False click *returns* the code of a raised Exit(n).
        code = cli.main(standalone_mode=False, prog_name="kjob")
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KjobError as e:
        if settings.debug():
            raise
        for line in e.lines():
            click.echo(f"Error: {line}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # `kjob logs ... | head` closes the pipe: not an error.
        sys.stderr.close()
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks
        if settings.debug():
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (KJOB_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
