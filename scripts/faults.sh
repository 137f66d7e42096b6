#!/usr/bin/env bash
# The fault tests of exactly-once processing at full size: 200,000 leads
# each (set LEADFLOW_FAULT_LEADS to change it), in release mode, one test at
# a time, against a fresh broker that this script starts and stops, and the
# cluster scenarios (tests/cluster.rs, each on a fresh 3-broker cluster of
# its own), those CI leaves out included. Prints the checker's summary
# lines of each test.
set -euo pipefail
cd "$(dirname "$0")/.."

export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
export LEADFLOW_TEST_BOOTSTRAP="127.0.0.1:$LEADFLOW_KAFKA_PORT"
export LEADFLOW_FAULT_LEADS=${LEADFLOW_FAULT_LEADS:-200000}

scripts/toxiproxy.sh install
cargo test --release --features kafka-tests --test faults --test broker_restart --test cluster --no-run

scripts/kafka.sh reset
trap 'scripts/kafka.sh stop' EXIT
scripts/kafka.sh start

mkdir -p target
cargo test --release --no-fail-fast --features kafka-tests --test faults --test broker_restart \
  --test cluster -- --nocapture --test-threads=1 --include-ignored 2>&1 | tee target/faults.log \
  | grep -E '^(test |checker:|round|broker killed|zombie|killing|cutting|stopping node|recovered|restarts|  [0-9]+ ×|slowing|throttling|copier|restored)' || true
grep -q 'test result: FAILED' target/faults.log && exit 1
grep -q 'test result: ok' target/faults.log
