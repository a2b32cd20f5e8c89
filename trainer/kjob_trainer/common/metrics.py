"""Rank 0's record of a run: progress lines, metrics.jsonl, TensorBoard events, a PNG.

Framework-neutral (no torch): TensorBoard events are written with the `tensorboard`
package's own event writer, so the MindSpore trainer uses this module as is.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def progress_line(*, epoch: int, epochs: int, step: int, total_steps: int, loss: float, lr: float,
                  images_per_s: float, eta_s: float, extra: str = "") -> str:
    """The line rank 0 prints every log interval (the format kjob logs users grep)."""
    return (f"epoch {epoch + 1}/{epochs} step {step}/{total_steps} loss {loss:.4f} lr {lr:.5g} "
            f"img/s {images_per_s:.1f} eta {format_eta(eta_s)}" + (f" {extra}" if extra else ""))


class MetricsLog:
    """Appends records to `<output>/metrics.jsonl` and TensorBoard scalars under
    `<output>/tensorboard/`. Only rank 0 makes one (`enabled=False` on the others: no-op)."""

    def __init__(self, output_path: str, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(output_path) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tb = EventFileWriter(str(Path(output_path) / "tensorboard"))

    def record(self, kind: str, step: int, **values: Any) -> None:
        """One JSON line `{"kind", "step", "time", ...values}`; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2

        scalars = [summary_pb2.Summary.Value(tag=f"{kind}/{k}", simple_value=float(v))
                   for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if scalars:
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                               summary=summary_pb2.Summary(value=scalars)))

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def plot_curves(output_path: str) -> Path | None:
    """`<output>/curves.png`: training loss, training top-1 and val top-1/top-5 by step.
    None if there is no data."""
    src = Path(output_path) / "metrics.jsonl"
    if not src.exists():
        return None
    rows = read_metrics(src)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "eval"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("loss")
    ax_loss.legend()
    # Training top-1 (of the logged intervals) shows progress even without a val set.
    series = [("train top1", [r for r in train if "top1" in r], "top1", None)]
    series += [(f"val {key}", [r for r in val if key in r], key, "o") for key in ("top1", "top5")]
    for label, points, key, marker in series:
        if points:
            ax_acc.plot([r["step"] for r in points], [r[key] for r in points], marker=marker, label=label)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("%")
    ax_acc.set_title("accuracy")
    if ax_acc.lines:
        ax_acc.legend()
    fig.tight_layout()
    out = Path(output_path) / "curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
