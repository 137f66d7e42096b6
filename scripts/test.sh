#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration
# tests against a real Apache Kafka broker and a real schema registry
# (Apicurio), which this script starts on their own ports with fresh data
# and stops again however the tests end.
set -euo pipefail
cd "$(dirname "$0")/.."

export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
export LEADFLOW_TEST_BOOTSTRAP="127.0.0.1:$LEADFLOW_KAFKA_PORT"

# Each step's start, with the seconds since this script began: where CI's
# time goes.
step() { echo "test.sh: [$SECONDS s] $*" >&2; }

step "tools"
scripts/tools.sh

# What the tests run besides leadflow is fetched while leadflow builds:
# Toxiproxy for network faults (tests/network.rs, tests/cluster.rs), the
# Kafka jars, the schema registry (Apicurio) and a Java to run it,
# Azurite for the table ingest (tests/ingest_table.rs), and the Python
# clients in tests/interop/: Confluent's, the standard Confluent-format
# producer and consumer that tests/registry.rs checks leadflow against, and
# Azure's Tables client, which writes leads as Microsoft does.
fetch_parts() {
  scripts/toxiproxy.sh install
  scripts/azurite.sh install
  scripts/kafka.sh fetch
  scripts/registry.sh fetch
  scripts/python.sh
}
mkdir -p target
# Background jobs run in process groups of their own, so that however this
# script ends, nothing it started (a Go build, say) outlives it; nor do the
# broker and the registry.
export -f fetch_parts
jobs_started=()
in_background() {
  setsid bash -c 'renice -n 19 -p $$ >/dev/null; "$@"' bash "$@" &
  jobs_started+=($!)
}
cleanup() {
  for job in "${jobs_started[@]}"; do kill -- "-$job" 2>/dev/null || true; done
  scripts/kafka.sh stop
  scripts/registry.sh stop
}
trap cleanup EXIT
# At the lowest priority, so as to fill the cores leadflow's build leaves
# idle (while it links, say) rather than slow that build down.
in_background fetch_parts > target/fetch.log 2>&1
fetching=$!
fetched() {
  step "waiting for the fetched parts"
  if ! wait "$fetching"; then cat target/fetch.log >&2; exit 1; fi
  cat target/fetch.log >&2
}

step "fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --features kafka-tests -- -D warnings
step "build the tests"
cargo test --features kafka-tests --no-run
# Helm, built from source (about 4 minutes of CPU from a clean Go cache),
# and the Kubernetes API schemas are needed only for the chart's check at
# the end: they build at the lowest priority while the tests run, in the
# time those leave idle (beside leadflow's build they slowed it by minutes).
in_background scripts/helm.sh install > target/helm.log 2>&1
helm_fetching=$!
# The fuzz target is built by cargo-fuzz only; checking it here keeps it
# compiling as the library changes (with the library's locked versions,
# so that it shares their build). A check links nothing, so libFuzzer's
# C++ (about 90 s to compile here) is pointed at a library never built.
step "check the fuzz target"
cp Cargo.lock fuzz/Cargo.lock
CUSTOM_LIBFUZZER_PATH="$PWD/target/fuzz-check/libfuzzer.a" \
  cargo check --manifest-path fuzz/Cargo.toml --target-dir target

# docker/ is checked without a Docker engine (tests/docker.rs checks the
# dashboard and the alert rules against the exported metrics).
step "check docker/"
# The image's build stage from exactly the files docker/Dockerfile copies.
scripts/image-context.sh
docker-compose -f docker/compose.yaml config -q
promtool check config docker/prometheus/prometheus.yml >/dev/null

fetched

# The benchmark command, tiny, on a broker of its own (issue 7 keeps it working).
step "benchmark smoke run"
LEADFLOW_KAFKA_PORT=$((LEADFLOW_KAFKA_PORT + 200)) scripts/bench.sh --smoke > /dev/null

step "start the broker and the registry"
scripts/kafka.sh reset
scripts/kafka.sh start
# The schema registry keeps its data in memory: every start is fresh.
scripts/registry.sh start
LEADFLOW_TEST_REGISTRY=$(scripts/registry.sh url)
export LEADFLOW_TEST_REGISTRY

step "run the tests"
cargo test --features kafka-tests

# The Helm chart: lint, render, and validate against Kubernetes' schemas.
step "waiting for Helm"
if ! wait "$helm_fetching"; then cat target/helm.log >&2; exit 1; fi
step "check helm/"
scripts/helm.sh check
