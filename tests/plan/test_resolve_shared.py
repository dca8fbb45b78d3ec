"""Several services on one machine (resolve._share_machine, resolve._held_by): the "who got which memory" line
each plan carries, whole, built from the machine's budget (memory.initial_budget) and each plan's own bytes: the
pool (GPU memory, the unified memory the GPU may use, or the system RAM left to services), every service's share
in file order, "came first" for the first and "got the X left" (the budget minus what the earlier ones hold) for
the others; and the refusal of a later service naming what the earlier ones hold."""

from __future__ import annotations

import pytest

from stackgen.plan import memory, resolve
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
HW = load_profiles().hardware
gb = memory.gb


def plan(write_stack, body: str):
    return resolve.resolve(load_stack(write_stack("version: 1\n" + body)), HOST).services


def memory_line(sp) -> str:
    lines = [r for r in sp.reasons if r.startswith("memory: ") and " services share the " in r]
    assert len(lines) == 1, sp.reasons
    return lines[0]


def layers(sp) -> str:
    m = sp.memory
    return ("every layer on the GPU" if m.gpu_layers >= m.total_layers else
            f"all {m.total_layers} layers on the CPU" if m.gpu_layers == 0 else
            f"{m.gpu_layers} of {m.total_layers} layers on the GPU, {m.total_layers - m.gpu_layers} on the CPU")


def test_three_services_on_one_gpu_say_what_each_got(write_stack):
    """Three small models on the 24 GB RX 7900 XTX, each with every layer on the GPU: a came first, b got the budget
    less a's GPU bytes, c the budget less a's and b's (a running sum, not the last one alone)."""
    a, b, c = plan(write_stack, "hardware: rx-7900-xtx\nworkload: dev-loop\nservices:\n"
                   "  a: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n"
                   "  b: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n"
                   "  c: {model: llama-3.2-3b-instruct, engine: llama.cpp}\n")
    budget = memory.initial_budget(HW["rx-7900-xtx"]).gpu_bytes
    assert all(sp.memory.gpu_layers == sp.memory.total_layers for sp in (a, b, c))
    line = (f"memory: 3 services share the {gb(budget)} of GPU memory, filled in file order: "
            f"a {gb(a.memory.gpu_bytes)} (every layer on the GPU); b {gb(b.memory.gpu_bytes)} (every layer on the "
            f"GPU); c {gb(c.memory.gpu_bytes)} (every layer on the GPU)")
    assert memory_line(a) == line + "; a came first"
    assert memory_line(b) == line + f"; b got the {gb(budget - a.memory.gpu_bytes)} left"
    assert memory_line(c) == line + f"; c got the {gb(budget - a.memory.gpu_bytes - b.memory.gpu_bytes)} left"
    assert gb(budget - a.memory.gpu_bytes - b.memory.gpu_bytes) != gb(budget - b.memory.gpu_bytes)
    assert not a.warnings and not any("planned before it" in w for w in b.warnings + c.warnings)


def test_a_second_service_pushed_off_the_gpu_is_told_why(write_stack):
    """Qwen2.5 32B fills the RX 7900 XTX (every layer on the GPU), so the 7B after it gets no GPU layer: its
    warning names the service before it, what that holds and the GPU's budget."""
    a, b = plan(write_stack, "hardware: rx-7900-xtx\nworkload: dev-loop\nservices:\n"
                "  a: {model: qwen2.5-32b-instruct, engine: llama.cpp}\n"
                "  b: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n")
    budget = memory.initial_budget(HW["rx-7900-xtx"]).gpu_bytes
    assert a.memory.gpu_layers == a.memory.total_layers and b.memory.gpu_layers == 0
    assert layers(b) == "all 28 layers on the CPU"
    assert memory_line(b).endswith(f"; b got the {gb(budget - a.memory.gpu_bytes)} left")
    assert (f"b gets all 28 layers on the CPU: the services planned before it (a) hold {gb(a.memory.gpu_bytes)} of "
            f"the {gb(budget)} GPU memory; list b first under services: (or shrink the others) to give it the GPU"
            in b.warnings)
    assert not any("planned before it" in w for w in a.warnings)


