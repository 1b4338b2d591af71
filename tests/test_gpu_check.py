"""The H200 check (experiments/gpu_smoke/h200_check.py): its CPU variant end to end, the budget
it reads from conf/resources/h200x8.yaml, its phase probe, and the wheels it carries to the lent
machine (pins, directory rules, size, and that its import path needs nothing else)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from tests.trainer_helpers import REPO

CHECK_DIR = REPO / "experiments" / "gpu_smoke"
sys.path.insert(0, str(CHECK_DIR))

import check_memory  # noqa: E402
import wheels  # noqa: E402

PHASES = (
    "write_checkpoint", "trainer_init", "step", "rollout", "handoff.policy", "rollout.policy", "handoff.momentum",
    "rollout.momentum", "score", "entropy", "filter", "vote", "advantages", "update", "update.forward_backward",
    "update.optimizer_step", "ema", "signals",
)
"""Every phase the report measures: the trainer's own (`timed`), and the ones the check adds."""
OWN_MODULES = ("mgrpo", "mgrpo_analysis", "hydra_plugins", "h200_check", "check_model", "check_memory", "check_verdict", "__main__")
RECORDER = r"""
import atexit, builtins, json, os, runpy, sys
found = set()
original = builtins.__import__
def recording(name, globals=None, locals=None, fromlist=(), level=0):
    importer = ((globals or {}).get("__name__") or "").split(".")[0]
    if level == 0 and importer in OWN:
        found.add(name.split(".")[0])
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = recording
record, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(record, "w").write(json.dumps(sorted(found))))
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""
"""Runs a script as `python script args`, recording the top-level modules that the project's own
modules import (at import time and while running)."""


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[dict, list[str]]:
    """The check's CPU variant, as a user runs it, with the project's imports recorded."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, record = tmp / "check.json", tmp / "imports.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = f"OWN = {OWN_MODULES!r}\n" + RECORDER
    proc = subprocess.run(
        [sys.executable, "-c", code, str(record), str(CHECK_DIR / "h200_check.py"), "--shape", "tiny", "--device", "cpu",
         "--out", str(out), "--workdir", str(tmp / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), json.loads(record.read_text())


@pytest.mark.slow
def test_cpu_variant_reports_every_phase_and_passes(cpu_run) -> None:
    report, _ = cpu_run
    assert report["status"] == "passed"
    assert "Random weights" in report["what"] and "garbage" in report["what"]
    assert report["environment"]["device"] == "cpu" and "gpu" not in report["environment"]
    assert report["process_group"] == "gloo, world size 1"
    for key in ("args", "model", "run", "phases", "tensors", "rollouts", "metrics", "observations", "budget", "checks", "step_seconds", "wall_seconds"):
        assert key in report, key
    assert set(PHASES) <= set(report["phases"])
    for name in PHASES:
        phase = report["phases"][name]
        assert phase["seconds"] >= 0, name
        assert phase["peak_allocated_bytes"] >= phase["start_allocated_bytes"] > 0, name
        assert phase["peak_above_start_bytes"] == phase["peak_allocated_bytes"] - phase["start_allocated_bytes"], name
    assert report["step_seconds"] == report["phases"]["step"]["seconds"] > 0
    step = report["phases"]["step"]
    assert all(report["phases"][p]["peak_allocated_bytes"] <= step["peak_allocated_bytes"] for p in ("rollout", "update", "ema"))
    run = report["run"]
    assert (run["G"], run["N_momentum"], run["M_policy"]) == (32, 8, 24)
    assert run["dtype"] == "bfloat16" and run["gradient_checkpointing"] is True
    assert report["rollouts"]["policy"]["rows"] == 24 and report["rollouts"]["momentum"]["rows"] == 8
    assert report["rollouts"]["policy"]["prompt_length"] == 128
    assert report["budget"] == {"applies": False, "why": "conf/resources/h200x8.yaml budgets Qwen3-4B-Base; --shape tiny is another model"}
    assert report["checks"] and all(c["ok"] for c in report["checks"]), [c for c in report["checks"] if not c["ok"]]
    assert report["model"]["config"]["num_key_value_heads"] == 2 and report["model"]["config"]["vocab_size"] == 151936


@pytest.mark.slow
def test_budget_rows_from_a_real_report(cpu_run) -> None:
    """The budget comparison runs on a report's own sections (as the qwen3_4b run uses them)."""
    report, _ = cpu_run
    measured = check_memory.measured_items(report["tensors"], report["phases"])
    assert all(v is not None and v > 0 for k, v in measured.items() if k != "update_transient"), measured
    assert measured["policy_grad"] == measured["policy_master"] and measured["adamw_state"] == 2 * measured["policy_master"]
    policy = report["rollouts"]["policy"]
    rows = check_memory.compare_budget(
        check_memory.read_budget(REPO / "conf" / "resources" / "h200x8.yaml"), measured, 1,
        report["run"]["micro_batch_size"] * policy["sequence_length"], policy["rows"] * policy["sequence_length"],
    )
    assert [r["item"] for r in rows] == [*check_memory.SHARDED, "engine_weights", "update_transient", "kv_cache"]
    assert all(r["measured_gb"] is not None for r in rows)


@pytest.mark.slow
def test_the_check_imports_only_what_the_lent_machine_has_or_is_carried(cpu_run) -> None:
    _, imported = cpu_run
    available = set(wheels.pins()) | wheels.device_packages()
    dists = md.packages_distributions()
    third_party = [m for m in imported if m not in OWN_MODULES and m not in sys.stdlib_module_names]
    missing = {m: dists.get(m) for m in third_party if not {wheels.normalize(d) for d in dists.get(m, [])} & available}
    assert not missing, f"the check's import path needs {missing}: add them to experiments/gpu_smoke/wheels.txt or device_packages.txt"
    assert {"hydra", "torch", "transformers", "pandas"} <= set(third_party)


def test_carried_wheels_need_only_each_other_and_the_machine() -> None:
    available = set(wheels.pins()) | wheels.device_packages()
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
    for name in wheels.pins():
        for spec in md.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                assert wheels.normalize(requirement.name) in available, f"{name} needs {requirement}"


def test_pins_are_the_versions_ci_installs() -> None:
    pinned = wheels.pins()
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "math-verify", "latex2sympy2-extended"} <= set(pinned)
    assert {name: md.version(name) for name in pinned} == pinned


def test_wheels_fit_what_the_device_tool_carries() -> None:
    """Offline bound: a wheel is a zip of the installed files, so the installed sizes bound it."""
    installed = sum(f.size or 0 for name in wheels.pins() for f in md.files(name) or [] if "__pycache__" not in str(f))
    assert 0 < installed < wheels.WHEELS_LIMIT
    if wheels.WHEEL_DIR.is_dir():  # fetched by fetch_wheels.sh (needs PyPI): then the real files too
        assert sum(size for _, size in wheels.check_wheel_dir(wheels.WHEEL_DIR, wheels.pins())) < wheels.WHEELS_LIMIT


def _fake_wheel(directory: Path, filename: str, size: int = 100) -> None:
    with zipfile.ZipFile(directory / filename, "w") as z:
        z.writestr("payload", b"x" * size)


def test_wheel_directory_rules(tmp_path: Path) -> None:
    pinned = {"hydra-core": "1.3.8", "latex2sympy2-extended": "1.11.0"}
    _fake_wheel(tmp_path, "hydra_core-1.3.8-py3-none-any.whl")
    _fake_wheel(tmp_path, "latex2sympy2_extended-1.11.0-py3-none-any.whl")
    assert [name for name, _ in wheels.check_wheel_dir(tmp_path, pinned)] == sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(wheels.WheelError, match="over the"):
        wheels.check_wheel_dir(tmp_path, pinned, limit=100)
    with pytest.raises(wheels.WheelError, match="no wheel for omegaconf"):
        wheels.check_wheel_dir(tmp_path, {**pinned, "omegaconf": "2.3.1"})
    with pytest.raises(wheels.WheelError, match="pins hydra-core==1.3.9"):
        wheels.check_wheel_dir(tmp_path, {**pinned, "hydra-core": "1.3.9"})
    _fake_wheel(tmp_path, "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl")
    with pytest.raises(wheels.WheelError, match="not pure Python"):
        wheels.check_wheel_dir(tmp_path, pinned)
    (tmp_path / "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl").unlink()
    (tmp_path / "antlr4-python3-runtime-4.9.3.tar.gz").write_bytes(b"sdist")
    with pytest.raises(wheels.WheelError, match="not a wheel"):
        wheels.check_wheel_dir(tmp_path, pinned)


def test_pins_must_be_exact(tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_text("# comment\nhydra-core>=1.3\n")
    with pytest.raises(wheels.WheelError, match="not pinned"):
        wheels.pins(tmp_path / "w.txt")


def test_budget_numbers_read_from_h200x8() -> None:
    budget = check_memory.read_budget(REPO / "conf" / "resources" / "h200x8.yaml")
    gb = 1e9
    assert budget["world_size"] == 8
    assert budget["items"] == {
        "policy_master": 2.0 * gb, "policy_grad": 2.0 * gb, "adamw_state": 4.0 * gb, "momentum": 2.0 * gb,
        "reference": 1.0 * gb, "gathered_weights": 1.2 * gb, "layer_inputs": 184e3, "layer_recompute": 119e3,
        "logits": 2 * 0.6 * gb, "engine_weights": 8.0 * gb, "kv_cache": 144 * 1024, "micro_batch_tokens": 14336.0,
        "kv_cache_share": 16.5 * gb,
    }


def test_budget_scaled_to_the_check() -> None:
    """By hand: 1 rank holds 8 shards' worth; 4 x 1,280 tokens per micro-batch; 24 x 1,280 in flight."""
    budget = check_memory.read_budget(REPO / "conf" / "resources" / "h200x8.yaml")
    rows = {r["item"]: r for r in check_memory.compare_budget(budget, {"policy_master": 16.09e9, "kv_cache": None}, 1, 5120, 30720)}
    assert rows["policy_master"]["budget_for_this_check_gb"] == 16.0
    assert rows["policy_master"]["measured_over_budget"] == round(16.09 / 16.0, 3)
    assert rows["adamw_state"]["budget_for_this_check_gb"] == 32.0 and rows["adamw_state"]["measured_gb"] is None
    assert rows["engine_weights"]["budget_for_this_check_gb"] == 8.0
    assert rows["update_transient"]["budget_for_this_check_gb"] == round((1.2e9 + 303e3 * 5120 + 1.2e9) / 1e9, 3)
    assert rows["update_transient"]["budget_per_gpu_in_file_gb"] == round((1.2e9 + 303e3 * 14336 + 1.2e9) / 1e9, 3)
    assert rows["kv_cache"]["budget_for_this_check_gb"] == round(147456 * 30720 / 1e9, 3)
    assert rows["kv_cache"]["budget_per_gpu_in_file_gb"] == 16.5


def test_budget_format_change_is_an_error(tmp_path: Path) -> None:
    text = (REPO / "conf" / "resources" / "h200x8.yaml").read_text().replace("#   momentum float32 shard", "#   ema shard")
    (tmp_path / "h200x8.yaml").write_text(text)
    with pytest.raises(check_memory.BudgetFormatError, match="momentum float32 shard"):
        check_memory.read_budget(tmp_path / "h200x8.yaml")


def test_phase_probe_carries_inner_peaks_outward() -> None:
    probe = check_memory.PhaseProbe(torch.device("cpu"))
    try:
        probe.begin("outer")
        probe.begin("inner")
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
        probe.end("inner")
        del block
        probe.begin("after")
        probe.end("after")
        outer = probe.end("outer")
        inner = probe.phases["inner"]
        assert inner["peak_above_start_bytes"] >= 48 * 2**20  # RSS sampling: most of it is seen
        assert outer["peak_allocated_bytes"] >= inner["peak_allocated_bytes"]
        with pytest.raises(RuntimeError, match="ended while"):
            probe.end("outer")
    finally:
        probe.close()
