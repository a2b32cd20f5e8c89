"""A one-line progress bar (bytes, rate, ETA) for terminals; silent otherwise."""

from __future__ import annotations

import sys
import time

# Redraw at most this often: a terminal write per websocket frame would cost more
# than the transfer.
REDRAW_S = 0.2


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Call `add(n)` as bytes arrive and `done()` at the end (also on failure)."""

    def __init__(self, total: int, *, enabled: bool, stream=None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def add(self, n: int) -> None:
        self.n += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= REDRAW_S:
                self._last = now
                self._draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = (self.total - self.n) / rate if rate > 0 else 0
        width = 24
        fill = int(width * pct / 100)
        m, s = divmod(int(eta), 60)
        return (f"[{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}%  {human_bytes(self.n)} / {human_bytes(self.total)}"
                f"  {human_bytes(rate)}/s  ETA {m}:{s:02d}")

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def done(self) -> None:
        if self.enabled and self._drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
