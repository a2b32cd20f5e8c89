"""Pod exec as an iterator of stdout chunks, over the `kubernetes` client's websocket.

The client's websocket transport (`kubernetes.stream.ws_client`, what `stream()` uses)
opens the connection (auth, TLS, proxy handled by the client) and returns a WSClient.
Its own readers are not used for the transfer: `WSClient.update()` keeps reading while
frames are available, appends each to a growing bytes buffer (quadratic copying) and, as
the client is built, also copies all stdout into an unbounded `read_all()` buffer:
memory would grow with the checkpoint. ExecStream parses the frames itself from the
same socket through one 1 MiB read buffer and hands stdout on in pieces of at most
1 MiB, whatever the frame sizes: memory stays flat, and a few hundred socket reads
replace websocket-client's several small reads per 32 KiB frame.

Channel bytes (v4/v5.channel.k8s.io): 1 stdout, 2 stderr, 3 the final metav1.Status
(Success, or NonZeroExitCode with an ExitCode cause), 255 (v5) a closed channel.
"""

from __future__ import annotations

import json
from typing import Iterator

from kjob.cluster import requests
from kjob.cluster.api import HttpError, translate
from kjob.errors import ClusterUnavailable, KjobError

STDOUT, STDERR, STATUS, CLOSE = 1, 2, 3, 255
# Enough stderr to explain a failure (tar names the file it could not read).
STDERR_KEEP = 8192
STATUS_KEEP = 65536
# One read from the socket fills up to this much; frames are cut into pieces of at most
# PIECE for the consumer, so a huge (or hostile) frame length never means a huge buffer.
READ_BUFFER = 1 << 20
PIECE = 1 << 20


def exec_error(e: Exception, kube, pod: str, namespace: str) -> KjobError:
    """A failed exec handshake -> KjobError, through kjob.cluster.api's translation.

    The client wraps websocket failures in ApiException(status=0) and keeps the real one
    as the context: a WebSocketBadStatusException carries the HTTP status and the
    apiserver's Status body; anything else is a transport error.
    """
    cause = e.__context__ or e
    status = getattr(cause, "status_code", None)
    if status:
        body = getattr(cause, "resp_body", b"") or b""
        e = HttpError(status, body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body))
    elif cause is not e:
        e = cause
    return translate(e, kube=kube, verb="create", resource="pods/exec", name=pod, namespace=namespace)


