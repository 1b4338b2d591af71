#!/usr/bin/env bash
# Fetch the wheels the H200 check carries (wheels.txt) into experiments/gpu_smoke/wheels/ (git-ignored),
# on a machine that reaches PyPI; then check them (one pure-Python wheel per pin, total size).
#   bash experiments/gpu_smoke/fetch_wheels.sh [DIR]
# An sdist-only pin (antlr4-python3-runtime 4.9.3 has no wheel on PyPI) is built into a wheel here, with
# this Python's setuptools: the lent machine has no index to build from.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/wheels}
python=${PYTHON:-$(command -v python3)}
mkdir -p "$dest"
rm -f "$dest"/*.whl "$dest"/*.tar.gz "$dest"/*.zip
"$python" -m pip download -q --no-deps --dest "$dest" -r "$here/wheels.txt"
for sdist in "$dest"/*.tar.gz "$dest"/*.zip; do
  [ -e "$sdist" ] || continue
  "$python" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$dest" "$sdist"
  rm -f "$sdist"
done
"$python" "$here/wheels.py" check "$dest"
