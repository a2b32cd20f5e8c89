#!/usr/bin/env bash
# `make test`: every tier, in the order that lets the slow builds overlap the tests.
#
#   1. the real control plane's binaries (tests/cluster/build.sh; seconds when cached);
#   2. in the background, at low priority: Kubeflow Trainer v2, JobSet and the Lua runner
#      (build.sh --set trainer), Kueue (--set kueue), the real node's binaries (--set
#      node), and beside them both trainer images (images/build-local.sh), while
#   3. the suite (pytest -m "not node and not cluster") and, beside it, the control-plane
#      tier (pytest -m cluster, in a session of its own); its Trainer v2
#      tests run last (tests/cluster/conftest.py orders them), and their fixture waits
#      for the trainer set's build if it is still going (build.sh's build lock);
#   4. once step 2 is done, the real-node tier (pytest -m node tests/node), whose fixtures
#      find the builds cached, or run a failed one again and report its error;
#   5. a one-screen summary: each tier's tests and time, each build's, the slowest tests.
#
# The cluster tiers need root and Go. Without them step 1, 2 and 4 are skipped, saying
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
cluster_tier=
stop_background() {
  [[ -n "$background" ]] && kill -- "-$background" 2>/dev/null
  [[ -n "$cluster_tier" ]] && kill "$cluster_tier" 2>/dev/null  # its watchdog ends its control plane
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
  # The control-plane tier beside the suite: it mostly waits on controllers while the pure
  # tier keeps one core busy, so side by side they take little more than the longer one.
  # Its own pytest session and report; its output is shown when it ends.
  echo "make test: the real control-plane tier runs beside the suite (output: $times/cluster.log)"
  $py -m pytest -m cluster -p no:cacheprovider --durations=15 --junitxml="$times/cluster.xml" tests \
    >"$times/cluster.log" 2>&1 &
  cluster_tier=$!
  $py -m pytest -m "not node and not cluster" --junitxml="$times/suite.xml" || status=1
  wait "$cluster_tier" || status=1
  cluster_tier=
  echo "================ the real control-plane tier ($times/cluster.log) ================"
  cat "$times/cluster.log"
else
  $py -m pytest -m "not node" --junitxml="$times/suite.xml" || status=1
fi

if ((real_tiers)); then
  # The builds first (usually long done): the tier's fixtures then find them cached, and
  # if one failed they run it again and show its error.
  wait "$background" || echo "make test: a background build failed (log: $log); the node tier retries it"
  background=
  $py -m pytest -m node --durations=0 --junitxml="$times/node.xml" tests/node || status=1
elif [[ -n "${CI:-}" ]]; then
  echo "make test: the real-node tier cannot run ($why); CI must run it" >&2
  status=1
else
  echo "make test: the real-node tier skipped: $why (it needs root and Go)" >&2
fi
summary
exit $status
