"""Hostile or broken input sizes and numbers (issue 10.7): a GGUF without block_count or with negative integers,
a 5 MB argument systemd would refuse, and one GGUF header read per file however many services use it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stackgen.models import facts as models, gguf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from test_gguf import ARR, I32, STR, U32, make_gguf  # noqa: E402

LLAMA_KVS = {"general.architecture": (STR, "llama"), "general.file_type": (U32, 7), "llama.block_count": (U32, 2),
             "llama.embedding_length": (U32, 64), "llama.feed_forward_length": (U32, 128),
             "llama.attention.head_count": (U32, 4), "llama.context_length": (U32, 4096),
             "tokenizer.ggml.tokens": (ARR, (STR, ["a", "b"]))}


def gguf_file(path: Path, **changes) -> Path:
    """The tiny llama GGUF with keys changed (a (type, value) pair) or removed (None)."""
    kvs = dict(LLAMA_KVS)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            kvs.pop(key)
        else:
            kvs[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_gguf([(k, t, v) for k, (t, v) in kvs.items()],
                               [("blk.0.attn_q.weight", [64, 64], "Q8_0")])[0])
    return path


def stack_on(tmp_path: Path, services: int = 1, overrides: str = "{}") -> Path:
    lines = ["version: 1", "hardware: cpu-server-64gb", "services:"]
    lines += [f"  s{i}: {{model: m.gguf, engine: llama.cpp, port: {9000 + i}, overrides: {overrides}}}"
              for i in range(services)]
    lines.append("targets: [script, systemd, kubernetes]")
    path = tmp_path / "stack.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- GGUF numbers


def test_gguf_without_block_count_is_a_message(cli, tmp_path):
    """Was: `stackgen: internal error` (int(None) in ModelFacts.from_summary)."""
    gguf_file(tmp_path / "m.gguf", llama__block_count=None)
    r = cli("validate", stack_on(tmp_path))
    assert r.exit_code == 1, r.output
    assert "llama.block_count" in r.output and "services.s0.model" in r.output


@pytest.mark.parametrize("key", ["llama.context_length", "llama.embedding_length", "llama.attention.head_count",
                                 "llama.block_count"])
def test_negative_gguf_integers_are_refused(cli, tmp_path, key):
    """Was: a context_length of -1 stored as int32 became `-c -1` in every artifact."""
    gguf_file(tmp_path / "m.gguf", **{key.replace(".", "__"): (I32, -1)})
    stack = stack_on(tmp_path)
    r = cli("validate", stack)
    assert r.exit_code == 1, r.output
    assert "services.s0.model" in r.output and ("negative" in r.output or "block_count" in r.output)
    r = cli("render", stack)
    assert r.exit_code == 1 and not (tmp_path / "deploy").exists()


def test_negative_per_layer_heads_are_refused(cli, tmp_path):
    gguf_file(tmp_path / "m.gguf", llama__attention__head_count_kv=(ARR, (I32, [2, -2])))
    r = cli("validate", stack_on(tmp_path))
    assert r.exit_code == 1 and "kv_heads_per_layer" in r.output


# ---------------------------------------------------------------------------------------------- argument length


def test_a_5_mb_argument_is_refused_at_validate(cli, tmp_path):
    """Was: rendered into ExecStart, a unit line systemd refuses (LONG_LINE_MAX, 1 MiB)."""
    gguf_file(tmp_path / "m.gguf")
    stack = stack_on(tmp_path, overrides="{alias: " + "a" * (5 * 2**20) + "}")
    r = cli("validate", stack)
    assert r.exit_code == 1, r.output[:300]
    assert "services.s0.overrides.alias" in r.output and "MAX_ARG_STRLEN" in r.output
    assert cli("render", stack).exit_code == 1 and not (tmp_path / "deploy").exists()


def test_many_long_arguments_that_overflow_a_unit_line_are_refused(cli, tmp_path):
    gguf_file(tmp_path / "m.gguf")
    value = "b" * 100_000
    stack = stack_on(tmp_path, overrides="{alias: " + value + ", system-prompt-file: " + value + ", api-prefix: "
                     + value + "}")
    r = cli("validate", stack)
    assert r.exit_code == 1 and "add up to" in r.output and "systemd unit line" in r.output


def test_the_longest_accepted_argument_renders_a_unit_systemd_reads(cli, tmp_path):
    """Just under the limits, the unit's longest line stays under systemd's LONG_LINE_MAX."""
    from stackgen.spec.stack import MAX_ARG_BYTES
    from stackgen.render.targets.systemd import LONG_LINE_MAX

    gguf_file(tmp_path / "m.gguf")
    stack = stack_on(tmp_path, overrides="{alias: '" + "\u00e9" * (MAX_ARG_BYTES // 2) + "'}")
    r = cli("render", stack)
    assert r.exit_code == 0, r.output[:300]
    unit = next((tmp_path / "deploy" / "systemd").iterdir()).read_bytes()
    assert max(len(line) for line in unit.split(b"\n")) < LONG_LINE_MAX


# ---------------------------------------------------------------------------------------------- one read per file


def test_one_gguf_header_read_for_many_services(tmp_path, monkeypatch):
    """Was: 10,000 services on one GGUF read its header 10,000 times (287 s to validate)."""
    from stackgen.spec.stack import load_stack

    gguf_file(tmp_path / "m.gguf")
    stack = stack_on(tmp_path, services=200)
    reads = []
    real = gguf.read_gguf_header
    monkeypatch.setattr(gguf, "read_gguf_header", lambda p: reads.append(p) or real(p))
    models._gguf_summary.cache_clear()
    assert len(load_stack(stack).services) == 200
    assert len(reads) == 1
    # A changed file is read again (the cache key is the resolved path plus size, inode and times).
    gguf_file(tmp_path / "m.gguf", llama__context_length=(U32, 2048))
    facts = load_stack(stack).services[0].model
    assert len(reads) == 2 and facts.context_length == 2048


# ---------------------------------------------------------------------------------------------- audit a2 #12


@pytest.fixture
def no_flag_checks(monkeypatch):
    """The per-key flag checks (0.55 ms a key with the suggestions) must not run on a stack refused for its size."""
    from stackgen.engines import flagcheck

    def boom(*a, **k):
        raise AssertionError("an override was checked against the flag tables")

    monkeypatch.setattr(flagcheck, "override_problem", boom)
    monkeypatch.setattr(flagcheck, "close_flags", boom)


def _keys(n: int, start: int = 0) -> str:
    return "{" + ", ".join(f"k{i}: v" for i in range(start, start + n)) + "}"


def test_too_many_overrides_in_one_service_are_refused_before_any_flag_check(cli, tmp_path, no_flag_checks):
    """8,000 unknown override keys took 4.4 s to validate, 32,000 took 18.6 s, 200,000 ran past 2 minutes."""
    from stackgen.spec.stack import MAX_OVERRIDES

    gguf_file(tmp_path / "m.gguf")
    stack = stack_on(tmp_path, overrides=_keys(MAX_OVERRIDES + 1))
    r = cli("validate", stack)
    assert r.exit_code == 1, r.output[:300]
    assert f"{stack}:4:" in r.output and f"services.s0.overrides: {MAX_OVERRIDES + 1:,} keys: more than " \
        f"{MAX_OVERRIDES} overrides for one service (keep the flags" in r.output


def test_too_many_overrides_in_all_are_refused_before_any_flag_check(cli, tmp_path, no_flag_checks):
    from stackgen.spec.stack import MAX_OVERRIDES, MAX_STACK_OVERRIDES

    gguf_file(tmp_path / "m.gguf")
    n = MAX_STACK_OVERRIDES // MAX_OVERRIDES + 1
    lines = ["version: 1", "hardware: cpu-server-64gb", "services:"]
    lines += [f"  s{i}: {{model: m.gguf, engine: llama.cpp, port: {9000 + i}, overrides: "
              f"{_keys(MAX_OVERRIDES, i * MAX_OVERRIDES)}}}" for i in range(n)]
    (tmp_path / "stack.yaml").write_text("\n".join(lines) + "\n")
    r = cli("validate", tmp_path / "stack.yaml")
    assert r.exit_code == 1, r.output[:300]
    assert f"services: {n * MAX_OVERRIDES:,} override keys in all: more than {MAX_STACK_OVERRIDES:,}" in r.output


def test_a_stack_with_too_many_lines_or_bytes_is_not_parsed(cli, tmp_path, monkeypatch):
    from stackgen.spec import yaml_nodes
    from stackgen.spec.stack import MAX_STACK_BYTES, MAX_STACK_LINES

    monkeypatch.setattr(yaml_nodes, "load_document", lambda *a: pytest.fail("a refused stack was parsed"))
    stack = tmp_path / "stack.yaml"
    stack.write_text("version: 1\n" + "#\n" * MAX_STACK_LINES)
    r = cli("validate", stack)
    assert r.exit_code == 1 and f"{stack}:1:1: the stack file has {MAX_STACK_LINES + 2:,} lines" in r.output
    stack.write_text("version: 1\n# " + "x" * MAX_STACK_BYTES + "\n")
    r = cli("validate", stack)
    assert r.exit_code == 1 and f"{stack}:1:1: the stack file is larger than {MAX_STACK_BYTES // 2**20} MiB" in r.output
