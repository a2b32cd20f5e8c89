"""kjob.transfer (tarsafe, index, progress) without a server: hostile tar streams, verification,
resume planning, frame boundaries anywhere, the local (--local) copy path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from kjob.backend import FetchOptions
from kjob.errors import Conflict, NotFound, VerificationFailed
from kjob.transfer.index import format_listing, parse_index, select, verify_and_copy_local
from kjob.transfer.progress import Progress
from kjob.transfer.tarsafe import BlockReader, Expected, TruncatedStream, UnsafeEntry, extract_verified, plan

from ckpt_helpers import write_checkpoints


def entry(name: str, data: bytes) -> Expected:
    return Expected(name, len(data), hashlib.sha256(data).hexdigest())


def make_tar(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    """members: (TarInfo fields dict, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


A = b"checkpoint A " * 1000
B = bytes(range(256)) * 700


@pytest.mark.parametrize("size", [1, 7, 511, 512, 513, 32768, 1 << 20])
def test_extracts_and_verifies_whatever_the_chunk_boundaries(tmp_path, size):
    data = make_tar([({"name": "epoch-0001.pt"}, A), ({"name": "epoch-0002.pt"}, B)])
    want = [entry("epoch-0001.pt", A), entry("epoch-0002.pt", B)]
    blocks = BlockReader(chunks(data, size))
    done = extract_verified(None, tmp_path, want, blocks=blocks)
    assert done == want
    assert (tmp_path / "epoch-0001.pt").read_bytes() == A and (tmp_path / "epoch-0002.pt").read_bytes() == B
    assert tree(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]  # no temp files left


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_through_gnu_and_pax_headers(tmp_path, fmt):
    name = "epoch-0001-" + "x" * 150 + ".pt"
    if fmt == tarfile.USTAR_FORMAT:
        name = "epoch-0001.pt"
    extract_verified(chunks(make_tar([({"name": name}, A)], fmt), 4096), tmp_path, [entry(name, A)])
    assert (tmp_path / name).read_bytes() == A


HOSTILE = [
    ("absolute", [({"name": "/tmp/evil.pt"}, A)], "absolute path"),
    ("dotdot", [({"name": "../evil.pt"}, A)], r"path escapes the destination \(\.\.\)"),
    ("dotdot-deep", [({"name": "sub/../../evil.pt"}, A)], r"path escapes the destination"),
    ("symlink-escape", [({"name": "epoch-0001.pt", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)], "symbolic link to '/etc/passwd'"),
    ("hardlink-escape", [({"name": "epoch-0001.pt", "type": tarfile.LNKTYPE, "linkname": "../../outside"}, None)], "hard link to '../../outside'"),
    ("char-device", [({"name": "epoch-0001.pt", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)], "device file"),
    ("block-device", [({"name": "epoch-0001.pt", "type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, None)], "device file"),
    ("fifo", [({"name": "epoch-0001.pt", "type": tarfile.FIFOTYPE}, None)], "fifo"),
    ("directory", [({"name": "epoch-0001.pt", "type": tarfile.DIRTYPE}, None)], "directory"),
    ("sub-folder", [({"name": "sub/epoch-0001.pt"}, A)], "sub-folder"),
    ("unexpected", [({"name": "authorized_keys"}, A)], "not one of the requested checkpoint files"),
    ("temp-name", [({"name": ".tmp-epoch-0001.pt"}, A)], "not a plain file name"),
    ("duplicate", [({"name": "epoch-0001.pt"}, A), ({"name": "epoch-0001.pt"}, A)], "appears twice"),
]


@pytest.mark.parametrize("case,members,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_entries_are_refused_and_nothing_lands_outside_dest(tmp_path, case, members, message):
    dest = tmp_path / "a" / "dest"
    data = make_tar([(dict(f), d) for f, d in members])
    with pytest.raises(UnsafeEntry, match=message) as err:
        extract_verified(chunks(data, 1000), dest, [entry("epoch-0001.pt", A)])
    assert err.value.exit_code == 7
    assert err.value.message.startswith("refusing tar entry ")
    # Only the destination folder exists, and the only file in it is the first,
    # legitimately verified copy (duplicate case): nothing elsewhere, no temp files.
    assert tree(tmp_path) == ["a", "a/dest"] + (["a/dest/epoch-0001.pt"] if case == "duplicate" else [])
    assert not Path("/tmp/evil.pt").exists()


def test_pax_path_record_cannot_smuggle_a_path(tmp_path):
    # A pax 'path' record overrides the harmless name in the ustar header.
    data = make_tar([({"name": "epoch-0001.pt", "pax_headers": {"path": "../../escape.pt"}}, A)], tarfile.PAX_FORMAT)
    with pytest.raises(UnsafeEntry, match="'../../escape.pt': path escapes"):
        extract_verified(chunks(data, 512), tmp_path / "d", [entry("epoch-0001.pt", A)])
    assert tree(tmp_path) == ["d"]


def test_garbage_instead_of_a_tar_is_refused(tmp_path):
    with pytest.raises(UnsafeEntry, match="bad header"):
        extract_verified([b"<html>502 Bad Gateway</html>" + b"x" * 600], tmp_path, [entry("epoch-0001.pt", A)])


def test_size_and_sha256_mismatch_leave_nothing_at_the_final_path(tmp_path):
    bad = bytearray(A)
    bad[100] ^= 1
    data = make_tar([({"name": "epoch-0001.pt"}, bytes(bad))])
    with pytest.raises(VerificationFailed, match=r"epoch-0001.pt: sha256 mismatch .*nothing was written at .*epoch-0001.pt"):
        extract_verified(chunks(data, 4096), tmp_path, [entry("epoch-0001.pt", A)])
    assert tree(tmp_path) == []
    data = make_tar([({"name": "epoch-0001.pt"}, A + b"!")])
    with pytest.raises(VerificationFailed, match=f"carries {len(A) + 1} bytes but index.json says {len(A)}"):
        extract_verified(chunks(data, 4096), tmp_path, [entry("epoch-0001.pt", A)])
    assert tree(tmp_path) == []


def test_a_cut_inside_a_file_keeps_the_verified_ones_and_no_temp_file(tmp_path):
    data = make_tar([({"name": "epoch-0001.pt"}, A), ({"name": "epoch-0002.pt"}, B)])
    got = []
    with pytest.raises(TruncatedStream):
        extract_verified(chunks(data[: len(data) // 2 + 3000], 999), tmp_path, [entry("epoch-0001.pt", A), entry("epoch-0002.pt", B)],
                         on_file=got.append)
    assert [e.name for e in got] == ["epoch-0001.pt"]
    assert tree(tmp_path) == ["epoch-0001.pt"]


def test_plan_skips_verified_files_and_guards_differing_ones(tmp_path):
    (tmp_path / "epoch-0001.pt").write_bytes(A)
    (tmp_path / "epoch-0002.pt").write_bytes(b"something else")
    want = [entry("epoch-0001.pt", A), entry("epoch-0002.pt", B), entry("epoch-0003.pt", A)]
    with pytest.raises(Conflict, match="epoch-0002.pt exists and differs") as err:
        plan(tmp_path, want, overwrite=False)
    assert err.value.hint.startswith("pass --overwrite")
    have, need = plan(tmp_path, want, overwrite=True)
    assert [e.name for e in have] == ["epoch-0001.pt"] and [e.name for e in need] == ["epoch-0002.pt", "epoch-0003.pt"]
    data = make_tar([({"name": "epoch-0002.pt"}, B), ({"name": "epoch-0003.pt"}, A)])
    extract_verified(chunks(data, 65536), tmp_path, need, overwrite=True)
    assert (tmp_path / "epoch-0002.pt").read_bytes() == B


def test_index_is_checked_and_selection_explains_what_is_missing(tmp_path):
    index = write_checkpoints(tmp_path, [10, 20, 30])
    raw = json.dumps(index)
    assert [e["file"] for e in select(parse_index(raw, "x"), FetchOptions(dest=tmp_path), "x")] == ["epoch-0003.pt"]
    assert [e["epoch"] for e in select(index, FetchOptions(dest=tmp_path, which="all"), "x")] == [1, 2, 3]
    assert select(index, FetchOptions(dest=tmp_path, which="best"), "x")[0]["file"] == "epoch-0002.pt"
    with pytest.raises(NotFound, match=r"no checkpoint of epoch 7 \(epochs there: 1, 2, 3\)"):
        select(index, FetchOptions(dest=tmp_path, which="epoch", epoch=7), "x")
    with pytest.raises(NotFound, match="records no best checkpoint"):
        select({**index, "best": None}, FetchOptions(dest=tmp_path, which="best"), "x")
    for bad, msg in [("nope", "not valid JSON"), ({"format": "other"}, "format 'other'"),
                     ({**index, "checkpoints": [{**index["checkpoints"][0], "file": "../x"}]}, r"checkpoints\[0\] needs a flat 'file'")]:
        with pytest.raises(VerificationFailed, match=msg):
            parse_index(bad if isinstance(bad, str) else json.dumps(bad), "pvc:/ckpt")
    lines = format_listing(index, index["checkpoints"])
    assert lines[0].split() == ["EPOCH", "SIZE", "METRICS", "TIME", "FILE"]
    assert lines[2].split()[0] == "2" and lines[2].endswith("epoch-0002.pt (best)") and "top1=12" in lines[2]


def test_local_copy_verifies_resumes_and_refuses_mismatch(tmp_path):
    src, dest = tmp_path / "run" / "checkpoints", tmp_path / "out"
    write_checkpoints(src, [3000, 5000])
    opts = FetchOptions(dest=dest, which="all")
    assert [e["file"] for e in verify_and_copy_local(src, opts)] == ["epoch-0001.pt", "epoch-0002.pt"]
    assert (dest / "epoch-0002.pt").read_bytes() == (src / "epoch-0002.pt").read_bytes()
    local_index = json.loads((dest / "index.json").read_text())
    assert [e["file"] for e in local_index["checkpoints"]] == ["epoch-0001.pt", "epoch-0002.pt"]
    os.unlink(dest / "epoch-0002.pt")
    with open(src / "epoch-0002.pt", "r+b") as f:  # the source rots after the index was written
        f.seek(10)
        f.write(b"\xff")
    with pytest.raises(VerificationFailed, match="epoch-0002.pt: sha256 or size differs"):
        verify_and_copy_local(src, opts)
    assert tree(dest) == ["epoch-0001.pt", "index.json"]
    with pytest.raises(NotFound, match="no checkpoints yet"):
        verify_and_copy_local(tmp_path / "nothing", opts)


def test_progress_draws_only_when_enabled():
    quiet, loud = io.StringIO(), io.StringIO()
    for out, enabled in ((quiet, False), (loud, True)):
        p = Progress(2_000_000, enabled=enabled, stream=out)
        p._last = -1.0
        p.add(1_000_000)
        p.done()
    assert quiet.getvalue() == ""
    assert "50.0%" in loud.getvalue() and "1.0 MB / 2.0 MB" in loud.getvalue() and "ETA" in loud.getvalue()


def test_the_trainers_own_checkpoint_folder_is_read_and_verified(tmp_path):
    """The checkpoint index from the writer's side: kjob_trainer.common.checkpoints.CheckpointDir."""
    from kjob_trainer.common.checkpoints import CheckpointDir, epoch_name, step_name

    ckdir = CheckpointDir.under(str(tmp_path / "run"), "pytorch", "resnext50_32x4d", keep=2)
    for epoch, top1 in ((1, 30.0), (2, 50.0), (3, 40.0)):
        ckdir.save(epoch_name(epoch, ".pt"), lambda p, e=epoch: p.write_bytes(bytes([e]) * 5000), epoch=epoch,
                   step=epoch * 10, metrics={"top1": top1})
    ckdir.save(step_name(35, ".pt"), lambda p: p.write_bytes(b"s" * 700), epoch=3, step=35)
    dest = tmp_path / "out"
    got = verify_and_copy_local(ckdir.folder, FetchOptions(dest=dest, which="all"))
    assert [e["file"] for e in got] == ["epoch-0002.pt", "epoch-0003.pt", "step-00000035.pt"]
    assert verify_and_copy_local(ckdir.folder, FetchOptions(dest=dest, which="best"))[0]["file"] == "epoch-0002.pt"
    assert (dest / "step-00000035.pt").read_bytes() == b"s" * 700
