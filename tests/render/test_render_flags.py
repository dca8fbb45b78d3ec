"""`render` refuses flags the targeted engine version does not have, before writing anything."""

from __future__ import annotations

STACK = """\
version: 1
hardware: cpu-server-64gb
workload: dev-loop
services:
  chat:
    model: llama-3.1-8b-instruct
    engine: llama.cpp
{extra}"""


def test_removed_flag_in_overrides_is_an_error_and_nothing_is_written(write_stack, cli, tmp_path):
    f = write_stack(STACK.format(extra="    overrides: {mlock: true}\n"))
    out = tmp_path / "deploy"
    res = cli("render", f, "-o", out)
    assert res.exit_code == 1
    assert "--mlock" in res.output and "load-mode" in res.output
    assert not out.exists()


def test_known_override_renders(write_stack, cli, tmp_path):
    f = write_stack(STACK.format(extra="    overrides: {load-mode: mlock}\n"))
    res = cli("render", f, "-o", tmp_path / "deploy")
    assert res.exit_code == 0, res.output
    run_sh = (tmp_path / "deploy" / "chat" / "run.sh").read_text()
    assert "--load-mode" in run_sh and "mlock" in run_sh


def test_unknown_engine_version_is_an_error(write_stack, cli, tmp_path):
    f = write_stack(STACK.format(extra="    engine_version: b1\n"))
    res = cli("render", f, "-o", tmp_path / "deploy")
    assert res.exit_code == 1
    assert "b1" in res.output


def test_installed_binary_without_a_generated_flag_is_an_error_with_probe(write_stack, cli, tmp_path):
    """An older or forked llama-server whose --help lacks a flag stackgen generates fails `render --probe`; a plain
    `render` never runs the binary (what it writes must not depend on PATH; `up` and `doctor` check it)."""
    fake = tmp_path / "old-llama-server"
    fake.write_text("#!/bin/sh\necho 'usage: llama-server [options]'\necho '  --port N   port'\necho '  -m FNAME'\n"
                    f"touch {tmp_path / 'ran'}\n")
    fake.chmod(0o755)
    f = write_stack(STACK.format(extra=f"    binary: {fake}\n"))
    res = cli("render", f, "-o", tmp_path / "plain")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "ran").exists(), "render ran the engine binary"
    res = cli("render", f, "-o", tmp_path / "deploy", "--probe")
    assert res.exit_code == 1
    assert (tmp_path / "ran").exists()
    assert str(fake) in res.output and "does not list" in res.output
    assert not (tmp_path / "deploy").exists()


def test_probe_that_finds_no_engine_fails_and_names_each_service(write_stack, cli, tmp_path, monkeypatch):
    """Audit F4: `render --probe` with no engine installed (or a binary whose --help is not an engine's) passed,
    exit 0 and silent, so a CI guard that checked nothing looked green. Now exit 1, nothing written, and stderr
    names each service not probed and why."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    wrapper = tmp_path / "wrapper"
    wrapper.write_text("#!/bin/sh\necho 'usage: wrapper --model M'\n")
    wrapper.chmod(0o755)
    f = write_stack(STACK.format(extra="") + f"  rag:\n    model: llama-3.1-8b-instruct\n    engine: llama.cpp\n"
                    f"    port: 19512\n    binary: {wrapper}\n")
    res = cli("render", f, "-o", tmp_path / "deploy", "--probe")
    assert res.exit_code == 1, res.output
    assert "render --probe: 2 services were not probed" in res.output
    assert "services.chat (llama.cpp): no llama-server found (looked for llama-server on PATH" in res.output
    assert f"services.rag (llama.cpp): `{wrapper} --help` lists no --port" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "deploy").exists()
    res = cli("render", f, "-o", tmp_path / "deploy")  # without --probe the binaries are not looked for
    assert res.exit_code == 0, res.output
    res = cli("render", f, "-o", tmp_path / "deploy", "--check", "--probe")
    assert res.exit_code == 1 and "2 services were not probed" in res.output


def test_probe_fails_when_the_ollama_binary_is_missing(write_stack, cli, tmp_path, monkeypatch):
    """Review L3: Ollama has no flag table, so --probe returned before looking for its binary and passed (exit 0)
    with no ollama installed, contrary to --help/README. Its binary is looked for now; found, the probe passes."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    f = write_stack("version: 1\nname: l3\nhardware: cpu-server-64gb\nservices:\n  a:\n    model: llama-3.2-3b-instruct\n"
                    "    engine: ollama\n    port: 19903\ntargets: [script]\n")
    res = cli("render", f, "-o", tmp_path / "deploy", "--probe")
    assert res.exit_code == 1, res.output
    assert "services.a (Ollama): no ollama found" in res.output and not (tmp_path / "deploy").exists()
    (empty / "ollama").write_text("#!/bin/sh\nexit 0\n")
    (empty / "ollama").chmod(0o755)
    res = cli("render", f, "-o", tmp_path / "deploy", "--probe")
    assert res.exit_code == 0, res.output
