"""A model named by URL is pinned in stack.lock by its size and the server's ETag (hub.url_pin), but llama-server -mu
downloads whatever the URL serves when it starts: `lock --check` saw a replaced file, `up` did not and started the
engine on a file the plan never sized. `up` now asks the server once (a one-byte range request, lock.check_url_pin)
before it starts anything: a changed file is refused with what changed and `stackgen lock --upgrade`; offline or
unreachable it warns, unless the engine's cached copy (what it would load) differs from the pin."""

from __future__ import annotations

import socket
import textwrap
import time

import pytest

from fakes.openai_server import stop_fake_stacks, write_engine
from stackgen.cli import load_and_plan
from stackgen.models.lock import lock_path_for
from stackgen.run.preflight import check_url_pins
from stackgen.run.state import StateDir
from tools.hub_server import Hub, OnDisk, Repo

from test_remote import env_hub, write_llama_gguf  # noqa: F401  (env_hub: the fixture)

NAME = "mut-Q4_K_M.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(hub: Hub, folder, big: int, etag: str | None) -> int:
    """The file the URL serves now (a new folder each time: a new file); its size in bytes."""
    folder.mkdir()
    [p] = write_llama_gguf(folder, NAME, big=big)
    hub.repos["org/mut-GGUF"] = Repo({p.name: OnDisk(p)}, etag={p.name: etag} if etag else {})
    return p.stat().st_size


@pytest.fixture
def locked(env_hub, tmp_path, cli, monkeypatch):  # noqa: F811
    """A stack whose llama.cpp service (the fake engine) names a GGUF by URL, locked at ETag "v1"."""
    monkeypatch.setenv("FAKE_CHILD_PID", str(tmp_path / "child.pid"))
    monkeypatch.delenv("LLAMA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # no cached copy unless a test writes one
    hub = Hub()
    size = serve(hub, tmp_path / "v1", 64, '"v1"')
    url = env_hub(hub) + f"/org/mut-GGUF/resolve/main/{NAME}"
    stack = tmp_path / "stack.yaml"
    stack.write_text(textwrap.dedent(f"""\
        version: 1
        name: pin
        hardware: cpu-laptop-16gb
        workload: {{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 16, output_tokens: 16}}
        services:
          chat:
            model: {url}
            engine: llama.cpp
            binary: {write_engine(tmp_path / "fake-llama-server")}
            port: {free_port()}
        """), encoding="utf-8")
    res = cli("lock", stack)
    assert res.exit_code == 0 and lock_path_for(stack).is_file(), res.output
    yield hub, url, stack, size
    stop_fake_stacks([stack], tmp_path)


def ranges(hub: Hub, url: str) -> list[str]:
    """The Range of each request for `url`, once the log has settled (the server logs a request after it sent the
    answer, so a client may return before its entry is in)."""
    count = -1
    while count != len(hub.log):
        count = len(hub.log)
        time.sleep(0.2)
    path = url.split("/", 3)[3]
    return [e["range"] for e in hub.log if e["path"] == "/" + path]


def pins(stack, env):
    _, plan = load_and_plan(stack, None)
    return check_url_pins(list(plan.services), stack, env)


def test_up_refuses_a_url_whose_file_changed_since_it_was_locked(locked, cli, tmp_path):
    hub, url, stack, _ = locked
    serve(hub, tmp_path / "v2", 64, '"v2"')  # same size, new content
    before = len(ranges(hub, url))
    res = cli("up", stack)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert (f'service chat: {url} changed since stack.lock pinned it (etag:"v1" -> etag:"v2"): llama.cpp '
            "(llama-server) would download a file the plan did not size; run `stackgen lock --upgrade") in res.output
    assert ranges(hub, url)[before:] == ["bytes=0-0"]  # one range request
    assert StateDir(stack).load().services == {}  # nothing started
    serve(hub, tmp_path / "v3", 128, None)  # another size, no ETag
    res = cli("up", stack)
    assert res.exit_code != 0 and "changed since stack.lock pinned it (size " in res.output


def test_up_starts_an_unchanged_url_and_warns_only_when_it_cannot_ask(locked, cli, monkeypatch):
    hub, url, stack, size = locked
    res = cli("up", stack)
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert cli("down", stack).exit_code == 0
    monkeypatch.setenv("STACKGEN_OFFLINE", "1")
    asked = len(ranges(hub, url))
    res = cli("up", stack)
    assert res.exit_code == 0, res.output
    assert (f"warning: service chat: {url}: not checked against the server (STACKGEN_OFFLINE=1 is set); llama.cpp "
            "(llama-server) downloads what the URL serves when it starts, which may not be the file stack.lock pinned "
            f'({size} bytes, etag:"v1")') in res.output
    assert len(ranges(hub, url)) == asked  # offline: the server is not asked


def test_offline_or_unreachable_a_cached_copy_holds_the_engine_to_the_pin(locked, tmp_path, monkeypatch):
    hub, url, stack, size = locked
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert pins(stack, env) == ([], [])  # online, unchanged
    hub.repos.clear()  # the server no longer has it: unreachable for this file
    problems, [warning] = pins(stack, env)
    assert not problems and f"service chat: {url}: could not check it against the server" in warning
    cached = tmp_path / "xdg" / "llama.cpp" / NAME  # where llama-server -mu keeps its download
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0" * size)  # the locked size: llama-server loads it, nothing to warn about
    assert pins(stack, env) == ([], [])
    cached.write_bytes(b"\0" * (size + 1))
    [problem], warnings = pins(stack, {**env, "STACKGEN_OFFLINE": "1"})
    assert not warnings
    assert (f"service chat: {url}: not checked against the server (STACKGEN_OFFLINE=1 is set), and the copy "
            f"llama.cpp (llama-server) would load, {cached}, is {size + 1} bytes where stack.lock pinned {size}: the "
            "file changed since it was locked; run `stackgen lock --upgrade") in problem
    # LLAMA_CACHE names the folder itself
    assert pins(stack, {"LLAMA_CACHE": str(cached.parent), "STACKGEN_OFFLINE": "1"})[0] == [problem]
