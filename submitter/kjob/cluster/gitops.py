"""Which GitOps tool keeps a job in its cluster, read from the marks Argo CD and Flux leave
on what they apply (kjob.names: field managers, tracking annotation, owner labels).

A job such a tool applied comes back after `kjob delete` unless its manifest leaves Git,
so status and delete say so. Pure functions over API dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from kjob.names import ARGOCD_FIELD_MANAGER, ARGOCD_TRACKING_ID, FLUX_OWNERS


@dataclass(frozen=True)
class GitOpsOwner:
    tool: str  # "Argo CD" | "Flux"
    source: str | None  # 'Application "smoke"', 'Kustomization flux-system/apps'; None: unknown

    def __str__(self) -> str:
        return self.tool + (f" ({self.source})" if self.source else "")


def gitops_owner(obj: dict) -> GitOpsOwner | None:
    """The tool that applied `obj`, or None. Labels and the tracking annotation name the
    owning Application/Kustomization; a field manager alone names only the tool."""
    md = obj.get("metadata") or {}
    labels, annotations = md.get("labels") or {}, md.get("annotations") or {}
    managers = {f.get("manager") for f in md.get("managedFields") or []}
    for group, (manager, kind) in FLUX_OWNERS.items():
        name, namespace = labels.get(f"{group}/name"), labels.get(f"{group}/namespace")
        if name:
            return GitOpsOwner("Flux", f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}")
        if manager in managers:
            return GitOpsOwner("Flux", None)
    tracking = annotations.get(ARGOCD_TRACKING_ID)
    if tracking:
        # "<app>:<group>/<kind>:<namespace>/<name>": the owning Application first.
        return GitOpsOwner("Argo CD", f'Application "{tracking.split(":", 1)[0]}"')
    if ARGOCD_FIELD_MANAGER in managers:
        return GitOpsOwner("Argo CD", None)
    return None


def recreated_note(owner: GitOpsOwner) -> str:
    """What delete adds about a job a GitOps tool applied."""
    return f"{owner} applied this job and will recreate it on its next sync unless its manifest leaves Git"
