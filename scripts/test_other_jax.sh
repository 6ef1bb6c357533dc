#!/usr/bin/env bash
# The second supported set of libraries, beside the one CI tests (Python 3.11, where pip resolves jax 0.10.x):
# the newest jax/flax/optax/orbax, which need Python 3.12, or a given jax. Its own venv (.venv-jax); runs the
# fast tier, with any pytest arguments given.
#   bash scripts/test_other_jax.sh                       # the newest releases pip resolves for python3.12
#   JAX=0.11.2 bash scripts/test_other_jax.sh            # e.g. the jax of the accelerator images
#   bash scripts/test_other_jax.sh tests/test_streaming.py -m ""   # other tests (here: every tier of one module)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.12}
if ! command -v "$python" >/dev/null || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "error: the newest jax needs Python 3.12 or newer: set PYTHON=/path/to/python3.12" >&2
  exit 1
fi
[[ -x .venv-jax/bin/python ]] || "$python" -m venv .venv-jax
.venv-jax/bin/python -m pip install -q -e ".[test,torch]" 2>&1 | grep -v "^WARNING: Location" || true
if [[ -n "${JAX:-}" ]]; then
  .venv-jax/bin/python -m pip install -q "jax==$JAX" "jaxlib==$JAX" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv-jax/bin/python -c "import sys, jax, flax, optax, orbax.checkpoint as ocp
from importlib.metadata import version
print(f'Python {sys.version.split()[0]}: jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__},'
      f' orbax-checkpoint {version(\"orbax-checkpoint\")}')"
exec .venv-jax/bin/python -m pytest -m "not slow" "$@"  # a later -m in "$@" wins
