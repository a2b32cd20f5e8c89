"""GET .../pods/{name}/log as the kubelet serves it through kube-apiserver.

follow, previous, sinceSeconds, sinceTime, tailLines, timestamps, limitBytes. Details
kept from the real path: timestamps are RFC 3339 with 9 fraction digits; sinceTime is
cut to whole seconds (kube-apiserver re-encodes it as RFC 3339 without a fraction on its
way to the kubelet), so a client resuming from a timestamp must drop the repeats itself;
a container that has not started answers 400 "is waiting to start"; a follow stream ends
when the container exits (a restart starts a new log).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .http import STATE, Abort, CutStream, Stream, gate
from .store import State, format_ts, parse_time

CHUNK = 64 * 1024


def container_state(pod: dict, container: str) -> dict:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs["name"] == container:
            return cs.get("state") or {}
    return {}


def pick_container(pod: dict, asked: str | None) -> str:
    names = [c["name"] for c in pod["spec"]["containers"]]
    name = pod["metadata"]["name"]
    if asked is None:
        if len(names) > 1:
            raise Abort(400, f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")
        return names[0]
    if asked not in names:
        raise Abort(400, f"container {asked} is not valid for pod {name}")
    return asked


def select(lines: list, q) -> list:
    since_ns = None
    if q.get("sinceTime"):
        # Whole seconds: the fraction is lost between kube-apiserver and the kubelet.
        since_ns = parse_time(q["sinceTime"]) // 1_000_000_000 * 1_000_000_000
    elif q.get("sinceSeconds"):
        since_ns = time.time_ns() - int(q["sinceSeconds"]) * 1_000_000_000
    out = lines if since_ns is None else [entry for entry in lines if entry[0] >= since_ns]
    if q.get("tailLines") is not None:
        tail = int(q["tailLines"])
        out = out[-tail:] if tail > 0 else []
    return out


def encode(entries: list, timestamps: bool) -> bytes:
    if timestamps:
        return b"".join(f"{format_ts(ts)} {text}\n".encode() for ts, text in entries)
    return b"".join(f"{text}\n".encode() for _, text in entries)


async def pod_log(request: web.Request) -> web.StreamResponse:
    state: State = request.app[STATE]
    ns, name, q = request.match_info["namespace"], request.match_info["name"], request.query
    cut = await gate(request, "get", "pods/log", "", ns)
    pod = state.get("pods", ns, name)
    if pod is None:
        raise Abort(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"})
    container = pick_container(pod, q.get("container"))
    log = state.container_log(ns, name, container)
    timestamps = q.get("timestamps") in ("true", "1")
    if q.get("previous") in ("true", "1"):
        if log.previous is None:
            raise Abort(400, f'previous terminated container "{container}" in pod "{name}" not found')
        entries, follow = log.previous, False
    else:
        st = container_state(pod, container)
        if "running" not in st and "terminated" not in st:
            why = (st.get("waiting") or {}).get("reason", "ContainerCreating")
            if why in ("ImagePullBackOff", "ErrImagePull"):
                why = "trying and failing to pull image"
            raise Abort(400, f'container "{container}" in pod "{name}" is waiting to start: {why}')
        entries, follow = log.current, q.get("follow") in ("true", "1") and "running" in st
    limit = int(q["limitBytes"]) if q.get("limitBytes") else None
    stream = await Stream(request, "text/plain", cut.cut_after_bytes if cut else None).start()
    try:
        start = len(entries)  # lines appended while the backlog is sent are followed below
        await send(stream, select(entries[:start], q), timestamps, limit)
        if follow:
            await follow_log(state, stream, ns, name, container, entries, start, timestamps)
        await stream.resp.write_eof()
    except (CutStream, ConnectionResetError):
        pass
    return stream.resp


async def send(stream: Stream, entries: list, timestamps: bool, limit: int | None = None) -> None:
    for i in range(0, len(entries), 512):
        data = encode(entries[i : i + 512], timestamps)
        if limit is not None:
            data = data[: max(limit - stream.written, 0)]
        if data:
            await stream.write(data)


async def follow_log(state: State, stream: Stream, ns: str, name: str, container: str, lines: list, sent: int, timestamps: bool) -> None:
    """Send new lines as they arrive until the container exits or restarts."""
    while True:
        changed = state.changed
        if len(lines) > sent:
            new, sent = lines[sent:], len(lines)
            await send(stream, new, timestamps)
            continue
        pod = state.get("pods", ns, name)
        if pod is None or "running" not in container_state(pod, container) or state.container_log(ns, name, container).current is not lines:
            return
        try:
            await asyncio.wait_for(changed.wait(), 5)
        except asyncio.TimeoutError:
            pass


def install(app: web.Application, state: State) -> None:
    app.router.add_get("/api/{version}/namespaces/{namespace}/pods/{name}/log", pod_log)
