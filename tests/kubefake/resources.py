"""Discovery, CRUD, list and watch for the core kinds, namespaces, the Kubeflow job kinds
and SelfSubjectAccessReview, answering as kube-apiserver does (201 on create with
server metadata, Status bodies with reason + details, plain-text 404 for an unknown
group/version, 410 Gone for a too-old resourceVersion)."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re

from aiohttp import web

from .http import STATE, Abort, CutStream, Stream, gate, qualified
from .selectors import field_matcher, label_matcher
from .store import CLUSTER_SCOPED, CORE, State

DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kinds whose CRD has a status subresource: status sent on create/update is ignored.
STATUS_SUBRESOURCE = {"mpijobs", "pytorchjobs", "trainjobs", "pods"}


def not_found_page() -> web.Response:
    # kube-apiserver answers an unknown group/version with this plain text, not a Status.
    return web.Response(status=404, text="404 page not found\n", content_type="text/plain")


def resolve(state: State, group: str, version: str, plural: str):
    """(kind, namespaced) or None when the server does not serve that resource."""
    if group == "":
        if version != "v1":
            return None
        if plural == "namespaces":
            return "Namespace", False
        return (CORE[plural], True) if plural in CORE else None
    kind = state.crds.get((group, version, plural))
    return (kind, plural not in CLUSTER_SCOPED) if kind else None


def api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


# -- discovery ------------------------------------------------------------------------
def resource_list(state: State, group: str, version: str) -> dict | None:
    resources = []
    if group == "" and version == "v1":
        names = {**CORE, "namespaces": "Namespace"}
        for plural, kind in names.items():
            resources.append({"name": plural, "singularName": kind.lower(), "namespaced": plural != "namespaces", "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
        resources += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": kind, "verbs": verbs} for sub, kind, verbs in (("log", "Pod", ["get"]), ("exec", "PodExecOptions", ["create", "get"]), ("status", "Pod", ["get", "patch", "update"]))]
    elif group == "authorization.k8s.io" and version == "v1":
        resources.append({"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview", "namespaced": False, "kind": "SelfSubjectAccessReview", "verbs": ["create"]})
    else:
        for (g, v, plural), kind in state.crds.items():
            if (g, v) == (group, version):
                namespaced = plural not in CLUSTER_SCOPED
                resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]})
                resources.append({"name": f"{plural}/status", "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "patch", "update"]})
    if not resources:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(group, version), "resources": resources}


def groups(state: State) -> list[dict]:
    versions: dict[str, list[str]] = {"authorization.k8s.io": ["v1"]}
    for g, v, _ in state.crds:
        if v not in versions.setdefault(g, []):
            versions[g].append(v)
    out = []
    for g, vs in versions.items():
        gvs = [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]
        out.append({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
    return out


async def discovery(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    await gate(request, "get", "discovery")
    path = request.path.rstrip("/")
    if path == "/api":
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
    if path == "/apis":
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups(state)})
    parts = path.split("/")[2:]
    if path.startswith("/api/"):
        body = resource_list(state, "", parts[0])
    elif len(parts) == 1:
        match = [g for g in groups(state) if g["name"] == parts[0]]
        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **match[0]}) if match else not_found_page()
    else:
        body = resource_list(state, parts[0], parts[1])
    return web.json_response(body) if body else not_found_page()


# -- CRUD ---------------------------------------------------------------------------------
def route_params(request: web.Request):
    info = request.match_info
    group, version = info.get("group", ""), info.get("version", "v1")
    plural = info["plural"]
    namespace = info.get("namespace")
    if plural == "namespaces" and "name" in info and namespace is None:
        pass
    return group, version, plural, namespace, info.get("name")


def need_namespace(state: State, namespace: str) -> None:
    if state.get("namespaces", "", namespace) is None:
        raise Abort(404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"})


def missing(plural: str, group: str, name: str) -> Abort:
    return Abort(404, f'{qualified(plural, group)} "{name}" not found', details={"name": name, "group": group, "kind": plural})


def strip_list_item(obj: dict, group: str) -> dict:
    # Typed (core) lists omit apiVersion/kind on items; custom resources keep them.
    if group:
        return obj
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


async def collection(request: web.Request) -> web.StreamResponse:
    state: State = request.app[STATE]
    group, version, plural, namespace, _ = route_params(request)
    found = resolve(state, group, version, plural)
    if found is None:
        return not_found_page()
    kind, _ = found
    q = request.query
    if request.method == "POST":
        await gate(request, "create", plural, group, namespace)
        return await create(request, state, group, version, plural, kind, namespace)
    watching = q.get("watch") in ("true", "1")
    cut = await gate(request, "watch" if watching else "list", plural, group, namespace)
    labels, fields = label_matcher(q.get("labelSelector")), field_matcher(q.get("fieldSelector"))

    def wanted(obj: dict) -> bool:
        return labels(obj["metadata"].get("labels")) and fields(obj)

    key = "" if plural == "namespaces" else namespace
    if watching:
        return await watch(request, state, group, version, plural, kind, key, wanted, cut)
    items = [strip_list_item(o, group) for o in state.items(plural, key) if wanted(o)]
    return web.json_response({"kind": f"{kind}List", "apiVersion": api_version(group, version), "metadata": {"resourceVersion": str(state.rv)}, "items": items})


async def create(request, state: State, group, version, plural, kind, namespace) -> web.Response:
    try:
        obj = await request.json()
    except json.JSONDecodeError as e:
        raise Abort(400, f"error decoding request body: {e}")
    if obj.get("kind") != kind or obj.get("apiVersion") != api_version(group, version):
        raise Abort(400, f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version ({api_version(group, version)})")
    md = obj.setdefault("metadata", {})
    if namespace is not None:
        if md.get("namespace", namespace) != namespace:
            raise Abort(400, "the namespace of the provided object does not match the namespace sent on the request")
        need_namespace(state, namespace)
        md["namespace"] = namespace
    if not md.get("name") and md.get("generateName"):
        md["name"] = md["generateName"] + "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    name = md.get("name", "")
    if not name or not DNS1123.fullmatch(name) or len(name) > 253:
        raise Abort(422, f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\'', details={"name": name, "group": group, "kind": kind})
    if state.get(plural, namespace or "", name) is not None:
        raise Abort(409, f'{qualified(plural, group)} "{name}" already exists', reason="AlreadyExists", details={"name": name, "group": group, "kind": plural})
    for server_field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        md.pop(server_field, None)
    if plural in STATUS_SUBRESOURCE:
        obj.pop("status", None)
    if plural == "pods":  # kube-apiserver's defaulting: Pending until scheduled and started
        obj["status"] = {"phase": "Pending"}
    return web.json_response(state.put(plural, obj), status=201)


async def item(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    group, version, plural, namespace, name = route_params(request)
    subresource = request.match_info.get("sub")
    found = resolve(state, group, version, plural)
    # A namespaced kind under the cluster's path, or the other way round: no such route.
    if found is None or subresource not in (None, "status") or found[1] != (namespace is not None):
        return not_found_page()
    verbs = {"GET": "get", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
    resource = plural + (f"/{subresource}" if subresource else "")
    await gate(request, verbs[request.method], resource, group, namespace)
    obj = state.get(plural, namespace or "", name)
    if obj is None:
        raise missing(plural, group, name)
    if request.method == "GET":
        return web.json_response(obj)
    if request.method == "DELETE":
        return web.json_response(state.remove(plural, namespace or "", name))
    body = await request.json()
    if request.method == "PUT":
        rv = body.get("metadata", {}).get("resourceVersion")
        if rv and rv != obj["metadata"]["resourceVersion"]:
            raise Abort(409, f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has been modified; please apply your changes to the latest version and try again', details={"name": name, "group": group, "kind": plural})
        new = copy.deepcopy(body)
    else:
        new = merge_patch(copy.deepcopy(obj), body)
    if subresource == "status":
        new = {**copy.deepcopy(obj), "status": new.get("status")}
    elif plural in STATUS_SUBRESOURCE and "status" in obj:
        new["status"] = copy.deepcopy(obj["status"])
    new["metadata"] = {**new.get("metadata", {}), "name": name}
    if namespace:
        new["metadata"]["namespace"] = namespace
    return web.json_response(state.put(plural, new))


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (strategic merge patches are treated the same here)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


# -- watch --------------------------------------------------------------------------------
async def watch(request, state: State, group, version, plural, kind, namespace, wanted, cut) -> web.StreamResponse:
    q = request.query
    stream = await Stream(request, "application/json", cut.cut_after_bytes if cut else None).start()
    timeout = float(q.get("timeoutSeconds") or 1800)
    bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
    rv = q.get("resourceVersion")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def mine(obj: dict) -> bool:
        return (namespace is None or obj["metadata"].get("namespace", "") == namespace) and wanted(obj)

    try:
        if rv and rv != "0":
            cursor = int(rv)
            if cursor < state.compacted_rv:
                await stream.write_json({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": f"too old resource version: {cursor} ({state.compacted_rv})", "reason": "Expired", "code": 410}})
                await stream.resp.write_eof()
                return stream.resp
        else:
            cursor = state.rv
            for obj in state.items(plural, namespace):
                if mine(obj):
                    await stream.write_json({"type": "ADDED", "object": obj})
        last_bookmark = loop.time()
        while loop.time() < deadline:
            changed = state.changed
            for ev_rv, ev_plural, ev_type, obj in list(state.history):
                if ev_rv > cursor and ev_plural == plural and mine(obj):
                    await stream.write_json({"type": ev_type, "object": obj})
            cursor = state.rv
            if bookmarks and loop.time() - last_bookmark >= state.bookmark_interval:
                await stream.write_json({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version(group, version), "metadata": {"resourceVersion": str(cursor)}}})
                last_bookmark = loop.time()
            wait = min(deadline - loop.time(), state.bookmark_interval if bookmarks else 3600)
            try:
                await asyncio.wait_for(changed.wait(), max(wait, 0.001))
            except asyncio.TimeoutError:
                pass
        await stream.resp.write_eof()
    except (CutStream, ConnectionResetError):
        pass
    return stream.resp


# -- CRDs and their published schemas ---------------------------------------------------------
def _crd_schema(state: State, plural: str) -> dict:
    """A CRD's openAPIV3Schema as far as the fake knows it: the names of the fields under
    .spec (store.SPEC_FIELDS), each an object of unknown shape."""
    fields = state.spec_fields.get(plural, ())
    return {"type": "object", "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                                             "spec": {"type": "object", "properties": {f: {"x-kubernetes-preserve-unknown-fields": True} for f in fields}},
                                             "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}


def _served(state: State, name: str) -> list[tuple[str, str, str, str]]:
    """(group, version, plural, kind) of the CRD `name` (<plural>.<group>)."""
    return [(g, v, p, k) for (g, v, p), k in state.crds.items() if f"{p}.{g}" == name]


async def get_crd(request: web.Request) -> web.Response:
    """GET a CustomResourceDefinition: one per served custom resource, its versions
    those the fake serves, each with the schema _crd_schema gives."""
    state: State = request.app[STATE]
    name = request.match_info["name"]
    await gate(request, "get", "customresourcedefinitions", "apiextensions.k8s.io")
    served = _served(state, name)
    if not served:
        raise missing("customresourcedefinitions", "apiextensions.k8s.io", name)
    group, _, plural, kind = served[0]
    versions = [{"name": v, "served": True, "storage": i == 0, "schema": {"openAPIV3Schema": _crd_schema(state, p)}, "subresources": {"status": {}}}
                for i, (_, v, p, _) in enumerate(served)]
    return web.json_response({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                              "metadata": {"name": name, "uid": "00000000-0000-4000-8000-000000000001", "resourceVersion": "1"},
                              "spec": {"group": group, "names": {"plural": plural, "kind": kind, "singular": kind.lower(), "listKind": f"{kind}List"},
                                       "scope": "Cluster" if plural in CLUSTER_SCOPED else "Namespaced", "versions": versions}})


async def openapi_v3(request: web.Request) -> web.Response:
    """The OpenAPI v3 document of a custom resource group version, as kube-apiserver
    publishes it for every authenticated user (no RBAC on it in the fake): one schema
    per kind, named <reversed group>.<version>.<Kind>, with x-kubernetes-group-version-kind."""
    state: State = request.app[STATE]
    group, version = request.match_info["group"], request.match_info["version"]
    schemas = {}
    for (g, v, plural), kind in state.crds.items():
        if (g, v) == (group, version):
            key = ".".join(reversed(g.split("."))) + f".{v}.{kind}"
            schemas[key] = {**_crd_schema(state, plural), "x-kubernetes-group-version-kind": [{"group": g, "kind": kind, "version": v}]}
    if not schemas:
        return not_found_page()
    return web.json_response({"openapi": "3.0.0", "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"}, "paths": {},
                              "components": {"schemas": schemas}})


# -- SelfSubjectAccessReview -----------------------------------------------------------------
async def access_review(request: web.Request) -> web.Response:
    state: State = request.app[STATE]
    await gate(request, "create", "selfsubjectaccessreviews", "authorization.k8s.io")
    body = await request.json()
    attrs = body.get("spec", {}).get("resourceAttributes", {})
    resource = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
    ns = attrs.get("namespace")
    denied = (attrs.get("verb"), resource, ns) in state.denied or (attrs.get("verb"), resource, None) in state.denied
    body["status"] = {"allowed": not denied}
    if not denied:
        body["status"]["reason"] = f'RBAC: allowed by ClusterRoleBinding "kjob-test" of ClusterRole "cluster-admin" to User "{state.username}"'
    body.setdefault("metadata", {})["creationTimestamp"] = None
    return web.json_response(body, status=201)


def install(app: web.Application, state: State) -> None:
    r = app.router
    for path in ("/api", "/api/{version}", "/apis", "/apis/{group}", "/apis/{group}/{version}"):
        r.add_get(path, discovery)
    r.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", access_review)
    r.add_get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", get_crd)
    r.add_get("/openapi/v3/apis/{group}/{version}", openapi_v3)
    for prefix in ("/api/{version}", "/apis/{group}/{version}"):
        r.add_route("*", prefix + "/namespaces/{namespace}/{plural}", collection)
        r.add_route("*", prefix + "/namespaces/{namespace}/{plural}/{name}", item)
        r.add_route("*", prefix + "/namespaces/{namespace}/{plural}/{name}/{sub}", item)
        r.add_route("*", prefix + "/{plural}", collection)
    r.add_route("*", "/api/{version}/{plural:namespaces}/{name}", item)
    # Cluster-scoped custom resources (ClusterTrainingRuntime).
    r.add_route("*", "/apis/{group}/{version}/{plural}/{name}", item)
