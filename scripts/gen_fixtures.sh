#!/usr/bin/env bash
# Regenerate tests/fixtures/*.json by running flax and keras (JAX backend) on CPU JAX.
# Creates .venv-fixtures (git-ignored) with pinned versions if it is missing or incomplete,
# then runs scripts/gen_fixtures.py. Safe to run again: same seed, same files.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv-fixtures

# Pins (resolved by pip for Python 3.11, CPU-only jaxlib wheels).
PINS=(
  "jax==0.10.2"
  "jaxlib==0.10.2"
  "flax==0.12.8"
  "keras==3.15.1"
  "numpy==2.4.6"
  "ml_dtypes==0.6.0"
)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi

if ! "$VENV/bin/python" - "${PINS[@]}" <<'PY'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
PY
then
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
fi

export KERAS_BACKEND=jax
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
export PYTHONHASHSEED=0

"$VENV/bin/python" scripts/gen_fixtures.py "$@"
du -sh tests/fixtures
