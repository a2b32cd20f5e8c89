"""What a worker pod is sized by when the spec does not say: CPU and memory per GPU,
data-loader processes per rank from the CPU request, OMP_NUM_THREADS per rank; and the
sizing problems `kjob validate` refuses or warns about.

The arithmetic (README "Sizing a worker pod"): a PyTorch rank runs `loaderWorkers`
train-loader processes plus as many val-loader ones (both persistent), so a pod of g
ranks runs 2 x g x loaderWorkers of them; /dev/shm is a memory emptyDir, charged to the
pod's memory cgroup like the processes' own memory.
"""

from __future__ import annotations

from decimal import Decimal

from kjob.spec.quantity import parse_quantity

# Per GPU of a worker pod: a DGX-class node has 8 GPUs, ~100+ cores and 1-2 TiB, so 6 cores
# and 24 GiB per GPU fit beside the system reserve and feed ResNeXt50 at full speed.
CPU_PER_GPU = 6
MEMORY_PER_GPU_GI = 24
# A CPU job (gpusPerWorker: 0): one rank per pod, the former defaults.
CPU_JOB_CPU = 8
CPU_JOB_MEMORY_GI = 32
# Loader processes per rank when the pod has no CPU figure, and at most (the spec's limit).
LOADER_WORKERS_WITHOUT_CPU = 4
MAX_LOADER_WORKERS = 64
# Past this global batch, plain SGD without warm-up diverges early (Goyal et al. 2017,
# "Accurate, Large Minibatch SGD": 8k images needs the gradual warm-up).
LARGE_GLOBAL_BATCH = 8192


def default_requests(gpus: int) -> dict[str, str]:
    """cpu and memory requests of a worker pod with `gpus` GPUs (0: a CPU job)."""
    if gpus == 0:
        return {"cpu": str(CPU_JOB_CPU), "memory": f"{CPU_JOB_MEMORY_GI}Gi"}
    return {"cpu": str(CPU_PER_GPU * gpus), "memory": f"{MEMORY_PER_GPU_GI * gpus}Gi"}


def default_limits(gpus: int) -> dict[str, str]:
    """Limits of that pod: the memory request (no CPU limit: CFS throttling slows the input pipeline)."""
    return {"memory": default_requests(gpus)["memory"]}


def cpu_cores(requests, limits) -> Decimal | None:
    """The pod's CPU figure: its request, else its limit, else None."""
    text = requests.cpu or limits.cpu
    return parse_quantity(text) if text else None


def default_loader_workers(cores: Decimal | None, ranks: int) -> int:
    """Loader processes per rank: the pod's cores shared among its ranks (at least 1)."""
    if cores is None:
        return LOADER_WORKERS_WITHOUT_CPU
    return max(1, min(MAX_LOADER_WORKERS, int(cores) // ranks))


def rank_threads_env(ranks_per_pod: int) -> dict[str, str]:
    """OMP_NUM_THREADS=1 when a pod (or this machine) runs several ranks, as torchrun sets
    it: each rank's intra-op threads would otherwise take every core of the node."""
    return {"OMP_NUM_THREADS": "1"} if ranks_per_pod > 1 else {}


def sizing_problems(spec) -> list[tuple[tuple, str]]:
    """Sizing that cannot work, as (location, message): /dev/shm at or over the memory limit."""
    limit = spec.pod_limits.memory
    if limit and parse_quantity(spec.shm_size) >= parse_quantity(limit):
        return [(("shmSize",), f"{spec.shm_size} is not below the memory limit ({limit}): /dev/shm is charged to the "
                 "pod's memory, so the pod is OOM-killed before it is full; give it at most half of the limit")]
    return []


def sizing_warnings(spec) -> list[str]:
    """Sizing that is valid but likely to be slow or to diverge."""
    out = []
    t = spec.train
    cores = cpu_cores(spec.pod_requests, spec.pod_limits)
    # MindSpore's loaders are threads of the rank and DALI decodes on the GPU: no processes.
    if spec.framework == "pytorch" and t.decoder != "dali" and cores is not None:
        # A config file that does not say is taken to evaluate (every shipped recipe does).
        kinds = "train" if t.known("eval") is False else "train and val"
        loaders = spec.procs_per_worker * spec.loader_workers * (1 if kinds == "train" else 2)
        if loaders > 2 * cores:
            fit = default_loader_workers(cores, spec.procs_per_worker)
            out.append(f"train.loaderWorkers: {spec.procs_per_worker} ranks x {spec.loader_workers} loader processes "
                       f"({kinds}) = {loaders} per pod, more than twice the CPU ({cores:f}); they will fight for the "
                       f"cores: set loaderWorkers to {fit} or request more CPU")
    batch, accum, warmup = t.known("batch_size"), t.known("grad_accum"), t.known("warmup_epochs")
    if None not in (batch, accum, warmup) and warmup == 0:
        total = batch * accum * spec.world_size
        if total > LARGE_GLOBAL_BATCH:
            out.append(f"train.warmupEpochs: the global batch is {total} images ({spec.world_size} ranks x {batch}"
                       f"{f' x {accum} accumulated' if accum > 1 else ''}) with plain SGD and no warm-up; past "
                       f"{LARGE_GLOBAL_BATCH} the scaled lr diverges early without one: set warmupEpochs (e.g. 5)")
    return out
