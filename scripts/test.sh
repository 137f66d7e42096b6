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
# Network faults between leadflow and the broker (tests/network.rs).
scripts/toxiproxy.sh install

# Confluent's Python client: the standard Confluent-format producer and
# consumer that tests/registry.rs checks leadflow against (tests/interop/).
if ! cmp -s tests/interop/requirements.txt .cache/python/.requirements 2>/dev/null; then
  rm -rf .cache/python
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target .cache/python -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt .cache/python/.requirements
fi

cargo fmt --all -- --check
cargo clippy --all-targets --features kafka-tests -- -D warnings
cargo test --features kafka-tests --no-run
# The fuzz target is built by cargo-fuzz only; checking it here keeps it
# compiling as the library changes (with the library's locked versions,
# so that it shares their build).
cp Cargo.lock fuzz/Cargo.lock
cargo check --quiet --manifest-path fuzz/Cargo.toml --target-dir target

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
