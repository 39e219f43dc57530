#!/usr/bin/env bash
# Installs each peer of the harness into its own virtual environment (see README.md).
#
#   benchmarks/peers/setup.sh [VENV_DIR] [PEER ...]
#
# VENV_DIR defaults to benchmarks/peers/.venvs (git-ignored); PEER is any of torch, textbrewer,
# paddle (default: all). Idempotent: an env whose stamp file (.complete) exists is skipped; delete
# the env directory to rebuild it. A peer that cannot be installed here (e.g. no paddle wheel for
# this Python/CPU) is not an error: its env gets a FAILED file with the reason, which run.py
# reports as "unavailable" for that peer's rows.
#
# Pins: torch==2.13.0 is the CPU wheel (a bare `torch` or a newer one pulls a multi-GB CUDA build
# from PyPI; download.pytorch.org is not reachable from these machines); transformers matches the
# kdjax venv; paddlepaddle 3.3.1 (CPU wheel from PyPI) + paddlenlp 2.8.1 (the newest paddlenlp
# release on PyPI) with the three compatibility pins below. PYTHON overrides the interpreter
# (default python3.11). A FAILED env is retried on the next run.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="${1:-$HERE/.venvs}"
shift || true
PEERS=("$@")
[ ${#PEERS[@]} -eq 0 ] && PEERS=(torch textbrewer paddle)
PYTHON="${PYTHON:-python3.11}"

TORCH_PIN="torch==2.13.0"
TRANSFORMERS_PIN="transformers==5.23.0"
TEXTBREWER_PIN="textbrewer==0.2.1.post1"
PADDLE_PIN="${PADDLE_PIN:-paddlepaddle==3.3.1}"
PADDLENLP_PIN="${PADDLENLP_PIN:-paddlenlp==2.8.1}"
# paddlenlp 2.8.1 imports names that newer releases of these dropped
# (huggingface_hub.repo_type_and_id_from_hf_id, aistudio_sdk.hub.download); datasets follows hub.
PADDLENLP_COMPAT="huggingface_hub==0.24.6 datasets==2.21.0 aistudio-sdk==0.2.6"

packages() {
  case "$1" in
    torch) echo "$TORCH_PIN $TRANSFORMERS_PIN numpy" ;;
    textbrewer) echo "$TORCH_PIN $TRANSFORMERS_PIN $TEXTBREWER_PIN numpy" ;;
    paddle) echo "$PADDLE_PIN $PADDLENLP_PIN $PADDLENLP_COMPAT" ;;
    *) return 1 ;;
  esac
}

# An import check per env: an install that resolves but cannot import counts as failed.
check() {
  case "$1" in
    torch) echo "import torch, transformers" ;;
    textbrewer) echo "import torch, transformers, textbrewer" ;;
    paddle) echo "import paddle, paddlenlp; from paddlenlp.transformers import BertModel" ;;
  esac
}

install_one() {
  local peer="$1" env="$VENVS/$1" log="$VENVS/$1.log"
  local pkgs
  pkgs="$(packages "$peer")" || { echo "unknown peer $peer" >&2; return 2; }
  if [ -f "$env/.complete" ]; then
    echo "[setup] $peer: complete ($env), skipping"
    return 0
  fi
  rm -rf "$env"
  echo "[setup] $peer: $pkgs -> $env (log $log)"
  {
    "$PYTHON" -m venv "$env" &&
      "$env/bin/pip" install --upgrade pip &&
      # shellcheck disable=SC2086
      "$env/bin/pip" install $pkgs &&
      "$env/bin/python" -c "$(check "$peer")"
  } >"$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    "$env/bin/pip" freeze >"$env/.complete"
    echo "[setup] $peer: ok"
  else
    mkdir -p "$env"
    { echo "install of '$pkgs' failed (rc $rc); last lines of $log:"; tail -n 5 "$log"; } \
      >"$env/FAILED"
    echo "[setup] $peer: FAILED, see $env/FAILED" >&2
  fi
}

mkdir -p "$VENVS"
for peer in "${PEERS[@]}"; do install_one "$peer"; done
exit 0
