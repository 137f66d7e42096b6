#!/usr/bin/env bash
# The Helm chart (helm/leadflow) checked without a cluster or a network at
# check time: `helm lint --strict`, `helm template` with the chart's
# defaults and with every option on, a grace period too short refused, and
# every rendered manifest validated against the Kubernetes API's own
# schemas by kubernetes-validate, whose package carries the schemas of each
# Kubernetes release (so nothing is fetched while validating).
#
#   scripts/helm.sh install   build Helm with go install into .cache/helm,
#                             and install kubernetes-validate into .cache/k8s
#   scripts/helm.sh check     install (once), then the checks above
set -euo pipefail
cd "$(dirname "$0")/.."

helm_version=v4.3.2
validate_version=1.37.0
# The Kubernetes releases the manifests must be valid for: the oldest and
# the newest that kubernetes-validate knows and Kubernetes still supports.
kubernetes_versions=(1.35.0 1.37.0)
home=.cache/helm
k8s=.cache/k8s
chart=helm/leadflow

log() { printf 'helm.sh: %s\n' "$*" >&2; }

install() {
  if [ ! -x "$home/bin/helm" ] || [ ! -f "$home/bin/.$helm_version" ]; then
    log "building Helm $helm_version with go install into $home/bin"
    mkdir -p "$home/bin"
    GOBIN="$(pwd)/$home/bin" go install "helm.sh/helm/v4/cmd/helm@$helm_version"
    touch "$home/bin/.$helm_version"
  fi
  if [ ! -f "$k8s/.$validate_version" ]; then
    log "installing kubernetes-validate $validate_version into $k8s"
    rm -rf "$k8s"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --target "$k8s" "kubernetes-validate==$validate_version"
    touch "$k8s/.$validate_version"
  fi
}

helm() { HELM_CACHE_HOME="$home/cache" HELM_CONFIG_HOME="$home/config" HELM_DATA_HOME="$home/data" "$home/bin/helm" "$@"; }

# Every option on: a TLS Secret, a Secret of variables, extra files and
# environment, a ServiceMonitor.
all_on=(--set tlsSecret=leadflow-tls --set secretEnv=leadflow-secrets
  --set serviceMonitor.enabled=true --set-string 'files.rules\.toml=version = 1'
  --set 'env[0].name=RUST_LOG' --set 'env[0].value=info')

validate() {
  local rendered=$1 version
  for version in "${kubernetes_versions[@]}"; do
    PYTHONPATH="$k8s" python3 -m kubernetes_validate --strict --quiet \
      --kubernetes-version "$version" "$rendered"
  done
}

check() {
  install
  local out
  out=$(mktemp -d)
  trap 'rm -rf "$out"' RETURN
  helm lint --strict "$chart"
  helm lint --strict "$chart" "${all_on[@]}"
  helm template leadflow "$chart" > "$out/defaults.yaml"
  helm template leadflow "$chart" "${all_on[@]}" > "$out/all-on.yaml"
  # A grace period no longer than the shutdown timeout is refused.
  if helm template leadflow "$chart" --set terminationGracePeriodSeconds=30 >/dev/null 2>&1; then
    log "a grace period of 30 s with a 30 s shutdown timeout was not refused"
    exit 1
  fi
  grep -q "kind: StatefulSet" "$out/defaults.yaml"
  grep -q "kind: PodDisruptionBudget" "$out/defaults.yaml"
  grep -q "kind: ServiceMonitor" "$out/all-on.yaml"
  # The ServiceMonitor is the Prometheus operator's own kind: its schema is
  # not Kubernetes', so it is validated without it.
  validate "$out/defaults.yaml"
  python3 - "$out/all-on.yaml" "$out/core.yaml" <<'PY'
import sys
docs = open(sys.argv[1]).read().split("\n---")
kept = [d for d in docs if "kind: ServiceMonitor" not in d]
open(sys.argv[2], "w").write("\n---".join(kept))
PY
  validate "$out/core.yaml"
  # The validator fails what it must: a field the API does not have.
  sed 's/terminationGracePeriodSeconds:/terminationGracePeriod:/' "$out/defaults.yaml" > "$out/bad.yaml"
  if validate "$out/bad.yaml" >/dev/null 2>&1; then
    log "kubernetes-validate passed a StatefulSet with a field Kubernetes does not have"
    exit 1
  fi
  log "chart lints, renders and validates against Kubernetes ${kubernetes_versions[*]}"
}

case "${1:-}" in
  install) install ;;
  check) check ;;
  *) echo "usage: $0 install|check" >&2; exit 2 ;;
esac
