"""Reasons never contradict the facts (issue 11.5): every decision-table row x hardware class x optimize goal is
planned, and each reason is checked against the plan it explains (GPU tier, engine, layers, users, optimize, quant
ladder); services sharing a machine say who got what and divide the CPU threads."""

from __future__ import annotations

import re

import pytest

from stackgen import engines
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import DECISION_TABLE, GGUF_LADDER, hardware_class, pick_row, resolve, smaller_quants
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
PROFILES = load_profiles()
CLASSES = {  # the hardware classes a user has, each with machines from the built-in profiles
    "cpu-only": ("cpu-laptop-16gb", "cpu-server-64gb"),
    "consumer-nvidia": ("rtx-3090", "rtx-4060"),
    "datacenter-nvidia": ("h100-80gb", "l4"),
    "amd": ("rx-7900-xtx", "mi300x"),
    "intel": ("arc-a770",),
    "apple": ("m3-max-64gb", "m4-16gb"),
}
OPTIMIZE = ("latency", "throughput", "setup")
TIERS = ("consumer", "workstation", "datacenter")


def _cases():
    reached, cases = set(), []
    for row in DECISION_TABLE:
        for cls, machines in CLASSES.items():
            for machine in machines:
                if hardware_class(PROFILES.hardware[machine]) not in row.hardware:
                    continue
                for opt in sorted(row.optimize):
                    for users in {"single": (1,), "multi": (8,), "any": (1, 8)}[row.users]:
                        ratio = row.min_prompt_ratio  # a prompt-heavy row is walked with prompt-heavy traffic
                        if pick_row(hardware_class(PROFILES.hardware[machine]), users, opt, ratio) is not row:
                            continue  # an earlier row claims this combination
                        reached.add(row.id)
                        cases.append(pytest.param(row.id, machine, opt, users, ratio,
                                                  id=f"{row.id}-{cls}-{machine}-{opt}-{users}u"))
    return cases, reached


CASES, REACHED = _cases()


def test_every_row_but_the_fallback_is_reached_and_every_class_and_goal_is_walked():
    assert REACHED == {r.id for r in DECISION_TABLE} - {"fallback"}
    walked = {(c.values[1], c.values[2]) for c in CASES}
    for machines in CLASSES.values():
        for opt in OPTIMIZE:
            assert any((m, opt) in walked for m in machines)


def plan(write_stack, machine: str, opt: str, users: int, model: str = "qwen2.5-7b-instruct", extra: str = "",
         ratio: float = 0.0):
    ctx = 4096 if users > 1 else 8192
    out = 300 if not ratio else 256
    prompt = 1000 if not ratio else int(out * ratio)
    serve = "serve: {api_key_env: STACK_KEY}\n" if ratio else ""  # SGLang, the prefix-heavy pick, needs a key
    f = write_stack(f"version: 1\nhardware: {machine}\nworkload: {{concurrent_users: {users}, context_tokens: {ctx}, "
                    f"prompt_tokens: {prompt}, output_tokens: {out}, optimize: {opt}}}\n{serve}services:\n  svc:\n"
                    f"    model: {model}\n{extra}")
    return resolve(load_stack(f), HOST).services[0]


