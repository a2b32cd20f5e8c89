#!/usr/bin/env bash
# `make test`: every tier, in the order that lets the slow builds overlap the tests.
#
#   1. the real control plane's binaries (tests/cluster/build.sh; seconds when cached);
#   2. in the background, at low priority: Kubeflow Trainer v2, JobSet and the Lua runner
#      (build.sh --set trainer), Kueue (--set kueue), the real node's binaries (--set
#      node), and beside them both trainer images (images/build-local.sh), while
#   3. the suite (pytest -m "not node and not cluster") and, beside it, in a process group
#      of their own, one after the other:
#      a. the control-plane tier (pytest -m cluster, a session of its own); its Trainer v2
#         tests run last (tests/cluster/conftest.py orders them), and their fixture waits
#         for the trainer set's build if it is still going (build.sh's build lock);
#      b. once step 2 is done, the real-node tier (pytest -m node tests/node), whose
#         fixtures find the builds cached, or run a failed one again and report its error;
#   4. the two real tiers' output, once the suite is done;
#   5. a one-screen summary: each tier's tests and time, each build's, the slowest tests.
#
# The cluster tiers need root and Go. Without them steps 1, 2, 3a and 3b are skipped, saying
# why; under CI that is a failure, so CI never passes without them. Every pytest run always
# runs; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
cache="${KJOB_CACHE:-$HOME/.cache/kjob}"
# What the closing summary reads (tests/time_summary.py): each build's time and state,
# and each pytest run's JUnit report. Emptied at every start: it describes this run only.
times=.make-test
rm -rf "$times" && mkdir -p "$times" && date +%s >"$times/started"

# timed NAME COMMAND...: runs COMMAND, appends "NAME seconds state" to builds.tsv, and
# returns its status. A build script that found its cache says "cached" or "unchanged" on
# stderr (tests/cluster/build.sh for either set, images/build-local.sh).
timed() {
  local name="$1" t0=$SECONDS err state rc
  shift
  err="$(mktemp)"
  # stderr through tee (shown and kept), stdout untouched (fd 3).
  { "$@" 2>&1 1>&3 3>&- | tee "$err" >&2; rc=${PIPESTATUS[0]}; } 3>&1
  if ((rc)); then state=failed
  elif grep -qE 'cached in|unchanged' "$err"; then state=cached
  else state=built; fi
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$state" >>"$times/builds.tsv"
  rm -f "$err"
  return $rc
}
summary() { $py tests/time_summary.py "$times"; }

real_tiers=1
if [[ "$(id -u)" != 0 ]]; then why="not root"; real_tiers=0; fi
if ! command -v go >/dev/null; then why="no Go on PATH"; real_tiers=0; fi

background=
real_tiers_pid=
stop_background() {
  [[ -n "$background" ]] && kill -- "-$background" 2>/dev/null
  # the tiers' pytest sessions end with it; each plane's watchdog ends its processes
  [[ -n "$real_tiers_pid" ]] && kill -- "-$real_tiers_pid" 2>/dev/null
}
trap stop_background EXIT

if ((real_tiers)); then
  timed "control plane binaries" bash tests/cluster/build.sh >/dev/null || { summary; exit 1; }
  mkdir -p "$cache"
  log="$cache/make-test-builds.log"
  echo "make test: building Trainer v2, JobSet, Kueue, the node's binaries and the trainer images in the background (log: $log)"
  # Its own process group, so an interrupted `make test` stops the builds too. It runs
  # this script's timed() through an exported function. Two chains side by side: the Go
  # builds (the trainer and Kueue sets first: the control-plane tier's last tests need
  # them) and the images (the longest build, needed only by the node tier, and partly
  # download and disk rather than CPU). A failed set does not stop the next: the fixture
  # that needs it runs it again and shows the error.
  export -f timed && export times
  setsid bash -c '{ timed "trainer v2 binaries" nice -n 10 bash tests/cluster/build.sh --set trainer >/dev/null; \
                    timed "kueue binaries" nice -n 10 bash tests/cluster/build.sh --set kueue >/dev/null; \
                    timed "node binaries" nice -n 10 bash tests/cluster/build.sh --set node >/dev/null; } & go=$!; \
                  timed "trainer images" images/build-local.sh; images=$?; wait $go && exit $images' >"$log" 2>&1 &
  background=$!
else
  printf '%s\t0\tskipped\t%s\n' "real tiers' builds" "$why" >>"$times/builds.tsv"
fi

status=0
if ((real_tiers)); then
  # The real tiers beside the suite, one after the other in a process group of their own:
  # the control-plane tier (it mostly waits on controllers), then, once step 2's builds are
  # done, the real-node tier. The suite's real OpenMPI runs are the longest part of
  # `make test`, so the node tier no longer waits for them to end. Each tier is its own
  # pytest session with its own report; their output is shown when the suite is done.
  echo "make test: the real control-plane tier, then the real-node tier, run beside the suite (output: $times/cluster.log, $times/node.log)"
  export py times background log
  setsid bash -c '
    $py -m pytest -m cluster -p no:cacheprovider --durations=15 --junitxml="$times/cluster.xml" tests \
      >"$times/cluster.log" 2>&1
    echo $? >"$times/cluster.rc"
    # The builds first (usually long done): the node fixtures then find them cached, and
    # if one failed they run it again and show its error.
    while kill -0 "$background" 2>/dev/null; do sleep 2; done
    $py -m pytest -m node -p no:cacheprovider --durations=0 --junitxml="$times/node.xml" tests/node \
      >"$times/node.log" 2>&1
    echo $? >"$times/node.rc"' &
  real_tiers_pid=$!
  $py -m pytest -m "not node and not cluster" --junitxml="$times/suite.xml" || status=1
  wait "$background" || echo "make test: a background build failed (log: $log); the node tier retried it"
  background=
  wait "$real_tiers_pid"
  real_tiers_pid=
  for tier in cluster node; do
    echo "================ the real ${tier/cluster/control-plane} tier ($times/$tier.log) ================"
    cat "$times/$tier.log" 2>/dev/null
    [[ "$(cat "$times/$tier.rc" 2>/dev/null)" == 0 ]] || status=1
  done
else
  $py -m pytest -m "not node" --junitxml="$times/suite.xml" || status=1
  if [[ -n "${CI:-}" ]]; then
    echo "make test: the real tiers cannot run ($why); CI must run them" >&2
    status=1
  else
    echo "make test: the real control-plane and node tiers skipped: $why (they need root and Go)" >&2
  fi
fi
summary
exit $status
