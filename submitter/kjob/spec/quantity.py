"""Kubernetes quantities ("500m", "64Gi") as numbers: what the spec's checks and the
pod sizing compare."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# Kubernetes resource.Quantity: a decimal number with an optional SI/binary suffix.
_QUANTITY_RE = re.compile(r"^(?P<num>[+]?(\d+(\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_SUFFIX = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
    "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity ("500m" -> 0.5, "2Gi" -> 2147483648).

    Raises ValueError when `text` is not a quantity Kubernetes accepts."""
    m = _QUANTITY_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. '8', '500m', '64Gi')")
    suffix = m.group("suffix") or ""
    try:
        base = Decimal(m.group("num"))
        if suffix[:1] in ("e", "E"):
            return base * Decimal(10) ** int(suffix[1:])
        return base * _SUFFIX[suffix]
    except (InvalidOperation, OverflowError) as e:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from e
