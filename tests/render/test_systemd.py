"""The systemd target: systemd's own quoting rules (round-tripped through systemd-analyze), and every unit we can
generate passes `systemd-analyze verify` with empty stderr and `security --offline` at exposure <= 2.0.

systemd 252 reads --threshold as an integer in tenths of the displayed exposure: --threshold=20 means 2.0.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackgen.cli import load_and_plan
from stackgen.errors import RenderError
from stackgen.plan.plan import startup_budget_s
from stackgen.render.artifact import RenderContext
from stackgen.render.quoting import Expand, quote_value, systemd_quote
from stackgen.render.targets.systemd import (
    RESTART_SEC, START_LIMIT_BURST, START_LIMIT_INTERVAL, render_units,
)

GOLDEN = Path(__file__).parent.parent / "golden"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
THRESHOLD = "20"  # 2.0 in systemd 252's tenths


@pytest.fixture
def stub(tmp_path) -> Path:
    """An executable `systemd-analyze verify` can find in place of the engine binary."""
    path = tmp_path / "bin" / "engine"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True)


def security(unit: Path) -> tuple[int, float]:
    r = subprocess.run([ANALYZE, "security", "--offline=yes", f"--threshold={THRESHOLD}", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    return r.returncode, float(m.group(1))


def units_for(stack: Path, host: Path | None, binary: Path, tmp: Path) -> list[Path]:
    _, plan = load_and_plan(stack, host)
    out = []
    for art in render_units(plan, RenderContext("stack.yaml"), binary=str(binary)):
        path = tmp / Path(art.path).name
        path.write_text(art.content, encoding="utf-8")
        if path.name.endswith("@.service"):  # a template unit is verified as one of its instances
            path = path.with_name(path.name.replace("@.service", "@1.service"))
            path.write_text(art.content, encoding="utf-8")
        if path.suffix == ".service":  # not the instances' env files or the balancer's config
            out.append(path)
    return out


# ---------------------------------------------------------------------------------------------- quoting


def test_quote_escapes_specifiers_dollars_quotes_and_backslashes():
    assert systemd_quote(["/bin/x", 'a "b"', "c\\d", "100%", "$HOME"]) == \
        '"/bin/x" "a \\"b\\"" "c\\\\d" "100%%" "$$HOME"'


def test_expand_keeps_the_variable_for_systemd():
    assert systemd_quote(["/bin/x", Expand("${CREDENTIALS_DIRECTORY}/k")]) == '"/bin/x" "${CREDENTIALS_DIRECTORY}/k"'


@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "a\rb"])
def test_nul_and_line_breaks_are_rejected(bad):
    with pytest.raises(RenderError):
        systemd_quote(["/bin/x", bad])
    with pytest.raises(RenderError):
        quote_value(bad)


C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def parse_command_line(text: str) -> list[str]:
    """Read back systemd's debug "Command Line:" (shell_maybe_quote: bare words or "..." with backslash escapes)."""
    words, i = [], 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        if text[i] != '"':
            j = text.find(" ", i)
            j = len(text) if j < 0 else j
            words.append(text[i:j])
            i = j
            continue
        i += 1
        word = []
        while text[i] != '"':
            if text[i] == "\\":
                i += 1
                if re.match(r"[0-7]{3}", text[i:i + 3]):  # control characters come back as octal escapes
                    word.append(chr(int(text[i:i + 3], 8)))
                    i += 2
                else:
                    word.append(C_ESCAPES.get(text[i], text[i]))
            else:
                word.append(text[i])
            i += 1
        words.append("".join(word))
        i += 1
    return words


def parsed_command_lines(unit: Path) -> list[list[str]]:
    r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                       env={"SYSTEMD_LOG_LEVEL": "debug", "PATH": "/usr/bin:/bin"})
    lines = [ln.split("Command Line: ", 1)[1] for ln in r.stdout.split("\n") if "Command Line: " in ln]
    return [parse_command_line(ln) for ln in lines]


def exec_time(word: str) -> str:
    """systemd keeps `$$` in the parsed argv and turns it into `$` when it executes the command."""
    return word.replace("$$", "$")


# Noncharacters are refused before they reach a unit (test_noncharacters_are_refused): systemd drops their line.
NONCHARACTERS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + [chr(p * 0x10000 + 0xFFFE + i) for p in range(17) for i in (0, 1)]
ARG = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r" + "".join(NONCHARACTERS)),
              max_size=12)


