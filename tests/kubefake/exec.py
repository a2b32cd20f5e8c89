"""Pod exec for the test API server: the websocket channel protocol the kubelet speaks.

The `kubernetes` client's `stream()` opens `GET .../pods/NAME/exec?command=...` as a
websocket offering `v5.channel.k8s.io,v4.channel.k8s.io`. Every binary frame starts with a
channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error/status (a metav1.Status JSON, sent once
at the end), 4 resize; v5 adds 255 (the client closes one of its channels). Frames carry at
most FRAME_BYTES of payload, like the apiserver's 32 KiB copy buffer.

What runs is chosen per pod by the test, playing the kubelet:
- `provide_claim(ns, claim, tmp)` makes a local folder the contents of a PVC: an exec in
  any pod that mounts the claim (a training pod, kjob's helper pod) runs the real command
  on this machine with every argument under the mount path rewritten to the folder (so
  `tar cf - -C /ckpt/job/checkpoints a b` is real GNU tar over real files);
- `serve_folder(ns, pod, {"/ckpt": tmp})` does the same for one pod with explicit mounts;
- `serve(ns, pod, fn)` answers with `fn(command) -> ExecReply` (hostile tar streams);
- `fault(ns, pod, cut_after=N | flip_byte_at=N | stall_after=N)` damages the stdout of
  the next exec of that command once (pod None: whichever pod execs it next): the
  connection drops without a status, a byte is flipped, or the stream goes silent.
Every call is recorded in `calls` (command and stdout bytes) so tests can see what was
asked for. Tests use this through the `kube` fixture's handle, never the aiohttp app.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from aiohttp import WSMsgType, web

from .http import Abort, gate

STDOUT, STDERR, STATUS = 1, 2, 3
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
# The apiserver's stream translator copies with 32 KiB buffers; frames larger than that
# would hide client-side bugs with frame reassembly.
FRAME_BYTES = 32 * 1024


@dataclass
class ExecReply:
    """What a handler returns: stdout (bytes or an iterable of chunks), stderr, exit code."""

    stdout: bytes | Iterable[bytes] = b""
    stderr: bytes = b""
    exit_code: int = 0


@dataclass
class ExecCall:
    """One exec seen by the server (for assertions: what was requested, what was sent)."""

    namespace: str
    pod: str
    container: str | None
    command: list[str]
    stdout_bytes: int = 0
    exit_code: int | None = None
    cut: bool = False


@dataclass
class _Fault:
    command: str | None  # only an exec whose argv[0] is this; None: any
    cut_after: int | None = None
    flip_byte_at: int | None = None
    stall_after: int | None = None


def _claim_mounts(pod: dict, claims: dict[str, Path], container: str | None) -> dict[str, Path]:
    """Mount path -> local folder for the registered claims this pod's container mounts."""
    spec = pod.get("spec") or {}
    vols = {v.get("name"): claims[v["persistentVolumeClaim"]["claimName"]] for v in spec.get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName") in claims}
    out: dict[str, Path] = {}
    for c in spec.get("containers") or []:
        if container not in (None, c.get("name")):
            continue
        for m in c.get("volumeMounts") or []:
            if m.get("name") in vols:
                out[m["mountPath"].rstrip("/") or "/"] = vols[m["name"]] / (m.get("subPath") or "")
    return out


@dataclass
class _PodExec:
    mounts: dict[str, Path] = field(default_factory=dict)
    handler: Callable[[list[str]], ExecReply] | None = None
    faults: list[_Fault] = field(default_factory=list)


class ExecRegistry:
    """The kubelet's side of exec, configured by tests (thread-safe: the server runs in
    its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _PodExec] = {}
        self._claims: dict[tuple[str, str], Path] = {}
        self.calls: list[ExecCall] = []

    def _pod(self, namespace: str, pod: str) -> _PodExec:
        return self._pods.setdefault((namespace, pod), _PodExec())

    def provide_claim(self, namespace: str, claim: str, folder: str | Path) -> None:
        """Let `folder` stand in for PVC `claim`: exec in any pod mounting it runs for real."""
        with self._lock:
            self._claims[(namespace, claim)] = Path(folder)

    def serve_folder(self, namespace: str, pod: str, mounts: dict[str, str | Path]) -> None:
        """Run exec'd commands for real, with `mounts` (container path -> local folder)."""
        with self._lock:
            p = self._pod(namespace, pod)
            p.mounts = {k.rstrip("/") or "/": Path(v) for k, v in mounts.items()}
            p.handler = None

    def serve(self, namespace: str, pod: str, handler: Callable[[list[str]], ExecReply]) -> None:
        """Answer exec'd commands with `handler(argv)` instead of running anything."""
        with self._lock:
            self._pod(namespace, pod).handler = handler

    def fault(self, namespace: str, pod: str | None = None, *, command: str | None = "tar", cut_after: int | None = None,
              flip_byte_at: int | None = None, stall_after: int | None = None) -> None:
        """Damage the stdout of the next matching exec (argv[0] == command) once: drop the
        connection after `cut_after` bytes (no status frame, like a lost node), flip the
        byte at offset `flip_byte_at`, or go silent after `stall_after` bytes until the
        client hangs up. `pod=None`: whichever pod execs next (e.g. a helper pod)."""
        with self._lock:
            self._pod(namespace, pod or "*").faults.append(_Fault(command, cut_after, flip_byte_at, stall_after))

    def calls_for(self, pod: str) -> list[ExecCall]:
        with self._lock:
            return [c for c in self.calls if c.pod == pod]

    def _take(self, namespace: str, pod: dict, container: str | None, argv: list[str]) -> tuple[_PodExec, _Fault | None]:
        """This exec's handler/mounts (a copy) and the fault it consumes, if any."""
        name = pod["metadata"]["name"]
        with self._lock:
            claims = {c: p for (ns, c), p in self._claims.items() if ns == namespace}
            p = self._pods.get((namespace, name)) or _PodExec()
            plan = _PodExec({**_claim_mounts(pod, claims, container), **p.mounts}, p.handler)
            for faults in (p.faults, self._pods.get((namespace, "*"), _PodExec()).faults):
                for i, f in enumerate(faults):
                    if f.command is None or (argv and argv[0] == f.command):
                        return plan, faults.pop(i)
            return plan, None


def status_success() -> dict:
    return {"metadata": {}, "status": "Success"}


def status_exit(code: int, argv: list[str]) -> dict:
    """The Status the kubelet sends when the command exits non-zero."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def status_internal(message: str) -> dict:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500}


def _map_argv(argv: list[str], mounts: dict[str, Path]) -> list[str]:
    """Rewrite arguments that name a path under a mount to the local folder."""
    out = []
    for arg in argv:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == mount or arg.startswith(mount + "/"):
                arg = str(local) + arg[len(mount):]
                break
        out.append(arg)
    return out


class _Sender:
    """Writes stdout frames, applying a fault; raises _Cut when the fault cuts."""

    def __init__(self, ws: web.WebSocketResponse, call: ExecCall, fault: _Fault | None, client_gone) -> None:
        self.ws, self.call, self.fault, self.client_gone = ws, call, fault, client_gone

    async def stdout(self, data: bytes) -> None:
        f = self.fault
        start = self.call.stdout_bytes
        if f and f.flip_byte_at is not None and start <= f.flip_byte_at < start + len(data):
            i = f.flip_byte_at - start
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        if f and f.cut_after is not None and start + len(data) >= f.cut_after:
            await self._frames(STDOUT, data[: f.cut_after - start])
            raise _Cut()
        if f and f.stall_after is not None and start + len(data) >= f.stall_after:
            await self._frames(STDOUT, data[: f.stall_after - start])
            await self.client_gone  # silent until the client hangs up
            raise _Cut()
        await self._frames(STDOUT, data)

    async def _frames(self, channel: int, data: bytes) -> None:
        prefix = bytes([channel])
        for i in range(0, len(data), FRAME_BYTES):
            piece = data[i:i + FRAME_BYTES]
            await self.ws.send_bytes(prefix + piece)
            if channel == STDOUT:
                self.call.stdout_bytes += len(piece)


class _Cut(Exception):
    pass


async def _run_folder(argv: list[str], mounts: dict[str, Path], send: _Sender) -> tuple[int | None, bytes, str | None]:
    """Run argv for real; returns (exit code, stderr, internal error message)."""
    if not argv or shutil.which(argv[0]) is None:
        return None, b"", f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
    proc = await asyncio.create_subprocess_exec(
        *_map_argv(argv, mounts), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    err_task = asyncio.ensure_future(proc.stderr.read())
    try:
        while chunk := await proc.stdout.read(FRAME_BYTES):
            await send.stdout(chunk)
    except BaseException:
        proc.kill()
        # Read both pipes to their end so their transports close (no ResourceWarning).
        await proc.stdout.read()
        await err_task
        await proc.wait()
        raise
    code = await proc.wait()
    return code, await err_task, None


async def _run_handler(argv: list[str], handler, send: _Sender) -> tuple[int | None, bytes, str | None]:
    reply = handler(argv)
    chunks = [reply.stdout] if isinstance(reply.stdout, (bytes, bytearray)) else reply.stdout
    for chunk in chunks:
        if chunk:
            await send.stdout(bytes(chunk))
    return reply.exit_code, reply.stderr, None


def exec_route(registry: ExecRegistry, get_pod: Callable[[str, str], dict | None]):
    """The aiohttp handler for `/api/v1/namespaces/{namespace}/pods/{name}/exec`.

    `get_pod(namespace, name)` returns the stored pod (a dict) or None; exec is refused as
    the apiserver refuses it: 404 for a missing pod, 400 unless it is Running.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        argv = request.query.getall("command", [])
        container = request.query.get("container")
        # kube-apiserver up to 1.34 authorizes the websocket GET as "get pods/exec" (1.35
        # checks "create" too: KEP-4006); kjob's exec is always a websocket.
        await gate(request, "get", "pods/exec", "", ns)
        pod = get_pod(ns, name)
        if pod is None:
            raise Abort(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"})
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running":
            raise Abort(400, f"unable to upgrade connection: pod {name} is not running (phase {phase})")
        if not argv:
            raise Abort(400, "you must specify at least 1 command")
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if container is None and len(names) > 1:
            raise Abort(400, f"a container name must be specified for pod {name}, choose one of: {names}")
        if container is not None and container not in names:
            raise Abort(400, f"container {container} is not valid for pod {name}")
        p, fault = registry._take(ns, pod, container, argv)
        if p.handler is None and not p.mounts:
            raise Abort(400, f"unable to upgrade connection: container not found in pod {name} (test server: no exec handler registered)")
        ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0)
        await ws.prepare(request)
        call = ExecCall(ns, name, container, list(argv))
        with registry._lock:
            registry.calls.append(call)
        reader = asyncio.ensure_future(_drain_client(ws))
        send = _Sender(ws, call, fault, reader)
        try:
            if p.handler is not None:
                code, stderr, internal = await _run_handler(argv, p.handler, send)
            else:
                code, stderr, internal = await _run_folder(argv, p.mounts, send)
        except _Cut:
            call.cut = True
            reader.cancel()
            # A lost connection: no status frame, no close frame, just gone. close(), not
            # abort(), so the bytes already written do arrive (the cut is where asked).
            if request.transport is not None:
                request.transport.close()
            return ws
        call.exit_code = code
        if stderr:
            await send._frames(STDERR, stderr)
        if internal is not None:
            status = status_internal(internal)
        else:
            status = status_success() if code == 0 else status_exit(code, argv)
        await ws.send_bytes(bytes([STATUS]) + json.dumps(status).encode())
        reader.cancel()
        await ws.close()
        return ws

    return handle


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends: stdin/resize/v5 close frames."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def add_exec_routes(app: web.Application, registry: ExecRegistry, get_pod) -> None:
    """Register exec on `app` (GET is what the Python client uses; kubectl POSTs)."""
    path = "/api/v1/namespaces/{namespace}/pods/{name}/exec"
    handler = exec_route(registry, get_pod)
    app.router.add_get(path, handler)
    app.router.add_post(path, handler)