def check_reasons_against_plan(sp, hw) -> None:
    """Every fact a reason states is a fact of the plan."""
    m, wl = sp.memory, sp.workload
    # Lines about every service on a shared machine are checked against every plan (check_shared_lines).
    own = [r for r in sp.reasons if not (r.startswith("CPU threads:") or re.match(r"memory: \d+ services share", r))]
    why = " | ".join(own)
    everything = why + " | " + " | ".join(sp.rejected.values())
    # The GPU tier words describe this machine's GPUs.
    tiers = {g.tier for g in hw.gpus if not g.unified}
    for word in TIERS:
        if re.search(rf"\b{word} (NVIDIA|AMD|Intel) GPU", why):
            assert word in tiers, (word, why)
    assert ("datacenter-class" not in everything)
    if not hw.gpus:
        assert "CPU-only" in sp.reasons[0] or "spill" not in why
        assert "on the GPU" not in why, why
        assert "GPU layers" not in everything, everything
    if "Apple" in why or "unified memory" in sp.reasons[0]:
        assert hw.is_apple
    # The engine named as the choice is the engine chosen.
    if sp.spec.engine == "auto":
        assert sp.reasons[0].startswith(engines.get(sp.engine).display + ":"), sp.reasons[0]
    for name, text in sp.rejected.items():
        hit = re.match(r"ranked below (.+?) for this workload", text)
        if hit:
            assert hit.group(1) == engines.get(sp.engine).display
    # Layers: every count and "every layer on the GPU" matches the memory plan.
    for a, b in re.findall(r"(\d+) of (\d+) layers on (?:the )?GPU", why):
        assert (int(a), int(b)) == (m.gpu_layers, m.total_layers), why
    if "every layer on the GPU" in why.replace("keep every layer on the GPU", "every layer on the GPU"):
        assert m.gpu_budget_bytes > 0 and m.gpu_layers == m.total_layers, why
    if "partial offload" in why:
        assert 0 < m.gpu_layers < m.total_layers
    if "spill to system RAM" in why:
        assert m.gpu_layers < m.total_layers and m.gpu_budget_bytes > 0
    # Users and the optimize goal are the workload's.
    for n in re.findall(r"(\d+) concurrent users", everything):
        assert int(n) == wl.concurrent_users, everything
    if "one user" in why:
        assert wl.concurrent_users == 1
    for goal in re.findall(r"optimizes (\w+)", everything):
        assert goal == wl.optimize, everything
    assert "not setup time" not in everything
    if "wants it running now" in why:
        assert wl.optimize == "setup"


@pytest.mark.parametrize("row_id,machine,opt,users,ratio", CASES)
def test_reasons_match_the_plan(write_stack, row_id, machine, opt, users, ratio):
    hw = PROFILES.hardware[machine]
    sp = plan(write_stack, machine, opt, users, ratio=ratio)
    row = next(r for r in DECISION_TABLE if r.id == row_id)
    if sp.engine == row.engines[0]:
        assert row.text(hw, users) in sp.reasons[0]
    check_reasons_against_plan(sp, hw)


@pytest.mark.parametrize("machine", [m for ms in CLASSES.values() for m in ms])
def test_one_user_who_wants_it_running_now_gets_ollama_everywhere(write_stack, machine):
    """The seed article: Ollama solves setup friction, on a GPU, a Mac or a CPU-only laptop."""
    sp = plan(write_stack, machine, "setup", 1)
    assert sp.engine == "ollama", sp.reasons
    check_reasons_against_plan(sp, PROFILES.hardware[machine])


def test_consumer_gpus_are_not_called_datacenter(write_stack):
    for machine in ("rtx-3090", "rtx-4060"):
        sp = plan(write_stack, machine, "throughput", 8, model="qwen2.5-0.5b-instruct")
        assert "a consumer NVIDIA GPU (GeForce RTX" in sp.reasons[0], sp.reasons[0]
        assert "datacenter" not in sp.reasons[0]
    sp = plan(write_stack, "h100-80gb", "throughput", 8)
    assert "a datacenter NVIDIA GPU (H100" in sp.reasons[0]


@pytest.mark.parametrize("machine,opt,users,model", [
    ("rtx-4090", "latency", 3, "qwen2.5-32b-instruct"), ("rtx-4060", "latency", 1, "qwen2.5-32b-instruct"),
    ("m4-16gb", "latency", 1, "llama-3.1-8b-instruct"), ("cpu-laptop-16gb", "throughput", 4, "llama-3.1-8b-instruct")])
