"""Tables through rich on a real pseudo-terminal: colour on a colour terminal, none with NO_COLOR or TERM=dumb, and
no escape codes at all (and no folding at 80 columns) when the output is a pipe, as in CI logs."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from stackgen.run.state import StateDir

REPO = Path(__file__).resolve().parents[2]
RED = "\x1b[31m"


def _stack_with_a_crashed_service(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nhardware: cpu-laptop-16gb\nservices:\n  chat: {model: gemma-3-270m, engine: llama.cpp}\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    sd = StateDir(path)
    sd.ensure()
    entry = {"name": "chat", "engine": "llama.cpp", "kind": "process", "host": "127.0.0.1", "port": 18080,
             "config_hash": "x", "started_at": 1.0, "pid": gone.pid, "pgid": gone.pid, "create_time": 1.0,
             "argv": ["/usr/bin/llama-server"], "service_id": "0" * 32, "log": str(sd.log_path("chat")), "model": "gemma-3-270m-a-long-model-name"
             + "-x" * 40, **extra}
    sd.state_file.write_text(json.dumps({"version": 2, "stack": "t", "file": str(sd.stack_file),
                                         "services": {"chat": entry}}))
    sd.log_path("chat").write_text("main: the last thing the engine said, " + "x" * 40 + " END\n")
    return path


def _on_terminal(args: list[str], env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS")}
    proc = subprocess.Popen([sys.executable, "-m", "stackgen", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**base, "PYTHONPATH": str(REPO), **env}, cwd=str(REPO), close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("env, colour", [
    ({"TERM": "xterm-256color"}, True),
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, False),
    ({"TERM": "dumb"}, False),
])
def test_status_colour_follows_the_terminal(tmp_path, env, colour):
    path = _stack_with_a_crashed_service(tmp_path)
    out = _on_terminal(["status", str(path)], {**env, "COLUMNS": "100"})
    assert "crashed" in out, out
    assert (RED in out) == colour, repr(out)


def test_status_in_a_pipe_has_no_escapes_and_is_not_folded(tmp_path):
    path = _stack_with_a_crashed_service(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    r = subprocess.run([sys.executable, "-m", "stackgen", "status", str(path)], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}, cwd=str(REPO), timeout=60)
    assert r.returncode == 1 and "\x1b" not in r.stdout + r.stderr, repr(r.stdout)
    header, row = r.stdout.splitlines()[:2]
    assert header.split() == ["SERVICE", "ENGINE", "STATE", "WHERE", "PORT", "UPTIME", "RSS", "RESTART", "DETAIL"]
    assert row.split()[:3] == ["chat", "llama.cpp", "crashed"]
    # one row per service, wider than 80 columns, nothing cut: rich would fold or ellipsize at its default width
    assert row.endswith("x END") and len(row) > 80 and "\u2026" not in r.stdout, r.stdout


def test_status_is_readable_at_80_columns(tmp_path):
    """At 80 columns DETAIL printed one character per line (the other columns took the width): now nothing is cut,
    and what does not fit goes below the table, one line per service, wrapped."""
    # a fleet's balancer: its ENGINE cell is "haproxy (llama.cpp)", so the fixed columns take 79 of the 80
    path = _stack_with_a_crashed_service(tmp_path, unit_role="balancer", unit_of="chat")
    out = _on_terminal(["status", str(path)], {"TERM": "dumb", "COLUMNS": "80"}).replace("\r", "")
    lines = out.splitlines()
    assert all(len(ln) <= 80 for ln in lines), out
    assert not [ln for ln in lines if len(ln.strip()) == 1], out  # no column folded one character per line
    header = next(ln for ln in lines if ln.startswith("SERVICE"))
    row = lines[lines.index(header) + 1]
    assert row.split()[:4] == ["chat", "haproxy", "(llama.cpp)", "crashed"] and "18080" in row.split(), out
    assert "\u2026" not in out and "chat: " in out and "x END" in " ".join(lines), out


def test_print_rows_moves_columns_below_instead_of_cutting():
    import io

    from rich.console import Console

    from stackgen.commands._console import print_rows

    buf = io.StringIO()
    c = Console(file=buf, width=80, highlight=False, soft_wrap=False, color_system=None)
    headers = ["NAME", "STACK", "ENGINE", "MODEL", "PORT", "UPTIME", "RSS", "HEALTH", "CTX x SLOTS", "RESTART"]
    print_rows(c, headers, [["gemma", "examples/quickstart/stack.yaml", "llama.cpp", "gemma-3-270m-Q4_K_M", "18181",
                             "2.6s", "423 MiB", "[green]running[/green]", "4096x4", "on-failure 0/5"]],
               movable=["STACK", "MODEL", "CTX x SLOTS"])
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["NAME", "ENGINE", "PORT", "UPTIME", "RSS", "HEALTH", "CTX", "x", "SLOTS", "RESTART"]
    assert lines[1].split()[:3] == ["gemma", "llama.cpp", "18181"] and lines[1].endswith("on-failure 0/5")
    assert lines[2] == "gemma: stack examples/quickstart/stack.yaml; model gemma-3-270m-Q4_K_M"
    assert all(len(ln) <= 80 for ln in lines) and "\u2026" not in buf.getvalue()


def test_plan_header_names_a_detected_host_once(cli, write_stack, cpu_host, tmp_path):
    """audit a4 #12: "on detected: CPU-only (2 cores, 23.54 GiB RAM): CPU-only (2 cores, 23.54 GiB RAM)"; a named
    profile keeps its name beside the description."""
    facts = tmp_path / "host.json"
    facts.write_text(cpu_host.to_json())
    stack = write_stack("version: 1\nhardware: detect\nservices:\n  chat: {model: gemma-3-270m}\n")
    desc = cpu_host.hardware.label()
    head = cli("plan", stack, "--host-facts", facts).output.splitlines()[0]
    assert head.endswith(f" on detected: {desc}") and head.count(desc) == 1, head
    named = write_stack("version: 1\nhardware: rtx-4090\nservices:\n  chat: {model: gemma-3-270m}\n", "named.yaml")
    head = cli("plan", named).output.splitlines()[0]
    assert head.startswith("stack ") and " on rtx-4090: " in head, head
