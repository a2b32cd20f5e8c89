"""Plain checks of spec values (no pydantic): Kubernetes names, quantities, image
references, paths, and the checks that involve several fields of a JobSpec.

Each single-value check returns the value or raises ValueError with the message the
user sees after `FILE:LINE:COL: field.path:`.
"""

from __future__ import annotations

import posixpath
import re

from kjob.spec.kinds import kind_problems
from kjob.spec.network import extended_resources_problems
from kjob.spec.quantity import parse_quantity
from kjob.spec.sizing import sizing_problems, sizing_warnings

# --- single values --------------------------------------------------------------------

# RFC 1035 label: the operators make Services named after the job and its replicas,
# and Service names must start with a letter.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
# An Open MPI MCA parameter: framework_component_name, lowercase.
_MCA_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
# mpirun options that would undo what kjob sets (the operator's hostfile, -np, the ranks'
# rendezvous variable) or end mpirun's options early; spelled with one or two dashes.
_MPIRUN_OWN = {
    **dict.fromkeys(("np", "n", "c"), "-np is kjob's: workers x gpusPerWorker"),
    **dict.fromkeys(("hostfile", "machinefile", "default-hostfile", "host", "H", "app"),
                    "kjob passes the operator's hostfile (--hostfile /etc/mpi/hostfile)"),
    **dict.fromkeys(("mca", "gmca", "prtemca", "pmixmca", "tune", "am"),
                    "give Open MPI's MCA parameters under mpi.mca, where they are checked"),
}
# A container image reference as the distribution spec defines it (simplified):
# [registry[:port]/]path[:tag][@sha256:digest], path components lowercase.
_IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
# Paths kjob itself mounts in the pods; user volumes must not shadow them.
RESERVED_PATHS = ("/dev/shm", "/etc/mpi", "/home/mpiuser/.ssh")
# What the launcher passes to every rank (kjob_trainer.distributed.RENDEZVOUS_VARIABLE).
RESERVED_MPIRUN_VARIABLES = ("KJOB_RENDEZVOUS_HOST",)
# Variables mpirun, PMIx and the training-operator set; a spec must not override them.
RESERVED_ENV_PREFIXES = ("OMPI_", "PMIX_", "PRTE_", "PET_")


def no_surrogates(value: str) -> str:
    # Lone surrogates (from "\ud800" escapes in YAML) cannot be written as UTF-8.
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("contains an unpaired UTF-16 surrogate")
    return value


