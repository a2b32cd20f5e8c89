"""`kjob logs`: show or follow the logs of a job's pods.

Following asks the kubelet for timestamps on every line (whatever the user asked to see)
so that a dropped stream can be resumed: the reconnect sends `sinceTime` = the last
timestamp seen, and the API server answers from that whole second on (the fraction is
lost on its way to the kubelet). The cursor drops what was already shown: every line
older than the last timestamp, and as many lines *at* that exact timestamp as were shown
before — several lines can share one timestamp. No line is lost or repeated.

A follower waits for its pod to start (saying why it is pending), follows the container
through restarts, moves to a newer pod of the same replica (a retried launcher), and
stops when the job has ended; the caller prints the job's final state. The followers
and the loop that starts them share one listing of the job's pods and events
(kjob.cluster.jobpods), so the requests of a session do not grow with its replicas.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from kjob import settings
from kjob.backend import FINAL_STATES, LogOptions
from kjob.cluster import requests
from kjob.cluster.jobpods import JobPods
from kjob.cluster.jobs import get_job
from kjob.cluster.kinds import kind_of
from kjob.cluster.pods import container_of, newest, pod_reason, replica_name, restarts, started, terminated
from kjob.cluster.status import job_state
from kjob.errors import ClusterUnavailable, InvalidInput, KjobError, NotFound

COLORS = ("\033[36m", "\033[33m", "\033[32m", "\033[35m", "\033[34m", "\033[91m")
RESET = "\033[0m"
ENDED_IDLE_SECONDS = 3.0  # a terminated container's log stream silent this long is read to its end


@functools.lru_cache(maxsize=4096)
def _epoch(prefix: str) -> int:
    return int(datetime.fromisoformat(prefix + "+00:00").timestamp())


def parse_ts(text: str) -> int:
    """Kubelet timestamp ('2026-11-23T04:00:00.123456789Z', any fraction) -> ns."""
    frac = text[20:-1] if len(text) > 20 and text[19] == "." else ""
    return _epoch(text[:19]) * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or 0)


def format_ts(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


class Cursor:
    """Which lines were shown: the newest timestamp and how many lines carried it."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.seen = 0  # lines shown with timestamp == last
        self.here = 0  # lines at `last` met on the current connection

    def reconnect(self) -> None:
        self.here = 0

    def accept(self, ts: int) -> bool:
        if self.last is None or ts > self.last:
            self.last, self.seen, self.here = ts, 1, 1
            return True
        if ts < self.last:
            return False
        self.here += 1
        if self.here > self.seen:
            self.seen = self.here
            return True
        return False


def default_replica(job: dict, listing: JobPods) -> str:
    """The launcher of an MPIJob (or of a TrainJob on an Open MPI runtime), master-0 of
    a PyTorchJob, node-0 of a torch TrainJob; the job's pods are listed only for a
    TrainJob on a runtime not kjob's (a launcher pod says it is an MPI one)."""
    return kind_of(job).default_replica(job, lambda: {replica_name(p) for p in listing.pods()})


class Session:
    """State shared by the followers of one `kjob logs` call."""

    def __init__(self, backend, job: dict, options: LogOptions, write: Callable[[str], None]) -> None:
        self.kube, self.notify = backend.kube, backend.notify
        self.job, self.options = job, options
        self.name, self.namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        self.lock = threading.Lock()
        self._write = write
        self.final: str | None = None
        self.final_since: float | None = None  # when `final` was set: what followers see must be newer
        current = settings.current()
        self.poll = current.poll_seconds
        self.idle = current.log_idle_seconds  # reconnect a silent stream this often
        self.listing = JobPods(self.kube, job, self.poll)
        self.wanted = {options.replica or default_replica(job, self.listing)} if not options.all_replicas else None
        self.colors: dict[str, str] = {}

    def shows(self, replica: str) -> bool:
        """Whether lines of `replica` are shown; `master` or `node` names its pod -0."""
        return self.wanted is None or replica in self.wanted or (replica.endswith("-0") and replica[:-2] in self.wanted)

    def emit(self, replica: str, entries: list[tuple[str, str]], saver) -> None:
        """Write (timestamp, text) lines of one replica: one write per network chunk,
        not per line (a flush per line costs more than everything else together)."""
        if not entries:
            return
        lines = [f"{ts} {text}" for ts, text in entries] if self.options.timestamps else [text for _, text in entries]
        with self.lock:
            if saver is not None:
                saver.write("\n".join(lines) + "\n")
            if not self.shows(replica):
                return
            if self.options.all_replicas:
                prefix = f"[{replica}]"
                if self.options.color:
                    color = self.colors.setdefault(replica, COLORS[len(self.colors) % len(COLORS)])
                    prefix = f"{color}{prefix}{RESET}"
                lines = [f"{prefix} {line}" for line in lines]
            self._write("\n".join(lines))

    def pods(self, *, since: float | None = None) -> list[dict]:
        """The job's pods, listed at most a poll ago (or after `since`, a monotonic time)."""
        return self.listing.pods(since=since)


