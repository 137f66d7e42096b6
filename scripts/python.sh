#!/usr/bin/env bash
# Installs the Python clients of tests/interop/requirements.txt into
# .cache/python (once per change of that file): for the tests' interop
# checks and the benchmark's changelog writer. Use with
# PYTHONPATH=.cache/python.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cmp -s tests/interop/requirements.txt .cache/python/.requirements 2>/dev/null; then
  rm -rf .cache/python
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target .cache/python -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt .cache/python/.requirements
fi
