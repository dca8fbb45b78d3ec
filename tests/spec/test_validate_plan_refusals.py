"""`stackgen validate` said ok to stacks `plan` then refused, where the refusal needs nothing but the stack file and
the hardware it names (no model facts, no hardware probe, no network): a pinned engine with structured output it
cannot constrain, and `replicas:` for an engine that runs one server (or on a Mac's unified memory). validate now
refuses them at their line, with the field and the fix; plan says the same."""

from __future__ import annotations

import pytest

HEAD = "version: 1\nhardware: {hw}\nservices:\n  chat:\n    model: qwen2.5-0.5b-instruct\n    engine: {engine}\n"

CASES = [
    # (hardware, engine, extra service lines, line:col, field, words)
    ("m4-max-128gb", "mlx", "    structured_output: {backend: auto}\n", "7:24", "services.chat.structured_output",
     "engine mlx cannot take it: mlx_lm.server has no JSON-schema or grammar constraint"),
    ("cpu-server-64gb", "llama.cpp", "    structured_output: {backend: xgrammar}\n", "7:24",
     "services.chat.structured_output", "structured_output.backend xgrammar is a vLLM setting; llama-server "
     "constrains output with its own grammar sampler (leave backend: auto)"),
    ("cpu-server-64gb", "ollama", "    replicas: 2\n", "7:15", "services.chat.replicas",
     "2 instances are pinned and Ollama runs one server per service (remove `replicas:`"),
    ("m4-max-128gb", "llama.cpp", "    replicas: 2\n", "7:15", "services.chat.replicas",
     "shares one unified memory (remove `replicas:`"),
]


@pytest.mark.parametrize("hw, engine, extra, where, field, words", CASES,
                         ids=["so-mlx", "so-backend-llamacpp", "replicas-ollama", "replicas-mac"])
def test_validate_refuses_what_plan_would_at_its_line(write_stack, cli, hw, engine, extra, where, field, words):
    stack = write_stack(HEAD.format(hw=hw, engine=engine) + extra)
    for command in ("validate", "plan"):
        r = cli(command, stack)
        assert r.exit_code == 1, (command, r.output)
        assert f"{stack}:{where}: {field}: " in r.output and words in r.output, (command, r.output)
        assert "internal error" not in r.output


def test_the_same_services_with_engine_auto_or_a_detected_machine_still_validate(write_stack, cli):
    """auto: the planner picks an engine that can (structured output, replicas, the hardware); `hardware: detect`:
    the machine is known only to plan, so only the engine's own half (one server per service) is validate's."""
    for text in (HEAD.format(hw="a100-80gb", engine="auto") + "    structured_output: {backend: auto}\n"
                 "    replicas: 2\n",
                 HEAD.format(hw="detect", engine="mlx"),
                 HEAD.format(hw="detect", engine="llama.cpp") + "    replicas: 2\n"):
        r = cli("validate", write_stack(text))
        assert r.exit_code == 0, (text, r.output)
    r = cli("validate", write_stack(HEAD.format(hw="detect", engine="ollama") + "    replicas: 2\n"))
    assert r.exit_code == 1 and "services.chat.replicas: 2 instances are pinned and Ollama" in r.output, r.output


def test_one_user_is_singular_in_the_replicas_refusal(write_stack, cli):
    """Review L7: "run one instance for all 1 users"."""
    r = cli("validate", write_stack(HEAD.format(hw="detect", engine="ollama") + "    replicas: 2\n"
                                    + "workload: {concurrent_users: 1}\n"))
    assert r.exit_code == 1 and "to run one instance for its one user" in r.output, r.output
    assert "all 1 users" not in r.output


def test_a_profile_file_that_is_not_utf8_is_a_clear_error(write_stack, cli, tmp_path):
    """Review L6: a non-UTF-8 profiles/models.yaml beside the stack was an internal error."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "models.yaml").write_bytes(b"x: \xff\xfe\n")
    r = cli("validate", write_stack(HEAD.format(hw="cpu-server-64gb", engine="llama.cpp")))
    assert r.exit_code == 1, r.output
    assert "internal error" not in r.output and "models.yaml:1:1: not UTF-8 text" in r.output, r.output
