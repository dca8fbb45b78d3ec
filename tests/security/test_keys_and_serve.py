"""Issue 10, items 1 and 4 (+ the `binary:` prefix of item 5): `up` enforces the API key exactly as the rendered
artifacts do, and nothing in `overrides:` or `binary:` can reopen what the `serve:` block closes.

Each test reproduces an attack from the review; the real-engine tests run llama-server and vLLM on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import time
import re
import textwrap
from pathlib import Path

import psutil
import pytest

from stackgen import engines
from stackgen.errors import SpecError
from stackgen.run.readiness import Endpoint, request
from stackgen.run.native import NativeRunner, check_keys
from stackgen.render.artifact import RenderContext, render_plan
from stackgen.spec.stack import SERVE_OWNED, load_stack
from stackgen.run.state import StateDir
from tools.stacks import plan_for

KEY = "sk-stackgen-test-7c1e"
KEYLESS_ENGINES = sorted(n for n, e in engines.ENGINES.items() if e.api_key is None)  # the API key value: it must never show in an argv, a state file or a log


def stack(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_stack(path)
    return [str(p) for p in exc.value.problems]


# ---------------------------------------------------------------------------------------------- item 4: overrides


def _owned_spellings():
    for key, owner in sorted(SERVE_OWNED.items()):
        if key.isupper():
            yield key, owner
        else:
            yield key, owner
            yield f"--{key}", owner
    yield "--host=0.0.0.0", "serve.host"
    yield "Host", "serve.host"


@pytest.mark.parametrize("key,owner", list(_owned_spellings()))
def test_an_override_of_a_serve_owned_flag_is_refused_with_the_field_to_use(tmp_path, key, owner):
    path = stack(tmp_path, f"""\
        version: 1
        hardware: rtx-4090
        services:
          chat:
            model: llama-3.1-8b-instruct
            overrides: {{{json.dumps(key)}: "x"}}
        """)
    found = problems(path)
    assert len(found) == 1, found
    assert re.match(r".*stack\.yaml:6:\d+: services\.chat\.overrides\.", found[0]), found
    assert "set by the serve: block" in found[0]
    assert owner.format(name="chat").split(" ")[0] in found[0]


def test_the_review_attacks_on_overrides_are_each_refused(tmp_path):
    """overrides {host: 0.0.0.0}, credentialed CORS for '*', a literal API key, Ollama's host/origins."""
    path = stack(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat:
            model: llama-3.1-8b-instruct
            overrides: {host: 0.0.0.0, cors-origins: '*', cors-credentials: true, api-key: sk-live-123}
          ol:
            model: llama-3.1-8b-instruct
            engine: ollama
            overrides: {OLLAMA_HOST: 0.0.0.0:11434, OLLAMA_ORIGINS: '*'}
        """)
    found = "\n".join(problems(path))
    for key in ("host", "cors-origins", "cors-credentials", "api-key", "OLLAMA_HOST", "OLLAMA_ORIGINS"):
        assert f"overrides.{key}: " in found, key
    assert "sk-live-123" not in found  # the message never repeats a secret


def test_an_override_value_that_looks_like_a_flag_is_refused(tmp_path):
    path = stack(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat:
            model: llama-3.1-8b-instruct
            overrides: {temp: --host, samplers: [top_k, --api-key], n-predict: -1}
        """)
    found = problems(path)
    assert len(found) == 2 and all("starts with '-'" in p for p in found), found  # -1 stays a number


