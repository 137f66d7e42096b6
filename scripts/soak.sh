#!/usr/bin/env bash
# The soak, on demand and never in CI: two instances of leadflow on a fresh
# 3-broker cluster (scripts/cluster.sh) for DURATION, 500 leads a second,
# and a random fault of the cluster scenarios every few minutes
# (tests/soak.rs). Writes target/soak/soak.csv (once a minute: each
# instance's resident memory, the lag, the restarts; each fault and its
# recovery time), plots it to docs/soak.png, prints instance A's memory
# drift and the checker's result.
#
#   scripts/soak.sh 60m          DURATION as 90s, 60m or 2h
#
# LEADFLOW_SOAK_FAULT_EVERY (seconds, default 180) spaces the faults;
# LEADFLOW_SOAK_FAULTS (say 0,1: the broker kills) picks only those kinds
# (numbered in tests/soak.rs, `inject`).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:?usage: scripts/soak.sh DURATION (90s, 60m, 2h)}
case $duration in
  *h) seconds=$((${duration%h} * 3600)) ;;
  *m) seconds=$((${duration%m} * 60)) ;;
  *s) seconds=${duration%s} ;;
  *) seconds=$duration ;;
esac
export LEADFLOW_SOAK_SECONDS=$seconds
export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
mkdir -p target/soak
export LEADFLOW_SOAK_CSV=${LEADFLOW_SOAK_CSV:-$PWD/target/soak/soak.csv}

scripts/toxiproxy.sh install
scripts/kafka.sh fetch
if ! cmp -s scripts/soak/requirements.txt .cache/soak-python/.requirements 2>/dev/null; then
  rm -rf .cache/soak-python
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target .cache/soak-python -r scripts/soak/requirements.txt
  cp scripts/soak/requirements.txt .cache/soak-python/.requirements
fi

cargo test --release --features kafka-tests --test soak --no-run
status=0
cargo test --release --features kafka-tests --test soak -- --ignored --nocapture 2>&1 \
  | tee target/soak/soak.log | grep -E '^(soak:|checker:|restarts:|  [0-9]+ ×|test )' || status=1
grep -q 'test result: ok' target/soak/soak.log || status=1
PYTHONPATH=.cache/soak-python python3 scripts/soak_plot.py "$LEADFLOW_SOAK_CSV" docs/soak.png
exit $status