@pytest.mark.parametrize("ch", ["\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff"])
def test_noncharacters_are_refused(ch):
    with pytest.raises(RenderError, match=f"U\\+{ord(ch):04X}.*noncharacter"):
        systemd_quote(["/usr/bin/engine", f"a{ch}b"])


@needs_analyze
@pytest.mark.parametrize("ch", ["\ufdd0", "\ufffe", "\U0010ffff"])
def test_systemd_really_drops_a_line_with_a_noncharacter(ch, stub, tmp_path):
    """Why they are refused: the line written raw parses to no command; its neighbours U+FDCF / U+FDF0 parse."""
    bad, good = tmp_path / "nonchar.service", tmp_path / "neighbours.service"
    bad.write_text(f'[Service]\nType=oneshot\nExecStart="{stub}" "a{ch}"\n', encoding="utf-8")
    good.write_text(f'[Service]\nType=oneshot\nExecStart="{stub}" "\ufdf0\ufdcf"\n', encoding="utf-8")
    assert parsed_command_lines(bad) == []
    assert parsed_command_lines(good) == [[str(stub), "\ufdf0\ufdcf"]]


@needs_analyze
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(st.lists(ARG | st.sampled_from(['%n', '%%', '$$', '${X}', '"', '\\', ' ', 'é ü', '\t']),
                                  min_size=1, max_size=6), min_size=1, max_size=4))
def test_exec_start_round_trips_through_systemd(commands, stub, tmp_path):
    unit = tmp_path / "roundtrip.service"
    body = "".join(f"ExecStart={systemd_quote([str(stub)] + argv)}\n" for argv in commands)
    unit.write_text(f"[Service]\nType=oneshot\n{body}", encoding="utf-8")
    parsed = parsed_command_lines(unit)
    assert [[exec_time(w) for w in words] for words in parsed] == [[str(stub)] + argv for argv in commands]


# ---------------------------------------------------------------------------------------------- units


def _golden_cases() -> list[Path]:
    return sorted(p for p in GOLDEN.iterdir() if (p / "stack.yaml").is_file()) if GOLDEN.is_dir() else []


def _linux_cases() -> list[Path]:
    return [c for c in _golden_cases() if "systemd" in (c / "stack.yaml").read_text()]


EXTRA_STACKS = {
    # AMD ROCm consumer card: /dev/kfd + char-drm, llama.cpp (no JIT in W^X terms: GPU keeps MDWE off).
    "amd": "version: 1\nname: amd\nhardware: rx-7900-xtx\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n",
    # CPU llama.cpp with an API key on the LAN: credential, no IP allow-list.
    "lan-key": ("version: 1\nname: lan\nhardware: cpu-server-64gb\nservices:\n  chat:\n    model: qwen2.5-0.5b-instruct\n"
                "serve:\n  host: 0.0.0.0\n  api_key_env: LAN_KEY\n"),
    # vLLM on a single H100 bound to loopback.
    "vllm-h100": ("version: 1\nname: vh\nhardware: h100-80gb\nworkload: batch\nservices:\n  chat:\n"
                  "    model: llama-3.1-8b-instruct\n    engine: vllm\n"),
    # Ollama CPU-only, two services in one stack.
    "ollama-cpu": ("version: 1\nname: oc\nhardware: cpu-laptop-16gb\nworkload: quickstart\nservices:\n"
                   "  a:\n    model: qwen2.5-0.5b-instruct\n    engine: ollama\n"
                   "  b:\n    model: llama-3.2-3b-instruct\n    engine: ollama\n"),
}


def _all_units(tmp_path: Path, stub: Path) -> list[Path]:
    units = []
    for case in _linux_cases():
        units += units_for(case / "stack.yaml", case / "host.json", stub, tmp_path)
    for name, text in EXTRA_STACKS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "stack.yaml").write_text(text)
        units += units_for(folder / "stack.yaml", None, stub, tmp_path)
    return units


@needs_analyze
def test_every_unit_verifies_and_scores_at_most_2(tmp_path, stub):
    units = _all_units(tmp_path, stub)
    assert len(units) >= 8
    for unit in units:
        r = verify(unit)
        assert (r.returncode, r.stderr) == (0, ""), f"{unit.name}:\n{r.stderr}"
        rc, exposure = security(unit)
        assert rc == 0 and exposure <= 2.0, f"{unit.name}: exposure {exposure}"


