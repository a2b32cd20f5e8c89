"""The run protocol both loops follow (framework-free): stopping, the numbers they log and
checkpoint and what each means, the bad-image limit, and each rank's record.

The `Trainer`s of torch/train.py and mindspore/train.py have the same methods
(`train_one_epoch`, `log_interval`, `end_of_epoch`, `save`, `fit`) and call into this
module for everything that is not framework code, so a number with a given name means
the same thing whichever framework wrote it (tests/test_trainer_protocol.py runs both).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from kjob_trainer.common.errors import BadInput
from kjob_trainer.common.metrics import progress_line
from kjob_trainer.common.progress import DataWaitMeter

# Signals that mean: finish the step, save a checkpoint, stop (exit 143). SIGTERM: an
# eviction inside the pod. SIGUSR1: the same through mpirun, which forwards it to every
# rank, while its own SIGTERM kills the ranks within a second, before any save.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How long the other ranks stay after rank 0 has saved, on a stop: mpirun ends the whole
# job at the first rank that exits non-zero, which would cut off rank 0's save or its last line.
STOP_GRACE_S = 2.0
# Sample indices kept per rank in ranks/rank-N.json (proof of sharding without a huge file).
RANK_INDEX_CAP = 10000

# What each logged number means. Both loops write exactly these keys.
TRAIN_RECORD = {
    "epoch": "0-based epoch the interval ended in",
    "loss": "mean training loss over every sample of the interval on all ranks (label-smoothed; "
            "with Mixup, against the mixed targets)",
    "lr": "lr of the interval's last optimizer step (LrSchedule.lr_at)",
    "images_per_s": "images of the interval on all ranks per second of wall time",
    "data_wait_ms": "rank 0's mean wait for a batch, per micro-batch of the interval",
}
# Training top-1 of the interval on all ranks (%): the PyTorch loop counts it from the logits
# it already has; MindCV's TrainStep returns only the loss, so the MindSpore loop omits the key.
TRAIN_TOP1 = "top1"
EVAL_RECORD = {
    "epoch": "0-based epoch just finished",
    "top1": "validation top-1 (%) over the whole val set (every rank's share, no padding)",
    "top5": "validation top-5 (%), same images",
    "loss": "mean validation cross-entropy (no label smoothing), same images",
}
# A checkpoint's metrics (index.json and the file): evaluated epoch ends carry all four,
# other checkpoints only train_loss. `best` in the index is the highest top1 (checkpoints._best),
# so only evaluated checkpoints compete.
CHECKPOINT_METRICS = {
    "top1": EVAL_RECORD["top1"],
    "top5": EVAL_RECORD["top5"],
    "loss": EVAL_RECORD["loss"],
    "train_loss": "the last progress line's training loss (TRAIN_RECORD loss)",
}


class StopFlag:
    """SIGTERM/SIGUSR1 set a flag (the step in flight finishes, then the loop saves and
    stops); `restore()` puts the previous handlers back. Use as a context manager."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopFlag":
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


# The numbers every rank contributes to the one all-reduce at a progress line.
INTERVAL_FIELDS = ("loss_sum", "correct", "samples", "bad", "sigterm", "sigusr1")


def interval_vector(*, loss_sum: float, correct: float, samples: int, bad: int, stop: StopFlag) -> list[float]:
    """This rank's INTERVAL_FIELDS (loss and hits may instead be filled on the device)."""
    return [loss_sum, correct, float(samples), float(bad),
            float(stop.signal_name == "SIGTERM"), float(stop.signal_name == "SIGUSR1")]


@dataclass(frozen=True)
class Reduced:
    """An all-reduced interval: sums over every rank, and the stop every rank agrees on."""

    loss_sum: float
    correct: float
    samples: int
    bad: int
    stop_signal: str | None  # set on every rank once any rank had a stop signal

    @classmethod
    def read(cls, vec: Sequence[float]) -> "Reduced":
        loss_sum, correct, samples, bad, term, usr1 = vec
        stop = "SIGTERM" if term > 0 else "SIGUSR1" if usr1 > 0 else None
        return cls(float(loss_sum), float(correct), int(round(samples)), int(round(bad)), stop)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


def interval_record(r: Reduced, *, seconds: float, meter: DataWaitMeter, epoch: int, epochs: int, step: int,
                    steps_in_interval: int, total_steps: int, lr: float, count_top1: bool) -> tuple[str, dict]:
    """(progress line, `train` record) of an all-reduced interval of `steps_in_interval`
    optimizer steps that took `seconds`."""
    seconds = max(seconds, 1e-9)
    rate = r.samples / seconds
    wait_ms = meter.wait_ms_per_step
    record = {"epoch": epoch, "loss": r.loss, "lr": lr, "images_per_s": round(rate, 2),
              "data_wait_ms": round(wait_ms, 2)}
    if count_top1:
        record[TRAIN_TOP1] = 100.0 * r.correct / max(r.samples, 1)
    extra = f"data-wait {wait_ms:.0f}ms/step"
    share = meter.wait_s / seconds
    if share > DataWaitMeter.INPUT_BOUND_SHARE:  # say it plainly when the device starves
        extra += f" ({100 * share:.0f}% of step time: input-bound, add --workers or use --decoder dali)"
    per_step = seconds / max(1, steps_in_interval)
    line = progress_line(epoch=epoch, epochs=epochs, step=step, total_steps=total_steps, loss=r.loss,
                         lr=lr, images_per_s=rate, eta_s=(total_steps - step) * per_step, extra=extra)
    return line, record


