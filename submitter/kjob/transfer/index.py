"""The trainer's checkpoint index (index.json, written by kjob_trainer.common.checkpoints):
parse, validate, select, list, write; and the verified copy out of a local run folder.

Shared by both backends: the cluster path (kjob.cluster.fetch) reads index.json through
`cat` in a pod, the local backend reads it from the run folder; both then select entries
the same way and verify the files with tarsafe. Nothing here imports the Kubernetes
client.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from kjob.backend import FetchOptions
from kjob.errors import InvalidInput, NotFound, VerificationFailed
from kjob.transfer.progress import Progress, human_bytes
from kjob.transfer.tarsafe import Expected, SAFE_NAME, TMP_PREFIX, check_name, copy_verified, plan, remove_stale_temps

INDEX_FORMAT = "kjob-checkpoints/v1"
INDEX_NAME = "index.json"
# index.json lists a few hundred entries at most; anything bigger is not the trainer's.
MAX_INDEX_BYTES = 16 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_index(raw: bytes | str, where: str) -> dict:
    """Parse and check index.json; returns the dict with `checkpoints` entries checked.

    Raises VerificationFailed (exit 7) naming `where` and the first problem: not JSON,
    another format, an entry without a safe flat file name, a size or a sha256.
    """
    if len(raw) > MAX_INDEX_BYTES:
        raise VerificationFailed(f"{where}: index.json is larger than {MAX_INDEX_BYTES} bytes; not a kjob index")
    try:
        index = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerificationFailed(f"{where}: index.json is not valid JSON ({e})") from e
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise VerificationFailed(f"{where}: index.json has format {got!r}, expected {INDEX_FORMAT!r}")
    entries = index.get("checkpoints")
    if not isinstance(entries, list):
        raise VerificationFailed(f"{where}: index.json has no 'checkpoints' list")
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("file"), str) and SAFE_NAME.match(e["file"])
              and not e["file"].startswith(TMP_PREFIX) and e["file"] != INDEX_NAME
              and isinstance(e.get("bytes"), int) and e["bytes"] >= 0
              and isinstance(e.get("sha256"), str) and _HEX64.match(e["sha256"]))
        if not ok:
            raise VerificationFailed(f"{where}: index.json checkpoints[{i}] needs a flat 'file' name, 'bytes' and a hex 'sha256': {e!r}"[:400])
    names = [e["file"] for e in entries]
    if len(set(names)) != len(names):
        raise VerificationFailed(f"{where}: index.json lists a file twice")
    return index


def select(index: dict, options: FetchOptions, where: str) -> list[dict]:
    """The entries `options` asks for (latest | best | epoch | all), in index order.

    Raises NotFound (exit 5) when there is nothing to fetch: no checkpoints yet, no best,
    no such epoch (the message lists the epochs there are); InvalidInput for an unknown
    `which`.
    """
    entries = index["checkpoints"]
    by_file = {e["file"]: e for e in entries}
    if not entries:
        raise NotFound(f"{where}: no checkpoints yet (index.json lists none)")
    which = options.which
    if which == "all":
        return list(entries)
    if which in ("latest", "best"):
        name = index.get(which)
        if name is None and which == "latest":
            name = max(entries, key=lambda e: (e.get("epoch") or 0, e.get("step") or 0))["file"]
        if name is None:
            raise NotFound(f"{where}: index.json records no best checkpoint (the trainer sets it only when it evaluates)",
                           hint="use --latest, --epoch N or --all")
        if name not in by_file:
            raise VerificationFailed(f"{where}: index.json names {which} {name!r}, which is not among its checkpoints")
        return [by_file[name]]
    if which == "epoch":
        hits = [e for e in entries if e.get("epoch") == options.epoch]
        if not hits:
            have = ", ".join(str(e.get("epoch")) for e in entries)
            raise NotFound(f"{where}: no checkpoint of epoch {options.epoch} (epochs there: {have})")
        return hits
    raise InvalidInput(f"unknown checkpoint selection {which!r} (latest, best, epoch, all)")


def expected(entries: list[dict]) -> list[Expected]:
    return [Expected(e["file"], e["bytes"], e["sha256"]) for e in entries]


def format_listing(index: dict, entries: list[dict]) -> list[str]:
    """`kjob fetch-ckpt --list` lines: epoch, size, metrics, time, file; latest/best marked."""
    rows = [("EPOCH", "SIZE", "METRICS", "TIME", "FILE")]
    for e in entries:
        metrics = e.get("metrics") or {}
        mtext = " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in metrics.items()) or "-"
        marks = [w for w in ("latest", "best") if index.get(w) == e["file"]]
        rows.append((str(e.get("epoch", "-")), human_bytes(e["bytes"]), mtext, str(e.get("time") or "-"),
                     e["file"] + (f" ({', '.join(marks)})" if marks else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]


def write_local_index(dest: Path, index: dict, fetched: list[dict]) -> None:
    """Write dest/index.json (atomically) so the folder is itself a checkpoint folder.

    It lists what is now in `dest`: entries of an earlier fetch that are still there plus
    `fetched`; `latest`/`best` keep the remote's choice when that file is here.
    """
    entries: dict[str, dict] = {}
    old_path = dest / INDEX_NAME
    if old_path.is_file():
        try:
            old = parse_index(old_path.read_bytes(), str(dest))
            entries.update({e["file"]: e for e in old["checkpoints"]})
        except VerificationFailed:
            pass  # not ours or damaged: rebuilt from what was just verified
    entries.update({e["file"]: e for e in fetched})
    kept = sorted((e for e in entries.values() if (dest / e["file"]).is_file()),
                  key=lambda e: (e.get("epoch") or 0, e.get("step") or 0, e["file"]))
    out = {k: v for k, v in index.items() if k not in ("checkpoints", "latest", "best")}
    out["format"] = INDEX_FORMAT
    names = {e["file"] for e in kept}
    out["latest"] = index.get("latest") if index.get("latest") in names else (kept[-1]["file"] if kept else None)
    out["best"] = index.get("best") if index.get("best") in names else None
    out["checkpoints"] = kept
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{INDEX_NAME}.", dir=dest)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, old_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify_and_copy_local(src_checkpoints_dir: Path, options: FetchOptions) -> list[dict]:
    """`kjob fetch-ckpt --local`: the same selection and verification from a local folder.

    Reads `src_checkpoints_dir/index.json`, selects entries like the cluster path, and
    (unless `options.list_only`) copies each file to `options.dest` under a temp name,
    renaming it only when its sha256 matches; files already in dest and verified are
    skipped. Returns the selected index entries. Raises NotFound (no folder / no index /
    nothing selected), VerificationFailed (bad index, mismatch, link instead of a file),
    Conflict (a differing file in dest without --overwrite), InvalidInput (dest is the
    source folder).
    """
    src = Path(src_checkpoints_dir)
    index_path = src / INDEX_NAME
    if not index_path.is_file():
        raise NotFound(f"{src}: no checkpoints yet (no {INDEX_NAME})")
    index = parse_index(index_path.read_bytes(), str(src))
    entries = select(index, options, str(src))
    if options.list_only:
        return entries
    dest = Path(options.dest)
    if dest.exists() and src.resolve() == dest.resolve():
        raise InvalidInput(f"--dest {dest} is the run's own checkpoint folder; choose another folder")
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    for e in entries:
        check_name(e["file"])
    _have, need = plan(dest, expected(entries), overwrite=options.overwrite)
    progress = Progress(sum(e.size for e in need), enabled=options.progress)
    try:
        copy_verified(src, dest, need, on_bytes=progress.add)
    finally:
        progress.done()
    write_local_index(dest, index, entries)
    return entries
