#!/usr/bin/env bash
# Installs the command-line tools the test suite uses from Debian's
# packages, when they are missing: promtool (package prometheus) checks the
# metrics exposition and the Prometheus config; docker-compose (v1, which
# validates a compose file without a Docker engine) checks docker/; kcat,
# a standard Kafka client, shows that clients other than leadflow's tools
# can write raw leads and read what leadflow writes.
set -euo pipefail

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v kcat >/dev/null || missing+=(kcat)
# scripts/registry.sh asks the registry whether it is up with curl.
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "tools.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
"${sudo[@]}" apt-get update -qq
# The prometheus package would start a Prometheus server where an init
# system runs; the tests need only its promtool.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null && command -v docker-compose >/dev/null && command -v kcat >/dev/null \
  && command -v curl >/dev/null
