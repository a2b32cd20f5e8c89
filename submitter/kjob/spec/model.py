"""The job spec as pydantic models: every field, its default and its checks, and the
JSON Schema that editors read.

A spec file is one YAML mapping with camelCase keys (like Kubernetes); the Python
attributes are snake_case. Loading a file, with line numbers in its errors, is
kjob.spec.load.

Defaults follow the reference recipes (../shared/references): SGD momentum 0.9,
lr 0.1 per 256 images, weight decay 1e-4, label smoothing 0.1, cosine schedule with
5 warm-up epochs, 90 epochs (torchvision's ResNeXt recipe), 32 images per GPU.
"""

from __future__ import annotations

import json
import posixpath
import sys
import types
from typing import Annotated, Literal

# When pydantic builds its first model it imports its plugin loader, which imports
# importlib.metadata (and with it email, zipfile, tempfile...) and scans every installed
# package's entry points: ~45 ms of the 0.25 s that `kjob render` may take. kjob's models
# use no plugins, so while this module builds them a stand-in loader that finds none
# (what PYDANTIC_DISABLE_PLUGINS=__all__ does) takes its place; it is removed afterwards
# and any later model elsewhere gets the real one.
_PLUGIN_LOADER = "pydantic.plugin._loader"
_stand_in = None
if _PLUGIN_LOADER not in sys.modules:
    _stand_in = types.ModuleType(_PLUGIN_LOADER)
    _stand_in.get_plugins = lambda: ()
    sys.modules[_PLUGIN_LOADER] = _stand_in

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.alias_generators import to_camel

from kjob.names import DEFAULT_KIND, RUNTIMES
from kjob.spec import sizing
from kjob.spec.network import check_capability, check_extended_quantity, check_extended_resource
from kjob.spec.checks import (
    check_abs_path, check_annotation_key, check_env_name, check_mca_name, check_mpirun_arg, check_secret_key, mca_value_text, check_image, check_label_key,
    check_label_value, check_name, check_quantity, check_resume, check_subdomain, no_surrogates, number_as_text, off_is_false,
)

Str = Annotated[str, AfterValidator(no_surrogates)]
JobName = Annotated[str, AfterValidator(check_name)]
Image = Annotated[str, AfterValidator(check_image)]
# Kubernetes accepts `cpu: 8` as well as `cpu: "8"`; so does kjob (and its JSON Schema).
Quantity = Annotated[str, BeforeValidator(number_as_text, json_schema_input_type=int | float | str), AfterValidator(check_quantity)]
AbsPath = Annotated[str, AfterValidator(check_abs_path)]
KubeName = Annotated[str, AfterValidator(check_subdomain)]
LabelValue = Annotated[str, AfterValidator(check_label_value)]


LabelKey = Annotated[str, AfterValidator(check_label_key)]
McaName = Annotated[str, AfterValidator(check_mca_name)]
McaValue = Annotated[str, BeforeValidator(mca_value_text, json_schema_input_type=int | float | bool | str),
                     AfterValidator(no_surrogates), Field(max_length=4096)]
MpirunArg = Annotated[str, AfterValidator(check_mpirun_arg)]
ExtendedResource = Annotated[str, AfterValidator(check_extended_resource)]
ExtendedQuantity = Annotated[str, BeforeValidator(number_as_text, json_schema_input_type=int | str),
                             AfterValidator(check_extended_quantity)]
Capability = Annotated[str, AfterValidator(check_capability)]
AnnotationKey = Annotated[str, AfterValidator(check_annotation_key)]
SecretKey = Annotated[str, AfterValidator(check_secret_key)]
EnvName = Annotated[str, AfterValidator(check_env_name)]


# --- models --------------------------------------------------------------------------


class _Model(BaseModel):
    """camelCase in YAML, snake_case in Python, unknown keys rejected."""

    # strict: YAML's `true` is not a worker count and `8` is not an image name.
    # Only the camelCase keys: `batch_size` in a spec is a typo, not a synonym.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=False, validate_by_alias=True,
                              frozen=True, strict=True)


class NFSSource(_Model):
    server: Str = Field(min_length=1, description="NFS server host name or IP address.")
    path: AbsPath = Field(description="Exported path on the server.")


