#!/usr/bin/env bash
# Build the separate, pinned environment in which MONAI Label serves the lumbar_disk_shape bundle.
#
#   scripts/build_monailabel_env.sh [ENV_DIR]      (default: <repo>/.mlenv, git-ignored)
#
# Why a separate environment: monailabel 0.8.5 needs numpy < 2 (pydicom-seg) and torchvision, while
# the main project stays on numpy 2 and the CPU torch. The versions come from
# shared/reference/monai_label_install.md and are pinned in app/requirements-monailabel.txt.
#
# Idempotent: the environment records a hash of the requirements file, of this script and of the
# diskrobust package metadata in ENV_DIR/.diskrobust-mlenv-stamp; when the hash matches, nothing is done.
# Set PYTHON to choose the interpreter (default python3.11).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${1:-$REPO/.mlenv}"
REQ="$REPO/app/requirements-monailabel.txt"
PYTHON="${PYTHON:-python3.11}"
STAMP="$ENV_DIR/.diskrobust-mlenv-stamp"

# torch / torchvision: a CUDA build (~5.5 GB with its nvidia-* wheels). On the project's machines pip
# finds them on the local disk (pip's find-links / extra index); elsewhere pip takes them from PyPI.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
MONAILABEL_PIN="monailabel==0.8.5"

want_hash="$(cat "$REQ" "${BASH_SOURCE[0]}" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_hash" && -x "$ENV_DIR/bin/monailabel" ]]; then
    echo "MONAI Label environment $ENV_DIR is up to date"
    exit 0
fi

start=$SECONDS
echo "Building MONAI Label environment in $ENV_DIR (python: $PYTHON)"
rm -f "$STAMP"
if [[ ! -x "$ENV_DIR/bin/python" ]]; then
    "$PYTHON" -m venv "$ENV_DIR"
fi
PIP=("$ENV_DIR/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade "pip>=24"

# numpy is pinned in the same command so torchvision does not first pull numpy 2.
numpy_pin="$(grep -E '^numpy==' "$REQ")"
"${PIP[@]}" install --quiet "${TORCH_PINS[@]}" "$numpy_pin"
"${PIP[@]}" install --quiet -r "$REQ" "${TORCH_PINS[@]}"
# monailabel's declared dependencies no longer resolve together (sam2, numpymaxflow, monai extras):
# install it alone and its run-time needs from the requirements file above.
"${PIP[@]}" install --quiet --no-deps "$MONAILABEL_PIN"
# The app imports diskrobust; its dependencies are already in the requirements file.
"${PIP[@]}" install --quiet --no-deps -e "$REPO"

# Fail the build (not the first request) when something does not import.
"$ENV_DIR/bin/python" - <<'PY'
import numpy, torch, torchvision, monai, monailabel, fastapi, uvicorn, pydicom, nibabel, skimage, kornia, ignite
import monailabel.main  # noqa: F401  (imports the server's CLI, as `monailabel start_server` does)
import diskrobust  # noqa: F401
assert numpy.__version__.startswith("1.26"), numpy.__version__
print(f"ok: torch {torch.__version__}, torchvision {torchvision.__version__}, monai {monai.__version__}, "
      f"monailabel {monailabel.__version__}, numpy {numpy.__version__}")
PY

echo "$want_hash" > "$STAMP"
echo "Built $ENV_DIR in $((SECONDS - start)) s; size $(du -sh "$ENV_DIR" | cut -f1)"
