#!/usr/bin/env bash
# Set up everything lrs-plugin needs on a fresh machine, from this checkout only:
#   - system tools (as root with apt-get): the 7z binary and Debian's WordNet 3.0 files (offline synonym scoring);
#   - a virtual environment in .venv with lrs-plugin installed (editable) plus its test extras.
# Idempotent: re-running only installs what is missing. Use PYTHON=python3.X to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  missing=()
  command -v 7zz >/dev/null 2>&1 || command -v 7z >/dev/null 2>&1 || missing+=(7zip)
  [ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
  [ -f /usr/share/wordnet/index.sense ] || missing+=(wordnet-sense-index)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  [ -f /usr/share/wordnet/data.noun ] || echo "setup: WordNet not found; install Debian's wordnet-base and \
wordnet-sense-index, or run 'python -m nltk.downloader wordnet' (see README)" >&2
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import lrs_plugin, lmms_eval, torch, torchvision, pytest, pyvips, imagecodecs" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.lrs_plugin_installed ]; then
  echo "setup: installing lrs-plugin and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q -c requirements/constraints.txt torch torchvision
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[test,images]"
  touch .venv/.lrs_plugin_installed
fi
