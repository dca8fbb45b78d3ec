"""Exit codes (README "Exit codes"): 0 ok, 1 error, 2 drift only, 64 usage, 130 interrupted; and the interactive
`stackgen init` prompt, driven through a real pseudo-terminal."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stackgen.cli import EX_DRIFT, EX_ERROR, EX_INTERRUPTED, EX_OK, EX_USAGE, EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]

STACK = """version: 1
name: t
hardware: cpu-server-64gb
workload: dev-loop
services:
  chat:
    model: qwen2.5-0.5b-instruct
targets: [script]
"""


def stackgen(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed entry point as a user runs it (not the in-process runner): real argv, real exit status."""
    return subprocess.run([sys.executable, "-m", "stackgen", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_the_codes_are_distinct_and_documented_in_one_readme_table():
    assert len({EX_OK, EX_ERROR, EX_DRIFT, EX_USAGE, EX_INTERRUPTED}) == 5
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", section, re.M))
    assert sorted(int(c) for c in rows) == sorted(EXIT_CODES)
    assert readme.count("### Exit codes") == 1


@pytest.mark.parametrize("args", [
    ["--frobnicate"],  # unknown option of the root command
    [],  # no command at all (help is printed)
    ["frobnicate"],  # unknown command
    ["plan", "stack.yaml", "--bogus"],  # unknown option of a subcommand
    ["bench", "stack.yaml", "--requests", "many"],  # bad option value
])
def test_usage_errors_exit_64_never_2(args, tmp_path):
    (tmp_path / "stack.yaml").write_text(STACK)
    res = stackgen(*args, cwd=tmp_path)
    assert res.returncode == EX_USAGE, (args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    assert "Usage:" in res.stdout + res.stderr


@pytest.mark.parametrize("args, says", [
    (["--sweep", "a,b"], "--sweep 'a,b': expected comma-separated user counts"),
    (["--sweep", "0"], "--sweep '0': user counts must be positive"),
    (["-n", "0"], "--requests 0: give at least 1"),
    (["--duration", "-1"], "--duration -1: give a positive number of seconds"),
    (["--duration", "0"], "--duration 0: give a positive number of seconds"),
    (["-n", "2", "--duration", "1"], "give --requests or --duration, not both"),
    (["--timeout", "-1"], "--timeout -1: give at least 1 second per request"),  # was a traceback, then rc 0
    (["--timeout", "0"], "--timeout 0: give at least 1 second per request"),
    (["--timeout", "0.5"], "--timeout 0.5: give at least 1 second per request"),
])
def test_bad_bench_option_values_exit_64_before_anything_runs(args, says, tmp_path):
    """README, Exit codes: 64 is a wrong command line, a bad option value included (audit a4 #8: these exited 1).
    Nothing answers on the stack's port: the value is refused before bench plans or connects."""
    (tmp_path / "stack.yaml").write_text(STACK)
    res = stackgen("bench", "stack.yaml", *args, cwd=tmp_path)
    assert res.returncode == EX_USAGE, (args, res.returncode, res.stdout, res.stderr)
    assert res.stderr == f"error: {says}\n" or says in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr and "nothing answers" not in res.stderr


@pytest.mark.parametrize("args", [
    ["plan"], ["render"], ["render", "--check"],  # with --check it must not look like drift
    ["up"], ["down", "chat"], ["status"], ["logs", "-f"], ["validate"], ["bench"], ["doctor"],
    ["lock"], ["lock", "--check"], ["simulate"],  # were internal errors (audit a4 #4)
])
def test_no_stack_file_here_exits_64_naming_what_to_do(args, tmp_path):
    """Like compose with compose.yaml, FILE defaults to ./stack.yaml; without one the command line is incomplete."""
    res = stackgen(*args, cwd=tmp_path)
    assert res.returncode == EX_USAGE, (args, res.returncode, res.stdout, res.stderr)
    assert f"no stack.yaml in {tmp_path}" in res.stderr and "-f FILE" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_default_stack_file_is_used_and_named(tmp_path):
    (tmp_path / "stack.yaml").write_text(STACK)
    res = stackgen("validate", cwd=tmp_path)
    assert res.returncode == EX_OK and res.stderr == "using ./stack.yaml\n" and "stack.yaml: ok" in res.stdout
    (tmp_path / "other.yaml").write_text(STACK.replace("name: t", "name: other"))
    for args in (["plan", "-f", "other.yaml"], ["plan", "other.yaml"], ["plan", "--file", "other.yaml"]):
        res = stackgen(*args, cwd=tmp_path)
        assert res.returncode == EX_OK and "stack other (other.yaml)" in res.stdout and not res.stderr, res
    res = stackgen("plan", "stack.yaml", "-f", "other.yaml", cwd=tmp_path)
    assert res.returncode == EX_USAGE and "give the stack file once" in res.stderr


@pytest.mark.parametrize("args", [["lock"], ["lock", "--check"], ["simulate", "--users", "1"]])
def test_lock_and_simulate_default_to_the_stack_file_here(args, tmp_path):
    """`lock` and `simulate` take FILE, -f FILE or ./stack.yaml like the others (audit a4 #4: `lock` in a folder
    with a stack.yaml was an internal error, AttributeError on None.with_suffix)."""
    (tmp_path / "stack.yaml").write_text(STACK)
    res = stackgen(*args, cwd=tmp_path)
    assert res.returncode == EX_OK and res.stderr == "using ./stack.yaml\n", (res.stdout, res.stderr)
    (tmp_path / "other.yaml").write_text(STACK.replace("name: t", "name: other"))
    res = stackgen(*args, "-f", "other.yaml", cwd=tmp_path)
    assert res.returncode == EX_OK and not res.stderr, (res.stdout, res.stderr)
    res = stackgen(*args, "stack.yaml", "-f", "other.yaml", cwd=tmp_path)
    assert res.returncode == EX_USAGE and "give the stack file once" in res.stderr


def test_version_long_and_short():
    from stackgen import __version__

    for flag in ("--version", "-V"):
        res = stackgen(flag)
        assert res.returncode == EX_OK and res.stdout == f"stackgen {__version__}\n"


def test_shell_completion_script_completes_commands(tmp_path):
    exe = Path(sys.executable).parent / "stackgen"  # the console script `pip install` writes (completion is by name)
    assert exe.exists(), "install stackgen into this venv (pip install -e .)"
    # typer's own switch for tests: --show-completion takes the shell as its value instead of detecting it from the
    # process tree (shellingham finds no shell when pytest runs detached, e.g. under setsid: "Shell  not supported.")
    res = subprocess.run([str(exe), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert res.returncode == EX_OK and "_STACKGEN_COMPLETE=complete_bash" in res.stdout, res
    assert "complete -o default -F _stackgen_completion stackgen" in res.stdout, res.stdout
    # what the installed script asks the program at a TAB: the commands starting with "re"
    env = {**os.environ, "_STACKGEN_COMPLETE": "complete_bash", "COMP_WORDS": "stackgen re", "COMP_CWORD": "1"}
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
    assert set(res.stdout.split()) == {"render", "restart"}, res


def test_usage_error_in_process_runner_too(cli):
    assert cli("--frobnicate").exit_code == EX_USAGE
    assert cli("plan", "--bogus").exit_code == EX_USAGE


def test_ok_error_and_drift_codes(tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(STACK)
    assert stackgen("--help").returncode == EX_OK
    assert stackgen("validate", str(stack)).returncode == EX_OK
    missing = stackgen("plan", str(tmp_path / "nope.yaml"))
    assert missing.returncode == EX_ERROR and "file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    stack.write_text(STACK.replace("dev-loop", "dev-lop"))
    invalid = stackgen("validate", str(stack))
    assert invalid.returncode == EX_ERROR and "did you mean 'dev-loop'" in invalid.stderr
    stack.write_text(STACK)
    assert stackgen("render", str(stack)).returncode == EX_OK
    assert stackgen("render", str(stack), "--check").returncode == EX_OK
    run_sh = next((tmp_path / "deploy").rglob("run.sh"))
    run_sh.write_text(run_sh.read_text() + "# edited\n")
    drift = stackgen("render", str(stack), "--check")
    assert drift.returncode == EX_DRIFT, drift.stderr


def test_interrupted_is_130(cli, monkeypatch, tmp_path):
    import stackgen.spec.stack

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stackgen.spec.stack, "load_stack", interrupt)
    (tmp_path / "stack.yaml").write_text(STACK)
    res = cli("validate", tmp_path / "stack.yaml")
    assert res.exit_code == EX_INTERRUPTED and "interrupted" in res.output


# ---------------------------------------------------------------------------------------------- init on a terminal


class Terminal:
    """A child process on a real pseudo-terminal (stdin, stdout and stderr are the pty, so isatty() is True)."""

    def __init__(self, argv: list[str], cwd: Path):
        import pty

        self.master, slave = pty.openpty()
        env = dict(os.environ, TERM="dumb", COLUMNS="120", NO_COLOR="1")
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"did not see {text!r} in:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}:\n{self.seen}")
                self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.seen

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.drain()
            os.close(self.master)
        return rc

    def drain(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")
def test_interactive_init_prompts_for_a_workload_on_a_terminal(tmp_path):
    term = Terminal([sys.executable, "-m", "stackgen", "init", str(tmp_path / "proj"), "--hardware", "rtx-4090"],
                    cwd=tmp_path)
    try:
        term.expect("Workload [dev-loop]:")
        assert "Workloads: batch, dev-loop" in term.seen
        term.send("no-such-workload")  # a wrong answer is asked again, not a crash
        term.expect("unknown workload 'no-such-workload'")
        term.expect("Workload [dev-loop]:")
        term.send("team-api")
        rc = term.wait()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.seen and "AttributeError" not in term.seen, term.seen
    assert rc == EX_OK, term.seen
    text = (tmp_path / "proj" / "stack.yaml").read_text()
    assert "workload: team-api" in text and "hardware: rtx-4090" in text
    assert "service chat:" in term.seen  # the plan summary is shown


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")
def test_interactive_init_takes_the_default_on_enter(tmp_path):
    term = Terminal([sys.executable, "-m", "stackgen", "init", str(tmp_path / "proj"), "--hardware", "rtx-4090"],
                    cwd=tmp_path)
    try:
        term.expect("Workload [dev-loop]:")
        term.send("")
        rc = term.wait()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert rc == EX_OK, term.seen
    assert "workload: dev-loop" in (tmp_path / "proj" / "stack.yaml").read_text()


LOCATED = {
    # launchd runs without PATH: validate and render refuse a relative binary
    "launchd.yaml": ("version: 1\nhardware: m3-max-64gb\nworkload: dev-loop\nservices:\n"
                     "  coder: {model: qwen2.5-7b-instruct, engine: llama.cpp, binary: bin/llama-server}\n"
                     "targets: [launchd]\n", "render", "services.coder.binary", 5, 66),
    # vLLM has no Metal backend: plan refuses it (mlx with structured_output was this case; validate refuses that now)
    "mlx.yaml": ("version: 1\nhardware: m3-max-64gb\nworkload: dev-loop\nservices:\n  coder:\n"
                 "    model: qwen2.5-7b-instruct\n    engine: vllm\n",
                 "plan", "services.coder", 6, 5),
    # two instances on one GPU: the capacity plan refuses them
    "replicas.yaml": ("version: 1\nhardware: rtx-4090\nworkload: team-api\nservices:\n  chat:\n"
                      "    model: llama-3.1-8b-instruct\n    quant: Q4_K_M\n    engine: llama.cpp\n    replicas: 2\n",
                      "plan", "services.chat.replicas", 9, 15),
}


@pytest.mark.parametrize("name", sorted(LOCATED))
def test_plan_and_render_errors_on_a_field_say_file_line_col(name, cli, tmp_path):
    """audit a4 #7: stacks validate passes but plan/render refuse printed `services.coder.binary: ...` without the
    file or line; README step 1 promises `file:line:col: field: message` for every error."""
    text, command, field, line, col = LOCATED[name]
    path = tmp_path / name
    path.write_text(text)
    # a render-only refusal (launchd's relative binary) is validate's too now (review L2), at the same position
    checked = ["validate"] if command == "render" else []
    if not checked:
        assert cli("validate", path).exit_code == EX_OK
    for cmd in dict.fromkeys(checked + [command, "render"]):
        res = cli(cmd, path, *(["-o", tmp_path / "out"] if cmd == "render" else []))
        assert res.exit_code == EX_ERROR, res.output
        first = res.output.strip().splitlines()[0]
        assert first.startswith(f"{path}:{line}:{col}: {field}: "), first
        assert text.splitlines()[line - 1][col - 1:].startswith(("bin/", "model:", "2"))


@pytest.mark.parametrize("text, structural, names", [
    ("version: 1\nhardware: rtx4090\nworkload: team_api\nservices:\n  chat: {model: qwen3-8B, engine: llamacpp}\n",
     ["5:35: services.chat.engine: invalid value 'llamacpp'"],
     ["2:11: hardware: unknown hardware profile 'rtx4090' (did you mean 'rtx-4090'?)",
      "3:11: workload: unknown workload profile 'team_api' (did you mean 'team-api'?)",
      "5:17: services.chat.model: unknown model 'qwen3-8B' (did you mean 'qwen3-8b'?)"]),
    ("hardware: rtx-4090\nservices:\n  chat: {model: nosuchmodel}\n",
     ["1:1: version: required field is missing"], ["3:17: services.chat.model: unknown model 'nosuchmodel'"]),
    ("version: 1\nhardware: rtx-4090\nworkload: {context_tokens: 100}\nservices:\n"
     "  chat: {model: qwen3-8b, quant: Q9_K}\n",
     ["3:28: workload.context_tokens: must be at least 256"], ["5:34: services.chat.quant: unknown quant 'Q9_K'"]),
])
def test_validate_reports_unknown_names_beside_structural_errors(text, structural, names, cli, tmp_path):
    """README: validate prints `FILE:LINE:COL: field: message` for every problem. A structural error (a bad enum, a
    missing version, a too-small context) hid the unknown hardware/workload/model/quant names until it was fixed
    (audit a4 #6: one error, then three more)."""
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    res = cli("validate", path)
    assert res.exit_code == EX_ERROR
    lines = res.output.strip().splitlines()
    for want in structural + names:
        assert any(line.startswith(f"{path}:{want}") for line in lines), (want, lines)
    assert len(lines) == len(structural + names), lines
