"""The cluster backend: what `kjob submit`, `status`, `list`, `delete`, `logs` and
`fetch-ckpt` do for a job on a Kubernetes cluster, over the modules of this package."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

from kjob.backend import FINAL_STATES, FetchOptions, JobStatus, LogOptions
from kjob.cluster.api import connect
from kjob.cluster.gitops import gitops_owner, recreated_note
from kjob.cluster.kinds import kind_of
from kjob.cluster.jobs import Submitted, delete_job, find_job, get_job, job_events, job_pods, list_jobs, poll_seconds, submit
from kjob.cluster.logs import show_logs
from kjob.cluster.queueing import held_states, queueing, with_queueing
from kjob.cluster.status import job_state, job_status
from kjob.cluster.stopping import checkpoint_before_delete
from kjob.errors import Forbidden, InvalidInput, NotFound
from kjob.names import TERMINATION_GRACE_S

if TYPE_CHECKING:  # for the annotation only: kjob.plan loads the spec models (pydantic), which status/list/logs never need
    from kjob.plan import ClusterPlan


class ClusterBackend:
    """backend.Backend for a Kubernetes cluster. Raises only KjobError subclasses.
    `notify` receives progress lines (waiting reasons, states); default stderr."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None, notify: Callable[[str], None] | None = None) -> None:
        self.kube = connect(kubeconfig, context, namespace)
        self.namespace_flag = namespace
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def submit(self, plan: ClusterPlan, *, replace: bool = False, follow: bool = False, wait: bool = False,
               write: Callable[[str], None] = print) -> int:
        """Create the plan's objects (exactly those), say so through `write`; with `follow`
        stream the job's log until it ends, with `wait` poll until it ends. Returns the
        exit code: 1 when a followed or waited-for job Failed, else 0. Raises what
        create_job raises."""
        done = self.create_job(plan.objects, replace=replace)
        write(done.message)
        for warning in done.warnings:
            self.notify(f"warning: {warning}")
        final = None
        if follow:
            final = self.logs(done.name, LogOptions(follow=True, color=sys.stdout.isatty()), write)
        elif wait:
            final = self.wait(done.name, done.namespace).state
        if final is None:
            return 0
        self.notify(f"job {done.name} {final}")
        return 1 if final == "Failed" else 0

    def create_job(self, objects: list[dict], *, replace: bool = False) -> Submitted:
        """Create the objects of one job, all or none, in the namespace of -n, the spec's
        or the context's. Raises InvalidInput (-n disagrees with the spec), Conflict and
        what jobs.submit raises."""
        job = find_job(objects)
        spec_ns = job["metadata"].get("namespace")
        if self.namespace_flag and spec_ns and spec_ns != self.namespace_flag:
            raise InvalidInput(f'the spec says namespace "{spec_ns}" but --namespace is "{self.namespace_flag}"')
        return submit(self.kube, objects, self.namespace_flag or spec_ns or self.kube.namespace, replace=replace)

    def job(self, name: str, namespace: str | None = None) -> dict:
        return get_job(self.kube, name, namespace or self.namespace)

    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        job = self.job(name, namespace)
        return with_queueing(self._status(job), queueing(self.kube, job))

    def _status(self, job: dict) -> JobStatus:
        pods = job_pods(self.kube, job)
        try:
            events = job_events(self.kube, job, pods)
        except Forbidden as e:
            # Many roles may not read Events: the pods' own status still explains most.
            st = job_status(job, pods, [])
            st.warnings.append(f"{e.message.split(' (context')[0]}: reasons only Events give (the scheduler's, the operator's) are not shown")
            return st
        return job_status(job, pods, events)

    def list_jobs(self, all_namespaces: bool = False) -> list[JobStatus]:
        namespace = None if all_namespaces else self.namespace
        jobs = list_jobs(self.kube, namespace)
        return held_states(self.kube, jobs, [job_status(j, None, []) for j in jobs], namespace)

    def delete(self, name: str, wait: bool = False, grace: float | None = None, now: bool = False) -> str:
        """Delete the job; a running trainer is first asked for a checkpoint where the
        job's kind says how (kjob.cluster.stopping: an MPIJob's launcher, a TrainJob's
        launcher or node-0; up to `grace` seconds, not with `now`). Returns delete's line."""
        job = self.job(name)
        state, _ = job_state(job)
        stopping = None
        if not now:
            stopping = checkpoint_before_delete(self.kube, job, TERMINATION_GRACE_S if grace is None else grace, self.notify)
        n = delete_job(self.kube, job, wait=wait)
        md = job["metadata"]
        if n:
            pods = f"its {n} pod(s) are deleted with it (they are owned by the job)" + ("; all gone" if wait else "")
        elif state in FINAL_STATES:
            pods = kind_of(job).pods_gone_note(job, state)
        else:
            pods = "it had no pods yet"
        owner = gitops_owner(job)
        back = f"; {recreated_note(owner)}" if owner else ""
        return f"deleted {job['kind']} {md['namespace']}/{md['name']}: " + (f"{stopping}; " if stopping else "") + pods + back

    def wait(self, name: str, namespace: str | None = None) -> JobStatus:
        """Poll until the job Succeeded or Failed; reports state changes through notify."""
        last = None
        while True:
            st = self.status(name, namespace)
            line = f"{st.kind} {st.name}: {st.state}" + (f" — {st.message}" if st.message else "")
            if line != last:
                self.notify(line)
                last = line
            if st.state in FINAL_STATES:
                for warning in st.warnings:
                    self.notify(f"warning: {warning}")
                return st
            time.sleep(poll_seconds())

    def logs(self, name: str, options: LogOptions, write: Callable[[str], None]) -> str | None:
        final = show_logs(self, self.job(name), options, write)
        if final is not None:
            self._warn(name)
        return final

    def _warn(self, name: str) -> None:
        """Say the status warnings of a job that just ended (workers left running)."""
        try:
            warnings = self.status(name).warnings
        except NotFound:
            return  # already deleted (TTL): nothing left to warn about
        for warning in warnings:
            self.notify(f"warning: {warning}")

    def fetch_checkpoints(self, name: str, options: FetchOptions) -> list[dict]:
        from kjob.cluster.fetch import fetch  # with kjob.transfer: only fetch-ckpt needs them

        return fetch(self.kube, self.job(name), options, say=self.notify)