class Follower:
    """Follows one replica (e.g. "launcher", "worker-3") across pods, restarts, cuts."""

    def __init__(self, session: Session, replica: str) -> None:
        self.s, self.replica = session, replica
        self.cursor = Cursor()
        self.first = True
        self.done: set[tuple[str, int]] = set()  # (pod uid, restarts) read to the end
        self.said = None
        self.failures = 0
        self.error: KjobError | None = None
        self.saver = None
        self.stale_since: float | None = None  # what this follower saw may have changed since then
        if session.options.save_dir is not None:
            Path(session.options.save_dir).mkdir(parents=True, exist_ok=True)

    def pod(self) -> dict | None:
        since = max((t for t in (self.stale_since, self.s.final_since) if t is not None), default=None)
        self.stale_since = None
        return newest([p for p in self.s.pods(since=since) if replica_name(p) == self.replica])

    def say_waiting(self, pod: dict | None) -> None:
        # The launcher of an MPIJob appears only once the workers are ready, so a missing
        # pod is explained by the first troubled pod of the job.
        held = self.s.listing.held()  # Kueue's reason, of a job that names a LocalQueue
        pods = [pod] if pod is not None else self.s.pods()
        why = None if held else next((f"{replica_name(p)}: {r}" if pod is None else r for p in pods if (r := pod_reason(p, self.s.listing.events()))), None)
        if held is not None:
            line = f"waiting for the {self.replica} pod of {self.s.name}: {held.message}"
        elif pod is None:
            line = f"waiting for the {self.replica} pod of {self.s.name} to be created" + (f" ({why})" if why else "")
        else:
            why = why or (pod.get("status") or {}).get("phase", "Pending")
            line = f"waiting for {self.replica} ({pod['metadata']['name']}) to start: {why}"
        if line != self.said:
            self.s.notify(line)
            self.said = line

    def run(self) -> None:
        try:
            self._run()
        except KjobError as e:
            self.error = e
        finally:
            if self.saver is not None:
                self.saver.close()

    def _run(self) -> None:
        while True:
            final = self.s.final  # read before the listing, so that the listing is newer (pod())
            pod = self.pod()
            if pod is None or not started(pod):
                if final:
                    return
                self.say_waiting(pod)
                time.sleep(self.s.poll)
                continue
            key = (pod["metadata"]["uid"], restarts(pod))
            if key in self.done:
                if final:
                    return
                time.sleep(self.s.poll)
                continue
            was_over = terminated(pod)
            complete = self.stream(pod, was_over)
            if was_over and complete:
                self.done.add(key)  # a finished container's log, read to its end
            elif self.s.final:
                self.stale_since = time.monotonic()
                pod = self.pod()
                if pod is not None and started(pod) and not terminated(pod):
                    return  # still running after the job ended (workers after a launcher)
                # it ended too: the next round reads the rest of its log

    def stream(self, pod: dict, ended: bool) -> bool:
        """One connection: read until the stream ends (True), breaks or idles (False).

        `ended`: the container had terminated before we connected, so its log cannot grow.
        A real kubelet closes such a stream after the last line; a silence of a few seconds
        on it (kwok never closes one, nor does a kubelet on a lost node) means the same."""
        opts, name = self.s.options, pod["metadata"]["name"]
        if self.s.options.save_dir is not None and self.saver is None:
            self.saver = open(Path(opts.save_dir) / f"{name}.log", "a", encoding="utf-8")
        query = {"container": container_of(pod), "follow": True, "timestamps": True}
        if self.cursor.last is not None:
            query["sinceTime"] = format_ts(self.cursor.last)
        elif self.first:
            query.update(tailLines=opts.tail, sinceSeconds=opts.since_seconds)
        self.cursor.reconnect()
        try:
            idle = min(self.s.idle, ENDED_IDLE_SECONDS) if ended else self.s.idle
            resp = self.s.kube.send(requests.pod_log(self.s.namespace, name, query), stream=True, timeout=(self.s.kube.timeout[0], idle))
        except (InvalidInput, NotFound):
            self.stale_since = time.monotonic()
            time.sleep(self.s.poll)  # not started after all / gone: look at the pod again
            return False
        except ClusterUnavailable:
            self.broke()
            return False
        self.first = False
        try:
            for batch in batches_of(resp):
                shown = [(ts, text) for ts, text in batch if self.cursor.accept(parse_ts(ts))]
                if shown:
                    self.failures = 0
                    self.s.emit(self.replica, shown, self.saver)
        except Exception as e:  # noqa: BLE001 - a dropped/idle stream (urllib3 errors): resume from the cursor
            if not _idle(e):  # silence is not a failure: a trainer may print nothing for minutes
                self.broke()
                return False
            return ended
        finally:
            resp.release_conn()
        if not ended:
            self.stale_since = time.monotonic()  # the server ended the stream: its container may have ended
        return True

    def broke(self) -> None:
        self.failures += 1
        if self.failures > max(self.s.kube.retry.attempts, 1) * 3:
            raise ClusterUnavailable(f"the log stream of {self.replica} keeps breaking: giving up after {self.failures} reconnects to {self.s.kube.where()}")
        time.sleep(min(self.s.kube.retry.backoff * self.failures, 2.0))


