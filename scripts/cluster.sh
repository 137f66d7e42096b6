#!/usr/bin/env bash
# A local 3-broker Apache Kafka cluster for fault tests: KRaft, three
# combined broker+controller nodes on 127.0.0.1, from the same Maven Central
# jars as scripts/kafka.sh, with Kafka's stock settings (internal topics with
# replication factor 3 and min.insync.replicas 2, as on a production cluster).
#
#   scripts/cluster.sh start          format if needed, start all nodes, wait for all three
#   scripts/cluster.sh stop           stop all nodes (SIGTERM)
#   scripts/cluster.sh kill           kill -9 of all nodes (for a cluster about to be reset)
#   scripts/cluster.sh reset          stop all nodes and delete their data
#   scripts/cluster.sh status         exit 0 if all three brokers answer
#   scripts/cluster.sh bootstrap      the direct listeners, for tools and checkers
#   scripts/cluster.sh clients        the client listeners (or their proxies)
#   scripts/cluster.sh start-node N   start node N (1-3) and wait until it is back
#   scripts/cluster.sh stop-node N    clean shutdown of node N
#   scripts/cluster.sh kill-node N    kill -9 of node N
#
# Each node has two listeners. DIRECT carries inter-broker traffic and
# serves test tools. CLIENT is for the leadflow under test, and can be
# advertised at a proxy's port (LEADFLOW_CLUSTER_PROXY_PORT), so that a
# network fault (Toxiproxy) cuts leadflow off one broker while the cluster,
# other instances and the checker still reach it.
#
# Ports, from LEADFLOW_CLUSTER_PORT (B, default 29092), for node N = 1..3:
#   DIRECT B+N-1, controller B+10+N-1, CLIENT B+20+N-1,
#   CLIENT advertised at LEADFLOW_CLUSTER_PROXY_PORT+N-1 (default: itself).
# Keep them below the kernel's ephemeral range (32768 and up here): a port
# there can be taken by any outgoing connection's source port first.
# LEADFLOW_CLUSTER_HEAP (default 512m) is each node's maximum heap.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
home=${LEADFLOW_KAFKA_HOME:-$repo/.cache/kafka}
base=${LEADFLOW_CLUSTER_PORT:-29092}
heap=${LEADFLOW_CLUSTER_HEAP:-512m}
libs="$home/libs"
root="$home/cluster-$base"
# A fixed cluster id keeps reused data dirs valid across starts.
cluster_id="TGVhZGZsb3dDbHVzdGVyMw"
nodes="1 2 3"

# shellcheck source=scripts/pidfile.sh
. "$here/pidfile.sh"

log() { printf 'cluster.sh: %s\n' "$*" >&2; }

direct_port() { echo $((base + $1 - 1)); }
controller_port() { echo $((base + 10 + $1 - 1)); }
client_port() { echo $((base + 20 + $1 - 1)); }
advertised_port() {
  if [ -n "${LEADFLOW_CLUSTER_PROXY_PORT:-}" ]; then
    echo $((LEADFLOW_CLUSTER_PROXY_PORT + $1 - 1))
  else
    client_port "$1"
  fi
}
list() {
  local fn=$1 out="" n
  for n in $nodes; do out="$out${out:+,}127.0.0.1:$($fn "$n")"; done
  echo "$out"
}
pidfile() { echo "$root/node-$1/broker.pid"; }

# ready SECONDS [NODE]: all three brokers registered, as node NODE (else
# any node) answers.
ready() {
  local at
  if [ -n "${2:-}" ]; then at="127.0.0.1:$(direct_port "$2")"; else at=$(list direct_port); fi
  java -cp "$home/classes:$libs/*" WaitReady "$at" "$1" 3
}

