#!/usr/bin/env bash
# The local test broker: Apache Kafka 4.x from Maven Central jars, KRaft, one
# node (broker + controller) on 127.0.0.1. No Docker.
#
#   scripts/kafka.sh start    fetch jars (once), format if needed, start, wait until ready
#   scripts/kafka.sh stop     stop the broker by PID
#   scripts/kafka.sh reset    stop and delete the broker's data
#   scripts/kafka.sh status   exit 0 if the broker answers a metadata request
#   scripts/kafka.sh fetch    only fetch the jars (scripts/cluster.sh uses them)
#
# Environment: LEADFLOW_KAFKA_PORT (default 9092), LEADFLOW_KAFKA_CONTROLLER_PORT
# (default port+1), LEADFLOW_KAFKA_ADVERTISED_PORT (default the port: another
# one puts a proxy, Toxiproxy say, between clients and the broker),
# LEADFLOW_KAFKA_HOME (default .cache/kafka in the repo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
home=${LEADFLOW_KAFKA_HOME:-$repo/.cache/kafka}
port=${LEADFLOW_KAFKA_PORT:-9092}
cport=${LEADFLOW_KAFKA_CONTROLLER_PORT:-$((port + 1))}
aport=${LEADFLOW_KAFKA_ADVERTISED_PORT:-$port}
bootstrap="127.0.0.1:$port"
libs="$home/libs"
data="$home/data-$port"
pidfile="$data/broker.pid"
# A fixed cluster id keeps a reused data dir valid across starts.
cluster_id="TGVhZGZsb3dUZXN0QnJva2"

# shellcheck source=scripts/pidfile.sh
. "$here/pidfile.sh"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }

fetch() {
  # Fetched again when the pom changed since.
  if [ ! "$libs/.complete" -nt "$here/kafka/pom.xml" ]; then
    log "fetching Kafka jars with mvn into $libs"
    rm -rf "$libs"
    mkdir -p "$libs"
    mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs"
    touch "$libs/.complete"
  fi
  if [ ! "$home/classes/WaitReady.class" -nt "$here/kafka/WaitReady.java" ]; then
    javac -cp "$libs/*" -d "$home/classes" "$here/kafka/WaitReady.java"
  fi
}

running() { running_pid "$pidfile"; }

ready() { java -cp "$home/classes:$libs/*" WaitReady "$bootstrap" "$1"; }

write_config() {
  mkdir -p "$data/logs"
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$aport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data/kraft
# Everything else is Kafka's stock default (7 days of time-based retention,
# message.timestamp.after.max.ms of 1 hour, ...), as on a user's cluster:
# what leadflow needs of a topic, leadflow topics create sets on it.
# Topics are created on purpose, so that a missing topic is an error leadflow reports.
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
}

start() {
  fetch
  if running; then log "already running (pid $(cat "$pidfile"))"; ready 60; return; fi
  write_config
  if [ ! -f "$data/kraft/meta.properties" ]; then
    java -cp "$libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
      -Dkafka.logs.dir="$data/logs" \
      kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$data/server.properties" >"$data/logs/format.log" 2>&1 \
      || { cat "$data/logs/format.log" >&2; exit 1; }
  fi
  log "starting broker on $bootstrap (data in $data)"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$data/logs" \
    -cp "$libs/*" kafka.Kafka "$data/server.properties" \
    >"$data/logs/stdout.log" 2>&1 &
  echo $! > "$pidfile"
  if ! ready 90; then
    log "broker did not become ready; last log lines:"
    tail -n 30 "$data/logs/server.log" >&2 || true
    stop
    exit 1
  fi
}

stop() { stop_pid "$pidfile" "broker"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset) stop; rm -rf "$data" ;;
  status) running && ready 5 ;;
  bootstrap) echo "$bootstrap" ;;
  fetch) fetch ;;
  *) echo "usage: $0 start|stop|reset|status|bootstrap|fetch" >&2; exit 2 ;;
esac