def test_ordinary_overrides_still_work(tmp_path):
    path = stack(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat:
            model: llama-3.1-8b-instruct
            overrides: {temp: 0.2, -ngl: 40, n-predict: -1, jinja: true}
        """)
    assert load_stack(path).services[0].spec.overrides["temp"] == 0.2


# ---------------------------------------------------------------------------------------------- item 5: binary


@pytest.mark.parametrize("prefix", ["+", "-", "@", ":", "!", "!!"])
def test_a_binary_with_a_systemd_exec_prefix_is_refused(tmp_path, prefix):
    path = stack(tmp_path, f"""\
        version: 1
        hardware: rtx-4090
        services:
          chat:
            model: llama-3.1-8b-instruct
            binary: "{prefix}/usr/local/bin/llama-server"
        """)
    found = problems(path)
    assert len(found) == 1 and "services.chat.binary" in found[0] and "'/usr/local/bin/llama-server'" in found[0]


# ---------------------------------------------------------------------------------------------- keyless engines


def test_the_keyless_engines_are_mlx_and_ollama_and_serve_no_tls():
    assert KEYLESS_ENGINES == ["mlx", "ollama"]  # mlx_lm.server and Ollama have no API-key option
    assert KEYLESS_ENGINES == sorted(n for n, e in engines.ENGINES.items() if e.tls_flags is None)


@pytest.mark.parametrize("engine", KEYLESS_ENGINES)
def test_a_keyless_engine_named_on_a_public_bind_is_refused(tmp_path, engine):
    path = stack(tmp_path, f"""\
        version: 1
        hardware: m4-max-128gb
        serve: {{host: 0.0.0.0, api_key_env: SG_KEY}}
        services:
          chat: {{model: llama-3.1-8b-instruct, engine: {engine}}}
        """)
    found = problems(path)
    assert any("has no API key: it must bind loopback" in p for p in found), found


@pytest.mark.parametrize("hardware,workload", [("m4-max-128gb", "dev-loop"), ("rtx-4090", "{concurrent_users: 1, optimize: setup}"),
                                               ("m4-16gb", "{concurrent_users: 1, optimize: setup}")])
def test_resolve_never_picks_a_keyless_engine_for_a_public_bind(tmp_path, hardware, workload):
    """Left to choose, the table prefers Ollama (setup) or MLX (Mac dev loop); on 0.0.0.0 neither can hold a key."""
    common = f"""\
        version: 1
        hardware: {hardware}
        workload: {workload}
        SERVE
        services:
          chat: {{model: llama-3.1-8b-instruct}}
        """
    loopback = plan_for(tmp_path / "a", textwrap.dedent(common.replace("SERVE", "")))
    assert loopback.services[0].engine in KEYLESS_ENGINES  # the attack needs the keyless choice to exist
    public = plan_for(tmp_path / "b", textwrap.dedent(common.replace("SERVE", "serve: {host: 0.0.0.0, api_key_env: SG_KEY}")))
    sp = public.services[0]
    assert sp.engine not in KEYLESS_ENGINES
    assert "has no API key option" in sp.rejected[loopback.services[0].engine], sp.rejected


# ---------------------------------------------------------------------------------------------- item 1: one command


def test_up_runs_the_command_run_sh_runs(tmp_path, monkeypatch):
    """The argv `up` spawns is the argv run.sh execs, key flag included (built once, engines.command)."""
    monkeypatch.setenv("SG_KEY", KEY)
    plan = plan_for(tmp_path, """\
        version: 1
        hardware: a100-80gb
        serve: {api_key_env: SG_KEY}
        workload: {concurrent_users: 1}
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, binary: /bin/true}
          api: {model: llama-3.1-8b-instruct, engine: vllm, binary: /bin/true}
        """)
    arts = {a.path: a.content for a in render_plan(plan, RenderContext(str(tmp_path / "deploy")), ["script"])}
    runner = NativeRunner(tmp_path)
    for sp in plan.services:
        cmd = runner.command(sp)
        run_sh = arts[f"{sp.name}/run.sh"]
        for tok in cmd.argv[1:]:
            assert tok in run_sh, (sp.name, tok)
        if sp.engine == "llama.cpp":
            assert cmd.key_mode == "file" and cmd.argv[cmd.argv.index("--api-key-file") + 1] == engines.KEY_FD
            assert "exec 3<" in run_sh
        else:
            assert cmd.key_mode == "env" and cmd.key_env == "VLLM_API_KEY" and "export VLLM_API_KEY" in run_sh
        assert KEY not in " ".join(cmd.argv) and KEY not in run_sh


def test_up_refuses_a_keyed_service_whose_key_is_unset_or_empty(tmp_path, monkeypatch):
    plan = plan_for(tmp_path, """\
        version: 1
        hardware: rtx-4090
        serve: {host: 0.0.0.0, api_key_env: SG_KEY}
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}
        """)
    monkeypatch.delenv("SG_KEY", raising=False)
    assert "SG_KEY, which is not set" in check_keys(list(plan.services))[0]
    monkeypatch.setenv("SG_KEY", "")
    assert "SG_KEY, which is empty" in check_keys(list(plan.services))[0]
    monkeypatch.setenv("SG_KEY", KEY)
    assert check_keys(list(plan.services)) == []


@pytest.mark.parametrize("key,why", [("#Xk9-team-key", "starts with '#'"), ("one\ntwo", "holds a line break")])
def test_up_refuses_a_key_llama_server_would_read_as_no_key(tmp_path, monkeypatch, key, why):
    """The key reaches llama-server as one line of an --api-key-file, whose lines "starting with a hash are treated
    as comments" (llama-server --help): an audit's `#Xk9-team-key` started a llama-server that answered everyone with
    200. `up` refuses it (and a key with a line break, which would be several keys), without repeating the key; vLLM
    takes its key from its environment, where the same value is one key."""
    plan = plan_for(tmp_path, """\
        version: 1
        hardware: rtx-4090
        serve: {host: 0.0.0.0, api_key_env: SG_KEY}
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}
        """)
    monkeypatch.setenv("SG_KEY", key)
    (problem,) = check_keys(list(plan.services))
    assert f"the key in SG_KEY {why}" in problem and key not in problem
    assert engines.get("vllm").api_key.value_problem(key) is None


@pytest.mark.parametrize("key,ok", [("#Xk9-team-key", False), ("one\ntwo", False), ("good-key-1", True)])
def test_run_sh_refuses_a_key_llama_server_would_read_as_no_key(tmp_path, key, ok):
    """run.sh hands the key over the same way (a one-line file on fd 3): it refuses the same keys before it starts
    the engine (a stand-in llama-server on PATH says whether it ran)."""
    import subprocess

    plan = plan_for(tmp_path, """\
        version: 1
        hardware: rtx-4090
        serve: {host: 0.0.0.0, api_key_env: SG_KEY}
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}
        """)
    (run_sh,) = [a for a in render_plan(plan, RenderContext("stack.yaml"), ["script"]) if a.path.endswith("run.sh")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\necho engine-ran\n")
    (bin_dir / "llama-server").chmod(0o755)
    (tmp_path / "run.sh").write_text(run_sh.content)
    (tmp_path / "chat.env").write_text("")  # the env file run.sh sources beside it
    r = subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SG_KEY": key})
    assert ("engine-ran" in r.stdout) == ok, r.stdout + r.stderr
    assert r.returncode == (0 if ok else 1)
    assert key not in r.stderr


@pytest.mark.parametrize("engine,binary,passed", [("llama.cpp", "llama-server", None),
                                                   ("vllm", "vllm", "VLLM_API_KEY")])
def test_run_sh_hands_the_engine_the_key_but_not_its_variable(tmp_path, engine, binary, passed):
    """As `up` does (supervise.spawn drops serve.api_key_env): a key file on fd 3 leaves no variable behind, and an
    engine that reads the key from its own variable gets that one only (a stand-in engine prints its environment)."""
    import subprocess

    plan = plan_for(tmp_path, f"""\
        version: 1
        hardware: rtx-4090
        serve: {{api_key_env: SG_KEY}}
        services:
          chat: {{model: llama-3.1-8b-instruct, engine: {engine}}}
        """)
    (run_sh,) = [a for a in render_plan(plan, RenderContext("stack.yaml"), ["script"]) if a.path.endswith("run.sh")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / binary).write_text("#!/bin/sh\nenv\n")
    (bin_dir / binary).chmod(0o755)
    (tmp_path / "run.sh").write_text(run_sh.content)
    (tmp_path / "chat.env").write_text("")
    r = subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SG_KEY": KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert not [line for line in lines if line.startswith("SG_KEY=")]
    assert [line for line in lines if KEY in line] == ([f"{passed}={KEY}"] if passed else [])


UNSAFE = [  # (engine, override, refused without a key, refused with one)
    ("llama.cpp", "tools: all", True, True), ("llama.cpp", "tools-runtime: x", True, True),
    ("llama.cpp", "agent: true", True, True), ("llama.cpp", "mcp-servers-json: '{}'", True, True),
    ("llama.cpp", "mcp-servers-config: m.json", True, True), ("llama.cpp", "ui-mcp-proxy: true", True, True),
    ("llama.cpp", "webui-mcp-proxy: true", True, True), ("llama.cpp", "path: /", True, True),
    ("llama.cpp", "--path: /", True, True), ("llama.cpp", "slot-save-path: /tmp/s", True, False),
    ("llama.cpp", "props: true", True, False), ("vllm", "allowed-local-media-path: /", True, False),
    ("vllm", "tool-server: demo", True, True), ("sglang", "enable-custom-logit-processor: true", True, True),
]


@pytest.mark.parametrize("engine,override,bare,keyed", UNSAFE)
def test_overrides_that_give_clients_commands_files_or_a_proxy_are_refused(tmp_path, engine, override, bare, keyed):
    """An audit switched on llama-server's built-in tools through `overrides: {tools: all}` (validate said ok) and ran
    `exec_shell_command` through POST /tools from a keyless loopback port with a foreign Origin, read any file through
    `path: /` and reached an internal address through /cors-proxy (ui-mcp-proxy). llama-server's --help says of them
    "do not enable in untrusted environments". Refused at validate, at the line, whatever the key; the ones an API key
    makes acceptable (clients write slot files, change /props, read media from a folder) only without a key."""
    for serve, refused in (("", bare), ("serve: {api_key_env: SG_KEY}\n", keyed)):
        path = tmp_path / "stack.yaml"
        path.write_text(f"version: 1\nhardware: rtx-4090\n{serve}services:\n  chat:\n"
                        f"    model: llama-3.1-8b-instruct\n    engine: {engine}\n    overrides: {{{override}}}\n")
        if not refused:
            assert not [p for p in _problems_or_none(path) if ".overrides." in p]
            continue
        (found,) = [p for p in problems(path) if ".overrides." in p]  # SGLang also needs a key (its CORS *)
        assert f"overrides.{override.split(':')[0]}: " in found and "gives every client of" in found, found
        assert ("serve.api_key_env" in found) == (not keyed), found


def _problems_or_none(path: Path) -> list[str]:
    try:
        load_stack(path)
    except SpecError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_an_auto_service_is_refused_an_unsafe_flag_of_any_engine(tmp_path):
    path = stack(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat: {model: llama-3.1-8b-instruct, overrides: {tools: all}}
        """)
    (found,) = problems(path)
    assert "--tools gives every client of llama.cpp" in found


