#!/usr/bin/env bash
# The local test broker: Apache Kafka 4.x from Maven Central jars, KRaft, one
# node (broker + controller) on 127.0.0.1. No Docker.
#
#   scripts/kafka.sh start    fetch jars (once), format if needed, start, wait until ready
#   scripts/kafka.sh stop     stop the broker by PID
#   scripts/kafka.sh reset    stop and delete the broker's data
#   scripts/kafka.sh status   exit 0 if the broker answers a metadata request
#   scripts/kafka.sh fetch    only fetch the jars (scripts/cluster.sh uses them)
#   scripts/kafka.sh tls      print the directory of the test CA, certificates and keys
#   scripts/kafka.sh dir      print the broker's data directory (its logs are in kraft/)
#
# Besides PLAINTEXT on the port, the broker serves Kafka's secured listeners,
# for tests of leadflow's security settings, with a test CA and certificates
# for 127.0.0.1 that this script makes with openssl (in `kafka.sh tls`):
#   port+2  SASL_SSL, SCRAM-SHA-512, user leadflow, password leadflow-secret
#           (created when the data directory is formatted)
#   port+3  SSL with client certificates (mTLS): client.pem, client-key.pem
#   port+4  SASL_SSL, OAUTHBEARER, with Kafka's unsecured JWT validator
#   port+5  SSL whose server certificate expired in 2020
#   port+6  SASL_SSL, OAUTHBEARER, with Kafka's JWT validator: tokens signed
#           by the test identity provider's key (oidc-key.pem, published to
#           the broker as jwks.json), issuer leadflow-test-idp, audience
#           leadflow-test. oidc.jwt is such a token (subject leadflow,
#           valid until 2100) for a test's token endpoint to hand out.
# The directory also holds other-ca.pem, a CA that signed none of these.
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
tls="$data/tls"
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

# A certificate for 127.0.0.1 signed by the test CA: NAME.pem, NAME-key.pem
# (unencrypted PKCS#8, as Kafka's PEM key stores take it). Extra arguments
# go to `openssl ca` (validity dates).
certificate() {
  local name=$1; shift
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$name" \
    -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$tls/$name-key.pem" -out "$tls/$name.csr" 2>/dev/null
  openssl ca -batch -notext -config "$tls/ca.cnf" -cert "$tls/ca.pem" -keyfile "$tls/ca-key.pem" \
    -in "$tls/$name.csr" -out "$tls/$name.pem" "$@" 2>/dev/null
  rm "$tls/$name.csr"
}

# base64url without padding, as JWTs and JWKs write their parts.
b64url() { basenc --base64url -w0 | tr -d '='; }

# The test identity provider: an RS256 key, its public half as a JWK set
# (read by the broker from a file: Kafka takes file: URLs for its JWKS),
# and one token signed with it.
make_oidc() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tls/oidc-key.pem" 2>/dev/null
  local n
  n=$(openssl rsa -in "$tls/oidc-key.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
  printf '{"keys":[{"kty":"RSA","kid":"leadflow-test","use":"sig","alg":"RS256","n":"%s","e":"AQAB"}]}\n' \
    "$n" > "$tls/jwks.json"
  local header payload signature
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"leadflow-test"}' | b64url)
  payload=$(printf '{"sub":"leadflow","iss":"leadflow-test-idp","aud":"leadflow-test","scope":"kafka","iat":%s,"exp":4102444800}' \
    "$(date +%s)" | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" \
    | openssl dgst -sha256 -sign "$tls/oidc-key.pem" -binary | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$signature" > "$tls/oidc.jwt"
}

make_tls() {
  [ -f "$tls/.complete" ] && [ -f "$tls/oidc.jwt" ] && return
  rm -rf "$tls"
  mkdir -p "$tls"
  touch "$tls/index.txt"
  echo 01 > "$tls/serial"
  cat > "$tls/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $tls/index.txt
new_certs_dir = $tls
serial = $tls/serial
default_md = sha256
default_days = 3650
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
CNF
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=leadflow-test-ca \
    -keyout "$tls/ca-key.pem" -out "$tls/ca.pem" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=leadflow-other-ca \
    -keyout "$tls/other-ca-key.pem" -out "$tls/other-ca.pem" 2>/dev/null
  certificate broker
  certificate client
  certificate expired -startdate 20200101000000Z -enddate 20200102000000Z
  # Kafka's PEM key store: the key, then the certificate.
  cat "$tls/broker-key.pem" "$tls/broker.pem" > "$tls/broker-keystore.pem"
  cat "$tls/expired-key.pem" "$tls/expired.pem" > "$tls/expired-keystore.pem"
  make_oidc
  touch "$tls/.complete"
}

write_config() {
  mkdir -p "$data/logs"
  make_tls
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SCRAM://127.0.0.1:$((port + 2)),MTLS://127.0.0.1:$((port + 3)),OAUTH://127.0.0.1:$((port + 4)),EXPIRED://127.0.0.1:$((port + 5)),OIDC://127.0.0.1:$((port + 6))
advertised.listeners=PLAINTEXT://127.0.0.1:$aport,SCRAM://127.0.0.1:$((port + 2)),MTLS://127.0.0.1:$((port + 3)),OAUTH://127.0.0.1:$((port + 4)),EXPIRED://127.0.0.1:$((port + 5)),OIDC://127.0.0.1:$((port + 6))
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SCRAM:SASL_SSL,MTLS:SSL,OAUTH:SASL_SSL,EXPIRED:SSL,OIDC:SASL_SSL
log.dirs=$data/kraft
# The secured listeners (see the top of this script).
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.scram.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.mtls.ssl.client.auth=required
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="leadflow";
listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler
listener.name.expired.ssl.keystore.type=PEM
listener.name.expired.ssl.keystore.location=$tls/expired-keystore.pem
listener.name.oidc.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oidc.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.oidc.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.oidc.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=file://$tls/jwks.json
listener.name.oidc.oauthbearer.sasl.oauthbearer.expected.issuer=leadflow-test-idp
listener.name.oidc.oauthbearer.sasl.oauthbearer.expected.audience=leadflow-test
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
      --config "$data/server.properties" \
      --add-scram 'SCRAM-SHA-512=[name=leadflow,password=leadflow-secret]' \
      >"$data/logs/format.log" 2>&1 \
      || { cat "$data/logs/format.log" >&2; exit 1; }
  fi
  log "starting broker on $bootstrap (data in $data)"
  # Kafka reads a JWKS only from URLs allowed by name.
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="file://$tls/jwks.json" \
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
  tls) make_tls; echo "$tls" ;;
  dir) echo "$data" ;;
  *) echo "usage: $0 start|stop|reset|status|bootstrap|fetch|tls|dir" >&2; exit 2 ;;
esac
