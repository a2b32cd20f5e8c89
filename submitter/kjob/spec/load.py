"""Loading spec files: YAML with line numbers in, a checked JobSpec out, and every problem
reported at once as `FILE:LINE:COL: field.path: message` (InvalidInput, exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ValidationError

from kjob.errors import InvalidInput
from kjob.spec.checks import check_subdomain, cross_field_problems
from kjob.spec.model import JobSpec
from kjob.spec.yamlfile import Located, dotted, locate, parse_yaml



# A spec is a few KiB; anything past this is not one (and is not read into memory).
MAX_SPEC_BYTES = 1 << 20


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate one spec file (`-` reads standard input).

    Raises InvalidInput (exit code 2) listing every problem as
    `FILE:LINE:COL: field.path: message` (YAML syntax errors included)."""
    if str(path) == "-":
        return parse_spec(sys.stdin.read(MAX_SPEC_BYTES), "<stdin>")
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise InvalidInput(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InvalidInput(f"{path}: is a directory, not a spec file") from e
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path}: cannot read: {e}") from e
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidInput(f"{path}: larger than {MAX_SPEC_BYTES >> 20} MiB; not a job spec")
    return parse_spec(text, str(path))


def parse_spec(text: str, filename: str = "<spec>") -> JobSpec:
    """Validate spec text; `filename` only appears in messages. Raises InvalidInput."""
    doc = parse_yaml(text, filename)  # raises InvalidInput on syntax errors
    problems: list[tuple[int, int, str]] = [_split(p) for p in doc.problems]
    if not isinstance(doc.data, dict):
        raise InvalidInput("invalid spec", problems=[f"{filename}:1:1: (top level): the spec must be a mapping of fields (name, image, ...)"])
    spec = None
    try:
        spec = JobSpec.model_validate(doc.data)
    except ValidationError as e:
        errors = [{**err, "loc": _untagged(err["loc"])} for err in e.errors()]
        problems += [_locate(doc.root, err["loc"], _message(err), at_key=err["type"] == "extra_forbidden") for err in errors]
        salvaged = _without(doc.data, [err["loc"] for err in errors])
        try:
            # Fields that passed can still be checked against each other.
            spec = JobSpec.model_validate(salvaged) if salvaged is not None else None
        except ValidationError:
            spec = None
        bad = {tuple(err["loc"][:1]) for err in errors}
    else:
        bad = set()
    if spec is not None:
        problems += [_locate(doc.root, loc, msg) for loc, msg in cross_field_problems(spec) if tuple(loc[:1]) not in bad]
    if problems:
        problems.sort(key=lambda p: (p[0], p[1]))
        raise InvalidInput("invalid spec", problems=[f"{filename}:{line}:{col}: {text}" for line, col, text in problems])
    return spec


def _untagged(loc: tuple) -> tuple:
    """`loc` without the tag pydantic puts after an env variable's name (value | secret:
    which of the two forms it was checked as); the spec has no such key."""
    if len(loc) > 2 and loc[0] == "env" and loc[2] in ("value", "secret"):
        return loc[:2] + loc[3:]
    return loc


def _split(problem: str) -> tuple[int, int, str]:
    line, col, text = problem.split(":", 2)
    return int(line), int(col), text.lstrip()


def _without(data: dict, locs: list[tuple]) -> dict | None:
    """A copy of `data` without the values at `locs` (so defaults apply), or None when a
    required value is missing or the location cannot be removed."""
    import copy

    data = copy.deepcopy(data)
    for loc in locs:
        node = data
        for part in loc[:-1]:
            node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        if node is None or not _has(node, loc[-1]):
            return None  # a missing required field: nothing to fall back to
        if isinstance(node, dict):
            del node[loc[-1]]
        else:
            return None
    return data


def _has(node, key) -> bool:
    return key in node if isinstance(node, dict) else isinstance(key, int) and 0 <= key < len(node)


# Pydantic's wording for the common cases, shorter and with the value that was given.
_MESSAGES = {
    "greater_than_equal": "must be at least {ge}, got {input!r}",
    "greater_than": "must be greater than {gt}, got {input!r}",
    "less_than_equal": "must be at most {le}, got {input!r}",
    "less_than": "must be less than {lt}, got {input!r}",
    "literal_error": "must be one of {expected}, got {input!r}",
    "int_parsing": "must be an integer, got {input!r}",
    "int_from_float": "must be a whole number, got {input!r}",
    "int_type": "must be an integer, got {input!r}",
    "float_parsing": "must be a number, got {input!r}",
    "float_type": "must be a number, got {input!r}",
    "bool_parsing": "must be true or false, got {input!r}",
    "bool_type": "must be true or false, got {input!r}",
    "string_type": "must be a string, got {input!r} (quote it)",
    "string_too_short": "must not be empty",
    "dict_type": "must be a mapping (key: value), got {input!r}",
    "model_type": "must be a mapping of fields, got {input!r}",
    "model_attributes_type": "must be a mapping of fields, got {input!r}",
    "list_type": "must be a list, got {input!r}",
    "missing": "required field is missing",
}


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field" + _suggest(err["loc"])
    template = _MESSAGES.get(err["type"])
    if template:
        try:
            return template.format(input=err.get("input"), **err.get("ctx", {}))
        except (KeyError, IndexError):
            pass
    return err["msg"].removeprefix("Value error, ")


def _suggest(loc: tuple) -> str:
    import difflib

    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        field = next((f for f in model.model_fields.values() if f.alias == part), None)
        ann = getattr(field, "annotation", None) if field else None
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return ""
        model = inner[0]
    names = [f.alias for f in model.model_fields.values() if f.alias]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(names)})"


def _locate(root: Located, loc: tuple, message: str, at_key: bool = False) -> tuple[int, int, str]:
    if loc and loc[-1] == "[key]":  # pydantic's marker for a bad key of a mapping
        loc, at_key = loc[:-1], True
    line, col, keys = locate(root, loc, at_key=at_key)
    return line, col, f"{dotted(keys)}: {message}"


def load_specs(paths) -> list[JobSpec]:
    """Load several spec files, collecting the problems of all of them into one
    InvalidInput (raised when any file has a problem)."""
    specs, problems = [], []
    for path in paths:
        try:
            specs.append(load_spec(path))
        except InvalidInput as e:
            problems += e.problems or [e.message]
    if problems:
        raise InvalidInput("invalid spec", problems=problems)
    return specs


def with_namespace(spec: JobSpec, namespace: str | None) -> JobSpec:
    """The spec with its namespace replaced (the CLI's -n). Raises InvalidInput for a
    namespace Kubernetes would reject."""
    if not namespace:
        return spec
    try:
        check_subdomain(namespace)
    except ValueError as e:
        raise InvalidInput(f"--namespace: {e}") from None
    return spec.model_copy(update={"namespace": namespace})