class ExecStream:
    """The stdout of one exec, chunk by chunk; stderr and the exit status on the side.

    Iterate for stdout chunks (bytes, at most PIECE each). After the iteration, `cut`
    is True when the connection ended without a status frame (a lost node, a dropped
    proxy), else `exit_code()` is the command's exit code.

    Frames are parsed here (RFC 6455, server to client: unmasked, possibly fragmented)
    from the client's socket through one 1 MiB read buffer: a few hundred reads for
    200 MB instead of websocket-client's several small reads per frame.
    """

    def __init__(self, ws_client, what: str) -> None:
        self._ws = ws_client
        self._what = what
        sock = ws_client.sock  # websocket.WebSocket, after the handshake
        # Bytes websocket-client may have read past the handshake (normally none).
        self._pre = b"".join(getattr(getattr(sock, "frame_buffer", None), "recv_buffer", []) or [])
        self._file = sock.sock.makefile("rb", buffering=READ_BUFFER)
        self._timeout = sock.gettimeout()
        self._stderr = bytearray()
        self._status = bytearray()
        self._channel: int | None = None  # channel of a fragmented message in progress
        self.cut = False
        self._ended = False

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # timeout=0: send the close frame but do not wait for the answer (on Ctrl-C the
        # server may still be streaming; websocket-client would read it for 3 s).
        # Then shutdown(): websocket-client's close() returns early, leaving the socket
        # open, when it thinks the connection is already gone.
        ws = self._ws.sock
        for closer in (self._file.close, lambda: self._ws.close(timeout=0), lambda: ws and ws.shutdown()):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing a dead socket is not news
                pass

    def _read(self, n: int) -> bytes:
        """Exactly n bytes (n <= PIECE), or raise EOFError when the connection ends."""
        if self._pre:
            out, self._pre = self._pre[:n], self._pre[n:]
            if len(out) == n:
                return out
            n -= len(out)
        else:
            out = b""
        more = self._file.read(n)
        if len(more) < n:
            raise EOFError
        return out + more if out else more

    def __iter__(self) -> Iterator[bytes]:
        try:
            while not self._ended:
                yield from self._frame()
        except TimeoutError as e:
            raise ClusterUnavailable(f"{self._what}: no data for {self._timeout:g} s; the connection looks dead",
                                     hint="run the same command again to resume") from e
        except (EOFError, OSError, ValueError):  # ValueError: read on a closed file
            self._end()

    def _frame(self) -> Iterator[bytes]:
        b0, b1 = self._read(2)
        fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8), "big")
        if b1 & 0x80:
            raise ClusterUnavailable(f"{self._what}: the server sent a masked websocket frame (protocol error)")
        if opcode >= 0x8:  # control frames: close, ping, pong (small by the RFC)
            payload = self._read(min(n, 125)) if n else b""
            if opcode == 0x8:
                self._end()
            elif opcode == 0x9:
                self._ws.sock.pong(payload)
            return
        first = opcode != 0x0
        while n > 0:
            piece = self._read(min(n, PIECE))
            n -= len(piece)
            if first:
                self._channel, piece, first = piece[0], piece[1:], False
            channel = self._channel
            if channel == STDOUT:
                if piece:
                    yield piece
            elif channel == STDERR:
                self._stderr += piece
                del self._stderr[:-STDERR_KEEP]
            elif channel == STATUS:
                self._status += piece[: STATUS_KEEP - len(self._status)]
        if fin and self._channel == STATUS:
            self._end()  # the status is the last word: the server closes right after it

    def _end(self) -> None:
        self._ended = True
        self.cut = not self._status

    def drain(self) -> None:
        """Read to the end (after the tar EOF come tar's padding and the status)."""
        for _ in self:
            pass

    def stderr_text(self) -> str:
        """What the command said on stderr, in one line: its last three messages, without
        tar's closing "Exiting with failure status" ('' when it said nothing)."""
        lines = [ln.strip() for ln in bytes(self._stderr).decode("utf-8", "replace").splitlines() if ln.strip()]
        lines = [ln for ln in lines if "Exiting with failure status" not in ln] or lines
        return "; ".join(lines[-3:])

    def exit_code(self) -> int | None:
        """0, the command's non-zero exit code, or None when no status arrived.

        Raises ClusterUnavailable when the status is a failure without an exit code (the
        command could not be started, e.g. no `tar` in the image).
        """
        if not self._status:
            return None
        try:
            st = json.loads(bytes(self._status))
        except ValueError:
            return None
        if st.get("status") == "Success":
            return 0
        for cause in (st.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message"))
                except (TypeError, ValueError):
                    break
        raise ClusterUnavailable(f"{self._what} failed: {st.get('message') or st.get('reason') or 'unknown error'}")


def open_exec(kube, namespace: str, pod: str, container: str | None, argv: list[str], idle_timeout: float) -> ExecStream:
    """Start `argv` in the pod's container (kube: a kjob.cluster.api.Kube); returns the
    ExecStream. Raises KjobError (NotFound, Forbidden, ClusterUnavailable, InvalidInput).

    The request is what `kubernetes.stream.stream(CoreV1Api.connect_get_namespaced_pod_exec,
    ...)` sends, made with the same pieces (ApiClient.param_serialize for URL and auth,
    ws_client.websocket_call for the websocket) but without the generated CoreV1Api
    class, whose import alone costs about a second and 20 MB.
    """
    from kubernetes.stream.ws_client import websocket_call

    query = requests.exec_query(argv, container)
    try:
        _, url, headers, _, _ = kube.api.param_serialize(
            method="GET", resource_path=requests.api_path("v1", "pods", namespace, pod, "exec"),
            query_params=query, header_params={}, auth_settings=["BearerToken"])
        ws = websocket_call(kube.api.configuration, "GET", url, headers=headers, _preload_content=False, binary=True)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - ApiException and transport errors alike
        raise exec_error(e, kube, pod, namespace) from e
    ws.sock.settimeout(idle_timeout)
    return ExecStream(ws, f"exec {argv[0]} in pod {pod}")