def test_spilling_and_levers_state_the_layers(write_stack, machine, opt, users, model):
    sp = plan(write_stack, machine, opt, users, model=model)
    check_reasons_against_plan(sp, PROFILES.hardware[machine])


def test_kv_quant_lever_on_a_cpu_does_not_mention_the_gpu(write_stack):
    f = write_stack("version: 1\nhardware: cpu-laptop-16gb\nworkload: {concurrent_users: 4, context_tokens: 32768}\n"
                    "services:\n  svc:\n    model: llama-3.1-8b-instruct\n    engine: llama.cpp\n")
    sp = resolve(load_stack(f), HOST).services[0]
    assert sp.memory.kv_cache_type == "q8_0", sp.reasons
    assert any("to fit the context in system RAM" in r for r in sp.reasons)
    assert not any("GPU" in r for r in sp.reasons), sp.reasons


# ---------------------------------------------------------------------------------------------- quant ladder


def test_smaller_quants_follow_the_ladder():
    assert smaller_quants("Q4_K_M") == ["Q3_K_M", "Q2_K"]
    assert smaller_quants("Q2_K") == []
    assert smaller_quants("Q8_0")[0] == "Q6_K"
    assert smaller_quants("bf16") == ["fp8", "awq"] and smaller_quants("awq") == []
    assert smaller_quants("4bit") == ["3bit"]
    assert all(q in GGUF_LADDER for q in smaller_quants("IQ4_XS"))


def _try_line(write_stack, text: str) -> str:
    with pytest.raises(PlanError) as info:
        resolve(load_stack(write_stack(text)), HOST)
    return str(info.value).splitlines()[-1]


def test_the_try_hint_never_suggests_the_quant_already_planned(write_stack):
    # 32B at Q4_K_M does not fit 16 GB of RAM; Q2_K does: the hint offers it, never Q4_K_M again.
    line = _try_line(write_stack, "version: 1\nhardware: cpu-laptop-16gb\nservices:\n  big:\n"
                                  "    model: qwen2.5-32b-instruct\n    quant: Q4_K_M\n")
    assert "quant: Q4_K_M" not in line
    assert "`quant: Q2_K`" in line and "fits it" in line
    # A bigger model where no quant fits: say what was tried, suggest no quant.
    line = _try_line(write_stack, "version: 1\nhardware: cpu-laptop-16gb\nservices:\n  big:\n"
                                  "    model: llama-3.1-70b-instruct\n")
    assert "`quant:" not in line and "tried Q3_K_M, Q2_K" in line
    # At the bottom of the ladder there is no smaller quant to offer.
    line = _try_line(write_stack, "version: 1\nhardware: cpu-laptop-16gb\nservices:\n  big:\n"
                                  "    model: llama-3.1-405b-instruct\n    quant: Q2_K\n")
    assert "quant" not in line


def test_the_try_hint_for_a_pinned_engine_offers_what_fits(write_stack):
    with pytest.raises(PlanError) as info:
        resolve(load_stack(write_stack("version: 1\nhardware: rtx-4090\nworkload: batch\nservices:\n  big:\n"
                                       "    model: qwen2.5-32b-instruct\n    quant: bf16\n    engine: vllm\n")), HOST)
    assert "`quant: awq` (vLLM fits it" in str(info.value)


# ---------------------------------------------------------------------------------------------- sharing a machine


def check_shared_lines(sps) -> None:
    """The 'who got what' and thread lines name each service with its own plan's figures."""
    from stackgen.plan.memory import gb

    by_name = {sp.name: sp for sp in sps}
    for sp in sps:
        for r in sp.reasons:
            if r.startswith("CPU threads:"):
                for name, t in re.findall(r"(?:: |; )([a-z0-9-]+) (\d+) threads?", r):
                    assert by_name[name].threads == int(t), r
            elif re.match(r"memory: \d+ services share", r):
                for name, size, layers in re.findall(r"(?:: |; )([a-z0-9-]+) ([0-9.]+ GB) \(([^)]*)\)", r):
                    other = by_name[name].memory
                    assert size in (gb(other.gpu_bytes), gb(other.host_bytes)), r
                    if layers == "every layer on the GPU":
                        assert other.gpu_layers == other.total_layers
                    hit = re.match(r"all (\d+) layers on the CPU", layers)
                    if hit:
                        assert other.gpu_layers == 0 and other.total_layers == int(hit.group(1))


