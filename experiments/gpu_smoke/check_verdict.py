"""What the H200 check concludes from one step: the bytes and dtypes of every model's tensors,
and the pass/fail checks written into the report."""

from __future__ import annotations

import math

import torch

from check_model import SHAPES, expected_parameters
from mgrpo import metric_names as names
from mgrpo.sharding import local_tensor

STATIC_TOLERANCE = 0.05
"""Tensor bytes (weights, gradients, optimizer state) must be within 5% of the budget's number:
they are exact accounting, so a miss means a wrong dtype or a duplicated copy."""


def describe(tensors) -> dict:
    """Bytes (local shards), dtypes, and whether all are FSDP2 DTensors."""
    tensors = list(tensors)
    local = [local_tensor(t) for t in tensors]
    return {
        "bytes": sum(t.numel() * t.element_size() for t in local),
        "elements": sum(t.numel() for t in local),
        "dtypes": sorted({str(t.dtype) for t in local}),
        "dtensor": bool(tensors) and all(hasattr(t, "device_mesh") for t in tensors),
        "devices": sorted({str(t.device) for t in local}),
    }


def tensor_summary(trainer, seen: dict) -> dict:
    """Every model's tensors after the step (the gradients and AdamW state as the optimizer hooks
    saw them)."""
    out = {"policy_master": describe(trainer.policy.parameters())}
    if trainer.momentum is not None:
        out["momentum"] = describe(trainer.momentum.parameters())
    if trainer.reference is not None:
        out["reference"] = describe(trainer.reference.parameters())
    engines = {id(e): e for e in trainer.engines.engines.values() if not e.shares_weights}
    if engines:
        out["engine_weights"] = describe(p for e in engines.values() for p in e.model.parameters())
        out["engine_weights"]["engines"] = len(engines)
    out["policy_grads"] = describe(seen.get("policy_grads", []))
    out["adamw_state"] = describe(seen.get("adamw_state", []))
    out["handoffs"] = trainer.engines.handoffs
    return out


def _check(name: str, ok: bool, detail) -> dict:
    return {"name": name, "ok": bool(ok), "detail": str(detail)}


def checks_of(shape: str, written: dict, trainer, cfg, seen: dict, tensors: dict, metrics: dict, budget: dict) -> list[dict]:
    """The check's verdicts, each with what it saw."""
    want = SHAPES[shape]
    config_keys = [k for k in want if k not in ("rope_theta",)]
    mismatched = {k: (written.get(k), want[k]) for k in config_keys if written.get(k) != want[k]}
    rope = (written.get("rope_parameters") or {}).get("rope_theta", written.get("rope_theta"))
    if rope != want["rope_theta"]:
        mismatched["rope_theta"] = (rope, want["rope_theta"])
    parameters = written["parameters"]
    checks = [_check(f"the model has {shape}'s shape", not mismatched and parameters == expected_parameters(want),
                     f"{parameters:,} parameters (expected {expected_parameters(want):,}); mismatched {mismatched or 'none'}")]

    sharded = {k: tensors[k]["dtensor"] for k in ("policy_master", "momentum", "reference") if k in tensors}
    checks.append(_check("FSDP2 shards the policy, the momentum and the reference (DTensor parameters)", len(sharded) == 3 and all(sharded.values()), sharded))
    fp32 = {k: tensors[k]["dtypes"] for k in ("policy_master", "momentum", "policy_grads", "adamw_state")}
    checks.append(_check("float32 master weights, gradients, AdamW state and momentum", all(v == ["torch.float32"] for v in fp32.values()), fp32))
    bf16 = {k: tensors[k]["dtypes"] for k in ("reference", "engine_weights") if k in tensors}
    checks.append(_check("bf16 reference and rollout-engine weights", len(bf16) == 2 and all(v == ["torch.bfloat16"] for v in bf16.values()), bf16))
    compute = (seen.get("layer_weight_dtype"), seen.get("layer_output_dtype"))
    checks.append(_check("the update computes in bf16 (FSDP2 mixed precision casts the gathered weights)", compute == ("torch.bfloat16", "torch.bfloat16"),
                         f"decoder layer 0 in the update: weights {compute[0]}, output {compute[1]}"))

    # One optimizer step on-policy (the preset's 1 epoch x 1 mini-batch): its micro-batches cover the trained rows.
    micro_batches = math.ceil(metrics.get(names.TRAINED_SAMPLES, 0) / cfg.optim.micro_batch_size)
    checkpointing = getattr(trainer.policy.lm, "is_gradient_checkpointing", False)
    checks.append(_check("gradient checkpointing recomputes each layer in the backward pass",
                         checkpointing and micro_batches > 0 and seen["layer_calls"] == 2 * micro_batches,
                         f"is_gradient_checkpointing={checkpointing}; decoder layer 0 ran {seen['layer_calls']} times with grad "
                         f"for {micro_batches} micro-batches (forward + recompute = {2 * micro_batches})"))

    a, prompts = cfg.algo, cfg.trainer.prompts_per_step
    rows = {role: len(r) for role, r in seen["rollouts"].items()}
    want_rows = {"policy": prompts * a.num_policy_rollouts(), "momentum": prompts * a.resolved_num_momentum_rollouts()}
    checks.append(_check(f"G = {a.num_rollouts} samples per prompt: M policy + N = G/4 momentum", rows == want_rows, f"rows {rows}, expected {want_rows}"))

    finite = {k: metrics.get(k) for k in (names.LOSS, names.GRAD_NORM)}
    trained_ok = all(v is not None and math.isfinite(v) for v in finite.values()) and (finite[names.GRAD_NORM] or 0) > 0
    checks.append(_check("the update ran: finite loss, non-zero finite gradient norm, samples trained",
                         trained_ok and metrics.get(names.TRAINED_SAMPLES, 0) > 0,
                         {**finite, names.TRAINED_SAMPLES: metrics.get(names.TRAINED_SAMPLES)}))
    distance = metrics.get(names.EMA_PARAM_DISTANCE)
    checks.append(_check("the momentum is a separate float32 copy that the EMA updated", distance is not None and distance > 0, f"{names.EMA_PARAM_DISTANCE}={distance}"))
    checks.append(_check("the engine's weights were handed off for both roles", tensors["handoffs"] >= 2, f"{tensors['handoffs']} hand-offs"))

    if budget.get("applies"):
        static = [r for r in budget["rows"] if r["item"] in ("policy_master", "policy_grad", "adamw_state", "momentum", "reference", "engine_weights")]
        off = [f"{r['item']} {r['measured_gb']} vs {r['budget_for_this_check_gb']} GB" for r in static
               if r["measured_over_budget"] is None or abs(r["measured_over_budget"] - 1) > STATIC_TOLERANCE]
        checks.append(_check(f"tensor memory matches h200x8.yaml's accounting within {STATIC_TOLERANCE:.0%}", len(static) == 6 and not off, off or "all six items"))
    return checks