# ---------------------------------------------------------------------------------------------- item 1: real engines


# A sentence, not one word: vLLM 0.32.0's CPU build dies (SIGILL, "Fatal Python error: Illegal instruction" in its
# AMX attention kernel, cpu_attention_with_kv_cache) when the first request of a fresh engine is a one-word prompt
# on an AMX host (a Sapphire Rapids CI machine: reproducible there; a 2-word or longer first prompt, or a one-word
# prompt after one, decodes). Likely cause, not proven: the kernel uses AMX before the process has asked Linux for the
# AMX tile state (arch_prctl XTILEDATA; not granted at start, granted on request there). An engine bug, not the key
# check these tests are about; README's "Engines on this project's CI" says so.
PROMPT = "Write one short sentence about the sea, the wind and the boats that sail between the islands."


def _status(port: int, engine: str, path: str, key: str | None, model: str) -> int:
    ep = Endpoint("127.0.0.1", port, engine, model, key)
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0} if path.endswith("completions") else None
    return request(ep, "POST" if body else "GET", path, body, timeout=60)[0]


def _assert_key_never_written(path: Path, pid: int) -> None:
    assert KEY not in " ".join(psutil.Process(pid).cmdline())
    for f in (path.parent / ".stackgen").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f


def keyed_gemma(tmp_path: Path, name: str, gguf_path, binary, port: int) -> Path:
    """A one-service llama.cpp stack of the Gemma GGUF on 127.0.0.1:`port`, keyed by SG_KEY, run by `binary`."""
    return stack(tmp_path, f"""\
        version: 1
        name: {name}
        hardware: detect
        workload: {{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 16, output_tokens: 8}}
        serve: {{api_key_env: SG_KEY}}
        services:
          gemma: {{model: {gguf_path}, engine: llama.cpp, binary: {binary}, port: {port}}}
        """)


