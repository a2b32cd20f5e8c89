"""How long a training loop waits for data (framework-free).

Both loops meter their batch iterators with one `DataWaitMeter` and reset it at each
progress line; `run_protocol.interval_record` turns its window into `data-wait` and the
`input-bound` note. The benchmarks use it as is.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator


class DataWaitMeter:
    """Wrap a batch iterable; measure how long each `next()` blocks (time waiting for data).

        meter = DataWaitMeter(loader)
        for step, (x, y) in enumerate(meter):
            ...train...
            if step % 50 == 0:
                print(meter.report())      # "data wait 3.1 ms/step (2.4% of step time)"
                meter.reset()

    The share is the time blocked in `next()` over the wall time since the window began
    (construction, the first batch of an iteration, or `reset()`), read when asked, so a
    window read right after a step includes that step's compute. On a GPU the host runs
    ahead of the device, so this counts only real stalls: the device starves only when the
    host is stuck waiting for data.
    """

    # Above this share of step time spent waiting, the run is called input-bound.
    INPUT_BOUND_SHARE = 0.10

    def __init__(self, batches: Iterable[Any] = ()) -> None:
        self.batches = batches
        self.reset()

    def reset(self) -> None:
        """Start a new measuring window now (the totals restart; the iteration goes on)."""
        self.steps = 0
        self.wait_s = 0.0
        self.last_wait_s = 0.0
        self._window_start = time.perf_counter()

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        return self.over(self.batches)

    def over(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Iterate `batches`, counting into this meter's window (the loops meter every
        epoch's iterator with one meter, reset at each progress line)."""
        it = iter(batches)
        if self.steps == 0:  # don't count the idle time between construction and iteration
            self._window_start = time.perf_counter()
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.last_wait_s = time.perf_counter() - start
            self.wait_s += self.last_wait_s
            self.steps += 1
            yield batch

    @property
    def wait_ms_per_step(self) -> float:
        return 1000.0 * self.wait_s / self.steps if self.steps else 0.0

    @property
    def window_s(self) -> float:
        """Wall seconds since the window began."""
        return time.perf_counter() - self._window_start

    @property
    def wait_share(self) -> float:
        """Fraction (0..1) of the window's wall time spent blocked on data."""
        elapsed = self.window_s
        return min(1.0, self.wait_s / elapsed) if self.steps and elapsed > 0 else 0.0

    @property
    def input_bound(self) -> bool:
        return self.steps > 0 and self.wait_share > self.INPUT_BOUND_SHARE

    def summary(self) -> dict[str, float | int | bool]:
        """The window's numbers, for metrics.jsonl."""
        return {"data_wait_ms": round(self.wait_ms_per_step, 3),
                "data_wait_share": round(self.wait_share, 4),
                "input_bound": self.input_bound, "steps": self.steps}

    def report(self) -> str:
        """One human line, e.g. "data wait 3.1 ms/step (2.4% of step time)"."""
        line = f"data wait {self.wait_ms_per_step:.1f} ms/step ({100 * self.wait_share:.1f}% of step time)"
        if self.input_bound:
            line += " - input-bound: add loader workers, or decode faster (torchvision decoder, or DALI on the GPU)"
        return line
