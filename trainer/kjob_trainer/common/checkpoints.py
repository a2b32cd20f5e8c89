"""The checkpoint folder, framework-neutral: `<output>/checkpoints/`.

Writing one checkpoint (rank 0 only):
1. the framework's writer fills `.tmp-<name>-<pid>` in the same folder; it is fsynced;
2. os.replace() gives it its final name, and the folder is fsynced (the rename is durable);
3. only then index.json is rewritten the same way (temp, fsync, replace, fsync folder);
4. files beyond the last `keep` (plus the best) are deleted — after the index stops naming them.
A crash at any point leaves index.json naming only complete files; a stale `.tmp-` file
is never listed and is removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kjob_trainer.common.errors import BadInput

FORMAT = "kjob-checkpoints/v1"
INDEX = "index.json"
TMP_PREFIX = ".tmp-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(final: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp_path)`, fsync the result and rename it to `final`. On any failure
    the temp file is removed and `final` is untouched."""
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}")
    try:
        write(tmp)
        # Read-only: MindSpore's save_checkpoint leaves its file mode 0400, which a
        # non-root trainer (uid 1000 in the pods) cannot open for writing; fsync needs no more.
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def epoch_name(epoch: int, ext: str) -> str:
    """File name of the checkpoint at the end of `epoch` (epochs completed)."""
    return f"epoch-{epoch:04d}{ext}"


def step_name(step: int, ext: str) -> str:
    """File name of a mid-epoch checkpoint (periodic or on SIGTERM)."""
    return f"step-{step:08d}{ext}"


@dataclass
class CheckpointDir:
    """`<output>/checkpoints/` of one run. `framework`/`model` go into the index."""

    folder: Path
    framework: str
    model: str
    keep: int = 3

    @classmethod
    def under(cls, output_path: str, framework: str, model: str, keep: int = 3) -> "CheckpointDir":
        return cls(Path(output_path) / "checkpoints", framework, model, keep)

    def read_index(self) -> dict[str, Any]:
        """The index, or an empty one if there is none. An unreadable index counts as none
        (it is only ever replaced whole, so this means it was never written)."""
        try:
            data = json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            data = {"format": FORMAT, "framework": self.framework, "model": self.model,
                    "latest": None, "best": None, "checkpoints": []}
        return data

    def save(self, name: str, write: Callable[[Path], None], *, epoch: int, step: int,
             metrics: dict[str, float] | None = None) -> Path:
        """Write checkpoint `name` with `write(tmp_path)` and record it in the index."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(TMP_PREFIX + "*"):
            stale.unlink(missing_ok=True)
        final = self.folder / name
        write_atomic(final, write)
        entry = {"file": name, "epoch": epoch, "step": step, "bytes": final.stat().st_size,
                 "sha256": sha256_file(final), "metrics": dict(metrics or {}),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        index = self.read_index()
        entries = [e for e in index["checkpoints"] if e["file"] != name] + [entry]
        best = _best(entries)
        keep_files = {e["file"] for e in entries[-self.keep:]} | ({best} if best else set())
        index.update(framework=self.framework, model=self.model, latest=name, best=best,
                     checkpoints=[e for e in entries if e["file"] in keep_files])
        body = json.dumps(index, indent=2, sort_keys=False) + "\n"
        write_atomic(self.folder / INDEX, lambda p: p.write_text(body, encoding="utf-8"))
        for e in entries:
            if e["file"] not in keep_files:
                (self.folder / e["file"]).unlink(missing_ok=True)
        return final

    def latest_valid(self) -> Path | None:
        """Newest listed checkpoint whose size and sha256 match the index, or None."""
        for entry in reversed(self.read_index()["checkpoints"]):
            path = self.folder / entry["file"]
            try:
                if path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]:
                    return path
            except OSError:
                continue
        return None

    def resolve_resume(self, resume: str) -> Path | None:
        """Where to resume from: None to start fresh. Raises BadInput for a PATH that does not exist."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest_valid()
        path = Path(resume)
        if not path.is_file():
            raise BadInput(f"--resume {resume}: no such checkpoint file")
        return path


def _best(entries: list[dict[str, Any]]) -> str | None:
    """Entry with the highest top-1 (ties: the later one); None if none has one."""
    scored = [e for e in entries if isinstance(e.get("metrics", {}).get("top1"), (int, float))]
    if not scored:
        return None
    return max(reversed(scored), key=lambda e: e["metrics"]["top1"])["file"]
