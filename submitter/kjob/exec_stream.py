"""Pod exec as an iterator of stdout chunks, over the `kubernetes` client's websocket.

`kubernetes.stream.stream(..., _preload_content=False)` opens the websocket (auth, TLS,
proxy handled by the client) and returns a WSClient. Its own reading helpers are not
used for the transfer: `WSClient.update()` keeps reading while frames are available,
appends each to a growing bytes buffer (quadratic copying) and, as the client is built,
also copies all stdout into an unbounded `read_all()` buffer — memory would grow with
the checkpoint. ExecStream reads one frame at a time from the same socket instead, so at
most one frame (the server's, 32 KiB from kube-apiserver) is held.

Channel bytes (v4/v5.channel.k8s.io): 1 stdout, 2 stderr, 3 the final metav1.Status
(Success, or NonZeroExitCode with an ExitCode cause), 255 (v5) a closed channel.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Iterator, TypeVar

from kjob.errors import ClusterUnavailable, Conflict, Forbidden, KjobError, NotFound

STDOUT, STDERR, STATUS, CLOSE = 1, 2, 3, 255
# Enough stderr to explain a failure (tar names the file it could not read).
STDERR_KEEP = 8192

T = TypeVar("T")


def _translate(e: Exception, what: str) -> KjobError:
    """kubernetes / urllib3 / websocket exceptions -> KjobError (exit codes 3, 4, 5, 6)."""
    status = getattr(e, "status", None)
    reason = str(getattr(e, "reason", "") or e)
    body = getattr(e, "body", None)
    if status == 0:  # the websocket handshake failed: the HTTP status is in the text
        m = re.search(r"Handshake status (\d+)", reason)
        status = int(m.group(1)) if m else None
        b = re.search(r"-\+-\+- (b?['\"].*['\"])\s*$", reason, re.S)
        body = b.group(1) if b else None
    message = _status_message(body) or reason
    if status == 403:
        return Forbidden(f"forbidden: {what}: {message}")
    if status == 404:
        return NotFound(f"not found: {what}: {message}")
    if status == 409:
        return Conflict(f"conflict: {what}: {message}")
    if status == 401:
        return ClusterUnavailable(f"unauthorized (401): {what}: check the kubeconfig's credentials")
    if status:
        return ClusterUnavailable(f"{what} failed (HTTP {status}): {message}")
    return ClusterUnavailable(f"{what}: cannot reach the API server: {message}")


def _status_message(body) -> str | None:
    if body is None:
        return None
    text = body
    if isinstance(body, str) and body[:2] in ("b'", 'b"'):
        text = body[2:-1].encode().decode("unicode_escape", "replace")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return json.loads(text).get("message")
    except (ValueError, AttributeError):
        return None


def api_call(fn: Callable[[], T], what: str) -> T:
    """Call the client; its exceptions become KjobError (the client's never escape)."""
    try:
        return fn()
    except KjobError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - ApiException, urllib3 and socket errors alike
        raise _translate(e, what) from e


class ExecStream:
    """The stdout of one exec, chunk by chunk; stderr and the exit status on the side.

    Iterate for stdout chunks (memoryviews of one frame each). After the iteration,
    `cut` is True when the connection ended without a status frame (a lost node, a
    dropped proxy), else `exit_code()` is the command's exit code.
    """

    def __init__(self, ws_client, what: str) -> None:
        self._ws = ws_client
        self._what = what
        self._stderr = bytearray()
        self._status = bytearray()
        self.cut = False
        self._ended = False

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001 - closing a dead socket is not news
            pass

    def __iter__(self) -> Iterator[memoryview]:
        from websocket import ABNF, WebSocketConnectionClosedException, WebSocketTimeoutException

        sock = self._ws.sock
        while not self._ended:
            try:
                opcode, frame = sock.recv_data_frame(True)
            except WebSocketTimeoutException as e:
                raise ClusterUnavailable(f"{self._what}: no data for {sock.gettimeout():.0f} s; the connection looks dead",
                                         hint="run the same command again to resume") from e
            except (WebSocketConnectionClosedException, ConnectionError, OSError):
                self._end()
                return
            if opcode == ABNF.OPCODE_CLOSE:
                self._end()
                return
            if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT):
                continue  # ping/pong
            data = frame.data
            if isinstance(data, str):
                data = data.encode()
            if not data:
                continue
            channel, payload = data[0], memoryview(data)[1:]
            if channel == STDOUT:
                if payload:
                    yield payload
            elif channel == STDERR:
                self._stderr += payload
                del self._stderr[:-STDERR_KEEP]
            elif channel == STATUS:
                self._status += payload
                # The status is the last word: the server closes right after it.
                self._end()
                return

    def _end(self) -> None:
        self._ended = True
        self.cut = not self._status

    def drain(self) -> None:
        """Read to the end (after the tar EOF, tar may still send padding and the status)."""
        for _ in self:
            pass

    def stderr_text(self) -> str:
        lines = bytes(self._stderr).decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

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


def open_exec(core, namespace: str, pod: str, container: str | None, argv: list[str], idle_timeout: float) -> ExecStream:
    """Start `argv` in the pod's container; returns the ExecStream. Raises KjobError."""
    from kubernetes.stream import stream

    what = f"exec {argv[0]} in pod {pod}"
    ws = api_call(lambda: stream(core.connect_get_namespaced_pod_exec, pod, namespace, command=argv,
                                 container=container, stderr=True, stdin=False, stdout=True, tty=False,
                                 _preload_content=False, binary=True), what)
    ws.sock.settimeout(idle_timeout)
    return ExecStream(ws, what)
