"""Label and field selectors as kube-apiserver parses them (the subset kubectl uses)."""

from __future__ import annotations

import re

from .http import Abort

_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def label_matcher(selector: str | None):
    """Returns a predicate over a labels dict; raises Abort(400) on a bad selector."""
    if not selector:
        return lambda labels: True
    tests = []
    for term in _split(selector):
        m = _TERM.fullmatch(term)
        if not m:
            raise Abort(400, f"unable to parse requirement: {term!r}")
        neg, key, op, value, setop, values = m.groups()
        if op in ("=", "=="):
            tests.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif op == "!=":
            tests.append(lambda lb, k=key, v=value: lb.get(k) != v)
        elif setop:
            vals = {v.strip() for v in values.split(",")}
            if setop == "in":
                tests.append(lambda lb, k=key, vs=vals: lb.get(k) in vs)
            else:
                tests.append(lambda lb, k=key, vs=vals: lb.get(k) not in vs)
        elif neg:
            tests.append(lambda lb, k=key: k not in lb)
        else:
            tests.append(lambda lb, k=key: k in lb)
    return lambda labels: all(t(labels or {}) for t in tests)


def _dig(obj: dict, path: str):
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def field_matcher(selector: str | None):
    """Field selectors: `a.b=c`, `a.b==c`, `a.b!=c`, comma-separated."""
    if not selector:
        return lambda obj: True
    tests = []
    for term in _split(selector):
        m = re.fullmatch(r"\s*([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*?)\s*", term)
        if not m:
            raise Abort(400, f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        if op == "!=":
            tests.append(lambda o, p=path, v=value: str(_dig(o, p) or "") != v)
        else:
            tests.append(lambda o, p=path, v=value: str(_dig(o, p) or "") == v)
    return lambda obj: all(t(obj) for t in tests)
