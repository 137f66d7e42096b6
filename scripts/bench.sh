#!/usr/bin/env bash
# End-to-end benchmark against a real local broker, with its baselines in
# the same run. Usage: scripts/bench.sh [LEADS | --smoke]
#
# Preloads LEADS generated leads (default 1,000,000; 10% duplicates) into a
# 12-partition `leads.raw`, then drains them with each contender in turn,
# each with its own consumer group and output topics:
#   passthrough      `run --passthrough`: the same loop, clients and
#                    transactions, copying bytes: the limit the broker and
#                    client set;
#   exactly-once     the pipeline without the repartition hop
#                    (`pipeline.repartition = false`; the input is keyed by
#                    person and offer, as `leadflow produce` writes it);
#   at-least-once    the same, committing offsets after a flush;
#   default          the default configuration: exactly-once, re-keyed, and
#                    (one process holding every partition) every lead skips
#                    the hop;
#   through-the-hop  the same with `pipeline.repartition_shortcut = false`:
#                    every lead through the repartition topic, as the leads
#                    whose partition another instance holds go;
#   kafka-streams    the Kafka Streams reference pipeline (../shared/
#                    ks-reference, or LEADFLOW_KS_REFERENCE), 1 stream
#                    thread, EOS v2, repartitioned by dedupe key.
# With 2 or more cores, the broker is pinned to core 0 and each contender
# to core 1 (taskset), so leads/s is per core of the contender.
# Then a restart of the exactly-once run, which restores its dedupe state
# from the changelog and finds nothing left to drain: the restore time;
# and the restore of 10 million keys written straight into a changelog.
# Then end-to-end latency of the default configuration while a separate
# process offers 5,000 leads/s for 20 s of warm-up and 60 s timed: from
# producing a raw lead (stamped with the time of producing) to its campaign
# record arriving at a read_committed consumer (`leadflow tail`). Last, the
# dedupe state's resident bytes a key at 10 million keys (the `stages`
# micro-benchmark).
# Prints a Markdown report (docs/BENCHMARKS.md holds the last full one).
# --smoke runs 5,000 leads with the debug build, for CI to keep this
# working (the Kafka Streams reference only if it is there); its numbers
# mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

leads=${1:-1000000}
restore_keys=10000000
latency_rate=5000
latency_seconds=60
latency_warmup=20
profile=release
if [ "$leads" = "--smoke" ]; then
  leads=5000
  restore_keys=100000
  latency_rate=500
  latency_seconds=5
  latency_warmup=1
  profile=debug
fi
export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
bootstrap="127.0.0.1:$LEADFLOW_KAFKA_PORT"
reference=${LEADFLOW_KS_REFERENCE:-$PWD/../shared/ks-reference}

if [ "$profile" = release ]; then
  cargo build --release --quiet
else
  cargo build --quiet
fi
leadflow=$PWD/target/$profile/leadflow

# The Kafka Streams reference, built from a copy in .cache.
ks_classpath=""
if [ -f "$reference/pom.xml" ]; then
  rm -rf .cache/ks-reference
  mkdir -p .cache
  cp -r "$reference" .cache/ks-reference
  rm -rf .cache/ks-reference/target
  mvn -q -B -f .cache/ks-reference/pom.xml compile dependency:copy-dependencies \
    -DoutputDirectory=target/libs -DincludeScope=runtime >&2
  ks_classpath="$PWD/.cache/ks-reference/target/classes:$PWD/.cache/ks-reference/target/libs/*"
elif [ "$profile" = release ]; then
  echo "bench.sh: no Kafka Streams reference at $reference (set LEADFLOW_KS_REFERENCE)" >&2
  exit 1
fi

# Confluent's Python client: the changelog writer and a commit probe.
scripts/python.sh
scripts/kafka.sh reset >&2
trap 'scripts/kafka.sh stop >&2' EXIT
scripts/kafka.sh start >&2

# One core for the broker, one for the contender, when there are two.
pin=()
if [ "$(nproc)" -ge 2 ]; then
  taskset -apc 0 "$(cat "$(scripts/kafka.sh dir)/broker.pid")" > /dev/null
  pin=(taskset -c 1)
fi

