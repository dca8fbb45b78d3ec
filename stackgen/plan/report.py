"""Plans for people: the engine, why, what was rejected and why, the memory table and the predicted speed."""

from __future__ import annotations

from stackgen.plan.capacity import kv_pool_bytes, planned_total_bytes, requests_held
from stackgen.plan.plan import Plan, ServicePlan


def _gb(n: int) -> str:
    return f"{n / 1e9:8.2f} GB"


def plan_text(plan: Plan) -> str:
    # a detected host's label already is "detected: <description>": the description once
    hw = plan.hardware.label()
    on = plan.hardware_label if plan.hardware_label.endswith(hw) else f"{plan.hardware_label}: {hw}"
    lines = [f"stack {plan.stack_name} ({plan.stack_path}) on {on}", ""]
    for sp in plan.services:
        lines += service_text(sp) + [""]
    return "\n".join(lines).rstrip() + "\n"


def service_text(sp: ServicePlan) -> list[str]:
    m = sp.memory
    gpu = f"{m.gpu_layers}/{m.total_layers} layers on GPU" if m.gpu_budget_bytes > 0 else "CPU only"
    lines = [
        f"service {sp.name}: {sp.engine}  ({sp.model.name}, {m.weights_format}, {gpu}, "
        f"{m.parallel} x {m.context_per_request} tokens, {sp.host}:{sp.port})",
    ]
    if sp.model.ref:
        lines.append(f"  model: {sp.model.name} = {sp.model.ref} (catalog figures; `stackgen lock --catalog` pins the "
                     "reference's real metadata)")
    lines.append("  why:")
    lines += [f"    - {r}" for r in sp.reasons]
    lines.append("  rejected:")
    lines += [f"    - {name}: {why}" for name, why in sorted(sp.rejected.items())]
    lines.append("  memory:")
    pool = kv_pool_bytes(sp.engine, m)
    if pool is None:
        kv = (f"KV cache ({m.kv_cache_type})", m.kv_cache_bytes, "")
    else:  # vLLM allocates its KV pool once, out of its reserve: the pool, and what it holds at full context
        held = min(m.parallel, requests_held(sp.engine, sp.model, m, m.context_per_request) * m.data_parallel) \
            if pool else 0  # per engine core, times the data-parallel cores
        kv = (f"KV cache ({m.kv_cache_type})", pool, f"pool: {held} of {m.parallel} requests at "
              f"{m.context_per_request} tokens at once (all {m.parallel}: {m.kv_cache_bytes / 1e9:.2f} GB)")
    total = planned_total_bytes(sp.engine, m)
    rows = [("weights", m.weights_bytes, m.weights_source), kv,
            ("compute buffers", m.compute_bytes, ""), ("runtime overhead", m.overhead_bytes, "")]
    if m.prompt_cache.note:
        rows.append(("prompt cache", m.prompt_cache_bytes, _cache_note(m)))
    rows += [("total", total, "on GPU" if pool is not None else ""),
             ("on GPU", m.gpu_bytes, f"budget {m.gpu_budget_bytes / 1e9:.2f} GB"),
             ("in system RAM", m.host_bytes, f"budget {m.host_budget_bytes / 1e9:.2f} GB")]
    if m.tensor_parallel > 1:
        rows.append(("tensor parallel", 0, f"{m.tensor_parallel} GPUs"))
    for label, value, note in rows:
        lines.append(f"    {label:<20}{_gb(value) if value or label != 'tensor parallel' else '':>12}  {note}".rstrip())
    if sp.speed is not None:
        # the fitted per-backend model (what users see); the 0.7-of-bandwidth roofline stays in plan --json
        lines.append(f"  predicted decode: {sp.speed.single_stream_tokens_per_s:g} tokens/s for one stream alone "
                     f"(bound by {sp.bottleneck}; {sp.predicted_decode_tokens_per_s:g} at 70% of peak bandwidth with no per-token cost)")
    else:
        lines.append(f"  predicted decode: {sp.predicted_decode_tokens_per_s:g} tokens/s per stream "
                     f"(bound by {sp.bottleneck})")
    if sp.speed is not None:
        lines.append(f"  predicted for users: {sp.speed.text()}")
    lines += capacity_lines(sp)
    for w in sp.warnings:
        lines.append(f"  warning: {w}")
    lines.append("  command: " + " ".join(_q(a) for a in sp.command))
    c = sp.capacity
    if c is not None and c.separate:  # the command is one instance's (capacity.command_endpoint)
        lines.append(f"  (instance 1 of {c.replicas}; the instances listen on ports {', '.join(map(str, c.ports))}, "
                     f"the balancer on {sp.host}:{sp.port})")
    return lines


def capacity_lines(sp: ServicePlan) -> list[str]:
    """The capacity plan's verdict (plan --json's `capacity`): the layout, whether it meets the workload's targets
    under the simulated load, and the advice when it does not. A plan that misses them must say so here too."""
    c = sp.capacity
    if c is None:
        return []
    p, wl = c.prediction, sp.workload
    verdict = "meets" if c.meets else "MISSES"
    load = "1 user's" if p.users == 1 else f"{p.users} users'"
    lines = [f"  capacity: {c.layout.label()} {verdict} the workload's targets (p95 TTFT {wl.ttft_p95_ms / 1000:g} s, "
             f"{wl.tokens_per_s_per_user:g} tokens/s per user) under {load} simulated load: p95 TTFT "
             f"{p.ttft_p95_s:.2f} s, {p.tokens_per_s_per_user:.1f} tokens/s per user"]
    lines += [f"    - {a}" for a in c.advice]
    return lines


def _cache_note(m) -> str:
    c = m.prompt_cache
    if c.bytes:
        return "bound on what grows with distinct prompts"
    if c.note.startswith("prompt cache off"):
        return "off: no memory to spare"
    return "prefix cache inside the KV cache"


def _q(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
