#!/usr/bin/env bash
# `make test`: every tier, in the order that lets the slow builds overlap the tests.
#
#   1. the real control plane's binaries (tests/cluster/build.sh; seconds when cached);
#   2. in the background, at low priority: the real node's binaries (build.sh --set node)
#      and both trainer images (images/build-local.sh), while
#   3. the suite and the control-plane tier run (pytest -m "not node");
#   4. once step 2 is done, the real-node tier (pytest -m node tests/node), whose fixtures
#      find the builds cached, or run a failed one again and report its error.
#
# The cluster tiers need root and Go. Without them step 1, 2 and 4 are skipped, saying
# why; under CI that is a failure, so CI never passes without them. Both pytest runs always
# run; the exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
cache="${KJOB_CACHE:-$HOME/.cache/kjob}"

real_tiers=1
if [[ "$(id -u)" != 0 ]]; then why="not root"; real_tiers=0; fi
if ! command -v go >/dev/null; then why="no Go on PATH"; real_tiers=0; fi

background=
stop_background() { [[ -n "$background" ]] && kill -- "-$background" 2>/dev/null; }
trap stop_background EXIT

if ((real_tiers)); then
  bash tests/cluster/build.sh >/dev/null || exit 1
  mkdir -p "$cache"
  log="$cache/make-test-builds.log"
  echo "make test: building the node's binaries and the trainer images in the background (log: $log)"
  # Its own process group, so an interrupted `make test` stops the builds too.
  setsid bash -c 'nice -n 10 bash tests/cluster/build.sh --set node >/dev/null && images/build-local.sh' >"$log" 2>&1 &
  background=$!
fi

status=0
$py -m pytest -m "not node" || status=1

if ((real_tiers)); then
  # The builds first (usually long done): the tier's fixtures then find them cached, and
  # if one failed they run it again and show its error.
  wait "$background" || echo "make test: a background build failed (log: $log); the node tier retries it"
  background=
  $py -m pytest -m node --durations=0 tests/node || status=1
elif [[ -n "${CI:-}" ]]; then
  echo "make test: the real-node tier cannot run ($why); CI must run it" >&2
  status=1
else
  echo "make test: the real-node tier skipped: $why (it needs root and Go)" >&2
fi
exit $status
