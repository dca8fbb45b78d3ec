"""The host check (stackgen.host.check) behind `up` and `stackgen doctor` (issue 11.3): a stack's hardware against a
recorded host, the binary and its --help, free memory and ports. Hardware comes from recorded HostFacts; binaries
and ports are faked through Probes, or real files for the CLI tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from stackgen.engines import flagcheck
from stackgen.errors import LaunchError
from stackgen.run.preflight import free_port
from stackgen.run.state import StateDir
from stackgen.host.facts import HostFacts
from stackgen.host.check import Probes, check_gpus, check_host, check_memory
from stackgen.spec.profiles import load_profiles
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import GPUSpec, load_stack

ROOT = Path(__file__).resolve().parents[2]
VM_2CORE = ROOT / "tests" / "fixtures" / "hosts" / "cpu-2core-vm.json"
HW = load_profiles().hardware


def gpu(name: str, mem: float, vendor: str = "nvidia", count: int = 1) -> GPUSpec:
    return GPUSpec(vendor=vendor, name=name, memory_gib=mem, bandwidth_gbs=500, count=count)


def with_gpus(*gpus: GPUSpec):
    return HW["rtx-4090"].model_copy(update={"gpus": gpus})


def test_named_gpus_missing_on_a_cpu_host_is_an_error_showing_both_sides():
    [f] = check_gpus(HW["rtx-4090"], HostFacts.load(VM_2CORE).hardware)
    assert f.is_error
    assert "1 nvidia GPU(s) named, 0 visible" in f.detail and "GeForce RTX 4090" in f.detail and "host: no GPU" in f.detail


@pytest.mark.parametrize("host_gpus,ok,text", [
    ((gpu("GeForce RTX 4090", 23.99),), True, ""),
    ((gpu("GeForce RTX 4090", 23.0),), True, ""),  # -4 %: within what drivers report
    ((gpu("GeForce RTX 4060", 8.0),), False, "23.99 GiB per GPU named, GeForce RTX 4060 has 8 GiB (-67%"),
    ((gpu("Radeon RX 7900 XTX", 24.0, "amd"),), False, "1 nvidia GPU(s) named, 0 visible"),
    ((gpu("GeForce RTX 4090", 23.99), gpu("GeForce RTX 4060", 8.0)), True, ""),  # the named one is there
])
def test_gpu_vendor_count_and_memory(host_gpus, ok, text):
    [f] = check_gpus(HW["rtx-4090"], with_gpus(*host_gpus))
    assert f.ok is ok and text in f.detail, f.detail


def test_gpu_count_short():
    [f] = check_gpus(with_gpus(gpu("A100 80GB", 80, count=4)), with_gpus(gpu("A100 80GB", 80, count=2)))
    assert f.is_error and "4 nvidia GPU(s) named, 2 visible" in f.detail


def test_a_stack_without_gpus_on_a_gpu_host_is_fine_and_says_so():
    [f] = check_gpus(HW["cpu-laptop-16gb"], HW["rtx-4090"])
    assert f.ok and "which the stack does not use" in f.detail


def _plan(tmp_path: Path, hardware: str = "rtx-4090", binary: str = "", port: int = 8080):
    path = tmp_path / "stack.yaml"
    extra = f"    binary: {binary}\n" if binary else ""
    path.write_text(f"version: 1\nname: hc\nhardware: {hardware}\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n"
                    f"    engine: llama.cpp\n    port: {port}\n{extra}")
    stack = load_stack(path)
    return stack, resolve(stack, HostFacts.load(VM_2CORE))


def probes(help_flags: set[str] | None = None, missing: bool = False, busy: bool = False) -> Probes:
    def find(sp, stack_dir):
        if missing:
            raise LaunchError("llama-server is not installed (looked for llama-server on PATH)")
        return "/opt/llama/llama-server"

    return Probes(find, lambda binary, engine: set(help_flags or ()), lambda host, port: busy)


def all_flags(plan) -> set[str]:
    return set(flagcheck.table("llama.cpp").flags) | {"--port"}


def test_memory_short_is_an_error_with_the_numbers(tmp_path):
    _, plan = _plan(tmp_path)
    need = sum(sp.memory.host_bytes for sp in plan.services)
    [f] = check_memory(plan, HostFacts(HW["rtx-4090"], need - 2**30))
    assert f.is_error and "GiB short" in f.detail and "1.00 GiB short" in f.detail
    [f] = check_memory(plan, HostFacts(HW["rtx-4090"], need))
    assert f.ok
    [f] = check_memory(plan, HostFacts(HW["rtx-4090"], None))
    assert f.ok and "unknown" in f.detail


def test_binary_flags_and_ports(tmp_path):
    stack, plan = _plan(tmp_path)
    host = HostFacts(HW["rtx-4090"], 64 * 2**30)
    good = check_host(plan, host, tmp_path, plan.hardware, probes=probes(all_flags(plan)))
    assert good.errors == [], good.text()
    assert {f.check for f in good.findings} == {"gpus", "cpu", "memory", "binary", "flags", "port"}

    old = all_flags(plan) - {"--fit"}
    report = check_host(plan, host, tmp_path, plan.hardware, probes=probes(old))
    [f] = report.errors
    assert f.check == "flags" and "does not list --fit" in f.detail

    report = check_host(plan, host, tmp_path, plan.hardware, probes=probes(missing=True, busy=True))
    assert [f.check for f in report.errors] == ["binary", "port"]
    assert "127.0.0.1:8080 is in use" in report.text()

    wrapper = check_host(plan, host, tmp_path, plan.hardware, probes=probes({"--model", "--info"}))
    [f] = [f for f in wrapper.findings if f.check == "flags"]
    assert not f.ok and f.severity == "warning" and not wrapper.errors


def test_the_issue_case_a_4090_stack_on_a_cpu_only_host(tmp_path):
    """`hardware: rtx-4090` started on a CPU-only machine with -ngl and -t 16 and no word (issue 11.3)."""
    _, plan = _plan(tmp_path)
    report = check_host(plan, HostFacts.load(VM_2CORE), tmp_path, plan.hardware, probes=probes(all_flags(plan)))
    assert [f.check for f in report.errors] == ["gpus"]
    [cpu] = [f for f in report.findings if f.check == "cpu"]
    assert cpu.severity == "warning" and "this host has 2 cores" in cpu.detail


# ---------------------------------------------------------------------------------------------- CLI


def fake_llama(tmp_path: Path, flags: set[str]) -> Path:
    """A llama-server stand-in whose --help lists `flags` (and which serves like the fake engine of
    test_launch_unit otherwise: tests/fakes/openai_server.py)."""
    from fakes.openai_server import write_engine

    return write_engine(tmp_path / "llama-server", help_text="\n".join(sorted(flags)))


def recorded(tmp_path: Path, profile: str) -> Path:
    hw = HW[profile]
    path = tmp_path / f"{profile}.json"
    path.write_text(HostFacts(hw, int(hw.memory_gib * 0.8 * 2**30)).to_json())
    return path


@pytest.fixture
def stack_4090(tmp_path):
    flags = set(flagcheck.table("llama.cpp").flags) | {"--port"}
    binary = fake_llama(tmp_path, flags)
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: hc
        hardware: rtx-4090
        workload: {{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          chat: {{model: gemma-3-270m, engine: llama.cpp, binary: {binary}, port: {port}}}
        """))
    yield path, port
    from stackgen.run.lifecycle import down

    try:
        down(path, grace_s=1)
    except LaunchError:
        pass


