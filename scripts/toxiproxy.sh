#!/usr/bin/env bash
# Toxiproxy, the TCP proxy that Kafka clients' test suites use for network
# faults (latency, bandwidth limits, cut connections), built with `go install`
# from the Go module proxy into .cache/toxiproxy (about 40 s, once).
#
#   scripts/toxiproxy.sh install   build the server and CLI if missing
#   scripts/toxiproxy.sh start     start the server (API on 127.0.0.1:PORT), wait until it answers
#   scripts/toxiproxy.sh stop      stop it by PID
#   scripts/toxiproxy.sh url       print the API's URL
#
# Environment: LEADFLOW_TOXIPROXY_PORT (default 8474). Tests start a server
# of their own on a free port (tests/common/toxiproxy.rs).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
home="$repo/.cache/toxiproxy"
version=v2.5.0
port=${LEADFLOW_TOXIPROXY_PORT:-8474}
run="$home/run-$port"
pidfile="$run/toxiproxy.pid"

# shellcheck source=scripts/pidfile.sh
. "$here/pidfile.sh"

log() { printf 'toxiproxy.sh: %s\n' "$*" >&2; }

install() {
  if [ -x "$home/bin/server" ] && [ -f "$home/bin/.$version" ]; then return; fi
  log "building Toxiproxy $version with go install into $home/bin"
  mkdir -p "$home/bin"
  GOBIN="$home/bin" go install \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$version" \
    "github.com/Shopify/toxiproxy/v2/cmd/cli@$version"
  touch "$home/bin/.$version"
}

answers() { curl -fsS --max-time 2 "http://127.0.0.1:$port/version" >/dev/null 2>&1; }

start() {
  install
  if running_pid "$pidfile"; then log "already running (pid $(cat "$pidfile"))"; return; fi
  mkdir -p "$run"
  nohup "$home/bin/server" -host 127.0.0.1 -port "$port" >"$run/server.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 200); do
    answers && return
    running_pid "$pidfile" || break
    sleep 0.05
  done
  log "Toxiproxy did not answer on port $port; its log:"
  tail -n 20 "$run/server.log" >&2 || true
  stop
  exit 1
}

stop() { stop_pid "$pidfile" "toxiproxy"; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  url) echo "http://127.0.0.1:$port" ;;
  *) echo "usage: $0 install|start|stop|url" >&2; exit 2 ;;
esac
