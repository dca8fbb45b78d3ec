"""The launchd target: every plist it renders is read back by plistlib (byte-identical when written again), uses only
the keys of launchd.plist(5) (the vendored man page, tests/tools/vendor/launchd) with the value types the page
gives, and says what the agent does: restart on failure, log paths, environment, the wired-limit daemon."""

from __future__ import annotations

import math
import plistlib
import re
from pathlib import Path

import pytest

from stackgen.cli import load_and_plan
from stackgen.errors import RenderError, SpecError
from stackgen.plan.memory import MIB
from stackgen.render.artifact import RenderContext
from stackgen.render.targets.launchd import _plist, launchd_target

HERE = Path(__file__).parent.parent
MAN = HERE / "tools" / "vendor" / "launchd" / "launchd.plist.5"
GOLDEN = HERE / "golden"
LAUNCHD_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "expected" / "launchd").is_dir())


def documented_keys() -> dict[str, tuple[str, dict[str, str]]]:
    """{key: (type, {subkey: type})} from the `.It Sy Key <type>` items of launchd.plist(5); sub-keys are the items
    of a nested list right after their key (KeepAlive's SuccessfulExit, ...)."""
    keys: dict[str, tuple[str, dict[str, str]]] = {}
    depth, last = 0, None
    in_keys = False
    for line in MAN.read_text().splitlines():
        if line.startswith(".Sh"):
            in_keys = line.strip() == ".Sh XML PROPERTY LIST KEYS"
            depth = 0
            continue
        if not in_keys:
            continue
        if line.startswith(".Bl"):
            depth += 1
        elif line.startswith(".El"):
            depth -= 1
        m = re.match(r"\.It Sy (\w+) <([^>]+)>", line)
        if m and depth == 1:
            last = m.group(1)
            keys[last] = (m.group(2), {})
        elif m and depth == 2 and last is not None:
            keys[last][1][m.group(1)] = m.group(2)
    return keys


def check_type(value, kind: str, where: str, sub: dict[str, str]) -> None:
    ok = {
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "array of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "dictionary of strings": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "boolean or dictionary of stuff": lambda v: isinstance(v, (bool, dict)),
    }
    assert kind in ok, f"{where}: the target uses a key of type <{kind}>, which this test cannot check yet"
    assert ok[kind](value), f"{where}: {value!r} is not <{kind}> (launchd.plist(5))"
    if isinstance(value, dict) and sub:
        for k, v in value.items():
            assert k in sub, f"{where}.{k} is not a documented sub-key ({sorted(sub)})"
            check_type(v, sub[k], f"{where}.{k}", {})


def check_plist(content: str) -> dict:
    """plistlib reads it, writes the same XML back, and every key is documented with its type."""
    data = plistlib.loads(content.encode("utf-8"))
    again = plistlib.dumps(data, sort_keys=True).decode("utf-8")
    without_comment = re.sub(r"<!--.*?-->\n", "", content, flags=re.S)
    assert again == without_comment
    keys = documented_keys()
    for key, value in data.items():
        assert key in keys, f"{key} is not a key of launchd.plist(5)"
        check_type(value, keys[key][0], key, keys[key][1])
    assert isinstance(data["Label"], str) and data["ProgramArguments"]
    assert data["ProgramArguments"][0].startswith("/"), "launchd runs it without the user's PATH"
    return data


def test_the_man_page_parser_finds_the_keys_it_needs():
    keys = documented_keys()
    assert keys["KeepAlive"][1]["SuccessfulExit"] == "boolean"
    assert keys["ProgramArguments"][0] == "array of strings"
    assert keys["Umask"][0] == "integer"
    assert "Crashed" not in keys["KeepAlive"][1]  # newer than the vendored page: the target must not rely on it
    assert "SockType" not in keys  # a sub-key of Sockets, not a top-level key


def test_there_is_a_launchd_golden_case():
    assert LAUNCHD_CASES


@pytest.mark.parametrize("case", LAUNCHD_CASES)
def test_golden_plists_round_trip_and_use_documented_keys(case):
    for path in sorted((GOLDEN / case / "expected" / "launchd").glob("*.plist")):
        check_plist(path.read_text(encoding="utf-8"))