def test_llama_server_started_by_up_demands_the_key(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                                     run_stackgen, wait_gone):
    port = free_port()
    path = keyed_gemma(tmp_path, "sec-key", gguf_path, llama_server, port)
    stack_cleanup.append(path)
    env = {k: v for k, v in os.environ.items() if k != "SG_KEY"}
    r = run_stackgen("up", path, env=env)
    assert r.returncode == 1 and "SG_KEY, which is not set" in r.stderr, r.stdout + r.stderr
    assert not StateDir(path).load().services  # nothing started

    r = run_stackgen("up", path, env={**env, "SG_KEY": KEY}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    st = StateDir(path).load().services["gemma"]
    assert _status(port, "llama.cpp", "/v1/completions", None, "gemma") == 401
    assert _status(port, "llama.cpp", "/v1/completions", "wrong-key", "gemma") == 401
    assert _status(port, "llama.cpp", "/v1/models", None, "gemma") == 401
    assert _status(port, "llama.cpp", "/v1/completions", KEY, "gemma") == 200
    _assert_key_never_written(path, st.pid)
    assert not any("/dev/fd/" in a and a != engines.KEY_FD for a in st.argv)  # state records run.sh's argv
    # the key reached the engine through the memfd alone: neither its environment nor its supervisor's holds it
    for pid in (st.pid, st.sup_pid):
        assert KEY not in Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace"), pid
    # the supervisor restarts a killed engine with the same key, delivered the same way
    os.kill(st.pid, 9)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = StateDir(path).load().services["gemma"]
        if new.pid != st.pid and _status(port, "llama.cpp", "/v1/completions", KEY, "gemma") == 200:
            break
        time.sleep(0.5)
    assert new.pid != st.pid, "the killed engine was not restarted"
    assert _status(port, "llama.cpp", "/v1/completions", None, "gemma") == 401
    _assert_key_never_written(path, new.pid)
    assert KEY not in Path(f"/proc/{new.pid}/environ").read_bytes().decode("utf-8", "replace")
    st = new

    r = run_stackgen("down", path, env=env)
    assert r.returncode == 0, r.stderr
    assert wait_gone(st.pid, 10)


def test_run_sh_leaves_the_key_variable_out_of_the_engines_environment(tmp_path, llama_server, gguf_path, free_port,
                                                                        run_stackgen):
    """Audit F10: run.sh copied $SG_KEY to the fd-3 key file and exec'd llama-server with SG_KEY still exported, so the
    key sat in /proc/PID/environ (readable by same-uid processes, inherited by anything the engine spawns); `up`
    strips it. A real llama-server started by the rendered run.sh: 401 without the key, 200 with it, and neither
    the key nor the variable in its environment or argv."""
    import signal
    import subprocess

    port = free_port()
    path = keyed_gemma(tmp_path, "sec-runsh", gguf_path, llama_server, port)
    r = run_stackgen("render", path)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {**{k: v for k, v in os.environ.items() if k != "SG_KEY"}, "SG_KEY": KEY}
    proc = subprocess.Popen(["sh", str(tmp_path / "deploy" / "gemma" / "run.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _status(port, "llama.cpp", "/v1/completions", KEY, "gemma") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, "run.sh exited"
        assert _status(port, "llama.cpp", "/v1/completions", None, "gemma") == 401
        assert _status(port, "llama.cpp", "/v1/completions", KEY, "gemma") == 200
        assert Path(f"/proc/{proc.pid}/exe").resolve() == llama_server.resolve()  # run.sh exec'd the engine
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"SG_KEY=") or KEY.encode() in e]
        assert KEY not in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_up_stops_an_engine_that_answers_without_its_key(tmp_path, llama_server, gguf_path, free_port, stack_cleanup,
                                                        run_stackgen):
    """Defence in depth behind check_keys: a real llama-server behind a wrapper that drops the --api-key-file it is
    handed (as a '#' key line once did) answers /v1/models without a key; `up` must not call it started: it stops it
    and says why, exit 1, nothing left running."""
    wrapper = tmp_path / "keyless-llama-server"
    wrapper.write_text("#!/bin/sh\n# drops --api-key-file and its value, keeps every other argument\n"
                       "n=$#; i=0; skip=0\n"
                       "for a in \"$@\"; do i=$((i+1))\n"
                       "  if [ $skip = 1 ]; then skip=0; continue; fi\n"
                       "  if [ \"$a\" = --api-key-file ]; then skip=1; continue; fi\n"
                       "  set -- \"$@\" \"$a\"\n"
                       "done\n"
                       "shift $n\n"
                       f"exec {llama_server} \"$@\"\n")
    wrapper.chmod(0o755)
    port = free_port()
    path = keyed_gemma(tmp_path, "sec-keyless", gguf_path, wrapper, port)
    stack_cleanup.append(path)
    r = run_stackgen("up", path, env={**os.environ, "SG_KEY": KEY}, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "answered /v1/models without its API key (SG_KEY)" in r.stderr and "stopped" in r.stderr, r.stderr
    assert not StateDir(path).load().services  # nothing left recorded as running
    with pytest.raises(OSError):
        _status(port, "llama.cpp", "/v1/models", None, "gemma")  # and nothing listens


def test_vllm_started_by_up_demands_the_key(tmp_path, vllm_bin, tiny_llama, free_port, stack_cleanup, run_stackgen,
                                            wait_gone):
    port = free_port()
    path = stack(tmp_path, f"""\
        version: 1
        name: sec-key-vllm
        hardware: detect
        workload: {{concurrent_users: 1, context_tokens: 512, prompt_tokens: 16, output_tokens: 8}}
        serve: {{api_key_env: SG_KEY}}
        services:
          tiny:
            model: {tiny_llama}
            engine: vllm
            binary: {vllm_bin}
            port: {port}
            overrides: {{enforce-eager: true}}
        """)
    stack_cleanup.append(path)
    env = {k: v for k, v in os.environ.items() if k not in ("SG_KEY", "VLLM_API_KEY")}
    r = run_stackgen("up", path, env={**env, "SG_KEY": KEY}, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    st = StateDir(path).load().services["tiny"]
    assert _status(port, "vllm", "/v1/completions", None, "tiny") == 401
    assert _status(port, "vllm", "/v1/models", "wrong-key", "tiny") == 401
    assert _status(port, "vllm", "/v1/completions", KEY, "tiny") == 200
    _assert_key_never_written(path, st.pid)
    r = run_stackgen("down", path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_gone(st.pid, 15)


def test_vllm_stays_on_loopback_because_its_key_leaves_invocations_open(tmp_path):
    """vLLM's --api-key guards /v1, /v2 and /inference only; /invocations serves the same inference without it (its
    own --api-key help says not to rely on the key alone). A pinned vLLM on 0.0.0.0 is refused at serve.host; an auto
    service on 0.0.0.0 goes to an engine whose key guards every endpoint, vLLM rejected with that reason."""
    from stackgen.errors import SpecError
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve

    def team(sub: str, host: str, engine: str = ""):
        (tmp_path / sub).mkdir()
        return stack(tmp_path / sub, f"""\
            version: 1
            hardware: h100-80gb
            workload: team-api
            serve: {{host: {host}, api_key_env: TEAM_KEY}}
            services:
              chat: {{model: llama-3.1-8b-instruct{engine}}}
            """)

    with pytest.raises(SpecError) as err:
        load_stack(team("a", "0.0.0.0", ", engine: vllm"))
    assert ":4:15: serve.host: vLLM's API key leaves /invocations, which serves the same inference as /v1 without " \
           "the key (services.chat): binding 0.0.0.0 would expose it (keep serve.host 127.0.0.1 and put an " \
           "authenticating proxy in front)" in str(err.value)
    sp = resolve(load_stack(team("b", "0.0.0.0")), HostFacts(hardware=None)).services[0]
    assert sp.engine != "vllm" and sp.rejected["vllm"].startswith("its API key leaves /invocations")
    assert resolve(load_stack(team("c", "127.0.0.1")), HostFacts(hardware=None)).services[0].engine == "vllm"


# ---------------------------------------------------------------------------------------------- audit a2 #11


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_systemd_tls_key_is_a_credential_not_a_path_the_dynamic_user_must_read(tmp_path, replicas):
    """With DynamicUser=yes the unit passed --ssl-key-file <path>: only a world-readable key let it start. The key
    is now loaded by systemd as root (LoadCredential=tls-key:...) and the engine reads the credential. The
    certificate too (audit auda F2): a cert under /home (ProtectHome=yes), /tmp (PrivateTmp=yes) or a root-only
    folder was read from inside the sandbox and the unit failed at start."""
    import shutil
    import subprocess

    from stackgen.plan.resolve import resolve

    key = "/etc/ssl/private/k b%i.pem"
    path = stack(tmp_path, f"""\
        version: 1
        name: tls1
        hardware: cpu-server-64gb
        workload: {{concurrent_users: 2, context_tokens: 2048}}
        serve:
          api_key_env: SG_KEY
          tls: {{cert_file: /home/alice/certs/c%n.pem, key_file: "{key}"}}
        services:
          gemma: {{model: gemma-3-270m, engine: llama.cpp, port: 18172, replicas: {replicas}}}
        targets: [systemd]
        """)
    plan = resolve(load_stack(path), None)
    units = {a.path: a.content for a in render_plan(plan, RenderContext("stack.yaml"), ["systemd"])
             if a.path.endswith(".service") and "haproxy" not in a.content.split("ExecStart=", 1)[-1].split()[0]}
    assert units
    for name, text in units.items():
        assert "DynamicUser=yes" in text
        assert '"--ssl-key-file" "${CREDENTIALS_DIRECTORY}/tls-key"' in text, name
        assert "LoadCredential=tls-key:/etc/ssl/private/k b%%i.pem" in text, name
        assert '"--ssl-cert-file" "${CREDENTIALS_DIRECTORY}/tls-cert"' in text, name
        assert "LoadCredential=tls-cert:/home/alice/certs/c%%n.pem" in text, name
        assert "/home/alice" not in text.split("ExecStart=", 1)[1].split("\n", 1)[0]  # not read in the sandbox
        analyze = shutil.which("systemd-analyze")
        if analyze:  # systemd itself parses both credentials (a bad LoadCredential= line is a warning)
            unit = tmp_path / name.split("/")[-1].replace("@.service", "@1.service")
            unit.write_text(text.replace('ExecStart="llama-server"', 'ExecStart="/bin/true"'))
            r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
            assert "redential" not in r.stderr, r.stderr  # e.g. `Credential source "..." not valid, ignoring.`


# ---------------------------------------------------------------------------------------------- audit a2 #16


def test_calibrate_runs_its_server_with_the_cors_restriction_services_get(tmp_path):
    """`stackgen calibrate` started llama-server without --cors-origins: `Origin: https://evil.example` was echoed
    back for as long as it ran. Every engine that calibrates passes the same CORS flags as its services, and they
    pass the engine's flag table."""
    from stackgen.engines.flagcheck import argv_flags, table

    calibrating = [(n, e) for n, e in engines.ENGINES.items() if e.calibrates]
    assert calibrating
    for name, engine in calibrating:
        sp = plan_for(tmp_path, f"version: 1\nname: c\nhardware: cpu-server-64gb\nservices:\n"
                                f"  chat: {{model: gemma-3-270m, engine: {name}}}\n").services[0]
        service = list(engines.command(engine, sp, binary="/x", model_ref="m.gguf", host="127.0.0.1",
                                       port=8080).argv)
        argv = engine.calibration_argv("/x", "m.gguf", 8080, 2, 2048)
        i = service.index("--cors-origins")
        assert service[i:i + 3] == ["--cors-origins", "localhost", "--no-cors-credentials"]
        j = argv.index("--cors-origins")
        assert argv[j:j + 3] == service[i:i + 3]
        flags = table(name)
        assert [f for f in argv_flags(name, argv, flags) if f not in flags.flags] == []


# ---------------------------------------------------------------------------------------------- audit a2 #6


@pytest.mark.parametrize("name", ["HOME", "USER", "LOGNAME", "HOSTNAME", "SHELL", "LANG", "PWD", "PATH", "LC_ALL",
                                  "XDG_SESSION_ID", "SSH_CONNECTION"])
def test_a_well_known_non_secret_variable_is_refused_as_api_key_env(tmp_path, name):
    """`serve: {host: 0.0.0.0, api_key_env: HOME}` validated, and `Bearer /root` then opened the public server."""
    path = stack(tmp_path, f"""\
        version: 1
        name: envk
        hardware: cpu-server-64gb
        serve: {{host: 0.0.0.0, api_key_env: {name}}}
        services:
          gemma: {{model: gemma-3-270m, engine: llama.cpp, port: 18179}}
        """)
    found = problems(path)
    assert any(p.startswith(f"{path}:4:") and f"serve.api_key_env: {name} is a well-known environment variable" in p
               and "(name a variable that holds only the key" in p for p in found), found
    path.write_text(path.read_text().replace(f"api_key_env: {name}", "api_key_env: ENVK_API_KEY"))
    assert load_stack(path).spec.serve.api_key_env == "ENVK_API_KEY"


# ---------------------------------------------------------------------------------------------- audit auda F5


def test_llama_cpp_refuses_several_cors_origins_at_validate_and_plan(tmp_path):
    """`serve.cors_origins: [a, b]` rendered `--cors-origins a,b`, which llama-server sends back verbatim as one
    Access-Control-Allow-Origin value (it matches only '*' and 'localhost'): browsers rejected every origin. Refused
    at the field with the fix; an auto-picked engine is planned around it; one origin is kept."""
    body = """\
        version: 1
        hardware: cpu-server-64gb
        serve:
          cors_origins: [https://app.example.com, http://intranet:3000]
        services:
          chat: {model: gemma-3-270m, engine: llama.cpp}
        """
    found = problems(stack(tmp_path, body))
    assert len(found) == 1 and ":4:" in found[0] and "serve.cors_origins" in found[0], found
    assert "takes one web origin" in found[0] and "keep one origin" in found[0]
    auto = plan_for(tmp_path, textwrap.dedent(body).replace("engine: llama.cpp", "engine: auto")).services[0]
    assert auto.engine != "llama.cpp"
    assert "takes one web origin" in auto.rejected["llama.cpp"]
    one = plan_for(tmp_path, textwrap.dedent(body).replace(", http://intranet:3000", "")).services[0]
    i = list(one.command).index("--cors-origins")
    assert list(one.command)[i + 1] == "https://app.example.com"


def test_mlx_keeps_localhost_beside_the_listed_origins(tmp_path):
    """mlx_lm.server allows exactly its --allowed-origins: a list used to drop the localhost origins the schema
    promises to keep ("none beyond localhost")."""
    sp = plan_for(tmp_path, "version: 1\nhardware: cpu-server-64gb\nserve: {cors_origins: [https://app.example.com]}\n"
                            "services:\n  chat: {model: gemma-3-270m, engine: mlx}\n").services[0]
    argv = list(sp.command)
    assert argv[argv.index("--allowed-origins") + 1] == "http://localhost,http://127.0.0.1,https://app.example.com"


# ---------------------------------------------------------------------------------------------- audit auda F3


COMMA_KEY = "LongSecretPart-9f3a,x"


def _keyed_llama(tmp_path: Path, targets: str = "[script]"):
    return plan_for(tmp_path, "version: 1\nname: k\nhardware: cpu-server-64gb\nserve: {api_key_env: SG_KEY}\n"
                              f"services:\n  chat: {{model: gemma-3-270m, engine: llama.cpp}}\ntargets: {targets}\n")


def test_a_comma_in_a_llama_cpp_key_is_refused_where_it_reaches_the_engine_as_a_list(tmp_path, monkeypatch):
    """Containers hand llama-server its key as LLAMA_API_KEY, which it splits on commas: each part authenticated,
    the whole key did not. `up --containers` refuses such a key; natively the key goes in a file, read a line at a
    time, where the comma is part of the key (kept)."""
    from stackgen.run.native import check_keys

    sp = _keyed_llama(tmp_path).services[0]
    monkeypatch.setenv("SG_KEY", COMMA_KEY)
    found = check_keys([sp], containers=True)
    assert len(found) == 1 and "holds ','" in found[0] and "LLAMA_API_KEY" in found[0], found
    assert COMMA_KEY not in found[0]
    assert check_keys([sp]) == []
    monkeypatch.setenv("SG_KEY", "LongSecretPart-9f3a")
    assert check_keys([sp], containers=True) == []


def test_container_headers_say_the_llama_cpp_key_holds_no_comma(tmp_path):
    """compose, quadlet and kubernetes read the key at container start, after render: their headers say it."""
    plan = _keyed_llama(tmp_path, "[compose, quadlet, kubernetes]")
    arts = render_plan(plan, RenderContext("stack.yaml"), ["compose", "quadlet", "kubernetes"])
    texts = {a.path: a.content for a in arts}
    for target in ("compose/", "quadlet/", "kubernetes/"):
        header = "".join(t for p, t in texts.items() if p.startswith(target))
        assert "the key must hold no ','" in header.lower(), (target, header[:2000])


def test_real_llama_server_splits_its_key_variable_on_commas_but_not_its_key_file(
        tmp_path, llama_server, gguf_path, free_port, serve_process):
    """Why the comma is refused for containers only, measured on the real engine: with LLAMA_API_KEY (what the
    compose/quadlet/kubernetes containers get) the fragment `x` opens the server and the whole key does not; with
    --api-key-file (run.sh, `up`, systemd) the whole key opens it and a fragment does not."""
    from stackgen.render.container_spec import container_command

    sp = _keyed_llama(tmp_path).services[0]
    inside = container_command(sp, str(gguf_path))
    port = free_port()
    argv = [llama_server, *inside]
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    assert "--api-key-file" not in argv  # the container gets the key by variable only
    serve_process(argv, f"http://127.0.0.1:{port}/health", "env.log", env={"LLAMA_API_KEY": COMMA_KEY})
    assert _status(port, "llama.cpp", "/v1/models", "x", "chat") == 200
    assert _status(port, "llama.cpp", "/v1/models", COMMA_KEY, "chat") == 401

    key_file = tmp_path / "key"
    key_file.write_text(COMMA_KEY + "\n")
    port2 = free_port()
    argv2 = [llama_server, "-m", gguf_path, "--host", "127.0.0.1", "--port", str(port2), "-c", "512",
             "--api-key-file", str(key_file)]
    serve_process(argv2, f"http://127.0.0.1:{port2}/health", "file.log")
    assert _status(port2, "llama.cpp", "/v1/models", COMMA_KEY, "chat") == 200
    assert _status(port2, "llama.cpp", "/v1/models", "x", "chat") == 401


# llama-server sends HF_TOKEN (its --hf-token default) as a bearer token to any -mu URL (common/arg.cpp: the model
# URL's download gets opts.bearer_token = params.hf_token), so a stack naming a GGUF on a third-party host handed the
# user's Hugging Face token to that host under run.sh and `up`, which pass the shell's environment on.
THIRD_PARTY = "https://models.example.net/org/tiny-Q4_K_M.gguf"
HUB_URL = "https://huggingface.co/org/tiny-GGUF/resolve/0123abc/tiny-Q4_K_M.gguf"


@pytest.mark.parametrize("url,kept", [(THIRD_PARTY, False), (HUB_URL, True), ("http://localhost:9/m.gguf", False)])
def test_run_sh_keeps_hf_token_from_an_engine_downloading_off_the_hub(tmp_path, url, kept):
    import dataclasses
    import subprocess

    plan = plan_for(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}
        """)
    sp = dataclasses.replace(plan.services[0], model_ref=url)
    plan = dataclasses.replace(plan, services=(sp,))
    (run_sh,) = [a for a in render_plan(plan, RenderContext("stack.yaml"), ["script"]) if a.path.endswith("run.sh")]
    assert ("unset HF_TOKEN" in run_sh.content) == (not kept)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text("#!/bin/sh\nenv\n")
    (bin_dir / "llama-server").chmod(0o755)
    (tmp_path / "run.sh").write_text(run_sh.content)
    (tmp_path / "chat.env").write_text("")
    r = subprocess.run(["sh", str(tmp_path / "run.sh")], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HF_TOKEN": "hf_secret_canary"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("HF_TOKEN=hf_secret_canary" in r.stdout.splitlines()) == kept
    assert url in r.stdout or url in run_sh.content


@pytest.mark.parametrize("url,kept", [(THIRD_PARTY, False), (HUB_URL, True)])
def test_up_keeps_hf_token_from_an_engine_downloading_off_the_hub(tmp_path, monkeypatch, url, kept):
    import sys

    from stackgen.engines.base import command
    from stackgen.run.native import EngineLaunch, launch_engine

    plan = plan_for(tmp_path, """\
        version: 1
        hardware: rtx-4090
        services:
          chat: {model: llama-3.1-8b-instruct, engine: llama.cpp}
        """)
    sp = plan.services[0]
    cmd = command(engines.get("llama.cpp"), sp, binary="llama-server", model_ref=url, host="127.0.0.1", port=9)
    assert cmd.drop_env == (() if kept else ("HF_TOKEN",))
    out = tmp_path / "env.json"
    probe = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    spec = EngineLaunch(name="chat", engine="llama.cpp", host="127.0.0.1", port=9, model_name="chat", tls=False,
                        argv=[sys.executable, "-c", probe], env={}, key_mode=None, key_var=None, key_env=None,
                        config_hash="x", budget_s=5, stack_dir=str(tmp_path), drop_env=list(cmd.drop_env))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_canary")
    sd = StateDir(tmp_path / "stack.yaml")
    sd.ensure()
    _, proc = launch_engine(spec, sd, None)
    assert proc.wait(timeout=30) == 0
    assert (json.loads(out.read_text()).get("HF_TOKEN") == "hf_secret_canary") == kept