@needs_analyze
def test_verify_fails_when_the_binary_is_missing(tmp_path, stub):
    unit = units_for(GOLDEN / "seed-70b-rtx4090" / "stack.yaml", None, tmp_path / "no-such-engine", tmp_path)[0]
    assert verify(unit).stderr != ""


@needs_analyze
def test_local_weights_get_localhost_only_and_are_read_only(tmp_path, stub):
    weights = tmp_path / "home" / "m.gguf"
    unit = _unit_text_with_model(tmp_path, stub, weights)
    assert "IPAddressDeny=any\nIPAddressAllow=localhost\n" in unit
    assert f'ReadOnlyPaths="{weights}"' in unit
    path = tmp_path / "local.service"
    path.write_text(unit)
    assert verify(path).stderr == ""
    rc, exposure = security(path)
    assert rc == 0 and exposure <= 2.0


def test_weights_under_home_are_bound_read_only_into_an_empty_home(tmp_path, stub):
    unit = _unit_text_with_model(tmp_path, stub, tmp_path / "m.gguf", pretend="/home/stackgen-test-does-not-exist/m.gguf")
    assert "\nProtectHome=tmpfs\n" in unit and 'BindReadOnlyPaths="/home/stackgen-test-does-not-exist/m.gguf"' in unit


def _unit_text_with_model(tmp_path: Path, stub: Path, weights: Path, pretend: str | None = None) -> str:
    """A unit for a real (synthetic) GGUF; `pretend` moves it elsewhere in the plan without touching the disk."""
    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    weights.parent.mkdir(parents=True, exist_ok=True)
    # Without the expert keys: a dense model (stackgen.models.facts trips over GGUF expert counts, reported).
    weights.write_bytes(make_gguf([kv for kv in BASIC_KVS if "expert" not in kv[0]], BASIC_TENSORS)[0])
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"version: 1\nname: loc\nhardware: cpu-server-64gb\nservices:\n  chat:\n    model: {weights}\n"
                     f"    binary: {stub}\n")
    _, plan = load_and_plan(stack, None)
    if pretend:
        sp = plan.services[0]
        sp = dataclasses.replace(sp, model=dataclasses.replace(sp.model, path=pretend), model_ref=pretend,
                                 spec=sp.spec.model_copy(update={"model": pretend}))
        plan = dataclasses.replace(plan, services=(sp,))
    return render_units(plan, RenderContext("stack.yaml"))[0].content


def test_gpu_and_cpu_units_differ_where_they_must(tmp_path, stub):
    gpu = units_for(GOLDEN / "seed-70b-rtx4090" / "stack.yaml", None, stub, tmp_path)[0].read_text()
    for line in ("PrivateDevices=no", "DevicePolicy=closed", "DeviceAllow=char-nvidiactl rw",
                 "DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw",
                 "DeviceAllow=char-nvidia-caps rw", "SupplementaryGroups=render video"):
        assert f"\n{line}\n" in gpu
    assert "\nMemoryDenyWriteExecute=yes" not in gpu
    cpu = units_for(GOLDEN / "cpu-llamacpp" / "stack.yaml", GOLDEN / "cpu-llamacpp" / "host.json", stub,
                    tmp_path)[0].read_text()
    assert "\nPrivateDevices=yes\n" in cpu and "\nMemoryDenyWriteExecute=yes\n" in cpu and "DeviceAllow" not in cpu


def test_amd_units_allow_kfd_and_drm(tmp_path, stub):
    (tmp_path / "amd").mkdir()
    (tmp_path / "amd" / "stack.yaml").write_text(EXTRA_STACKS["amd"])
    text = units_for(tmp_path / "amd" / "stack.yaml", None, stub, tmp_path)[0].read_text()
    assert "\nDeviceAllow=/dev/kfd rw\nDeviceAllow=char-drm rw\n" in text


def test_restart_cannot_loop_forever():
    assert START_LIMIT_BURST * RESTART_SEC < START_LIMIT_INTERVAL


def test_start_timeout_grows_with_weights():
    assert startup_budget_s(0) == 60
    assert startup_budget_s(42_500_000_000) == 490  # 60 + 425 -> 490 (10 s steps)
    assert startup_budget_s(42_500_000_000, fetched=True) == 2190  # + 1700 s of download at 25 MB/s
    assert startup_budget_s(0, extra_s=120) == 180  # vLLM's compile and profiling