def number_as_text(value):
    # A YAML number as a quantity: 8 -> "8", 0.5 -> "0.5" (never a bool: `true` is no quantity).
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return str(int(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def off_is_false(value):
    # YAML 1.1 reads an unquoted `off` as false.
    return "off" if value is False else value


def check_quantity(value: str) -> str:
    if parse_quantity(value) <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return value


def check_abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path (start with '/')")
    if any(not c.isprintable() for c in value):
        raise ValueError("must not contain control characters or line breaks")
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise ValueError(f"{value!r} is not normalized (write {posixpath.normpath(value)!r})")
    return value


def check_subdomain(value: str) -> str:
    if len(value) > 253 or not _SUBDOMAIN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')")
    return value


def check_image(value: str) -> str:
    if len(value) > 512 or not _IMAGE_RE.match(value):
        raise ValueError(f"{value!r} is not an image reference (e.g. 'registry.example.com/team/kjob-trainer:0.1.0')")
    return value


def check_label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid label value (<= 63 of letters, digits, '-', '_', '.')")
    return value


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid job name: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit")
    return value


def check_label_key(key: str) -> str:
    if len(key) > 316 or not _QUALIFIED_NAME_RE.match(key):
        raise ValueError(f"{key!r} is not a valid label key")
    return key


def check_annotation_key(key: str) -> str:
    if len(key) > 316 or not _QUALIFIED_NAME_RE.match(key):
        raise ValueError(f"{key!r} is not a valid annotation key ([prefix/]name, e.g. k8s.v1.cni.cncf.io/networks)")
    return key


def check_env_name(key: str) -> str:
    if not _ENV_NAME_RE.match(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    if key.startswith("PET_"):
        raise ValueError(f"{key!r}: torchrun's PET_* variables are set by the training-operator and by Trainer v2's torch "
                         "plugin, whose validating webhook refuses a TrainJob that sets one; names starting with PET_ are reserved")
    if key.startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(f"{key!r} is set by mpirun or the operator; names starting with {', '.join(RESERVED_ENV_PREFIXES)} are reserved")
    return key


def check_secret_key(value: str) -> str:
    if not 0 < len(value) <= 253 or not _SECRET_KEY_RE.match(value) or value in (".", ".."):
        raise ValueError(f"{value!r} is not a valid Secret key (letters, digits, '-', '_' and '.')")
    return value


def check_mca_name(value: str) -> str:
    if len(value) > 200 or not _MCA_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an Open MPI MCA parameter name (e.g. btl_tcp_if_include)")
    if "hostfile" in value:
        raise ValueError(f"{value!r} would replace the operator's hostfile, which kjob passes to mpirun")
    return value


def mca_value_text(value):
    # YAML numbers and booleans as Open MPI reads them: 1 -> "1", true -> "true".
    if isinstance(value, bool):
        return "true" if value else "false"
    return number_as_text(value)


def check_mpirun_arg(value: str) -> str:
    if not value.strip() or any(not c.isprintable() for c in value):
        raise ValueError("must be a printable, non-blank word (one list item per word)")
    option = value.lstrip("-").split("=", 1)[0] if value.startswith("-") else None
    if option in _MPIRUN_OWN:
        raise ValueError(f"{value!r}: {_MPIRUN_OWN[option]}")
    if value in (":", "--"):
        raise ValueError(f"{value!r} would end mpirun's options: the program is kjob's trainer")
    if value.split("=", 1)[0] in RESERVED_MPIRUN_VARIABLES or value.startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(f"{value!r}: the launcher and mpirun set it for every rank")
    return value


def check_resume(value: str) -> str:
    if value not in ("auto", "never") and not value.startswith("/"):
        raise ValueError(f"must be 'auto', 'never' or an absolute path, not {value!r}")
    return value


# --- checks across fields (each with the path it belongs to) ---------------------------


def max_name_length(spec) -> int:
    """The longest job name whose derived pod names stay within 63 characters."""
    if spec.kind == "TrainJob":
        # JobSet's webhook: <name>-<replicated job>-<job index>-<pod index> plus a 5-letter
        # suffix is a DNS label (placement.GenPodName; the jobset webhook adds "-abcde").
        # kjob's runtimes have one replicated job, `node`.
        return 63 - len(f"-node-0-{spec.workers - 1}-abcde")
    last_worker = spec.workers - 1 if spec.launcher == "mpi" else max(spec.workers - 2, 0)
    longest_suffix = max(len(f"-worker-{last_worker}"), len("-launcher-xxxxx") if spec.launcher == "mpi" else len("-master-0"))
    return 63 - longest_suffix


def cross_field_problems(spec) -> list[tuple[tuple, str]]:
    """Problems that involve more than one field, as (location, message) pairs."""
    out: list[tuple[tuple, str]] = []
    if len(spec.name) > max_name_length(spec):
        pod = f"{spec.name}-node-0-{spec.workers - 1}-abcde" if spec.kind == "TrainJob" else f"{spec.name}-worker-{spec.workers - 1}"
        out.append((("name",), f"{spec.name!r} is {len(spec.name)} characters; at most {max_name_length(spec)} so that pod names "
                    f"like {pod} stay within 63"))
    for key in ("cpu", "memory"):
        req, lim = getattr(spec.pod_requests, key), getattr(spec.pod_limits, key)
        if req and lim and parse_quantity(lim) < parse_quantity(req):
            out.append((("resources", "limits", key), f"{lim} is less than requests.{key} ({req})"))
    out += extended_resources_problems(spec.pod_requests.extended, spec.pod_limits.extended)
    t = spec.train
    # With a config file only what the spec writes is checked here; the trainer checks the rest.
    warmup, epochs = t.known("warmup_epochs"), t.known("epochs")
    if warmup is not None and epochs is not None and warmup >= epochs and warmup > 0:
        out.append((("train", "warmupEpochs"), f"must be less than epochs ({epochs}), got {warmup:g}"))
    if spec.framework == "mindspore" and spec.launcher == "torchrun":
        out.append((("launcher",), "torchrun starts PyTorch only; use launcher: mpi with framework: mindspore"))
    if spec.train.compile and spec.framework != "pytorch":
        out.append((("train", "compile"), "compile is a PyTorch option; MindSpore compiles its graph itself"))
    if spec.train.decoder is not None and spec.framework != "pytorch":
        out.append((("train", "decoder"), "decoder is a PyTorch option; MindSpore decodes with mindspore.dataset"))
    if spec.data is None and not spec.train.synthetic:
        out.append((("data",), "required unless train.synthetic is true"))
    mounts = [(("checkpoints", "mountPath"), spec.checkpoints.mount_path)]
    if spec.data is not None:
        mounts.insert(0, (("data", "mountPath"), spec.data.mount_path))
    for loc, path in mounts:
        for reserved in RESERVED_PATHS:
            if _overlaps(path, reserved):
                out.append((loc, f"{path!r} overlaps {reserved}, which kjob mounts itself"))
    if len(mounts) == 2 and _overlaps(mounts[0][1], mounts[1][1]):
        out.append((mounts[1][0], f"{mounts[1][1]!r} overlaps data.mountPath {mounts[0][1]!r}; use distinct, non-nested paths"))
    out += kind_problems(spec)
    if spec.mpi is not None and spec.launcher != "mpi":
        out.append((("mpi",), "mpi settings are for mpirun (launcher: mpi); torchrun reads none of them"))
    if spec.queue and spec.scheduler_name not in (None, "volcano"):
        out.append((("queue",), "queue works with schedulerName: volcano or the default scheduler (Kueue)"))
    if spec.gpus_per_worker == 0 and t.known("amp") == "fp16":
        out.append((("train", "amp"), "fp16 needs GPUs; use bf16 or off for a CPU job"))
    return out + sizing_problems(spec)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


# Names only a cluster's DNS answers. kubelet mounts NFS with the node's own resolver, which
# usually does not know them ("mount.nfs: Failed to resolve server").
CLUSTER_DNS_SUFFIXES = (".svc", ".cluster.local")


def warnings(spec) -> list[str]:
    """What is valid but likely to fail on a cluster: `kjob validate` says it, nothing stops."""
    out = sizing_warnings(spec)
    nfs = spec.data.nfs if spec.data is not None else None
    server = nfs.server.rstrip(".").lower() if nfs is not None else ""
    if server.endswith(CLUSTER_DNS_SUFFIXES) or ".svc." in server:
        out.append(f"data.nfs.server: {nfs.server} is a cluster DNS name, but kubelet mounts NFS with the node's resolver, "
                "which usually cannot resolve it (mount.nfs: Failed to resolve server); give the server's IP address "
                "or a name the nodes resolve")
    return out
