#!/usr/bin/env bash
# Sets up tlgan from nothing: Debian's real Fashion-MNIST (when root or sudo allows), a virtual environment
# in .venv, and the package in editable mode. `--test` adds what the test suite needs.
# Safe to rerun: it only installs what is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
# The tests use torch and torchvision as oracles (equivalence with torchvision, the converter).
if [[ "${1:-}" == "--test" ]]; then extras="[test,torch]"; fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: tlgan needs Python 3.11 or newer ($python is $("$python" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 1
fi

if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  sudo=""
  if [[ $(id -u) != 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; fi
  if [[ $(id -u) == 0 || -n "$sudo" ]] && command -v apt-get >/dev/null; then
    echo "Installing Debian's dataset-fashion-mnist (real Fashion-MNIST, offline)..."
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: cannot install dataset-fashion-mnist here (needs apt-get and root or sudo); TFDS will" \
         "download Fashion-MNIST instead if this machine is online." >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "Creating .venv..."
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
echo "Installing tlgan${extras} and its dependencies..."
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import tlgan, jax, flax, optax, orbax.checkpoint, tensorflow_datasets" \
  || { echo "error: the installation is incomplete (see pip's messages above)" >&2; exit 1; }
echo "Setup done."