def test_llamacpp_key_is_a_credential_and_vllm_key_an_env_file(tmp_path, stub):
    seed = units_for(GOLDEN / "seed-70b-rtx4090" / "stack.yaml", None, stub, tmp_path)[0].read_text()
    assert '"--api-key-file" "${CREDENTIALS_DIRECTORY}/api-key"' in seed
    assert "\nLoadCredential=api-key:/etc/stackgen/seed-70b/api-key\n" in seed
    team = units_for(GOLDEN / "vllm-team-api" / "stack.yaml", None, stub, tmp_path)[0].read_text()
    assert "\nEnvironmentFile=/etc/stackgen/team-api/chat.env\n" in team
    assert "/bin/sh" not in team and "api-key" not in team.split("ExecStart=")[1].split("\n")[0]


def test_systemd_target_refuses_macos():
    _, plan = load_and_plan(GOLDEN / "mac-mlx-dev-loop" / "stack.yaml", None)
    with pytest.raises(RenderError, match="Linux"):
        render_units(plan, RenderContext("stack.yaml"))


def test_newline_in_binary_is_a_render_error(tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text('version: 1\nhardware: rtx-4090\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n')
    _, plan = load_and_plan(stack, None)
    with pytest.raises(RenderError):
        render_units(plan, RenderContext("stack.yaml"), binary="/bin/a\nExecStartPre=/bin/evil")


def test_proc_subset_only_for_an_engine_that_runs_without_meminfo(tmp_path):
    """ProcSubset=pid hides /proc/meminfo: vLLM's API server dies on it at start (psutil.virtual_memory), Ollama and
    SGLang size memory from it; llama-server answers /health without it. Only llama.cpp's units get the setting."""
    root = Path(__file__).resolve().parents[2]
    text = {}
    for name, stack in (("vllm", root / "examples" / "vllm-team-api" / "stack.yaml"),
                        ("llama.cpp", root / "examples" / "seed-70b-rtx4090" / "stack.yaml"),
                        ("ollama", root / "tests" / "golden" / "ollama-dev-loop" / "stack.yaml")):
        host = stack.parent / "host.json"
        _, plan = load_and_plan(stack, host if host.exists() else None)
        assert plan.services[0].engine == name
        text[name] = "\n".join(a.content for a in render_units(plan, RenderContext("stack.yaml"), binary="/bin/true")
                               if a.path.endswith(".service"))
    assert re.search(r"^ProcSubset=pid$", text["llama.cpp"], re.M)
    for name in ("vllm", "ollama"):
        assert not re.search(r"^ProcSubset=", text[name], re.M), name
        assert "# ProcSubset=pid stays off: the engine reads /proc/meminfo" in text[name]


def test_ollama_local_gguf_gets_a_modelfile_from_the_installed_weights(tmp_path):
    """Audit auda F7: with `targets: [systemd]` no Modelfile was rendered for the create unit, whose header said to
    copy the script target's, whose `FROM ../../models/gemma.gguf` (relative to deploy/olla/) resolved to
    /etc/models/gemma.gguf once installed in /etc/stackgen: `ollama create` failed and the tuned model never existed.
    Now systemd/<svc>.Modelfile is rendered FROM the path the daemon unit's header installs the weights at."""
    from tools.stacks import plan_for
    from stackgen.render.artifact import render_plan

    from test_gguf import BASIC_KVS, BASIC_TENSORS, make_gguf  # the synthetic GGUF writer

    (tmp_path / "models").mkdir()
    dense = [kv for kv in BASIC_KVS if "expert" not in kv[0]]
    (tmp_path / "models" / "gemma.gguf").write_bytes(make_gguf(dense, BASIC_TENSORS)[0])
    plan = plan_for(tmp_path, "version: 1\nname: oll\nhardware: cpu-server-64gb\nworkload: {concurrent_users: 1, "
                              "context_tokens: 2048}\nservices:\n  olla: {model: models/gemma.gguf, engine: ollama}\n"
                              "targets: [systemd]\n")
    arts = {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["systemd"])}
    modelfile = arts["systemd/olla.Modelfile"]
    daemon, create = arts["systemd/stackgen-oll-olla.service"], arts["systemd/stackgen-oll-olla-create.service"]
    assert "FROM /var/lib/stackgen/models/gemma.gguf\n" in modelfile
    assert "at /var/lib/stackgen/models/gemma.gguf" in daemon  # where the daemon unit's header installs them
    assert '"-f" "/etc/stackgen/oll/olla.Modelfile"' in create
    assert "sudo install -D -m 0644 systemd/olla.Modelfile /etc/stackgen/oll/olla.Modelfile" in create
    assert "PARAMETER num_ctx" in modelfile
