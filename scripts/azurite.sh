#!/usr/bin/env bash
# Azurite, Microsoft's open-source Azure Storage emulator (npm package
# `azurite`), whose `azurite-table` serves the Table service the table
# ingest reads (tests/ingest_table.rs). Installed with npm into
# .cache/azurite (once).
#
#   scripts/azurite.sh install   install it if missing
#   scripts/azurite.sh bin       print the path of `azurite-table`
#
# Tests start a server of their own on a free port, with its data in a
# temporary directory (tests/common/azurite.rs).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
home="$repo/.cache/azurite"
version=3.37.0
bin="$home/node_modules/.bin/azurite-table"

case "${1:-}" in
  install)
    if [ -x "$bin" ] && [ -f "$home/.$version" ]; then exit 0; fi
    echo "azurite.sh: installing azurite $version with npm into $home" >&2
    mkdir -p "$home"
    npm install --silent --no-audit --no-fund --prefix "$home" "azurite@$version" >&2
    touch "$home/.$version"
    ;;
  bin) echo "$bin" ;;
  *)
    echo "usage: scripts/azurite.sh install|bin" >&2
    exit 2
    ;;
esac
