#!/usr/bin/env bash
# `make pytest`: every test, in two lanes side by side, then the one test that takes the testbed down.
#
# Most tests wait on services (half the machine's CPU time is idle in a serial run), so they run in two lanes
# that share nothing they could break for each other (tests/README.md, "Two lanes"):
#
#   inventory lane (this shell): test_bootstrap.py first (it builds the env on "Pegasus" that every test with a
#     playbook uses), then the tests that use the inventory's control planes, workers and GPUs, in order;
#   beside lane (background, its output in reports/pytest-beside.log): the unit tests, the integration tests
#     marked self_contained (their own services, addresses and free ports), then, once the env is built, those
#     marked own_names (the testbed's Slurm and sshd under their own job names, state directories and free
#     ports), then molecule;
#
# and last, alone, the tests marked takes_testbed_down: they stop Slurm and sshd under everyone else.
set -uo pipefail

REPORTS=reports
BESIDE_LOG=$REPORTS/pytest-beside.log
BOOTSTRAPPED=$REPORTS/.env-bootstrapped  # holds the exit status of test_bootstrap.py once it has ended
BOOTSTRAP_TESTS=tests/integration/test_bootstrap.py
WAIT_FOR_BOOTSTRAP_S=1800

beside_lane() {
  local status=0
  pytest -p no:cacheprovider --durations=10 tests/unit || status=1
  pytest -p no:cacheprovider --durations=10 -m self_contained tests/integration || status=1
  local waited=0
  until [ -e "$BOOTSTRAPPED" ]; do
    if [ "$waited" -ge "$WAIT_FOR_BOOTSTRAP_S" ]; then
      echo "==> $BOOTSTRAP_TESTS did not end within ${WAIT_FOR_BOOTSTRAP_S}s: the own_names tests did not run"
      return 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  pytest -p no:cacheprovider --durations=10 -m own_names tests/integration || status=1
  make --no-print-directory molecule || status=1
  return "$status"
}

mkdir -p "$REPORTS"
rm -f "$BOOTSTRAPPED"
echo "==> Two lanes: the inventory's tests here; unit, self-contained, own-names tests and molecule beside, in $BESIDE_LOG"
beside_lane > "$BESIDE_LOG" 2>&1 &
beside=$!

inventory=0
pytest -p no:cacheprovider --durations=10 "$BOOTSTRAP_TESTS" || inventory=1
echo "$inventory" > "$BOOTSTRAPPED"
pytest -p no:cacheprovider --durations=25 --ignore "$BOOTSTRAP_TESTS" \
  -m "not self_contained and not own_names and not takes_testbed_down" tests/integration || inventory=1

beside_status=0
wait "$beside" || beside_status=$?
echo "==> The beside lane (exit $beside_status):"
cat "$BESIDE_LOG"

last=0
echo "==> Last, alone: the tests that take the testbed down"
pytest -p no:cacheprovider --durations=5 -m takes_testbed_down tests/integration || last=1

[ "$inventory" -eq 0 ] && [ "$beside_status" -eq 0 ] && [ "$last" -eq 0 ]