def test_doctor_prints_every_check_and_fails_on_a_mismatch(cli, stack_4090, tmp_path):
    path, port = stack_4090
    res = cli("doctor", path, "--host-facts", VM_2CORE)
    assert res.exit_code == 1, res.output
    assert "ERROR host: gpus: 1 nvidia GPU(s) named, 0 visible" in res.output
    assert f"ok    service chat: port: 127.0.0.1:{port} is free" in res.output
    assert "ok    service chat: flags: all" in res.output and "1 problem(s)" in res.output
    res = cli("doctor", path, "--host-facts", recorded(tmp_path, "rtx-4090"))
    assert res.exit_code == 0, res.output
    assert "ok    host: gpus: stack: 1x nvidia GeForce RTX 4090" in res.output


def test_up_refuses_a_mismatched_host_before_starting_anything_and_force_overrides(cli, stack_4090):
    path, port = stack_4090
    res = cli("up", path, "--host-facts", VM_2CORE, "--timeout", "20")
    assert res.exit_code == 1
    assert "this host does not match the stack" in res.output and "--force" in res.output
    assert "1 nvidia GPU(s) named, 0 visible" in res.output
    assert not StateDir(path).state_file.exists() or '"chat"' not in (
        path.parent / ".stackgen" / "state.json").read_text()
    res = cli("up", path, "--host-facts", VM_2CORE, "--timeout", "20", "--force")
    assert res.exit_code == 0, res.output
    assert "warning (--force): ERROR host: gpus" in res.output and "chat: started" in res.output
    assert json.loads(StateDir(path).state_file.read_text())["services"]["chat"]["port"] == port