work=$(mktemp -d)
# The quickstart names its catalog by a path relative to itself.
cp config/catalog.toml "$work/catalog.toml"
# Text logs: the report reads timestamps off the start of each line.
export LEADFLOW_LOG__FORMAT=text LEADFLOW_HTTP__LISTEN=127.0.0.1:0 RUST_LOG=info NO_COLOR=1
config() { # NAME INPUT GUARANTEE REPARTITION SHORTCUT
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
repartition_shortcut = $5

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
config passthrough leads.raw exactly-once false true
config exactly-once leads.raw exactly-once false true
config at-least-once leads.raw at-least-once false true
config default leads.raw exactly-once true true
config through-the-hop leads.raw exactly-once true false
config latency latency.raw exactly-once true true
config restore-large restore.raw exactly-once false true
# The default topic names, which the Kafka Streams reference writes to.
sed -e "s/127.0.0.1:9092/$bootstrap/" config/quickstart.toml > "$work/kafka-streams.toml"
"$leadflow" -c "$work/kafka-streams.toml" topics create --partitions 12 2> /dev/null
echo "preloading $leads leads" >&2
"$leadflow" -c "$work/exactly-once.toml" produce --count "$leads" > "$work/expected.json" 2> /dev/null

run() { # NAME [FLAGS]
  local name=$1
  shift
  echo "draining with $name" >&2
  /usr/bin/time -f '%e %U %S %M' -o "$work/$name.time" "${pin[@]}" \
    "$leadflow" -c "$work/$name.toml" run --until-drained "$@" > "$work/$name.tally" 2> "$work/$name.log"
}
run passthrough --passthrough
run exactly-once
run at-least-once
run default
run through-the-hop
cp "$work/exactly-once.toml" "$work/restore.toml"
run restore
echo "writing $restore_keys keys into a changelog" >&2
PYTHONPATH=.cache/python python3 scripts/changelog_fill.py "$bootstrap" \
  bench-restore-large-dedupe-changelog "$restore_keys" 12
run restore-large

# The Kafka Streams reference: from its first RUNNING state to its group
# committed to the end of the input and of its repartition topic; CPU from
# /proc before it is stopped (the JVM's start-up included).
if [ -n "$ks_classpath" ]; then
  echo "draining with kafka-streams" >&2
  app=bench-kafka-streams
  "${pin[@]}" java -Xmx1g -cp "$ks_classpath" ref.LeadPipeline "$bootstrap" "$app" 1 \
    > "$work/kafka-streams.log" 2>&1 &
  ks_pid=$!
  # Its first commit starts the clock: it logs nothing to start one on.
  PYTHONPATH=.cache/python python3 scripts/bench_report.py first-commit "$bootstrap" "$app" \
    leads.raw "$work/kafka-streams.start"
  running=$(cat "$work/kafka-streams.start")
  java -cp "$ks_classpath" ref.Lag "$bootstrap" "$app" leads.raw "$app-by-dedupe-key-repartition" \
    > /dev/null 2>> "$work/kafka-streams.log"
  drained=$(date +%s.%N)
  ticks=$(awk '{print $14 + $15}' "/proc/$ks_pid/stat")
  rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$ks_pid/status")
  kill "$ks_pid"
  wait "$ks_pid" || true
  echo "$running $drained $ticks $(getconf CLK_TCK) $rss_kib" > "$work/kafka-streams.time"
fi

python3 scripts/bench_report.py drain "$work" "$leads" "$leadflow" "${#pin[@]}" > "$work/report.md"

# Latency: leadflow (the default configuration) runs; a read_committed
# consumer tails a campaign topic while a separate process produces leads
# at a fixed rate.
echo "latency at $latency_rate leads/s for $latency_warmup s of warm-up and $latency_seconds s" >&2
"${pin[@]}" "$leadflow" -c "$work/latency.toml" run > /dev/null 2> "$work/latency.log" &
run_pid=$!
# Produce only once leadflow has its partitions, or the wait to join the
# group would count as latency.
for _ in $(seq 600); do
  grep -q "partitions assigned" "$work/latency.log" && break
  sleep 0.1 # polling interval of a condition wait
done
grep -q "partitions assigned" "$work/latency.log" || { echo "leadflow never got partitions" >&2; exit 1; }
python3 scripts/bench_report.py latency "$work" "$leadflow" "$work/latency.toml" latency.nurture \
  "$((latency_rate * (latency_warmup + latency_seconds)))" "$latency_rate" "$latency_warmup" \
  "offered by a separate process" >> "$work/report.md"
kill -TERM "$run_pid"
wait "$run_pid" || true

# The dedupe state's memory at 10 million keys: the micro-benchmark fills a
# table and reads its resident growth (one sample; its timings are not
# reported here). The smoke leaves it out: it compiles the benchmarks.
if [ "$profile" = release ]; then
  echo "dedupe state at 10,000,000 keys" >&2
  state=$(cargo bench --quiet --bench stages -- dedupe_at_size --sample-count 1 --sample-size 1 2> /dev/null |
    grep -o "dedupe state, 10000000 keys.*") || { echo "the dedupe state benchmark printed nothing" >&2; exit 1; }
  printf '%s (`cargo bench --bench stages -- dedupe_at_size`).\n' "${state^}" >> "$work/report.md"
fi
cat "$work/report.md"