def render(tmp_path: Path, body: str, name: str = "stack.yaml") -> dict[str, dict]:
    stack = tmp_path / name
    stack.write_text("version: 1\n" + body)
    spec, plan = load_and_plan(stack, None)
    ctx = RenderContext(name, model_dir=spec.serve.model_dir)
    return {a.path: check_plist(a.content) for a in launchd_target(plan, ctx)}


MAC = "name: m\nhardware: m3-max-64gb\nworkload: dev-loop\ntargets: [launchd]\n"


def test_agent_restarts_on_failure_logs_and_environment(tmp_path):
    out = render(tmp_path, MAC + "services:\n  coder:\n    model: qwen2.5-32b-instruct\n    quant: 4bit\n"
                 "    engine: mlx\n")
    assert sorted(out) == ["launchd/local.stackgen.m.coder.plist"]  # no wired-limit daemon: it fits the default
    job = out["launchd/local.stackgen.m.coder.plist"]
    assert job["KeepAlive"] is True and job["RunAtLoad"] is True  # an exit with status 0 restarts too
    assert job["ThrottleInterval"] == 10 and job["Umask"] == 0o077
    assert job["StandardOutPath"] == job["StandardErrorPath"] == "/Library/Logs/stackgen/m-coder.log"
    assert job["ProgramArguments"][:3] == ["/opt/homebrew/bin/mlx_lm.server", "--model",
                                           "mlx-community/Qwen2.5-32B-Instruct-4bit"]


def test_local_weights_are_read_from_model_dir_and_the_key_from_a_file(tmp_path, monkeypatch):
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    (tmp_path / "models").mkdir()
    weights = make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0]
    (tmp_path / "models" / "m.gguf").write_bytes(weights)
    monkeypatch.setenv("SECRET_KEY_VAR", "sk-must-not-appear")
    out = render(tmp_path, MAC + "serve:\n  api_key_env: SECRET_KEY_VAR\n  model_dir: /opt/models\nservices:\n"
                 "  chat:\n    model: models/m.gguf\n    engine: llama.cpp\n    binary: /usr/local/bin/llama-server\n")
    argv = out["launchd/local.stackgen.m.chat.plist"]["ProgramArguments"]
    assert argv[0] == "/usr/local/bin/llama-server"
    assert argv[argv.index("-m") + 1] == "/opt/models/m.gguf"
    assert argv[argv.index("--api-key-file") + 1] == "/etc/stackgen/m/api-key"
    assert "sk-must-not-appear" not in repr(out)


def test_the_wired_limit_is_its_own_daemon_sized_to_the_stack(tmp_path):
    stack = GOLDEN / "launchd-mac-team" / "stack.yaml"
    _, plan = load_and_plan(stack, None)
    arts = {a.path: a for a in launchd_target(plan, RenderContext("stack.yaml"))}
    daemon = check_plist(arts["launchd/local.stackgen.mac-team.wired-limit.plist"].content)
    want = math.ceil(sum(sp.memory.total_bytes for sp in plan.services) / MIB)
    assert daemon["ProgramArguments"] == ["/usr/sbin/sysctl", f"iogpu.wired_limit_mb={want}"]
    assert "KeepAlive" not in daemon  # runs once per boot
    assert want * MIB > 0.9 * 48 * 1024 * MIB  # above 0.9 x the 64 GB machine's 48 GiB working set


def test_a_comment_never_carries_a_double_hyphen(tmp_path):
    text = _plist(RenderContext("my--stack.yaml"), ["a -- b", "--"], {"Label": "x", "ProgramArguments": ["/x"]})
    assert plistlib.loads(text.encode())["Label"] == "x"  # expat refuses "--" inside a comment


@pytest.mark.parametrize("body, message", [
    ("name: m\nhardware: rtx-3090\ntargets: [launchd]\nservices:\n  a:\n    model: llama-3.2-3b-instruct\n",
     "needs a Mac"),
    (MAC + "services:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: ollama\n", "MLX and llama.cpp"),
    (MAC + "services:\n  a:\n    model: llama-3.2-3b-instruct\n    engine: llama.cpp\n    binary: bin/llama-server\n",
     "absolute path"),
])
def test_refusals(tmp_path, body, message):
    with pytest.raises((RenderError, SpecError), match=message):  # a relative binary: validate refuses it first
        render(tmp_path, body)
