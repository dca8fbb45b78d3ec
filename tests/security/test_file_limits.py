"""Every YAML or JSON file stackgen reads that a person or another process wrote goes through one bounded reader
(stackgen.datafile): one larger than MAX_BYTES, or a YAML one longer than MAX_LINES, is refused before it is parsed
with an error naming the file, the limit and the fix, and JSON nested past Python's recursion limit is such an error
too, not a RecursionError (an "internal error" from the CLI). Before, a 25 MB models.yaml in a stack's profiles/
folder took 77 s and 4.5 GB of RAM to be refused by the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackgen import datafile
from stackgen.errors import StackgenError
from stackgen.spec import yaml_nodes

DEEP_JSON = "[" * 100_000 + "]" * 100_000


def _profile(tmp_path: Path) -> tuple[Path, object]:
    from stackgen.spec.profiles import load_profiles

    load_profiles()  # the built-ins, parsed once and cached, before a test stops parsing
    return tmp_path / "profiles" / "models.yaml", lambda: load_profiles(tmp_path)


def _lock(tmp_path: Path):
    from stackgen.models.lock import read_lock

    path = tmp_path / "stack.lock"
    return path, lambda: read_lock(path)


def _calibration(tmp_path: Path):
    from stackgen.host import calibration

    path = tmp_path / "calibration.json"
    return path, lambda: calibration.load(path)


def _state(tmp_path: Path):
    from stackgen.run.state import StateDir

    state = StateDir(tmp_path / "stack.yaml")
    return state.state_file, lambda: state.load("s")


def _host(tmp_path: Path):
    from stackgen.host.facts import HostFacts

    path = tmp_path / "host.json"
    return path, lambda: HostFacts.load(path)


def _hf_config(tmp_path: Path):
    from stackgen.models.hf import read_hf_folder

    return tmp_path / "model" / "config.json", lambda: read_hf_folder(tmp_path / "model")


def _bench_schema(tmp_path: Path):
    from stackgen.run.bench import load_schema

    path = tmp_path / "schema.json"
    return path, lambda: load_schema(path)


JSON_READERS = [_lock, _calibration, _state, _host, _hf_config, _bench_schema]
READERS = [_profile] + JSON_READERS


def _ids(f) -> str:
    return f.__name__.lstrip("_")


def _refused(call) -> str:
    with pytest.raises((StackgenError, ValueError)) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("reader", READERS, ids=_ids)
def test_a_file_over_the_size_limit_is_refused_unparsed_naming_the_file_the_limit_and_the_fix(
        reader, tmp_path, monkeypatch):
    path, call = reader(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}" + b" " * datafile.MAX_BYTES)
    monkeypatch.setattr(yaml_nodes, "load_document", lambda *a: pytest.fail("a refused file was parsed as YAML"))
    monkeypatch.setattr(datafile, "parse_json", lambda *a: pytest.fail("a refused file was parsed as JSON"))
    message = _refused(call)
    assert str(path) in message and f"larger than {datafile.MAX_BYTES // 2**20} MiB" in message, message
    assert "stackgen does not read it" in message and ("(" in message or "delete" in message), message  # and a fix


@pytest.mark.parametrize("reader", JSON_READERS, ids=_ids)
def test_json_nested_past_the_recursion_limit_is_an_error_naming_the_file(reader, tmp_path):
    path, call = reader(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEEP_JSON)
    message = _refused(call)  # a RecursionError is neither, and fails the test
    assert str(path) in message and "nested too deeply" in message, message


def test_a_safetensors_header_nested_past_the_recursion_limit_is_an_error_naming_the_file(tmp_path):
    """The header is size-capped (hf.MAX_HEADER_BYTES) but was parsed with json.loads: 200 KB of '[' was a
    RecursionError."""
    import struct

    from stackgen.models.hf import HFModelError, read_safetensors_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(DEEP_JSON)) + DEEP_JSON.encode())
    with pytest.raises(HFModelError, match="its safetensors header is nested too deeply"):
        read_safetensors_header(path)


def test_a_profile_file_with_too_many_lines_is_not_parsed(tmp_path, monkeypatch):
    path, call = _profile(tmp_path)
    path.parent.mkdir()
    path.write_text("#\n" * datafile.MAX_LINES)
    monkeypatch.setattr(yaml_nodes, "load_document", lambda *a: pytest.fail("a refused file was parsed"))
    message = _refused(call)
    assert f"{path}:1:1: a profile file has {datafile.MAX_LINES + 1:,} lines, more than {datafile.MAX_LINES:,}" \
        in message, message


def test_validate_reports_an_oversized_profile_beside_the_stack_as_one_line(cli, tmp_path):
    (tmp_path / "stack.yaml").write_text("version: 1\nhardware: cpu-server-64gb\nservices:\n"
                                         "  chat: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hardware.yaml").write_text("# x\n" * (datafile.MAX_BYTES // 4 + 1))
    r = cli("validate", tmp_path / "stack.yaml")
    assert r.exit_code == 1 and "internal error" not in r.output and "Traceback" not in r.output, r.output
    assert f"{tmp_path / 'profiles' / 'hardware.yaml'}:1:1: a profile file is larger than 8 MiB" in r.output, r.output


def test_an_alias_bomb_in_a_profile_is_refused_at_its_first_alias(tmp_path):
    """Measured: a 1 MB "billion laughs" models.yaml (9 nested levels of 9 aliases, then 50-alias lists to 1 MB) is
    refused in 0.07 s at 22 MiB peak RSS, before and after the bounded reader: yaml_nodes refuses the first alias,
    and libyaml's composer links aliases without expanding them."""
    path, call = _profile(tmp_path)
    path.parent.mkdir()
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path.write_text("\n".join(lines) + "\n")
    assert "YAML aliases (*name) are not allowed" in _refused(call)
