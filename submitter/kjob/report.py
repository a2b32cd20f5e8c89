"""What `kjob status` and `kjob list` print: a JobStatus (or a list of them) as text,
JSON or YAML, the same for a cluster job and a local run."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kjob.backend import JobStatus


def dump(data, output: str) -> str:
    """`-o json|yaml` output of a JobStatus / list of them."""
    plain = [d.to_dict() for d in data] if isinstance(data, list) else data.to_dict()
    if output == "yaml":
        import yaml

        return yaml.safe_dump(plain, sort_keys=False).rstrip("\n")
    return json.dumps(plain, indent=2)


def age(created: str | None, now: datetime | None = None) -> str:
    if not created:
        return "-"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    secs = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_status(st: JobStatus) -> str:
    where = f"{st.namespace}/{st.name}" if st.namespace else st.name
    lines = [f"Job:       {where} ({st.kind})", f"State:     {st.state}"]
    if st.message:
        lines.append(f"Message:   {st.message}")
    if st.cause:
        lines.append(f"Cause:     {st.cause}")
    if st.exit_code is not None:
        lines.append(f"Exit code: {st.exit_code}")
    if st.managed_by:
        lines.append(f"Managed:   by {st.managed_by} (a delete lasts until its next sync)")
    if st.workers:
        lines.append(f"Workers:   {st.workers} x {st.gpus_per_worker} GPU")
    if st.image:
        lines.append(f"Image:     {st.image}")
    times = [f"{k} {v}" for k, v in (("created", st.created), ("started", st.started), ("finished", st.finished)) if v]
    if times:
        lines.append("Time:      " + ", ".join(times))
    if st.replicas:
        parts = [f"{role} " + " ".join(f"{n} {word}" for word, n in counts.items()) for role, counts in st.replicas.items()]
        lines.append("Replicas:  " + "; ".join(parts))
    if st.pods:
        rows = [["REPLICA", "POD", "PHASE", "READY", "RESTARTS", "NODE", "REASON"]]
        rows += [[p.replica, p.name, p.phase, "yes" if p.ready else "no", str(p.restarts), p.node or "-", p.reason or ""] for p in st.pods]
        lines += ["Pods:"] + ["  " + r for r in _table(rows)]
    lines += [f"Warning:   {w}" for w in st.warnings]
    return "\n".join(lines)


def format_list(jobs: list[JobStatus], all_namespaces: bool = False) -> str:
    if not jobs:
        return "No kjob jobs found."
    head = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "KIND", "STATE", "AGE", "WORKERS", "IMAGE"]
    rows = [head]
    for j in jobs:
        rows.append(([j.namespace or "-"] if all_namespaces else []) + [j.name, j.kind, j.state, age(j.created), f"{j.workers}x{j.gpus_per_worker}", j.image or "-"])
    return "\n".join(_table(rows))