def _idle(e: Exception) -> bool:
    import urllib3.exceptions as u

    return isinstance(e, (u.ReadTimeoutError, TimeoutError))


def batches_of(resp):
    """Lists of (timestamp, text), one per network chunk; a partial last line is kept
    for the next chunk, and dropped if the stream breaks (the resume re-reads it)."""
    buf = b""
    for chunk in resp.stream(256 * 1024, decode_content=False):
        buf += chunk
        *complete, buf = buf.split(b"\n")
        batch = []
        for raw in complete:
            ts, _, text = raw.decode("utf-8", "replace").partition(" ")
            batch.append((ts, text))
        yield batch


def show_logs(backend, job: dict, options: LogOptions, write: Callable[[str], None]) -> str | None:
    """Print (or follow) the job's logs through `write`; returns the final state when
    following ended with the job. Raises NotFound (no such replica/pod, not started)."""
    session = Session(backend, job, options, write)
    if not options.follow:
        return show_once(session)
    followers: dict[str, tuple[Follower, threading.Thread]] = {}
    save = options.save_dir is not None
    while True:
        current = get_job(session.kube, session.name, session.namespace, kinds=[job["kind"]])
        state, _ = job_state(current)
        replicas = {replica_name(p) for p in session.pods()} if (options.all_replicas or save) else set()
        for replica in sorted(replicas | (session.wanted or set())):
            if replica not in followers:
                f = Follower(session, replica)
                t = threading.Thread(target=f.run, name=f"kjob-logs-{replica}", daemon=True)
                followers[replica] = (f, t)
                t.start()
        if state in FINAL_STATES:
            session.final_since = time.monotonic()  # before `final`: a follower that sees one sees both
            session.final = state
            for f, t in followers.values():
                t.join()
            errors = [f.error for f, _ in followers.values() if f.error]
            if errors:
                raise errors[0]
            return state
        errors = [f.error for f, t in followers.values() if f.error]
        if errors:
            session.final_since = time.monotonic()  # before `final`: a follower that sees one sees both
            session.final = "Unknown"
            raise errors[0]
        time.sleep(session.poll)


def show_once(session: Session) -> None:
    """Logs as they are now (no follow): the chosen replica(s), or --previous."""
    opts = session.options
    by_replica: dict[str, list[dict]] = {}
    for pod in session.pods():
        by_replica.setdefault(replica_name(pod), []).append(pod)
    chosen = sorted(by_replica) if opts.all_replicas or opts.save_dir else sorted(session.wanted or [])
    if not chosen or not any(r in by_replica for r in chosen):
        have = ", ".join(sorted(by_replica)) or "none yet"
        raise NotFound(f'job "{session.name}" has no pod for {", ".join(sorted(session.wanted or [])) or "any replica"} (replicas: {have})')
    for replica in chosen:
        pod = newest(by_replica.get(replica, []))
        if pod is None:
            continue
        name = pod["metadata"]["name"]
        if not started(pod) and not opts.previous:
            raise NotFound(f"{replica} ({name}) has not started, so it has no log yet: {pod_reason(pod, []) or 'Pending'}")
        query = {"container": container_of(pod), "timestamps": True, "previous": opts.previous or None, "tailLines": opts.tail, "sinceSeconds": opts.since_seconds}
        text = session.kube.send(requests.pod_log(session.namespace, name, query), text=True)
        saver = None
        if opts.save_dir is not None:
            Path(opts.save_dir).mkdir(parents=True, exist_ok=True)
            saver = open(Path(opts.save_dir) / f"{name}{'.previous' if opts.previous else ''}.log", "w", encoding="utf-8")
        try:
            session.emit(replica, [tuple(raw.partition(" ")[::2]) for raw in text.splitlines()], saver)
        finally:
            if saver is not None:
                saver.close()
    return None
