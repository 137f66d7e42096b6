#!/usr/bin/env bash
# End-to-end benchmark against a real local broker, with its baseline in
# the same run. Usage: scripts/bench.sh [LEADS | --smoke]
#
# Preloads LEADS generated leads (default 1,000,000; 10% duplicates) into a
# 12-partition topic, then times `leadflow run --until-drained` on them:
#   passthrough      the same loop, clients and transactions, copying bytes
#                    (`run --passthrough`): the limit the broker and
#                    client set;
#   exactly-once     the pipeline (input keyed by person and offer, so no
#                    repartition hop, as `pipeline.repartition = false`);
#   at-least-once    the same, committing offsets after a flush;
#   exactly-once, repartitioned   with the re-keying hop (the default).
# Then a restart of the exactly-once run, which restores its dedupe state
# from the changelog and finds nothing left to drain: the restore time.
# Then end-to-end latency at fixed rates of half and a tenth of the
# exactly-once maximum:
# from producing a raw lead (stamped with the time of producing) to its
# campaign record arriving at a read_committed consumer (`leadflow tail`).
# Prints a Markdown report (docs/BENCHMARKS.md holds the last full one).
# --smoke runs 5,000 leads with the debug build, for CI to keep this
# working; its numbers mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

leads=${1:-1000000}
latency_seconds=30
profile=release
if [ "$leads" = "--smoke" ]; then
  leads=5000
  latency_seconds=5
  profile=debug
fi
export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
bootstrap="127.0.0.1:$LEADFLOW_KAFKA_PORT"

if [ "$profile" = release ]; then
  cargo build --release --quiet
else
  cargo build --quiet
fi
leadflow=$PWD/target/$profile/leadflow
scripts/kafka.sh reset >&2
trap 'scripts/kafka.sh stop >&2' EXIT
scripts/kafka.sh start >&2

work=$(mktemp -d)
# The quickstart names its catalog by a path relative to itself.
cp config/catalog.toml "$work/catalog.toml"
# Text logs: the report reads timestamps off the start of each line.
export LEADFLOW_LOG__FORMAT=text LEADFLOW_HTTP__LISTEN=127.0.0.1:0 RUST_LOG=info
config() { # NAME INPUT GUARANTEE REPARTITION
  sed -e "s/127.0.0.1:9092/$bootstrap/" -e "s/^group_id = .*/group_id = \"bench-$1\"/" \
    config/quickstart.toml > "$work/$1.toml"
  cat >> "$work/$1.toml" <<TOML

[topics]
input = "$2"
suppressed = "$1.suppressed"
dead_letter = "$1.dlq"

[pipeline]
processing_guarantee = "$3"
repartition = $4

[[routes]]
campaign = "nurture"
storefront = "appsource"
topic = "$1.nurture"

[[routes]]
campaign = "demand-gen"
storefront = "azure-marketplace"
topic = "$1.demand-gen"
TOML
  "$leadflow" -c "$work/$1.toml" topics create --partitions 12 2> /dev/null
}
config passthrough bench.raw exactly-once false
config exactly-once bench.raw exactly-once false
config at-least-once bench.raw at-least-once false
config exactly-once-repartitioned bench.raw exactly-once true
config latency latency.raw exactly-once false
config latency-low latency-low.raw exactly-once false
echo "preloading $leads leads" >&2
"$leadflow" -c "$work/exactly-once.toml" produce --count "$leads" > "$work/expected.json" 2> /dev/null

run() { # NAME [FLAGS]
  local name=$1
  shift
  echo "draining with $name" >&2
  /usr/bin/time -f '%e %U %S %M' -o "$work/$name.time" \
    "$leadflow" -c "$work/$name.toml" run --until-drained "$@" > "$work/$name.tally" 2> "$work/$name.log"
}
run passthrough --passthrough
run exactly-once
run at-least-once
run exactly-once-repartitioned
cp "$work/exactly-once.toml" "$work/restore.toml"
run restore

python3 scripts/bench_report.py drain "$work" "$leads" "$leadflow" > "$work/report.md"
rate=$(python3 scripts/bench_report.py half-rate "$work" "$leads")

# Latency: leadflow runs; a read_committed consumer tails the campaign
# topic while leads are produced at a fixed rate: half the maximum, as
# asked, and a tenth of it, where the machine is not busy, for the floor.
latency() { # NAME RATE LABEL
  echo "latency at $2 leads/s for $latency_seconds s" >&2
  "$leadflow" -c "$work/$1.toml" run > /dev/null 2> "$work/$1.log" &
  local run_pid=$!
  # Produce only once leadflow has its partitions, or the wait to join the
  # group would count as latency.
  for _ in $(seq 600); do
    grep -q "partitions assigned" "$work/$1.log" && break
    sleep 0.1
  done
  grep -q "partitions assigned" "$work/$1.log" || { echo "leadflow never got partitions" >&2; exit 1; }
  local count
  count=$(python3 -c "print(max(1, int($2 * $latency_seconds)))")
  python3 scripts/bench_report.py latency "$work" "$leadflow" "$work/$1.toml" "$1.nurture" \
    "$count" "$2" "$3" >> "$work/report.md"
  kill -TERM "$run_pid"
  wait "$run_pid" || true
}
latency latency "$rate" "half the exactly-once maximum"
latency latency-low "$(( rate / 5 > 0 ? rate / 5 : 1 ))" "a tenth of the exactly-once maximum"
cat "$work/report.md"
