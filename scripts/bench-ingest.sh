#!/usr/bin/env bash
# Benchmark of `leadflow ingest http` with a standard HTTP load generator,
# hey (built with `go install` into .cache/hey, once), on this machine with
# a real local broker beside it. Usage: scripts/bench-ingest.sh [SECONDS]
#
# Each run posts the first shared example lead for SECONDS (default 30):
#   baseline     64 connections to a wrong secret: the endpoint answers 404
#                without reading the body or touching Kafka, so this is
#                the HTTP stack's own ceiling, in the same run;
#   throughput   64 connections posting as fast as answers come, each
#                answer a 200 only once Kafka has acknowledged the lead;
#   latency      1,000 leads/s offered (10 connections at 100/s each).
# CPU is the ingest process's own (user + system, /proc/PID/stat). Prints a
# Markdown report; docs/BENCHMARKS.md holds the last one.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
bootstrap="127.0.0.1:$LEADFLOW_KAFKA_PORT"

hey_version=v0.1.4
hey="$PWD/.cache/hey/bin/hey"
if [ ! -x "$hey" ] || [ ! -f "$PWD/.cache/hey/bin/.$hey_version" ]; then
  echo "bench-ingest.sh: building hey $hey_version with go install" >&2
  mkdir -p .cache/hey/bin
  GOBIN="$PWD/.cache/hey/bin" go install "github.com/rakyll/hey@$hey_version"
  touch ".cache/hey/bin/.$hey_version"
fi
cargo build --release --quiet
leadflow=$PWD/target/release/leadflow

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  scripts/kafka.sh stop >&2
}
scripts/kafka.sh reset >&2
trap cleanup EXIT
scripts/kafka.sh start >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
ops=$(free_port)
secret=$(openssl rand -hex 24)
cat > "$work/leadflow.toml" <<TOML
[kafka]
bootstrap_servers = "$bootstrap"

[topics]
input = "bench-ingest.raw"

[http]
listen = "127.0.0.1:$ops"

[ingest.http]
listen = "127.0.0.1:$port"
secret = "$secret"
TOML
"$leadflow" -c "$work/leadflow.toml" topics create --partitions 12 >&2
LEADFLOW_LOG__FORMAT=text "$leadflow" -c "$work/leadflow.toml" ingest http 2> "$work/ingest.log" &
pid=$!
for _ in $(seq 600); do
  if curl -sf -o /dev/null "http://127.0.0.1:$ops/readyz"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/ingest.log" >&2; exit 1; fi
  sleep 0.1 # polling interval of a readiness wait
done
curl -sf -o /dev/null "http://127.0.0.1:$ops/readyz" || { cat "$work/ingest.log" >&2; exit 1; }
head -n 1 tests/data/raw-leads.jsonl > "$work/lead.json"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
tick_us=$(( 1000000 / $(getconf CLK_TCK) ))

rows=()
run() { # NAME URL HEY-ARGUMENTS...
  local name=$1 url=$2
  shift 2
  local before after
  before=$(cpu_ticks)
  "$hey" -z "${seconds}s" -m POST -T application/json -D "$work/lead.json" "$@" "$url" > "$work/$name.txt"
  after=$(cpu_ticks)
  local rps p50 p99 answers statuses cpu_us
  rps=$(awk '/Requests\/sec:/ { printf "%.0f", $2 }' "$work/$name.txt")
  p50=$(awk '/ 50% in / { printf "%.1f", $3 * 1000 }' "$work/$name.txt")
  p99=$(awk '/ 99% in / { printf "%.1f", $3 * 1000 }' "$work/$name.txt")
  answers=$(awk '/^ *\[[0-9]+\]/ { n += $2 } END { print n + 0 }' "$work/$name.txt")
  statuses=$(awk '/^ *\[[0-9]+\]/ { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$work/$name.txt")
  cpu_us=$(( (after - before) * tick_us / (answers > 0 ? answers : 1) ))
  rows+=("| $name | $rps | $p50 | $p99 | $cpu_us | $statuses |")
}
run baseline "http://127.0.0.1:$port/leads/not-the-secret-0000000000" -c 64
run throughput "http://127.0.0.1:$port/leads/$secret" -c 64
run latency "http://127.0.0.1:$port/leads/$secret" -c 10 -q 100

written=$("$leadflow" -c "$work/leadflow.toml" topics counts 2>/dev/null \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["bench-ingest.raw"])')
acknowledged=$(cat "$work/throughput.txt" "$work/latency.txt" | awk '/^ *\[200\]/ { n += $2 } END { print n + 0 }')
peak_kib=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")

echo "## leadflow ingest http, $(date -u +%Y-%m-%d)"
echo
echo "$(nproc) cores ($(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')), $(free -g | awk '/Mem:/ { print $2 }') GiB;"
echo "one Kafka broker with stock settings on the same machine; hey $hey_version;"
echo "${seconds} s per run; the first shared example lead, posted again and again."
echo
echo "| run | requests/s | p50 ms | p99 ms | CPU µs per request | answers |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Acknowledged (200): $acknowledged; records in the input topic: ${written:-?};"
echo "the ingest process's peak resident memory: $(( peak_kib / 1024 )) MiB."
