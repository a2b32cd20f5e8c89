"""A few REST calls to the test cluster's API server with the admin certificate: what the
harness and the tests need to set things up and look at what the operators made. (kjob's
own client is what the tests exercise; this one only arranges and observes.)"""

from __future__ import annotations

import json
from typing import Iterator

import requests


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:500]}")
        self.status = status


class Api:
    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        self.server = server
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would override `verify` below.
        self.session.trust_env = False
        self.session.verify = ca
        self.session.cert = (cert, key)

    def request(self, method: str, path: str, body: dict | None = None, *, params: dict | None = None,
                content_type: str = "application/json", timeout: float = 30.0) -> dict:
        """Raises ApiError for any status >= 300."""
        data = json.dumps(body) if body is not None else None
        r = self.session.request(method, self.server + path, data=data, params=params, timeout=timeout,
                                 headers={"Content-Type": content_type} if data else {})
        if r.status_code >= 300:
            raise ApiError(r.status_code, r.text)
        return r.json() if r.content else {}

    def get(self, path: str, **params) -> dict | None:
        """The object, or None when the server answers 404."""
        try:
            return self.request("GET", path, params=params or None)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def items(self, path: str, **params) -> list[dict]:
        return (self.get(path, **params) or {}).get("items", [])

    def create(self, path: str, obj: dict, *, exist_ok: bool = False) -> dict:
        try:
            return self.request("POST", path, obj)
        except ApiError as e:
            if exist_ok and e.status == 409:
                return {}
            raise

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str, **params) -> None:
        try:
            self.request("DELETE", path, params=params or None)
        except ApiError as e:
            if e.status != 404:
                raise

    def watch(self, path: str, resource_version: str, timeout_s: int = 300) -> Iterator[dict]:
        """Watch events (dicts with type and object) until the server ends the watch."""
        params = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": str(timeout_s),
                  "allowWatchBookmarks": "true"}
        with self.session.get(self.server + path, params=params, stream=True, timeout=(10, timeout_s + 30)) as r:
            if r.status_code >= 300:
                raise ApiError(r.status_code, r.text)
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)
