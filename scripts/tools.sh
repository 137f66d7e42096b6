#!/usr/bin/env bash
# Installs the command-line tools the test suite uses from Debian's
# packages, when they are missing: promtool (package prometheus) checks the
# metrics exposition and the Prometheus config; docker-compose (v1, which
# validates a compose file without a Docker engine) checks docker/; kcat,
# a standard Kafka client, shows that clients other than leadflow's tools
# can write raw leads and read what leadflow writes; the build needs the
# development files of OpenSSL and libcurl.
set -euo pipefail

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v kcat >/dev/null || missing+=(kcat)
# scripts/registry.sh asks the registry whether it is up with curl.
command -v curl >/dev/null || missing+=(curl)
# scripts/kafka.sh writes the test identity provider's JWK with xxd.
command -v xxd >/dev/null || missing+=(xxd)
# librdkafka links the system's OpenSSL (TLS, SASL/SCRAM, OAUTHBEARER) and
# libcurl (OAUTHBEARER's OIDC token requests), found with pkg-config: the
# distribution keeps them patched, in the Docker image too.
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
pkg-config --exists libcurl 2>/dev/null || missing+=(libcurl4-openssl-dev)
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
  && command -v curl >/dev/null && command -v xxd >/dev/null && pkg-config --exists openssl libcurl
