"""Pieces every route of the fake shares: Status bodies, the gate (authentication,
RBAC denials, injected faults) and a stream writer that can cut a response mid-line."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .store import State

STATE = web.AppKey("state", State)  # the server's State on the aiohttp app

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class Abort(Exception):
    """Raised inside a handler to answer with a Status object."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.details = code, message, reason or REASONS.get(code, "Unknown"), details


def status_body(code: int, message: str, reason: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def status_response(exc: Abort) -> web.Response:
    return web.json_response(status_body(exc.code, exc.message, exc.reason, exc.details), status=exc.code)


def qualified(plural: str, group: str) -> str:
    """`mpijobs.kubeflow.org` / `pods`: how kube-apiserver names a resource in messages."""
    return f"{plural}.{group}" if group else plural


async def gate(request: web.Request, verb: str, resource: str, group: str = "", namespace: str | None = None):
    """Authenticate, apply RBAC denials and injected faults. Returns a Fault with a
    stream cut for the handler to honour, else None. Raises Abort."""
    state: State = request.app[STATE]
    state.requests[(verb, resource)] = state.requests.get((verb, resource), 0) + 1
    if request.headers.get("Authorization") != f"Bearer {state.token}":
        raise Abort(401, "Unauthorized")
    denied = (verb, resource, namespace) in state.denied or (verb, resource, None) in state.denied
    if denied:
        plural = resource.partition("/")[0]
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        what = f'resource "{resource}"'  # as kube-apiserver's forbiddenMessage: "pods/exec"
        raise Abort(
            403,
            f'{qualified(plural, group)} is forbidden: User "{state.username}" cannot {verb} {what} in API group "{group}"{where}',
            details={"group": group, "kind": plural},
        )
    fault = state.take_fault(verb, resource)
    if fault is None:
        return None
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.status:
        raise Abort(fault.status, f"injected fault: {fault.status} for {verb} {resource}")
    return fault if fault.cut_after_bytes is not None else None


class CutStream(Exception):
    """The injected cut happened: the connection is closed, stop writing."""


class Stream:
    """A chunked HTTP response that can be cut after a number of bytes (mid-line)."""

    def __init__(self, request: web.Request, content_type: str, cut_after: int | None = None) -> None:
        self.request = request
        self.resp = web.StreamResponse()
        self.resp.content_type = content_type
        self.cut_after = cut_after
        self.written = 0

    async def start(self) -> "Stream":
        await self.resp.prepare(self.request)
        return self

    async def write(self, data: bytes) -> None:
        if self.cut_after is not None and self.written + len(data) > self.cut_after:
            part = data[: self.cut_after - self.written]
            if part:
                await self.resp.write(part)
            # close() (not abort()) flushes the partial chunk first; the client then sees
            # the connection end without the final zero-length chunk.
            self.request.transport.close()
            raise CutStream
        self.written += len(data)
        await self.resp.write(data)

    async def write_json(self, obj: dict) -> None:
        await self.write(json.dumps(obj).encode() + b"\n")
