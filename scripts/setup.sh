#!/usr/bin/env bash
# Set up s3kit on a fresh machine: a project virtualenv in .venv with torch pinned
# (CPU build, installed first so pip never picks a CUDA torch), s3kit in editable mode,
# and the Debian TTS engines (flite, espeak-ng) when apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages: TTS voices for the synthetic corpus, a headless browser for the report test.
missing=()
command -v flite >/dev/null 2>&1 || missing+=(flite)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || missing+=(chromium-headless-shell)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing ${missing[*]} with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "[setup] warning: apt-get failed; fewer TTS voices (espeak-ng wheel only) and no browser test"
  else
    echo "[setup] note: ${missing[*]} not found and apt-get unavailable (run as root, or install them yourself)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  pip install -q --disable-pip-version-check torch==2.13.0
fi
stamp=.venv/.s3kit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing s3kit and its dependencies"
  pip install -q --disable-pip-version-check -e ".[dev,onnx]"
  touch "$stamp"
fi