def test_two_services_on_one_gpu_say_who_got_what_and_split_the_threads(write_stack):
    f = write_stack("version: 1\nhardware: rx-7900-xtx\nworkload: dev-loop\nservices:\n"
                    "  a: {model: qwen2.5-32b-instruct, engine: llama.cpp}\n"
                    "  b: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n")
    hw = PROFILES.hardware["rx-7900-xtx"]
    a, b = resolve(load_stack(f), HOST).services
    assert hw.cpu.cores == 12
    assert a.memory.gpu_layers == a.memory.total_layers and b.memory.gpu_layers == 0
    # Who got what: both plans list both shares, and b is told why it has no GPU layer.
    for sp in (a, b):
        share = next(r for r in sp.reasons if "services share" in r and "GPU memory" in r)
        assert "a " in share and "b " in share and "all 28 layers on the CPU" in share
    assert any("no layer fits" in r and "all 28 layers run on the CPU" in r for r in b.reasons)
    assert any("planned before it (a)" in w for w in b.warnings), b.warnings
    assert not any("partial offload" in r for r in b.reasons)
    # Threads: the GPU-resident service keeps one, the CPU-bound one gets the rest; never 12 + 12.
    assert (a.threads, b.threads) == (1, 11)
    assert a.command[a.command.index("-t") + 1] == "1" and b.command[b.command.index("-t") + 1] == "11"
    line = next(r for r in b.reasons if r.startswith("CPU threads:"))
    assert "12 cores" in line and "a 1 thread" in line and "b 11 threads" in line
    check_reasons_against_plan(a, hw)
    check_reasons_against_plan(b, hw)
    check_shared_lines([a, b])


def test_services_on_a_cpu_only_machine_split_its_cores(write_stack):
    f = write_stack("version: 1\nhardware: cpu-server-64gb\nworkload: dev-loop\nservices:\n"
                    "  a: {model: qwen2.5-7b-instruct}\n  b: {model: qwen2.5-0.5b-instruct}\n"
                    "  c: {model: llama-3.2-3b-instruct}\n")
    sps = resolve(load_stack(f), HOST).services
    assert sum(sp.threads for sp in sps) == 16 and [sp.threads for sp in sps] == [6, 5, 5]
    for sp in sps:
        assert any("3 services share" in r and "system RAM" in r for r in sp.reasons)
        assert any(r.startswith("CPU threads: 3 services share 16 cores") for r in sp.reasons)
    check_shared_lines(sps)


def test_services_all_on_the_gpu_split_the_cores_evenly_and_ollama_gets_its_share(write_stack):
    f = write_stack("version: 1\nhardware: 2x h100-80gb\nworkload: dev-loop\nservices:\n"
                    "  a: {model: llama-3.1-8b-instruct, engine: llama.cpp}\n"
                    "  b: {model: llama-3.1-8b-instruct, engine: ollama}\n")
    a, b = resolve(load_stack(f), HOST).services
    cores = PROFILES.hardware["h100-80gb"].cpu.cores
    assert a.threads + b.threads == cores and abs(a.threads - b.threads) <= 1
    assert b.env.get("OLLAMA_NUM_PARALLEL") and any("an even split" in r for r in a.reasons)


def test_a_single_service_keeps_every_core(write_stack):
    sp = plan(write_stack, "rtx-3090", "latency", 1)
    assert sp.threads == PROFILES.hardware["rtx-3090"].cpu.cores
    assert not any(r.startswith("CPU threads") for r in sp.reasons)
