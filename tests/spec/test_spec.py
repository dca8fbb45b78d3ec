"""stack.yaml validation: every error names file:line:col, the field, and a fix; nothing is written."""

from __future__ import annotations

import re

import pytest

from stackgen.errors import SpecError
from stackgen.spec.stack import load_stack

GOOD = """\
version: 1
hardware: rtx-4090
workload: team-api
services:
  chat:
    model: llama-3.1-8b-instruct
"""

# (stack text, line, col, field path, words the message must contain)
BAD = [
    ("version: 1\nhardwre: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 1, "hardwre", "did you mean 'hardware'"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    modle: x\n", 5, 5, "services.chat.modle", "did you mean 'model'"),
    ("version: 1\nhardware: rtx-4090\nhardware: l4\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 3, 1, "hardware", "duplicate key"),
    ("version: 1\nhardware: !!python/object:os.system x\nservices: {}\n", 2, 11, "hardware", "tag"),
    ('version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: "a\\nb"\n', 5, 12, "services.chat.model", "control characters"),
    ('version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: "-rf"\n', 5, 12, "services.chat.model", "cannot start with '-'"),
    ("version: 1\nhardware: rtx-4900\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 11, "hardware", "did you mean 'rtx-4090'"),
    ("version: 1\nhardware: rtx-4090\nworkload: team-apy\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 3, 11, "workload", "did you mean 'team-api'"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  Chat:\n    model: llama-3.1-8b-instruct\n", 4, 3, "services.Chat", "invalid name"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    port: 70000\n", 6, 11, "services.chat.port", "65535"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  a: {model: llama-3.1-8b-instruct, port: 9000}\n  b: {model: llama-3.1-8b-instruct, port: 9000}\n",
     5, 43, "services.b.port", "already used"),
    ('version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: "8"}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n', 3, 30, "workload.concurrent_users",
     "expected a whole number, got text '8' (write `concurrent_users: 8`, without quotes)"),
    # Wrong types say what was written and the fix (issue 11.5), not pydantic's "input should be a valid ...".
    ('version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    port: "8080"\n', 6, 11,
     "services.chat.port", "write `port: 8080`, without quotes"),
    ("version: 1\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\ntargets: script\n", 4, 10,
     "targets", "expected a list, got text 'script' (write `targets: [script]`)"),
    ("version: 1\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\ntargets: script, compose\n", 4, 10,
     "targets", "write `targets: [script, compose]`"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  - model: llama-3.1-8b-instruct\n", 4, 3, "services",
     "expected a mapping, got a list"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    port: 8080.0\n", 6, 11,
     "services.chat.port", "write `port: 8080`, without a decimal point"),
    ("version: 1\nhardware: 4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 11, "hardware",
     'quote it: `hardware: "4090"`'),
    # `7900xtx` is a misspelt profile name, not 7900 GPUs of "tx".
    ("version: 1\nhardware: 7900xtx\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 11, "hardware",
     "unknown hardware profile '7900xtx' (did you mean 'rx-7900-xtx'?)"),
    ("version: 1\nhardware: RTX4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 11, "hardware",
     "did you mean 'rtx-4090'?"),
    ("version: 2\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 1, 10, "version", "expected 1"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruc\n", 5, 12, "services.chat.model", "did you mean 'llama-3.1-8b-instruct'"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    quant: Q4_K_N\n", 6, 12, "services.chat.quant", "'Q4_K_M'"),
    ("version: 1\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\nserve: {host: 0.0.0.0}\n", 4, 15, "serve.host", "api_key_env"),
    ("version: 1\nhardware: rtx-4090\n", 1, 1, "services", "missing"),
    ("", 1, 1, "", "mapping"),
    ("version: 1\nhardware: [rtx-4090\n", 3, 1, "", "invalid YAML"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: ./missing.gguf\n", 5, 12, "services.chat.model", "does not exist"),
    ("version: 1\nhardware: rtx-4090\nx: &a [1]\ny: *a\nservices: {}\n", 3, 4, "y", "aliases"),
    ("version: 1\nhardware: 99x rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n", 2, 11, "hardware", "out of range"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    engine: vlm\n", 6, 13, "services.chat.engine", "expected"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: hf:../../etc\n", 5, 12, "services.chat.model", "'..'"),
    ("version: 1\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\nserve: {cors_origins: ['*']}\n",
     4, 23, "serve.cors_origins", "list the origins"),
    # a compute capability the planner compares as a number (sm_89 was an internal error before: float('sm_89'))
    ("version: 1\nhardware: {gpus: [{vendor: nvidia, name: X, memory_gib: 24, bandwidth_gbs: 900, compute_capability: sm_89}],"
     " memory_gib: 64, memory_bandwidth_gbs: 50, cpu: {cores: 8}}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n",
     2, 101, "hardware.gpus.0.compute_capability", 'invalid compute capability \'sm_89\' (write major.minor'),
    # Out-of-range and empty values say what to write instead, not pydantic's "input should be greater than or equal".
    ("version: 1\nhardware: rtx-4090\nworkload: {concurrent_users: 0}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n",
     3, 30, "workload.concurrent_users", "must be at least 1, got 0 (write `concurrent_users: 1` or more, up to 4096)"),
    ("version: 1\nhardware: rtx-4090\nworkload: {output_tokens: 0}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n",
     3, 27, "workload.output_tokens", "write `output_tokens: 1` or more"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    replicas: 0\n", 6, 15,
     "services.chat.replicas", "must be at least 1, got 0 (write `replicas: 1` or more, up to 256)"),
    ("version: 1\nhardware: rtx-4090\nservices: {}\n", 3, 11, "services",
     "no services: a stack serves at least one (add one under `services:`"),
    ('version: "1"\nhardware: rtx-4090\nservices: {chat: {model: llama-3.1-8b-instruct}}\n', 1, 10, "version",
     "expected the number 1, got text '1' (write `version: 1`, without quotes)"),
    ("version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n    overrides:\n"
     "      --cache-ram: null\n", 7, 20, "services.chat.overrides.--cache-ram",
     "null would drop --cache-ram, a flag stackgen sizes itself (the cache ram mib) (write a whole number, 0 or more "
     "(0 turns it off), or remove --cache-ram to let stackgen choose)"),
    ("version: 1\nhardware: rtx-4090\nworkload: {context_tokens: 1e30}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n",
     3, 28, "workload.context_tokens", "expected a whole number from 256 to 10000000, got text '1e30' "
     "(write a whole number from 256 to 10000000, e.g. `context_tokens: 8192`)"),
    ("version: 1\nhardware: rtx-4090\nworkload: {context_tokens: 1.0e+30}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n",
     3, 28, "workload.context_tokens", "write a whole number from 256 to 10000000, e.g. `context_tokens: 8192`"),
]


@pytest.mark.parametrize("text,line,col,path,words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_reported_with_position(write_stack, cli, text, line, col, path, words):
    f = write_stack(text)
    before = sorted(p.name for p in f.parent.iterdir())
    with pytest.raises(SpecError) as info:
        load_stack(f)
    first = info.value.problems[0]
    assert (first.line, first.col, first.path) == (line, col, path), str(info.value)
    assert words.lower() in str(info.value).lower()
    # The CLI: exit 1, FILE:LINE:COL: prefix, no traceback, nothing written next to the stack.
    for cmd in ("validate", "plan"):
        res = cli(cmd, f)
        assert res.exit_code == 1
        assert f"{f}:{line}:{col}:" in res.output
        assert "Traceback" not in res.output
    assert sorted(p.name for p in f.parent.iterdir()) == before


def test_good_stack_validates(write_stack, cli):
    f = write_stack(GOOD)
    res = cli("validate", f)
    assert res.exit_code == 0, res.output
    assert "ok (1 service)" in res.output


def test_yaml11_scalars_stay_text(write_stack):
    # `no`, `on` and 012 are strings in YAML 1.2; PyYAML's safe_load would give False, True and 10.
    f = write_stack(GOOD + "    quant: Q4_K_M\n    overrides: {flash-attn: on, seed: 012}\n")
    stack = load_stack(f)
    assert dict(stack.services[0].spec.overrides) == {"flash-attn": "on", "seed": "012"}


def test_name_defaults_to_folder(tmp_path):
    folder = tmp_path / "My Team_Chat"
    folder.mkdir()
    (folder / "stack.yaml").write_text(GOOD)
    assert load_stack(folder / "stack.yaml").name == "my-team-chat"


def test_service_workload_merges_over_stack_workload(write_stack):
    f = write_stack(GOOD + "    workload: {concurrent_users: 3}\n")
    svc = load_stack(f).services[0]
    assert svc.workload.concurrent_users == 3
    assert svc.workload.context_tokens == 8192  # from team-api


def test_multiplied_profile(write_stack):
    f = write_stack(GOOD.replace("rtx-4090", "4x a100-80gb"))
    hw = load_stack(f).hardware
    assert hw.gpu_count == 4


def test_user_profiles_next_to_stack(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hardware.yaml").write_text(
        "my-box:\n  gpus: [{vendor: nvidia, name: Tiny, memory_gib: 6, bandwidth_gbs: 200}]\n"
        "  memory_gib: 16\n  memory_bandwidth_gbs: 40\n  cpu: {cores: 4}\n")
    (tmp_path / "stack.yaml").write_text(GOOD.replace("rtx-4090", "my-box"))
    assert load_stack(tmp_path / "stack.yaml").hardware.gpus[0].name == "Tiny"


def test_bad_user_profile_names_its_position(tmp_path, cli):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hardware.yaml").write_text("my-box:\n  memory_gib: lots\n")
    (tmp_path / "stack.yaml").write_text(GOOD.replace("rtx-4090", "my-box"))
    res = cli("validate", tmp_path / "stack.yaml")
    assert res.exit_code == 1
    assert re.search(r"hardware\.yaml:\d+:\d+: my-box", res.output)


def test_every_problem_is_reported_at_once(write_stack):
    f = write_stack("version: 1\nhardware: rtx-4900\nworkload: team-apy\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    with pytest.raises(SpecError) as info:
        load_stack(f)
    assert [p.path for p in info.value.problems] == ["hardware", "workload"]


def test_schema_command_emits_json_schema(cli):
    import json

    res = cli("schema")
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert schema["title"].startswith("stackgen")
    assert {"version", "hardware", "services"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_detect_leaves_an_unreadable_compute_capability_unknown():
    """detect builds GPUSpec from nvidia-smi's compute_cap: a value GPUSpec would refuse is left unknown (None), not a
    failed detection."""
    from stackgen.host import detect
    assert detect._cc("8.9") == "8.9" and detect._cc("12.0") == "12.0"
    assert detect._cc("sm_89") is None and detect._cc("8") is None and detect._cc(None) is None


def test_prompt_and_output_must_fit_the_context(write_stack, cli):
    """An inline workload whose prompt + output exceed the context validated, then every request failed with HTTP 400
    (context exceeded): validate refuses it at the length written, with the context it needs."""
    f = write_stack("version: 1\nhardware: rtx-4090\nworkload:\n  concurrent_users: 4\n  context_tokens: 4096\n"
                    "  prompt_tokens: 6000\n  output_tokens: 128\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    res = cli("validate", f)
    assert res.exit_code == 1
    assert (f"{f}:6:18: workload.prompt_tokens: prompt_tokens 6000 + output_tokens 128 = 6128 is more than "
            "context_tokens 4096") in res.output
    assert "(raise context_tokens to at least 6128, or lower prompt_tokens to at most 3968)" in res.output
    assert "Traceback" not in res.output
    # A service's override that shrinks a profile's context below its prompt is reported at the override.
    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: long-context\nservices:\n  chat:\n"
                    "    model: llama-3.1-8b-instruct\n    workload: {context_tokens: 8192}\n")
    with pytest.raises(SpecError) as info:
        load_stack(f)
    (p,) = info.value.problems
    assert (p.line, p.col, p.path) == (7, 32, "services.chat.workload.context_tokens")
    assert "raise context_tokens to at least 122000" in p.hint
    # Exactly full is fine, and so is every built-in workload profile.
    f = write_stack("version: 1\nhardware: rtx-4090\nworkload: {context_tokens: 4096, prompt_tokens: 3840, "
                    "output_tokens: 256}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    load_stack(f)
    from stackgen.spec.profiles import load_profiles

    for name, wl in load_profiles().workloads.items():
        assert wl.prompt_tokens + wl.output_tokens <= wl.context_tokens, name


APPLE = "{vendor: apple, name: M3 Max, memory_gib: 64, bandwidth_gbs: 400, unified: true}"


def test_an_apple_gpu_with_os_left_out_is_a_mac(write_stack):
    f = write_stack("version: 1\nhardware:\n  gpus:\n    - " + APPLE + "\n  memory_gib: 64\n  memory_bandwidth_gbs: 400\n"
                    "  cpu: {cores: 12, arch: arm64}\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    assert load_stack(f).hardware.os == "macos"


@pytest.mark.parametrize("gpus,extra,line,col,path,words", [
    ([APPLE, "{vendor: nvidia, name: RTX 4090, memory_gib: 24, bandwidth_gbs: 1008}"], "  os: macos\n", 5, 16,
     "hardware.gpus.1.vendor", "an NVIDIA GPU (RTX 4090) in the same machine as an Apple GPU (M3 Max): a Mac with "
     "Apple silicon takes no other GPU (describe one machine: drop this GPU or the Apple one"),
    ([APPLE], "  os: linux\n", 8, 7, "hardware.os", "an Apple GPU runs only under macOS, but os is linux "
     "(write `os: macos`)"),
    ([APPLE.replace("memory_gib: 64", "memory_gib: 128")], "  os: macos\n", 4, 49, "hardware.gpus.0.memory_gib",
     "unified GPU memory of 128 GiB is more than the machine's RAM (memory_gib: 64): unified memory is part of that "
     "RAM (write `memory_gib: 64` here, the pool both share, or raise the machine's memory_gib to at least 128)"),
])
def test_contradictory_inline_hardware_is_refused(write_stack, cli, gpus, extra, line, col, path, words):
    """An Apple GPU beside an NVIDIA one, under Linux, or with more unified memory than the machine's RAM validated
    silently; each is now refused at its field with the fix."""
    f = write_stack("version: 1\nhardware:\n  gpus:\n" + "".join(f"    - {g}\n" for g in gpus)
                    + "  memory_gib: 64\n  memory_bandwidth_gbs: 400\n  cpu: {cores: 12, arch: arm64}\n" + extra
                    + "services: {chat: {model: llama-3.1-8b-instruct}}\n")
    with pytest.raises(SpecError) as info:
        load_stack(f)
    assert any((p.line, p.col, p.path) == (line, col, path) for p in info.value.problems), str(info.value)
    res = cli("validate", f)
    assert res.exit_code == 1 and f"{f}:{line}:{col}: {path}: " in res.output and words in res.output, res.output
    assert "Traceback" not in res.output


def test_a_consistent_mac_and_the_built_in_profiles_load(write_stack, tmp_path, cli):
    f = write_stack(f"version: 1\nhardware:\n  gpus: [{APPLE}]\n  memory_gib: 64\n  memory_bandwidth_gbs: 400\n"
                    "  cpu: {cores: 12, arch: arm64}\n  os: macos\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    assert load_stack(f).hardware.is_apple
    from stackgen.spec.profiles import load_profiles
    from stackgen.spec.stack import hardware_problems

    assert {n: hardware_problems(h) for n, h in load_profiles().hardware.items() if hardware_problems(h)} == {}
    # A user profile that contradicts itself is reported at its position.
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hardware.yaml").write_text(
        f"my-mac:\n  gpus: [{APPLE}]\n  memory_gib: 64\n  memory_bandwidth_gbs: 400\n  cpu: {{cores: 12}}\n  os: linux\n")
    res = cli("validate", write_stack(GOOD.replace("rtx-4090", "my-mac")))
    assert res.exit_code == 1
    assert "hardware.yaml:6:7: my-mac.os: an Apple GPU runs only under macOS, but os is linux (write `os: macos`)" \
        in res.output, res.output


def test_a_bad_recorded_host_names_file_field_and_fix(write_stack, tmp_path, cli):
    """`plan --host-facts` of a host file whose hardware does not validate dumped pydantic's text ("3 validation
    errors for HardwareSpec ... https://errors.pydantic.dev/..."); now each problem is file:line:col: field: fix."""
    stack = write_stack("version: 1\nhardware: detect\nservices: {chat: {model: llama-3.1-8b-instruct}}\n")
    host = tmp_path / "badhost.json"
    host.write_text('{"hardware":{"memory_gib":"lots"}}')
    res = cli("plan", "--host-facts", host, stack)
    assert res.exit_code == 1
    assert "pydantic" not in res.output and "validation error" not in res.output and "Traceback" not in res.output
    assert (f"{host}:1:27: hardware.memory_gib: expected a number, got text 'lots' (write a number above 0, up to "
            "65536, e.g. `memory_gib: 16`)") in res.output
    assert f"{host}:1:2: hardware.cpu: required field is missing (add `cpu:`)" in res.output
    host.write_text('{\n  "hardware": {\n    "memory_gib": 64,\n    "memory_bandwidth_gbs": 50,\n'
                    '    "cpu": {"cores": 8, "core": 3}\n  }\n}\n')
    res = cli("plan", "--host-facts", host, stack)
    assert res.exit_code == 1 and f"{host}:5:25: hardware.cpu.core: unknown key 'core' (did you mean 'cores'?)" \
        in res.output, res.output
    host.write_text('{"hardware": ')
    res = cli("plan", "--host-facts", host, stack)
    assert res.exit_code == 1 and f"{host}:1:14: invalid JSON" in res.output, res.output
