"""The fake API server: a real aiohttp HTTP server on 127.0.0.1 in a background thread.

Routes come from modules with an `install(app, state)` function, registered in
INSTALLERS in order (aiohttp matches the first route that fits, so specific routes such
as `pods/{name}/log` and `pods/{name}/exec` come before the generic resource routes).
Pod exec (websocket, tests/kubefake/exec.py) plugs in through `install_exec`; a new
route module adds its `install` ahead of `resources.install`. The `gate()` helper in
http.py gives a route the same authentication, RBAC denials and fault injection as the
others; per-extension state goes in `state.extensions[name]`.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from . import podlogs, resources
from .http import STATE, Abort, status_response
from .store import State


def install_exec(app: web.Application, state: State) -> None:
    """Pod exec (websocket channel protocol, exec.py, issue 5). Its registry is what
    tests configure through `KubeHandle.exec`."""
    from .exec import ExecRegistry, add_exec_routes

    state.extensions["exec"] = registry = ExecRegistry()
    add_exec_routes(app, registry, lambda namespace, name: state.get("pods", namespace, name))


# Most specific first: aiohttp takes the first route that fits, and resources.install
# ends with generic `{plural}/{name}/{sub}` routes.
INSTALLERS = [install_exec, podlogs.install, resources.install]


@web.middleware
async def answer_status(request: web.Request, handler):
    try:
        return await handler(request)
    except Abort as e:
        return status_response(e)


class FakeServer:
    """Start/stop the server; `call(fn)` runs fn(state) on the server's loop thread."""

    def __init__(self, token: str = "kjob-test-token") -> None:
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kubefake", daemon=True)
        self.state: State | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.state = State(self.token)
        app = web.Application(middlewares=[answer_status])
        app[STATE] = self.state
        for install in INSTALLERS:
            install(app, self.state)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def call(self, fn, *args):
        if self.loop.is_closed():
            raise RuntimeError("the test API server is stopped")

        async def run():
            return fn(self.state, *args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()

    async def _stop(self) -> None:
        """Close the server, then end and await every task still on the loop (a watch, a
        follow or an exec stream a client left open), so none is destroyed pending when
        the loop closes: Python reports those as unraisable, and the tests fail on them."""
        await self.runner.cleanup()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
