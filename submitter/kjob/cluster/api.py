"""Talking to the API server: kubeconfig/context/namespace like kubectl, sending a
request with bounded retries, and the one place that turns the `kubernetes` client's
exceptions (ApiException, urllib3 errors, ConfigException) into kjob's errors.

Every call goes through `Kube.send`, which uses the official client's configuration,
authentication, TLS and REST layer, and answers plain dicts (the job kinds are custom
resources, and status/logs code reads dicts). Nothing from `kubernetes` or `urllib3`
escapes this module: callers see only KjobError subclasses. The requests themselves are
built in kjob.cluster.requests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from kjob import settings
from kjob.cluster.requests import Request
from kjob.errors import ClusterUnavailable, Conflict, Forbidden, InvalidInput, KjobError, NotFound

# Transient answers worth another try. POST is retried only when the server surely did
# not act on it (429/503, or no connection at all), so a create is never sent twice.
RETRY_STATUS = {429, 500, 502, 503, 504}
RETRY_STATUS_POST = {429, 503}
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass
class Retry:
    """Bounded retries: `attempts` tries, sleeping backoff, 2*backoff, ... (capped at 8 s).
    $KJOB_RETRIES / $KJOB_RETRY_BACKOFF set them (tests make them fast)."""

    attempts: int = 4
    backoff: float = 0.5

    @classmethod
    def from_env(cls) -> "Retry":
        current = settings.current()
        return cls(current.retries, current.retry_backoff)

    def sleep(self, attempt: int) -> None:
        time.sleep(min(self.backoff * 2**attempt, 8.0))


class HttpError(Exception):
    """A non-2xx answer, carried to `translate` (internal to kjob)."""

    def __init__(self, status: int, body: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.body, self.reason = status, body, reason

    def status_object(self) -> dict:
        try:
            obj = json.loads(self.body)
            return obj if isinstance(obj, dict) else {}
        except ValueError:
            return {}


class Kube:
    """One API server connection: the client, where it points, and the namespace in use."""

    def __init__(self, api_client, server: str, context: str, namespace: str, retry: Retry | None = None) -> None:
        self.api = api_client
        self.server = server
        self.context = context
        self.namespace = namespace
        self.retry = retry or Retry.from_env()
        current = settings.current()
        self.timeout = (current.connect_timeout, current.read_timeout)

    def where(self) -> str:
        return f'{self.server} (context "{self.context}")'

    def send(self, req: Request, *, stream: bool = False, text: bool = False, timeout=None):
        """Send one request (kjob.cluster.requests builds them) with retries. Returns the
        decoded JSON (a dict; a str for non-JSON bodies), or with stream=True the open
        urllib3 response (caller closes), or with text=True the body as a str (pod logs).
        Raises ClusterUnavailable, Forbidden, NotFound, Conflict, InvalidInput."""
        return self.request(req.method, req.path, verb=req.verb, resource=req.resource, name=req.name,
                            namespace=req.namespace, query=req.query, body=req.body, stream=stream, text=text,
                            timeout=timeout)

    def request(self, method: str, path: str, *, verb: str, resource: str, name: str | None = None, namespace: str | None = None,
                query: dict | None = None, body: dict | None = None, stream: bool = False, text: bool = False, timeout=None):
        """One API call with retries. Returns the decoded JSON (a dict; a str for
        non-JSON bodies), or with stream=True the open urllib3 response (caller closes).
        With text=True the body as a str (pod logs). Raises ClusterUnavailable,
        Forbidden, NotFound, Conflict, InvalidInput."""
        attempt = 0
        while True:
            try:
                return self._once(method, path, query, body, stream, text, timeout)
            except Exception as e:  # noqa: BLE001 - ApiException, urllib3 and socket errors alike
                status = e.status if isinstance(e, HttpError) else None
                retryable = RETRY_STATUS_POST if method == "POST" else RETRY_STATUS
                transient = (status in retryable) or (status is None and _no_connection(e, method))
                if transient and attempt + 1 < self.retry.attempts:
                    self.retry.sleep(attempt)
                    attempt += 1
                    continue
                raise translate(e, kube=self, verb=verb, resource=resource, name=name, namespace=namespace, attempts=attempt + 1) from e

    def _once(self, method, path, query, body, stream, text, timeout):
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json, */*"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = self.api.param_serialize(method=method, resource_path=path, query_params=params, header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(*req, _request_timeout=timeout or self.timeout)
        raw = resp.response
        if not 200 <= raw.status < 300:
            data = raw.read()
            raw.release_conn()
            raise HttpError(raw.status, data.decode("utf-8", "replace"), raw.reason or "")
        if stream:
            return raw
        data = raw.read()
        raw.release_conn()
        if text:
            return data.decode("utf-8", "replace")
        try:
            return json.loads(data) if data else {}
        except ValueError:
            return data.decode("utf-8", "replace")


def _query_value(value):
    return ("true" if value else "false") if isinstance(value, bool) else value


def _no_connection(e: Exception, method: str) -> bool:
    """A transport error where retrying is safe: any for reads, no-connection for POST."""
    import urllib3.exceptions as u
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, u.MaxRetryError):
        e = e.reason or e
    # The client turns TLS failures into ApiException(status=0): retrying will not help.
    if isinstance(e, (KjobError, ApiException, u.SSLError)):
        return False
    if method != "POST":
        return isinstance(e, (u.HTTPError, OSError))
    return isinstance(e, (u.NewConnectionError, ConnectionRefusedError))


def translate(e: Exception, *, kube: Kube, verb: str, resource: str, name: str | None = None, namespace: str | None = None, attempts: int = 1) -> KjobError:
    """Turn any error from the client/transport into a KjobError naming what failed."""
    if isinstance(e, KjobError):
        return e
    what = f"{verb} {resource}" + (f' "{name}"' if name else "") + (f' in namespace "{namespace}"' if namespace else "")
    if isinstance(e, HttpError):
        return _translate_status(e, kube, verb, resource, name, namespace, what, attempts)
    status = getattr(e, "status", None)
    text = _transport_words(e)
    if status == 0 or "SSL" in text or "CERTIFICATE" in text.upper():
        return ClusterUnavailable(f"cannot reach the Kubernetes API server {kube.where()}: TLS failed: {text}", hint="check certificate-authority/insecure-skip-tls-verify of the cluster in your kubeconfig")
    return ClusterUnavailable(f"cannot reach the Kubernetes API server {kube.where()}: {text}", hint="is the cluster up and the kubeconfig's server address right? (kubectl cluster-info)")


def _transport_words(e: Exception) -> str:
    import urllib3.exceptions as u

    if isinstance(e, u.MaxRetryError) and e.reason is not None:
        e = e.reason
    if isinstance(e, u.NewConnectionError) or isinstance(e, ConnectionRefusedError):
        return "connection refused" if "refused" in str(e).lower() else f"cannot connect ({str(e).split(': ')[-1]})"
    if isinstance(e, (u.ReadTimeoutError, u.ConnectTimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(e, u.ProtocolError):
        return "the connection broke"
    reason = getattr(e, "reason", None) or str(e)
    return " ".join(str(reason).split())[:300]


# RBAC's denial (k8s.io/apiserver endpoints/handlers/responsewriters: forbiddenMessage):
# 'User "u" cannot get resource "pods/exec" in API group "" in the namespace "n"'.
_DENIED = re.compile(r'cannot (\w+) resource "([^"]+)"')
# An admission webhook's denial (k8s.io/apiserver admission/plugin/webhook/errors:
# 'admission webhook "x" denied the request: ...') and a ValidatingAdmissionPolicy's
# ('ValidatingAdmissionPolicy 'p' with binding 'b' denied request: ...').
_ADMISSION = re.compile(r"^admission webhook \"[^\"]+\" denied the request|\bValidatingAdmissionPolicy '[^']*' with binding '[^']*' denied request")


def _translate_status(e: HttpError, kube: Kube, verb, resource, name, namespace, what, attempts) -> KjobError:
    status = e.status_object()
    message = status.get("message") or e.body.strip()[:300] or e.reason
    details = status.get("details") or {}
    if e.status == 401:
        return ClusterUnavailable(f"the Kubernetes API server {kube.where()} rejected the credentials (401 Unauthorized)", hint="log in again or refresh the token/certificate in your kubeconfig")
    if e.status == 403 and _ADMISSION.search(message):
        # An admission webhook's (or policy's) denial is 403 Forbidden too, as RBAC's is;
        # only its message tells them apart. It refuses the object, not the user: the
        # spec is what to change (exit 2), and the webhook's own words say how.
        return InvalidInput(f"the cluster's admission control refused to {what}: {message}", hint="change the spec as the message says; the refusal is the cluster's policy, not RBAC")
    if e.status == 403:
        # The server's own words say which verb it checked, which for a websocket exec is
        # not the one the request looks like (`get pods/exec` up to 1.34).
        said = _DENIED.search(message)
        if said:
            verb, resource = said.group(1), said.group(2)
            what = f"{verb} {resource}" + (f' "{name}"' if name else "") + (f' in namespace "{namespace}"' if namespace else "")
        return Forbidden(f'forbidden: cannot {what} (context "{kube.context}"): {message}', hint="ask a cluster admin for a Role that allows it (kubectl auth can-i " + f"{verb} {resource})")
    if e.status == 404:
        if details.get("kind") == "namespaces":
            return NotFound(f'namespace "{details.get("name", namespace)}" not found on {kube.where()}', hint="create it (kubectl create namespace) or pick another with -n")
        if not status:  # a plain "404 page not found": the API itself is not served
            return NotFound(f"the API for {resource} is not served by {kube.where()}")
        return NotFound(f'{resource} "{name or details.get("name")}" not found in namespace "{namespace}" on {kube.where()}')
    if e.status == 409:
        return Conflict(f"conflict: cannot {what}: {message}")
    if e.status in (400, 422):
        return InvalidInput(f"the API server refused to {what}: {message}")
    if e.status >= 500 or e.status == 429:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return ClusterUnavailable(f"the Kubernetes API server {kube.where()} is failing: {e.status} {e.reason or status.get('reason', '')} on {what}{tries}: {message}".replace("  ", " "))
    return ClusterUnavailable(f"unexpected answer {e.status} from {kube.where()} to {what}: {message}")


# -- configuration, as kubectl reads it ----------------------------------------------------------
class LibraryLog(logging.Handler):
    """Keeps the error records the `kubernetes` client logs instead of raising: a failed exec
    credential plugin reaches the caller only as a root-logger line (`ERROR:root:...`).
    Installed on the root logger for the process, so no such line reaches the terminal;
    connect() turns what it keeps into kjob's own error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _library_log() -> LibraryLog:
    root = logging.getLogger()
    mine = next((h for h in root.handlers if isinstance(h, LibraryLog)), None)
    if mine is None:
        mine = LibraryLog()
        root.addHandler(mine)
    mine.messages.clear()
    return mine


