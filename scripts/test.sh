#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration
# tests against a real Apache Kafka broker and a real schema registry
# (Apicurio), which this script starts on their own ports with fresh data
# and stops again however the tests end.
set -euo pipefail
cd "$(dirname "$0")/.."

export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
export LEADFLOW_TEST_BOOTSTRAP="127.0.0.1:$LEADFLOW_KAFKA_PORT"

scripts/tools.sh

cargo fmt --all -- --check
cargo clippy --all-targets --features kafka-tests -- -D warnings
cargo test --features kafka-tests --no-run

# docker/ is checked without a Docker engine (tests/docker.rs checks the
# dashboard and the alert rules against the exported metrics).
docker-compose -f docker/compose.yaml config -q
promtool check config docker/prometheus/prometheus.yml >/dev/null

# The benchmark command, tiny, on a broker of its own (issue 7 keeps it working).
LEADFLOW_KAFKA_PORT=$((LEADFLOW_KAFKA_PORT + 200)) scripts/bench.sh --smoke > /dev/null

scripts/kafka.sh reset
trap 'scripts/kafka.sh stop; scripts/registry.sh stop' EXIT
scripts/kafka.sh start
# The schema registry keeps its data in memory: every start is fresh.
scripts/registry.sh start
LEADFLOW_TEST_REGISTRY=$(scripts/registry.sh url)
export LEADFLOW_TEST_REGISTRY

cargo test --features kafka-tests
