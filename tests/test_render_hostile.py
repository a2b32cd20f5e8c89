"""Property test: hostile strings in any string field of a spec either are rejected
with InvalidInput or arrive intact in the rendered objects, which keep their shape."""

from __future__ import annotations

import functools
import json
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kjob.errors import InvalidInput
from kjob.render.text import dump_objects, object_text
from kjob.render.manifests import render_objects
from kjob.spec.load import parse_spec
from kjob.spec.model import JobSpec

# A baseline spec in which every string field holds a unique token; the test swaps one
# token for a hostile string. Paths use the YAML (camelCase) keys.
BASE = {
    "name": "tokjob",
    "namespace": "toknamespace",
    "image": "tokimage",
    "imagePullSecrets": ["toksecret"],
    "data": {"nfs": {"server": "tokserver", "path": "/toknfspath"}, "mountPath": "/tokdatamount"},
    "checkpoints": {"claimName": "tokclaim", "mountPath": "/tokckptmount"},
    "resources": {"requests": {"cpu": "7777m", "memory": "33333Mi"}, "limits": {"cpu": "9999m", "memory": "35353Mi"}},
    "shmSize": "4444Mi",
    "train": {"config": "tokconfig", "resume": "/tokresume"},
    "env": {"TOKENVKEY": "tokenvvalue", "TOKSKRENV": {"secretKeyRef": {"name": "tokskrname", "key": "tokskrkey"}}},
    "envFrom": ["tokenvfrom"],
    "mpi": {"mca": {"tokmcakey": "tokmcavalue"}, "args": ["--tokmpiarg"]},
    "capabilities": ["IPC_LOCK"],
    "podAnnotations": {"tokannkey": "tokannvalue"},
    "nodeSelector": {"toklabelkey": "toklabelvalue"},
    "tolerations": [{"key": "toktolkey", "value": "toktolvalue", "effect": "NoSchedule"}],
    "priorityClassName": "tokpriority",
    "schedulerName": "volcano",
    "queue": "tokqueue",
    "local": {"dataPath": "toklocaldata"},
}
# (path, token): every string field of the models, each with the token it holds in BASE.
FIELDS = [
    (("name",), "tokjob"), (("namespace",), "toknamespace"), (("image",), "tokimage"),
    (("imagePullSecrets", 0), "toksecret"), (("data", "nfs", "server"), "tokserver"),
    (("data", "nfs", "path"), "/toknfspath"), (("data", "mountPath"), "/tokdatamount"),
    (("checkpoints", "claimName"), "tokclaim"), (("checkpoints", "mountPath"), "/tokckptmount"),
    (("resources", "requests", "cpu"), "7777m"), (("resources", "requests", "memory"), "33333Mi"),
    (("resources", "limits", "cpu"), "9999m"), (("resources", "limits", "memory"), "35353Mi"),
    (("shmSize",), "4444Mi"), (("train", "config"), "tokconfig"), (("train", "resume"), "/tokresume"),
    (("env", "TOKENVKEY"), "tokenvvalue"), (("env", "[key]"), "TOKENVKEY"),
    (("nodeSelector", "toklabelkey"), "toklabelvalue"), (("nodeSelector", "[key]"), "toklabelkey"),
    (("tolerations", 0, "key"), "toktolkey"), (("tolerations", 0, "value"), "toktolvalue"),
    (("priorityClassName",), "tokpriority"), (("schedulerName",), "volcano"), (("queue",), "tokqueue"),
    (("local", "dataPath"), "toklocaldata"), (("data", "pvc"), "tokpvc"), (("data", "hostPath"), "/tokhostpath"),
    (("env", "TOKSKRENV", "secretKeyRef", "name"), "tokskrname"), (("env", "TOKSKRENV", "secretKeyRef", "key"), "tokskrkey"),
    (("envFrom", 0), "tokenvfrom"), (("mpi", "mca", "tokmcakey"), "tokmcavalue"), (("mpi", "mca", "[key]"), "tokmcakey"),
    (("mpi", "args", 0), "--tokmpiarg"), (("capabilities", 0), "IPC_LOCK"),
    (("podAnnotations", "tokannkey"), "tokannvalue"), (("podAnnotations", "[key]"), "tokannkey"),
    (("runtime",), "tokruntime"),  # kind: TrainJob only: refused on BASE, tested on TRAINJOB_BASE
]
# The sections that are maps of user keys: their values are one field, '*'.
MAPS = {("env",), ("nodeSelector",), ("podAnnotations",), ("mpi", "mca")}
# The data source is one of three: the pvc and hostPath fields get their own baseline.
VARIANTS = {"pvc": {"pvc": "tokpvc", "mountPath": "/tokdatamount"}, "hostPath": {"hostPath": "/tokhostpath", "mountPath": "/tokdatamount"}}


# The same spec as a TrainJob: without the fields a TrainJob refuses (kjob.spec.kinds), with
# a runtime of its own and two workers.
TRAINJOB_REFUSED = ("envFrom", "priorityClassName", "schedulerName")
TRAINJOB_BASE = {**{k: v for k, v in BASE.items() if k not in TRAINJOB_REFUSED}, "kind": "TrainJob", "runtime": "tokruntime",
                 "workers": 2}


