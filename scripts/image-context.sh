#!/usr/bin/env bash
# The image's build stage without a Docker engine: copies exactly the paths
# that docker/Dockerfile's COPY lines take before its `cargo build` into a
# clean directory, and builds there with --locked, as the Dockerfile does
# (in the debug profile and this checkout's target directory, to reuse its
# dependencies: what this catches is a file the build needs that the
# Dockerfile leaves out, as benches/ once was, or a stale Cargo.lock).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
paths=$(awk '
  /^RUN .*cargo build/ { built = 1; exit }
  /^COPY / {
    if ($0 ~ /--from/) { print "COPY --from before the build: " $0 > "/dev/stderr"; exit 1 }
    for (i = 2; i < NF; i++) print $i
  }
  END { if (!built) { print "no RUN cargo build in docker/Dockerfile" > "/dev/stderr"; exit 1 } }
' docker/Dockerfile)
for path in $paths; do
  cp -r "$root/$path" "$context/$path"
done
(cd "$context" && CARGO_TARGET_DIR="$root/target" cargo build --quiet --locked --offline --bin leadflow)
# jemalloc's settings are built in from .cargo/config.toml: the image's
# build must have them (jemalloc prints the ones it was built with).
want=$(sed -n 's/^JEMALLOC_SYS_WITH_MALLOC_CONF = "\(.*\)"$/\1/p' .cargo/config.toml)
built=$(MALLOC_CONF=stats_print:true "$root/target/debug/leadflow" --version 2>&1 | sed -n 's/^ *config.malloc_conf: "\(.*\)"$/\1/p')
if [ -z "$want" ] || [[ ",$built," != *",$want,"* ]]; then
  echo "image-context.sh: the image's leadflow is built with jemalloc settings \"$built\", not \"$want\" (.cargo/config.toml)" >&2
  exit 1
fi
echo "image-context.sh: the image's build stage builds from: $(echo $paths)" >&2