write_config() {
  local n=$1 data="$root/node-$1" voters="" v
  for v in $nodes; do voters="$voters${voters:+,}$v@127.0.0.1:$(controller_port "$v")"; done
  mkdir -p "$data/logs"
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=DIRECT://127.0.0.1:$(direct_port "$n"),CLIENT://127.0.0.1:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=DIRECT://127.0.0.1:$(direct_port "$n"),CLIENT://127.0.0.1:$(advertised_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=DIRECT
listener.security.protocol.map=DIRECT:PLAINTEXT,CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data/kraft
# Everything else is Kafka's stock default, as on a user's cluster:
# replication factor 3 and min.insync.replicas 2 for the offsets and
# transaction state topics, 7 days of retention. As in scripts/kafka.sh,
# topics are created on purpose, and the first consumer group starts at
# once rather than after 3 s.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
PROPS
}

running_node() { running_pid "$(pidfile "$1")"; }

start_node() {
  local n=$1 data="$root/node-$1"
  if running_node "$n"; then return; fi
  write_config "$n"
  if [ ! -f "$data/kraft/meta.properties" ]; then
    java -cp "$libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
      -Dkafka.logs.dir="$data/logs" \
      kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$data/server.properties" >"$data/logs/format.log" 2>&1 \
      || { cat "$data/logs/format.log" >&2; exit 1; }
  fi
  log "starting node $n on 127.0.0.1:$(direct_port "$n") (data in $data)"
  nohup java -Xms128m -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$data/logs" \
    -cp "$libs/*" kafka.Kafka "$data/server.properties" \
    >"$data/logs/stdout.log" 2>&1 &
  echo $! > "$(pidfile "$n")"
}

# wait_ready [NODE]: until all three brokers answer (as NODE, if given),
# failing at once with its log when a node exits (a port taken, say).
wait_ready() {
  local deadline=$((SECONDS + 120)) n
  until ready 5 "${1:-}" 2>/dev/null; do
    for n in $nodes; do
      if ! running_node "$n"; then
        log "node $n exited; last log lines:"
        grep -E "ERROR|Exception" "$root/node-$n/logs/server.log" | tail -n 5 >&2 || true
        stop
        exit 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the cluster did not become ready in 120 s; last log lines:"
      for n in $nodes; do tail -n 15 "$root/node-$n/logs/server.log" >&2 || true; done
      stop
      exit 1
    fi
  done
}

start() {
  "$here/kafka.sh" fetch
  local n
  for n in $nodes; do start_node "$n"; done
  wait_ready
}

stop_node() { stop_pid "$(pidfile "$1")" "node $1"; }

kill_node() {
  local file pid
  file=$(pidfile "$1")
  running_pid "$file" || { log "node $1 is not running"; exit 1; }
  pid=$(cat "$file")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$file"
  log "killed node $1 (pid $pid)"
}

# All at once: stopped one by one, the last nodes would wait for a
# controller quorum that is gone, to shut down cleanly.
stop() {
  local n file
  for n in $nodes; do
    file=$(pidfile "$n")
    if running_pid "$file"; then kill "$(cat "$file")"; fi
  done
  for n in $nodes; do stop_node "$n"; done
}

kill_all() {
  local n
  for n in $nodes; do
    if running_pid "$(pidfile "$n")"; then kill_node "$n"; fi
  done
}

node_arg() {
  case "${1:-}" in
    1|2|3) echo "$1" ;;
    *) echo "usage: $0 ${2} 1|2|3" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) kill_all ;;
  reset) stop; rm -rf "$root" ;;
  status) for n in $nodes; do running_node "$n"; done; ready 5 >/dev/null ;;
  bootstrap) list direct_port ;;
  clients) list advertised_port ;;
  start-node) n=$(node_arg "${2:-}" start-node); "$here/kafka.sh" fetch; start_node "$n"; wait_ready "$n" ;;
  stop-node) stop_node "$(node_arg "${2:-}" stop-node)" ;;
  kill-node) kill_node "$(node_arg "${2:-}" kill-node)" ;;
  *) echo "usage: $0 start|stop|kill|reset|status|bootstrap|clients|start-node N|stop-node N|kill-node N" >&2; exit 2 ;;
esac
