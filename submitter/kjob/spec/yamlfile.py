"""YAML loading that remembers where every value came from.

PyYAML's composer keeps a start mark (line, column) on every node; we keep the node tree
next to the plain data so that a validation error at `train.batchSize` can be reported
at the line and column of that value in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from kjob.errors import InvalidInput

Located = yaml.Node
# A spec has a few dozen values; far more means a mistake or an alias bomb.
MAX_VALUES = 10_000
# A spec nests about five levels. The limit is kjob's own and sits far below PyYAML's
# (1,000 flow levels since 6.0.4; the pure-Python loader hits Python's recursion limit),
# so the same file gets the same message whichever PyYAML is installed.
MAX_DEPTH = 100
_OPENS = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)
_CLOSES = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)

import re

# The C loader is ~10x faster and keeps the same marks; fall back when libyaml is absent.
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):
    """Safe loader that also reads `1e-4` as a number (YAML 1.2, JSON); YAML 1.1 wants
    a dot (`1.0e-4`) and would hand the spec a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Document:
    data: object
    root: Located | None
    problems: list[str] = field(default_factory=list)  # "LINE:COL: path: message", no file name


def parse_yaml(text: str, filename: str) -> Document:
    """Parse one YAML document. Raises kjob.errors.InvalidInput for syntax errors,
    several documents, or an empty file; duplicate keys are returned as problems."""
    loader = _Loader(text)
    try:
        if _too_deep(text):
            raise InvalidInput("invalid YAML", problems=[f"{filename}:1:1: (yaml): nested too deeply to be a spec"])
        root = loader.get_single_node()
        if root is None:
            raise InvalidInput("empty spec", problems=[f"{filename}:1:1: (top level): the file is empty; a spec needs at least name, image and checkpoints"])
        size = _expanded_size(root, {})
        if size > MAX_VALUES:
            raise InvalidInput("spec too large", problems=[
                f"{filename}:1:1: (yaml): the document expands to more than {MAX_VALUES} values (through aliases); a spec has a few dozen"])
        problems = list(_duplicate_keys(root))
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        if "nesting depth" in str(e.problem):  # a PyYAML limit below kjob's, should one come
            raise InvalidInput("invalid YAML", problems=[f"{filename}:1:1: (yaml): nested too deeply to be a spec"]) from None
        mark = e.problem_mark or e.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        what = " ".join(s for s in (e.context, e.problem) if s) or "invalid YAML"
        if "expected a single document" in what:
            what = "the file holds several YAML documents; give one spec per file"
        raise InvalidInput("invalid YAML", problems=[f"{filename}:{where}: (yaml): {what}"]) from None
    except RecursionError:
        raise InvalidInput("invalid YAML", problems=[f"{filename}:1:1: (yaml): nested too deeply to be a spec"]) from None
    except yaml.YAMLError as e:  # reader errors (bad characters) carry a position too
        pos = getattr(e, "position", None)
        raise InvalidInput("invalid YAML", problems=[f"{filename}:1:{(pos or 0) + 1}: (yaml): {e}"]) from None
    finally:
        loader.dispose()
    return Document(data, root, problems)


def _too_deep(text: str) -> bool:
    """True when collections open more than MAX_DEPTH levels deep. Reads tokens with the
    pure-Python scanner (libyaml's looks ahead far enough to hit its own limit first) and
    stops at the limit. A syntax error ends the check: the loader reports it, in libyaml's
    words where libyaml is there."""
    depth = 0
    scanner = yaml.SafeLoader(text)
    try:
        while (token := scanner.get_token()) is not None:
            if isinstance(token, _OPENS):
                depth += 1
                if depth > MAX_DEPTH:
                    return True
            elif isinstance(token, _CLOSES):
                depth -= 1
    except yaml.YAMLError:
        pass
    finally:
        scanner.dispose()
    return False


def _expanded_size(node: Located, memo: dict) -> int:
    """How many values the document has once aliases are expanded (an alias can repeat a
    big node many times: the "billion laughs" file). Memoized per node, so linear."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once
        if isinstance(node, yaml.MappingNode):
            total = sum(1 + _expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = sum(1 + _expanded_size(v, memo) for v in node.value)
        else:
            total = 1
        memo[key] = min(total, 10 * MAX_VALUES)
    return memo[key]


def _duplicate_keys(node: Located, path: tuple = ()):
    """Yield a problem for every key that appears twice in one mapping (YAML's loader
    would silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            sub = path + (name,)
            if name is not None and name in seen:
                yield f"{key.start_mark.line + 1}:{key.start_mark.column + 1}: {dotted(sub)}: duplicate key (first at line {seen[name] + 1})"
            elif name is not None:
                seen[name] = key.start_mark.line
            yield from _duplicate_keys(value, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (i,))


def locate(root: Located | None, loc: tuple, at_key: bool = False) -> tuple[int, int, list]:
    """(line, column, path) of the node at pydantic location `loc`, both 1-based.

    When part of `loc` is absent from the file (a missing field), the position is that
    of the closest enclosing node that exists. With at_key, a mapping entry is located
    at its key instead of its value (for unknown fields)."""
    node, mark, path = root, root.start_mark if root is not None else None, []
    for part in loc:
        path.append(part)
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    nxt, key_mark = value, key.start_mark
            if nxt is not None and at_key and part == loc[-1]:
                mark = key_mark
                node = None
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            node = None
            continue
        node, mark = nxt, nxt.start_mark
    if mark is None:
        return 1, 1, path
    return mark.line + 1, mark.column + 1, path


def dotted(keys) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top level)"