def test_services_on_a_cpu_only_machine_share_the_ram_left_to_services(write_stack):
    """No GPU: the pool is the system RAM left to services (the budget's host bytes); each share is the plan's host
    bytes; only the first says "came first" (there is no GPU memory left to report for the others)."""
    a, b = plan(write_stack, "hardware: cpu-server-64gb\nworkload: dev-loop\nservices:\n"
                "  a: {model: qwen2.5-7b-instruct}\n  b: {model: qwen2.5-0.5b-instruct}\n")
    budget = memory.initial_budget(HW["cpu-server-64gb"]).host_bytes
    line = (f"memory: 2 services share the {gb(budget)} of system RAM left to services, in file order: "
            f"a {gb(a.memory.host_bytes)}; b {gb(b.memory.host_bytes)}")
    assert memory_line(a) == line + "; a came first"
    assert memory_line(b) == line


def test_services_on_a_mac_share_the_unified_memory_the_gpu_may_use(write_stack):
    m3 = HW["m3-max-64gb"]
    a, b = plan(write_stack, "hardware: m3-max-64gb\nworkload: dev-loop\nservices:\n"
                "  a: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n"
                "  b: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n")
    budget = memory.initial_budget(m3).gpu_bytes
    line = (f"memory: 2 services share the {gb(budget)} of unified memory the GPU may use, filled in file order: "
            f"a {gb(a.memory.gpu_bytes)} ({layers(a)}); b {gb(b.memory.gpu_bytes)} ({layers(b)})")
    assert memory_line(a) == line + "; a came first"
    assert memory_line(b) == line + f"; b got the {gb(budget - a.memory.gpu_bytes)} left"


@pytest.mark.parametrize("hw, first, second, held", [
    # a discrete GPU: GPU memory and system RAM apart
    ("rtx-4060", "llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M", "llama-3.1-70b-instruct, engine: vllm",
     lambda m: f"{gb(m.gpu_bytes)} of GPU memory and {gb(m.host_bytes)} of system RAM"),
    # CPU-only: all of it is system RAM (GPU bytes 0 + host bytes)
    ("cpu-laptop-16gb", "qwen2.5-7b-instruct, engine: llama.cpp", "llama-3.1-70b-instruct, engine: llama.cpp",
     lambda m: f"{gb(m.gpu_bytes + m.host_bytes)} of system RAM"),
    # Apple: one unified pool, GPU and host bytes together
    ("m4-16gb", "qwen2.5-7b-instruct, engine: llama.cpp", "llama-3.1-70b-instruct, engine: llama.cpp",
     lambda m: f"{gb(m.gpu_bytes + m.host_bytes)} of unified memory"),
])
def test_a_refusal_after_an_earlier_service_names_what_it_holds(write_stack, hw, first, second, held):
    """The later service's refusal says what the earlier one holds, from that service's own plan (planned alone,
    it is the same plan: it is first in both stacks)."""
    body = f"hardware: {hw}\nworkload: dev-loop\nservices:\n  a: {{model: {first}}}\n"
    a = plan(write_stack, body)[0]
    with pytest.raises(PlanError) as exc:
        plan(write_stack, body + f"  b: {{model: {second}}}\n")
    assert f" (the services planned before it on this machine, a, hold {held(a.memory)})" in str(exc.value)
    assert a.memory.host_bytes > 0


def test_the_shared_memory_reason_counts_every_replica(write_stack):
    """chat with replicas: 2 holds two instances' GPU memory: the reason said one's (13.0 GB) and that code got 38.5 GB
    left, while the budget code was planned in (and the truth) is 25.4 GB."""
    p = plan(write_stack, "hardware: 2x rtx-4090\nworkload: {concurrent_users: 8, context_tokens: 16384, optimize: "
                          "throughput}\nservices:\n  chat: {model: qwen2.5-7b-instruct, quant: Q8_0, engine: llama.cpp, "
                          "replicas: 2}\n  code: {model: qwen2.5-7b-instruct, quant: Q8_0, engine: llama.cpp}\n")
    chat, code = p
    both = 2 * chat.memory.gpu_bytes
    line = next(r for r in code.reasons if "services share the" in r)
    assert f"chat {memory.gb(both)} (" in line
    assert line.endswith(f"code got the {memory.gb(code.memory.gpu_budget_bytes)} left")
