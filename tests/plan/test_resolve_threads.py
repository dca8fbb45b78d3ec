"""The CPU-threads line of services sharing one machine (resolve._share_machine, split_threads), whole: each
service's threads ("1 thread", "2 threads") and where its layers run, the rule used, "more services than cores"
only when there are more services than cores (not as many), and a service whose overrides pin its threads keeping
them, said after the line, while the services after it still get their split."""

from __future__ import annotations

from stackgen.host.facts import HostFacts
from stackgen.plan import resolve
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
SPLIT = "services with every layer on the GPU need one thread, the others split the rest"
EVEN = "every layer of each is on the GPU: an even split"
CONTEND = "; more services than cores: each gets one thread and they contend"


def cpu_box(write_stack, cores: int, services: list[str]):
    """A CPU-only box with `cores` cores (64 GiB: every Qwen2.5 0.5B fits), one llama.cpp service per entry
    (an entry is the extra YAML of that service's mapping)."""
    body = "".join(f"  s{i}: {{model: qwen2.5-0.5b-instruct, engine: llama.cpp{extra}}}\n"
                   for i, extra in enumerate(services))
    text = (f"version: 1\nhardware: {{cpu: {{cores: {cores}, threads: {cores}}}, memory_gib: 64, "
            f"memory_bandwidth_gbs: 50}}\nworkload: dev-loop\nservices:\n{body}")
    return resolve.resolve(load_stack(write_stack(text)), HOST).services


def threads_line(sp) -> str:
    lines = [r for r in sp.reasons if r.startswith("CPU threads: ")]
    assert len(lines) == 1, sp.reasons
    return lines[0]


def test_more_services_than_cores_each_get_one_thread_and_are_told_they_contend(write_stack):
    """3 services, 2 cores, all on the CPU: split_threads gives max(2, 3) // 3 = 1 each; "1 thread", singular."""
    plans = cpu_box(write_stack, 2, ["", "", ""])
    line = ("CPU threads: 3 services share 2 cores: s0 1 thread (on the CPU); s1 1 thread (on the CPU); s2 1 thread "
            f"(on the CPU); {SPLIT}{CONTEND}")
    assert [threads_line(sp) for sp in plans] == [line] * 3
    assert [sp.threads for sp in plans] == [1, 1, 1]
    assert all(sp.command[sp.command.index("-t") + 1] == "1" for sp in plans)


def test_as_many_services_as_cores_do_not_contend(write_stack):
    """2 services on 2 cores: one thread each, and no "more services than cores"."""
    plans = cpu_box(write_stack, 2, ["", ""])
    line = f"CPU threads: 2 services share 2 cores: s0 1 thread (on the CPU); s1 1 thread (on the CPU); {SPLIT}"
    assert [threads_line(sp) for sp in plans] == [line] * 2


def test_a_pinned_service_keeps_its_threads_and_the_next_gets_its_split(write_stack):
    """4 cores, 2 CPU services: the split is 2 + 2 threads ("2 threads", plural); s0 pins -t 3 and keeps 3 (its
    command and its line say so), s1 after it still gets its 2."""
    s0, s1 = cpu_box(write_stack, 4, [", overrides: {-t: 3}", ""])
    line = f"CPU threads: 2 services share 4 cores: s0 2 threads (on the CPU); s1 2 threads (on the CPU); {SPLIT}"
    assert threads_line(s0) == line + "; s0 keeps its pinned 3 threads (overrides)"
    assert threads_line(s1) == line
    assert (s0.threads, s1.threads) == (3, 2)
    assert s0.command[s0.command.index("-t") + 1] == "3" and s1.command[s1.command.index("-t") + 1] == "2"
    assert "pinned by overrides: -t 3 (stackgen would have chosen 4 threads)" in s0.reasons
    # the pin is the first reason after the memory ones; nothing of the pin leaks into s1's reasons
    assert not any("pinned" in r for r in s1.reasons)


def test_a_later_pinned_service_after_an_unpinned_one(write_stack):
    """The same, pinned second: s0 keeps its split 2, s1 its pinned 3."""
    s0, s1 = cpu_box(write_stack, 4, ["", ", overrides: {-t: 3}"])
    line = f"CPU threads: 2 services share 4 cores: s0 2 threads (on the CPU); s1 2 threads (on the CPU); {SPLIT}"
    assert (threads_line(s0), threads_line(s1)) == (line, line + "; s1 keeps its pinned 3 threads (overrides)")
    assert (s0.threads, s1.threads) == (2, 3)


def test_services_all_on_the_gpu_split_the_cores_evenly(write_stack):
    """Two small models with every layer on the RTX 4090 (16 cores): 8 threads each, the even-split rule."""
    text = ("version: 1\nhardware: rtx-4090\nworkload: dev-loop\nservices:\n"
            "  a: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n"
            "  b: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n")
    a, b = resolve.resolve(load_stack(write_stack(text)), HOST).services
    line = ("CPU threads: 2 services share 16 cores: a 8 threads (every layer on the GPU); b 8 threads (every layer "
            f"on the GPU); {EVEN}")
    assert (threads_line(a), threads_line(b)) == (line, line)