def _exec_plugin(paths: list[str], user: str | None) -> dict | None:
    """users[].user.exec of `user` in the kubeconfig files (the first file naming the user
    wins, as kubectl merges them), or None."""
    import yaml

    for path in paths:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        for entry in doc.get("users") or []:
            if isinstance(entry, dict) and entry.get("name") == user:
                return (entry.get("user") or {}).get("exec")
    return None


def _plugin_failed(plugin: dict, user: str, said: list[str], path: str) -> ClusterUnavailable:
    """One line naming the plugin, what it said (its last words: a plugin's stderr can be
    long) and the fix."""
    command = str(plugin.get("command", "?"))
    words = [line.strip() for message in said for line in message.splitlines() if line.strip()]
    last = words[-1] if words else "no credentials"
    last = last if len(last) <= 300 else last[:297] + "..."
    hint = (f"install {command} (or put it on PATH), or fix users[{user}].user.exec in {path}"
            if "No such file" in last or "not found" in last else
            f"run {command} {' '.join(map(str, plugin.get('args') or []))} yourself to see why (often: log in again)")
    return ClusterUnavailable(f'the kubeconfig\'s exec credential plugin "{command}" (user "{user}") failed: {last}', hint=hint.rstrip())


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> Kube:
    """Load kubeconfig ($KUBECONFIG, ~/.kube/config) or the in-cluster service account.

    Namespace: the flag, else the context's, else "default" (in a pod: the service
    account's). Raises InvalidInput (missing file, unknown context) or ClusterUnavailable
    (no configuration at all, unreadable credentials, a failing exec credential plugin)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    files = [kubeconfig] if kubeconfig else [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if kubeconfig and not Path(kubeconfig).is_file():
        raise InvalidInput(f"kubeconfig {kubeconfig} {'is not a file' if Path(kubeconfig).exists() else 'does not exist'}")
    if not files and Path("~/.kube/config").expanduser().is_file():
        files = [str(Path("~/.kube/config").expanduser())]
    existing = [f for f in files if Path(f).is_file()]
    try:
        if not existing:
            if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                where = f"$KUBECONFIG names no existing file ({', '.join(files)})" if files else \
                    "no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config)"
                raise ClusterUnavailable(f"no cluster configured: {where} and not running in a pod",
                                         hint="point --kubeconfig at your cluster's kubeconfig")
            config.load_incluster_config(client_configuration=cfg)
            ns = namespace or (Path(SA_NAMESPACE).read_text().strip() if Path(SA_NAMESPACE).is_file() else "default")
            ctx_name = "in-cluster"
        else:
            path = os.pathsep.join(existing)
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), None) if context else active
            if chosen is None:
                names = ", ".join(c["name"] for c in contexts) or "none"
                raise InvalidInput(f'context "{context}" not found in {path} (available: {names})')
            log = _library_log()
            config.load_kube_config(config_file=path, context=chosen["name"], client_configuration=cfg, persist_config=False)
            user = (chosen.get("context") or {}).get("user")
            plugin = _exec_plugin(existing, user)
            if plugin is not None and log.messages:
                raise _plugin_failed(plugin, user, log.messages, path)
            ns = namespace or chosen.get("context", {}).get("namespace") or "default"
            ctx_name = chosen["name"]
    except ConfigException as e:
        raise ClusterUnavailable(f"cannot load the cluster configuration: {e}") from e
    # kjob retries itself (Retry); urllib3's own retries would multiply the attempts.
    cfg.retries = 0
    return Kube(client.ApiClient(cfg), cfg.host, ctx_name, ns)
