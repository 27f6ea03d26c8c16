#!/usr/bin/env bash
# Install MONAI Label 0.8.5 into the environment that already runs diskrobust (docs/monai_label.md).
#
#   scripts/install_label.sh            # uses the `python` on PATH (activate the project's venv first)
#   PYTHON=/path/to/venv/bin/python scripts/install_label.sh
#
# Two steps, because a pip extra cannot say --no-deps:
# 1. the project with its `label` extra (MONAI Label's run-time needs: fastapi, uvicorn, pydicom 2, ...),
#    with torch, numpy, monai, jsonschema and scipy held at the versions already installed (a constraints
#    file written from the environment), so no CUDA torch and no numpy < 2 come in;
# 2. monailabel==0.8.5 and pydicom-seg==0.4.1 with --no-deps: their declared dependencies (numpy < 2,
#    jsonschema < 4, torchvision, sam2, numpymaxflow) no longer resolve beside MONAI 1.6 and numpy 2;
#    the parts MONAI Label imports run with the versions of step 1 (checked at the end).
# Set DISKROBUST_LABEL_EDITABLE=0 to skip re-installing the project itself (step 1 then installs only
# the extra's requirements, read from pyproject.toml) - for an environment whose diskrobust is
# installed from another checkout.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
start=$SECONDS

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Hold what the project already runs on: only packages that are installed get a pin.
"${PIP[@]}" freeze --all 2>/dev/null | grep -iE '^(torch|numpy|monai|jsonschema|scipy)==' > "$work/constraints.txt" || true
echo "holding: $(tr '\n' ' ' < "$work/constraints.txt")"

if [[ "${DISKROBUST_LABEL_EDITABLE:-1}" == "0" ]]; then
    "$PYTHON" - "$REPO/pyproject.toml" > "$work/label-requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["label"]))
PY
    "${PIP[@]}" install --quiet -c "$work/constraints.txt" -r "$work/label-requirements.txt"
else
    "${PIP[@]}" install --quiet -c "$work/constraints.txt" -e "$REPO[label]"
fi
"${PIP[@]}" install --quiet --no-deps monailabel==0.8.5 pydicom-seg==0.4.1

# Fail here (not at the first request) when something does not import.
"$PYTHON" - <<'PY'
import importlib.metadata as md
import monailabel.main, monailabel.app, monailabel.interfaces.app  # noqa: F401  (what the server imports)
import fastapi, uvicorn, pydicom, SimpleITK, psutil  # noqa: F401
import diskrobust  # noqa: F401
print("ok: " + ", ".join(f"{p} {md.version(p)}" for p in ("monailabel", "torch", "numpy", "monai", "fastapi")))
PY
echo "MONAI Label installed in $((SECONDS - start)) s"
