"""The pods and Events of one job as a `kjob logs -f` session sees them: one listing,
shared by the session's main loop and every follower.

A follower per replica that lists the job's pods for itself makes the API requests of a
session grow with the number of replicas: at 128 workers, each silent worker's stream is
reconnected every few seconds, and each reconnect listed all 129 pods. Here a listing is
made again only when the one in hand is older than a poll, or older than what the caller
has to see (a stream that ended may mean that its container ended: that caller waits for
the next poll's listing), and callers that ask while a listing is on its way wait for it
instead of making their own. So a session makes at most one pod LIST per poll, and at
most one Event LIST per poll, the latter only while a follower asks why its pod is not
running, whatever the number of replicas.

A watch would lower the count further; a list per poll was kept because the followers
act on a poll anyway, and a listing has no stream to lose, resume or expire (410 Gone).
"""

from __future__ import annotations

import threading
import time

from kjob.cluster.jobs import job_events, job_pods
from kjob.cluster.queueing import Queueing, queueing
from kjob.errors import KjobError


class JobPods:
    """The job's pods and Warning Events, listed at most once per `poll` seconds for all
    callers (thread-safe). Raises what kjob.cluster.jobs.job_pods raises."""

    def __init__(self, kube, job: dict, poll: float) -> None:
        self.kube, self.job, self.poll = kube, job, poll
        self._pods_lock, self._events_lock = threading.Lock(), threading.Lock()
        self._pods: list[dict] = []
        self._pods_asked = float("-inf")  # when the listing in hand was asked for (monotonic)
        self._events: list[dict] = []
        self._events_asked = float("-inf")
        self._held_lock = threading.Lock()
        self._held: Queueing | None = None
        self._held_asked = float("-inf")
        self._unserved: set[str] = set()  # Kueue's optional APIs that failed once: not asked again

    def pods(self, *, since: float | None = None) -> list[dict]:
        """The job's pods, as listed at most a poll ago; with `since` (a time.monotonic()
        value), as listed after that moment, which may mean waiting for the next poll. One
        caller lists while the others wait for it; nobody sleeps holding the lock."""
        while True:
            with self._pods_lock:
                now = time.monotonic()
                if self._pods_asked >= (now - self.poll if since is None else since):
                    return self._pods
                # At most one listing a poll, whoever asks: the streams that end together (a
                # job's pods ending) share one, and so do streams that a server keeps ending.
                wait = self._pods_asked + self.poll - now
                if wait <= 0:
                    self._pods_asked = now
                    self._pods = job_pods(self.kube, self.job)
                    return self._pods
            time.sleep(wait)

    def events(self) -> list[dict]:
        """Warning Events of the job and its pods, listed at most once a poll. A failed
        listing keeps the last one (the events only explain; they are not worth an error)."""
        with self._events_lock:
            now = time.monotonic()
            if now - self._events_asked >= self.poll:
                try:
                    self._events = job_events(self.kube, self.job, self.pods())
                except KjobError:
                    pass
                self._events_asked = now
            return self._events

    def held(self) -> Queueing | None:
        """Kueue's reason the job does not run (queued, preempted), asked at most once a
        poll and only of a job that names a LocalQueue (kjob.cluster.queueing)."""
        with self._held_lock:
            now = time.monotonic()
            if now - self._held_asked >= self.poll:
                word = queueing(self.kube, self.job, self._unserved)
                self._held = word if word is not None and word.state is not None else None
                self._held_asked = now
            return self._held