def base_for(path: tuple, base: dict = BASE) -> dict:
    data = yaml.safe_load(yaml.safe_dump(base))
    if path[0] == "data" and path[1] in VARIANTS:
        data["data"] = dict(VARIANTS[path[1]])
    return data
# Strings that break naive templating: YAML syntax, Jinja syntax, line breaks YAML folds.
NASTY = ["\n", "a\nb: c", "'", '"', "---", "...", "{{ x }}", "{% if %}", ": ", "- x", "# c", "&a *a", "!!python/object:os.system",
         "\u2028", "\u2029", "\x85", "\ufeff", "🎉", "\t", "\\", "null", "true", "~", "1e3", "", " lead", "trail ", "%TAG", "@", "`",
         "|", ">", "[", "]", "{", "}", ",", "?", "\x00", "\x7f", "ü", "tokjob", "/", "//", "a/../b", "-", "0"]
hostile = st.one_of(
    st.sampled_from(NASTY),
    st.lists(st.sampled_from(NASTY), min_size=2, max_size=4).map("".join),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
)


def _set(data: dict, path: tuple, value: str) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    if path[-1] == "[key]":
        old = next(k for k in node if k.startswith(("tok", "TOK")) and k != "TOKSKRENV")
        node[value] = node.pop(old)
    else:
        node[path[-1]] = value


def _swap(obj, token: str, value: str):
    """`obj` with `token` replaced by `value` in every string and key."""
    if isinstance(obj, dict):
        return {_swap(k, token, value): _swap(v, token, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_swap(v, token, value) for v in obj]
    return obj.replace(token, value) if isinstance(obj, str) else obj


def _render(data: dict) -> dict:
    # kjob's own writer: it quotes strings such as '1e3' that a YAML 1.2 reader (and
    # kjob's spec loader) would take for numbers; PyYAML alone writes them bare.
    text = object_text(data)
    (obj,) = render_objects(parse_spec(text, "hostile.yaml"))
    # what `kjob render` prints reads back as the same objects, in both formats
    assert list(yaml.safe_load_all(dump_objects([obj]))) == [obj]
    assert json.loads(dump_objects([obj], "json"))["items"] == [obj]
    obj["metadata"]["annotations"].pop("kjob.dev/spec-hash")  # changes with any value, by design
    return obj


def _string_fields(ann, path: tuple = ()) -> set[tuple]:
    """Paths of every string in the model tree (list items as 0, dict values as '*')."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _string_fields(args[0], path)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_string_fields(a, path) for a in args if a is not type(None)))
    if origin is list:
        return _string_fields(args[0], path + (0,))
    if origin is dict:
        return _string_fields(args[0], path + ("[key]",)) | _string_fields(args[1], path + ("*",))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return set().union(*(_string_fields(f.annotation, path + (f.alias,)) for f in ann.model_fields.values()))
    return {path} if ann is str else set()


def test_tokens_do_not_overlap():
    tokens = [t for _, t in FIELDS]
    assert not [(a, b) for a in tokens for b in tokens if a != b and a in b]


def test_fields_cover_every_string_field_of_the_models():
    def generic(path):  # ("env", "TOKENVKEY") -> ("env", "*"); ("mpi", "mca", "k") -> ("mpi", "mca", "*")
        for depth in (1, 2):
            if path[:depth] in MAPS and path[depth] != "[key]":
                return path[:depth] + ("*",) + path[depth + 1:]
        return path

    assert _string_fields(JobSpec) == {generic(p) for p, _ in FIELDS}


@functools.cache
def baseline(variant: str, trainjob: bool = False) -> dict:
    return _render(base_for(("data", variant), TRAINJOB_BASE if trainjob else BASE))


@pytest.mark.parametrize("path, token", FIELDS, ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else "")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=hostile)
def test_hostile_strings_arrive_intact_or_are_rejected(path, token, value):
    data = base_for(path)
    _set(data, path, value)
    try:
        rendered = _render(data)
    except InvalidInput:
        return  # rejected with a message: fine
    assert rendered == _swap(baseline(path[1] if path[0] == "data" else "nfs"), token, value)


@pytest.mark.parametrize("path, token", [(p, t) for p, t in FIELDS if p[0] not in TRAINJOB_REFUSED],
                         ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else "")
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=hostile)
def test_hostile_strings_arrive_intact_in_a_trainjob_or_are_rejected(path, token, value):
    data = base_for(path, TRAINJOB_BASE)
    _set(data, path, value)
    try:
        rendered = _render(data)
    except InvalidInput:
        return
    assert rendered["kind"] == "TrainJob"
    assert rendered == _swap(baseline(path[1] if path[0] == "data" else "nfs", True), token, value)


@pytest.mark.parametrize("text", ["1e3", "1E+3", ".5", "0o17", "-.inf", ".nan", "1.0e3", "12"])
def test_strings_a_yaml_1_2_reader_takes_for_numbers_are_quoted(text):
    # kubectl and Argo CD read YAML 1.2-style: a bare 1e3 would arrive as a float.
    assert f"value: '{text}'" in dump_objects([{"value": text}])