def checkpoint_metrics(train_loss: float | None, evaluation: dict[str, float] | None) -> dict[str, float]:
    """The metrics a checkpoint carries (CHECKPOINT_METRICS)."""
    out: dict[str, float] = {}
    if evaluation:
        out.update({k: float(evaluation[k]) for k in ("top1", "top5", "loss")})
    if train_loss is not None:
        out["train_loss"] = float(train_loss)
    return out


def check_bad_images(bad_total: int, dataset_size: int, max_fraction: float, example: str | None) -> None:
    """The limit on undecodable images, over all ranks and the whole run so far: more than
    max_fraction x the training set stops the run. Raises BadInput naming a file."""
    if bad_total > int(max_fraction * dataset_size):
        where = f" (e.g. {example})" if example else ""
        raise BadInput(f"dataset: {bad_total} training images could not be decoded, more than "
                       f"max_bad_images={max_fraction:g} x {dataset_size} allows{where}")


def stopped_message(where: str, signal_name: str | None, step: int) -> str:
    """The `Stopped:` line of a run stopped by a signal (exit 143)."""
    return f"{where}: {signal_name or 'a stop signal'}: saved a checkpoint at step {step} and stopped"


def stopping_line(signal_name: str | None, step: int, checkpoint: str | None) -> str:
    """Rank 0's progress-log line when the ranks have agreed to stop."""
    return (f"stopping on {signal_name or 'a stop signal'} at step {step}: checkpoint {checkpoint} saved, "
            "resume with --resume auto")


# Counts travel in 16-bit limbs so that an all-reduce in float32 (MindSpore's) stays exact:
# each limb summed over up to 256 ranks is below 2**24.
_LIMB = 1 << 16
_LIMBS = 4


class RankRecord:
    """What this rank trained on: sample count, sum of sample indices, the first indices.

    `vector()` is summed over ranks (every rank fills only its own slots) and `summary()`
    reads it back on rank 0 for the `ranks` row of metrics.jsonl; `write()` leaves
    `<output>/ranks/rank-N.json` (every rank)."""

    def __init__(self, rank: int, world_size: int, host: str) -> None:
        self.rank, self.world_size, self.host = rank, world_size, host
        self.samples = 0
        self.id_sum = 0
        self.indices: list[int] = []

    def count(self, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        self.samples += len(ids)
        self.id_sum += sum(ids)
        room = RANK_INDEX_CAP - len(self.indices)
        if room > 0:
            self.indices.extend(ids[:room])

    def vector(self) -> list[float]:
        out = [0.0] * (2 * self.world_size * _LIMBS)
        for k, value in enumerate((self.samples, self.id_sum)):
            base = (k * self.world_size + self.rank) * _LIMBS
            for j in range(_LIMBS):
                out[base + j] = float((value // _LIMB ** j) % _LIMB)
        return out

    def summary(self, reduced: Sequence[float]) -> dict[str, Any]:
        w = self.world_size

        def value(k: int, r: int) -> int:
            base = (k * w + r) * _LIMBS
            return sum(int(round(reduced[base + j])) * _LIMB ** j for j in range(_LIMBS))

        return {"world_size": w, "samples": [value(0, r) for r in range(w)], "id_sum": [value(1, r) for r in range(w)]}

    def write(self, output_path: str, *, step: int, ranks_in_allreduce: int, weights_abs_sum: float,
              last_metrics: dict[str, float]) -> Path:
        folder = Path(output_path) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.rank, "world_size": self.world_size, "host": self.host,
                  "ranks_in_allreduce": ranks_in_allreduce, "step": step, "samples": self.samples,
                  "id_sum": self.id_sum, "weights_abs_sum": weights_abs_sum, "sample_indices": self.indices,
                  "last_metrics": last_metrics}
        path = folder / f"rank-{self.rank}.json"
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        return path



def header_line(*, model: str, parameters: int, classes: int, world_size: int, device: str, global_batch: int,
                lr: float, steps_per_epoch: int) -> str:
    """Rank 0's first line: what is trained, where, and how."""
    return (f"training {model} ({parameters:,} parameters, {classes} classes) on {world_size} x {device}, "
            f"global batch {global_batch}, lr {lr:.4g}, {steps_per_epoch} steps/epoch")


def resumed_line(path: Path | str, epochs_done: int, step: int) -> str:
    return f"resumed from {path}: epoch {epochs_done} step {step}"


def eval_line(epoch: int, epochs: int, result: dict[str, float]) -> str:
    """The line after an evaluation (`epoch` 0-based, as in the eval record)."""
    return (f"epoch {epoch + 1}/{epochs} eval top1 {result['top1']:.2f} top5 {result['top5']:.2f} "
            f"loss {result['loss']:.4f} ({result['images']} images)")


def done_line(step: int, metrics: dict[str, float]) -> str:
    return f"done: step {step}, metrics {metrics}"
