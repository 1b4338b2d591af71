#!/usr/bin/env bash
# The H200 check as one command, from the repo root, on a lent machine (see README.md):
#   bash experiments/gpu_smoke/h200_check.sh [h200_check.py options]
# The carried wheels (experiments/gpu_smoke/wheels/, fetched here by fetch_wheels.sh and named in the
# device tool's carry list) are installed with pip --no-index --no-deps into a private directory that
# goes first on PYTHONPATH, so the machine's own torch and transformers are the ones used and nothing
# is fetched (it has no index). The repo itself runs from its working tree, as on PYTHONPATH. The JSON
# report and the log go to $OUT (or outputs/h200_check/).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/experiments/gpu_smoke
wheels=${MGRPO_CHECK_WHEELS:-$here/wheels}
out=${OUT:-$repo/outputs/h200_check}
site=${MGRPO_CHECK_SITE:-${TMPDIR:-/tmp}/mgrpo_h200_site}
python=${PYTHON:-python3}
mkdir -p "$out" "$site"
"$python" "$here/wheels.py" check "$wheels"
"$python" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
# pyproject.toml installs analysis/ as the package mgrpo_analysis; from the working tree it needs this name.
ln -sfn "$repo/analysis" "$site/mgrpo_analysis"
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$repo"
set +e
"$python" "$here/h200_check.py" --out "$out/h200_check.json" "$@" 2>&1 | tee "$out/h200_check.log"
exit "${PIPESTATUS[0]}"