class DataVolume(_Model):
    """Where the dataset (ImageNet layout: train/<wnid>/*.JPEG, val/...) is; mounted read-only."""

    pvc: KubeName | None = Field(None, description="Name of a PersistentVolumeClaim holding the dataset.")
    host_path: AbsPath | None = Field(None, description="A directory on every node (hostPath).")
    nfs: NFSSource | None = Field(None, description="An NFS export.")
    mount_path: AbsPath = Field("/data", description="Where the dataset appears inside the pods; the trainer's --data-path.")

    @model_validator(mode="after")
    def _one_source(self) -> DataVolume:
        given = [k for k in ("pvc", "host_path", "nfs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of pvc, hostPath, nfs" + (f" (got {', '.join(to_camel(g) for g in given)})" if given else ""))
        return self


class Checkpoints(_Model):
    """The PVC the trainer writes checkpoints to (ReadWriteMany when workers > 1)."""

    claim_name: KubeName = Field(description="Name of the PersistentVolumeClaim for checkpoints.")
    mount_path: AbsPath = Field("/checkpoints", description="Mount path; the job writes to <mountPath>/<name>.")


class ResourceList(_Model):
    """cpu, memory, and extended resources by name (`rdma/hca: 1`, `nvidia.com/hostdev: 8`)."""

    model_config = ConfigDict(**{**_Model.model_config, "extra": "allow"})
    __pydantic_extra__: dict[ExtendedResource, ExtendedQuantity]
    cpu: Quantity | None = Field(None, description="CPU cores (e.g. '8', '500m').")
    memory: Quantity | None = Field(None, description="Memory (e.g. '64Gi').")

    @property
    def extended(self) -> dict[str, str]:
        """The extended resources, by name."""
        return dict(self.__pydantic_extra__ or {})


class Resources(_Model):
    """Per worker pod. GPUs come from gpusPerWorker (nvidia.com/gpu limits)."""

    requests: ResourceList | None = Field(None, description="What the scheduler reserves (default per GPU: cpu 6, "
                                          "memory 24Gi; a CPU job: cpu 8, memory 32Gi); extended resources by name "
                                          "too (rdma/hca: 1), each also in limits with the same value.")
    # No CPU limit by default: CFS throttling slows the input pipeline.
    limits: ResourceList | None = Field(None, description="Hard caps (default: memory as requested, no CPU limit); "
                                        "extended resources by name (nvidia.com/hostdev: 8), whole numbers.")


class SecretKeyRef(_Model):
    name: KubeName = Field(description="The Secret (in the job's namespace).")
    key: SecretKey = Field(description="The key in that Secret.")


class SecretEnv(_Model):
    """A variable whose value is read from a Secret by the kubelet: only the reference is in
    the manifests."""

    secret_key_ref: SecretKeyRef = Field(description="The Secret and key holding the value.")


def _env_value_kind(value) -> str:
    return "secret" if isinstance(value, (dict, SecretEnv)) else "value"


# A mapping is a Secret reference, anything else must be the value's text: each is checked
# as what it is, so a typo in a reference is not also reported as "must be a string".
EnvValue = Annotated[Annotated[Str, Tag("value")] | Annotated[SecretEnv, Tag("secret")], Discriminator(_env_value_kind)]


class Toleration(_Model):
    key: Str | None = Field(None, description="Taint key (none with operator Exists: every taint).")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect; none: all effects.")
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class MpiSettings(_Model):
    """Open MPI's mpirun in an MPIJob's launcher (launcher: mpi): MCA parameters and more
    options, after kjob's own (--hostfile, -np, -x, binding)."""

    mca: dict[McaName, McaValue] = Field(default_factory=dict, description="MCA parameters, each passed as "
                                         "--mca NAME VALUE (e.g. btl_tcp_if_include: eth0).")
    args: list[MpirunArg] = Field(default_factory=list, description="More mpirun options, one word per item (e.g. "
                                  "[--report-bindings]); --bind-to / --map-by here replace kjob's (none / slot).")


class RunPolicy(_Model):
    backoff_limit: int = Field(3, ge=0, description="Retries of the launcher (MPIJob) / replicas (PyTorchJob) before Failed.")
    active_deadline_seconds: int | None = Field(None, gt=0, description="Fail the job after this long.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the finished job after this long (None: keep it).")
    # Running: delete the still-running sshd workers when the launcher ends, keep finished
    # pods for `kjob logs`.
    clean_pod_policy: Literal["None", "Running", "All"] = Field("Running", description="Which pods to delete when the job ends.")


class TrainSettings(_Model):
    """The trainer's flags (what kjob_trainer.common.cli_args accepts). lr is for a global batch of 256; the trainer scales it."""

    config: Str | None = Field(None, min_length=1, description="A trainer config file from kjob_trainer/configs/ (--config): the "
                               "keys written in this section override it, the others come from it (not from these defaults).")
    epochs: int = Field(90, ge=1, le=10000, description="Passes over the training set.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per process (per GPU).")
    lr: float = Field(0.1, gt=0, le=100, description="Learning rate for a global batch of 256 (scaled linearly).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(1e-4, ge=0, lt=1, description="L2 weight decay.")
    warmup_epochs: float = Field(5, ge=0, description="Linear lr warm-up, in epochs.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    lr_schedule: Literal["cosine", "step"] = Field("cosine", description="lr decay after warm-up.")
    amp: Annotated[Literal["off", "bf16", "fp16"], BeforeValidator(off_is_false)] = Field("bf16", description="Mixed precision.")
    channels_last: bool = Field(True, description="NHWC memory format (faster convolutions on tensor cores).")
    compile: bool = Field(False, description="torch.compile the model (PyTorch only): about a minute of compiling "
                          "at start, then faster steps (ResNeXt50 bf16 on an H200: +43%, BENCHMARKS.md).")
    grad_accum: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    checkpoint_interval: int = Field(1, ge=1, description="Epochs between checkpoints.")
    keep_checkpoints: int = Field(3, ge=1, description="How many checkpoints to keep.")
    checkpoint_steps: int | None = Field(None, ge=1, description="Also checkpoint every N optimizer steps (--ckpt-steps): "
                                         "bounds what a lost node costs within a long epoch; unset: at epoch ends only.")
    dist_timeout: float | None = Field(None, gt=0, le=86400, description="Seconds a rank waits for the others (joining, "
                                       "collectives) before failing (--dist-timeout); unset: the trainer's 300.")
    resume: Annotated[str, AfterValidator(check_resume)] = Field("auto", description="'auto' (latest in the output path), 'never', or a checkpoint path.")
    image_size: int = Field(224, ge=16, le=1024, description="Training crop size in pixels.")
    loader_workers: int | None = Field(None, ge=0, le=64, description="Data-loader processes per rank (--workers); "
                                       "default: the pod's CPU request shared among its ranks.")
    decoder: Literal["torchvision", "pil", "dali"] | None = Field(None, description="Image decoder (PyTorch only; default torchvision); dali decodes on the GPU and needs the DALI package in the image.")
    synthetic: bool = Field(False, description="Random images instead of the dataset (smoke tests, benchmarks).")
    synthetic_samples: int = Field(1281167, ge=1, description="Images per epoch of synthetic data (ImageNet's count by default).")
    log_interval: int = Field(20, ge=1, le=100000, description="Steps between progress lines (and points of the loss curve).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    seed: int = Field(0, ge=0, description="Random seed (data order, initialization).")
    eval: bool = Field(True, description="Evaluate on val/ after each epoch.")
    num_classes: int = Field(1000, ge=2, description="Classes of the dataset.")

    def passes(self, field: str) -> bool:
        """Whether the trainer gets this setting from the spec: always without a config
        file; with one, only when the spec writes it (the file's value rules otherwise)."""
        return not self.config or field in self.model_fields_set

    def known(self, field: str):
        """The setting's value when the spec decides it (passes()), else None: the config
        file decides, which kjob does not read."""
        return getattr(self, field) if self.passes(field) else None


class LocalSettings(_Model):
    """Only for `kjob submit --local` (mpirun on this machine)."""

    processes: int | None = Field(None, ge=1, le=256, description="mpirun -np for local runs (default: workers x gpusPerWorker, at least 1).")
    data_path: Str | None = Field(None, min_length=1, description="Local dataset folder; unset means synthetic data.")


class JobSpec(_Model):
    """A kjob training job."""

    name: JobName = Field(description="Job name: lowercase letters, digits and '-', starting with a letter.")
    namespace: KubeName | None = Field(None, description="Namespace (default: the kubeconfig context's).")
    framework: Literal["pytorch", "mindspore"] = Field("pytorch", description="Training framework inside the image.")
    launcher: Literal["mpi", "torchrun"] = Field("mpi", description="mpi: OpenMPI's mpirun (an MPIJob, or a TrainJob on "
                                                 "kjob-openmpi); torchrun: torchrun (a PyTorchJob, or a TrainJob on kjob-torch).")
    # `kind` is also the property below (what the spec renders to); the field keeps the
    # spec's own word, None when it names none.
    job_kind: Literal["MPIJob", "PyTorchJob", "TrainJob"] | None = Field(
        None, alias="kind", description="The Kubernetes kind to render: MPIJob (mpi-operator), PyTorchJob (training-operator) "
        "or TrainJob (Kubeflow Trainer v2); unset: what launcher implies (mpi: MPIJob, torchrun: PyTorchJob).")
    runtime: KubeName | None = Field(None, description="kind: TrainJob only: the ClusterTrainingRuntime to run from "
                                     "(default: kjob's own, kjob-openmpi for launcher mpi, kjob-torch for torchrun).")
    image: Image = Field(description="The trainer image (see images/).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Kubernetes imagePullPolicy.")
    image_pull_secrets: list[KubeName] = Field(default_factory=list, description="Names of Secrets for a private registry.")
    model: Literal["resnext50_32x4d", "resnest50"] = Field("resnext50_32x4d", description="The network to train.")
    workers: int = Field(1, ge=1, le=1024, description="Worker pods (nodes).")
    gpus_per_worker: int = Field(8, ge=0, le=16, description="GPUs per worker; 0 = a CPU job (one process per worker).")
    resources: Resources = Field(default_factory=Resources, description="CPU and memory of each worker pod.")
    shm_size: Quantity = Field("8Gi", description="Size of /dev/shm (a memory emptyDir) for data-loader workers.")
    data: DataVolume | None = Field(None, description="The dataset volume; required unless train.synthetic is true.")
    checkpoints: Checkpoints = Field(description="The checkpoint volume (a PVC).")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Training settings: the trainer's flags.")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="Extra environment variables for the "
                                                "trainer: a value, or {secretKeyRef: {name, key}} to read it from a Secret.")
    env_from: list[KubeName] = Field(default_factory=list, description="Secrets whose every key becomes a variable of "
                                     "the trainer (Kubernetes envFrom); only their names are in the manifests.")
    capabilities: list[Capability] = Field(default_factory=list, description="Capabilities added to the trainer "
                                           "containers (all others stay dropped): IPC_LOCK, SYS_RESOURCE.")
    pod_annotations: dict[AnnotationKey, Str] = Field(default_factory=dict, description="Annotations of the trainer "
                                                      "pods (e.g. Multus' k8s.v1.cni.cncf.io/networks).")
    host_network: bool = Field(False, description="Run the trainer pods in the node's network namespace (its NICs).")
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate (as in a pod spec).")
    priority_class_name: KubeName | None = Field(None, description="PriorityClass of the pods.")
    scheduler_name: KubeName | None = Field(None, description="e.g. 'volcano'; None: the default scheduler.")
    queue: KubeName | None = Field(None, description="Volcano queue (schedulerName volcano) or Kueue LocalQueue (label kueue.x-k8s.io/queue-name).")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="The operator's runPolicy.")
    mpi: MpiSettings | None = Field(None, description="mpirun's MCA parameters and options (launcher: mpi only).")
    local: LocalSettings = Field(default_factory=LocalSettings, description="Settings for `kjob submit --local` only.")

    @property
    def kind(self) -> str:
        """The Kubernetes kind this spec renders to."""
        return self.job_kind or DEFAULT_KIND[self.launcher]

    @property
    def runtime_name(self) -> str:
        """The ClusterTrainingRuntime a TrainJob of this spec runs from."""
        return self.runtime or RUNTIMES[self.launcher]

    @property
    def procs_per_worker(self) -> int:
        """Processes per worker pod: one per GPU, one for a CPU job."""
        return self.gpus_per_worker or 1

    @property
    def plain_env(self) -> dict[str, str]:
        """The spec's env entries that have a value (not a Secret reference)."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}

    @property
    def secret_env(self) -> dict[str, SecretKeyRef]:
        """The spec's env entries read from a Secret."""
        return {k: v.secret_key_ref for k, v in self.env.items() if not isinstance(v, str)}

    @property
    def pod_requests(self) -> ResourceList:
        """A worker pod's requests: the spec's, else sized by gpusPerWorker."""
        return self.resources.requests or ResourceList(**sizing.default_requests(self.gpus_per_worker))

    @property
    def pod_limits(self) -> ResourceList:
        """A worker pod's limits: the spec's, else sized by gpusPerWorker."""
        return self.resources.limits or ResourceList(**sizing.default_limits(self.gpus_per_worker))

    @property
    def loader_workers(self) -> int:
        """Data-loader processes per rank: train.loaderWorkers, else from the CPU request."""
        given = self.train.loader_workers
        if given is not None:
            return given
        return sizing.default_loader_workers(sizing.cpu_cores(self.pod_requests, self.pod_limits), self.procs_per_worker)

    @property
    def world_size(self) -> int:
        return self.workers * self.procs_per_worker

    @property
    def output_path(self) -> str:
        """The trainer's --output-path inside the pods."""
        return posixpath.join(self.checkpoints.mount_path, self.name)

    def spec_hash(self) -> str:
        """`sha256:<hex>` of the normalized spec (defaults written out, `local` left out:
        it does not change what is sent to a cluster; so are the namespace and unset later
        additions, _HASHED_ONLY_WHEN_SET)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"local"})
        # Where the job runs is not what it is: `kjob render` (no namespace, for a GitOps
        # tool that applies it with -n) and `kjob submit -n NS` must agree. Kept as null, so
        # a spec without a namespace keeps the hash it always had.
        data["namespace"] = None
        if data.get("kind") == DEFAULT_KIND[self.launcher]:
            data["kind"] = None  # the kind the launcher implies, written out: the same job
        if self.train.config:
            # With a config file an unwritten key is the file's, not the default above.
            data["train"] = self.train.model_dump(mode="json", by_alias=True, exclude_unset=True)
        # Sizing defaults derived from the spec, written out like the others.
        data["resources"] = {"requests": self.pod_requests.model_dump(mode="json", by_alias=True),
                             "limits": self.pod_limits.model_dump(mode="json", by_alias=True)}
        data["train"]["loaderWorkers"] = self.loader_workers
        for *sections, key in _HASHED_ONLY_WHEN_SET:
            where = data
            for section in sections:
                where = where.get(section) if isinstance(where, dict) else None
            if isinstance(where, dict) and key in where and where[key] in (None, [], {}, False):
                del where[key]
        import hashlib  # loads OpenSSL: only when a hash is wanted

        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


# Fields added after jobs were already submitted whose unset value renders nothing: left
# out of spec_hash while unset, so a spec that does not use them keeps its hash (no
# "different spec" conflict on resubmit, no drift for a GitOps tool).
_HASHED_ONLY_WHEN_SET = (("train", "decoder"), ("train", "checkpointSteps"), ("train", "distTimeout"), ("envFrom",),
                         ("mpi", "mca"), ("mpi", "args"), ("mpi",), ("capabilities",), ("podAnnotations",),
                         ("hostNetwork",), ("kind",), ("runtime",))


if _stand_in is not None and sys.modules.get(_PLUGIN_LOADER) is _stand_in:
    del sys.modules[_PLUGIN_LOADER]


def json_schema() -> dict:
    """The spec's JSON Schema (camelCase keys), for editors (yaml-language-server)."""
    schema = JobSpec.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
