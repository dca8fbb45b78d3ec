"""`up --containers` without a container engine: a fake Docker client stands in for the API."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from docker.errors import NotFound

from stackgen.errors import LaunchError
from stackgen.run.containers import LABEL, ContainerRunner, ContainerSpec


class _Container:
    def __init__(self, name: str, labels: dict[str, str]):
        self.name, self.labels, self.id, self.removed = name, labels, f"id-{name}", False

    def remove(self, force: bool = False) -> None:
        self.removed = True


class _Client:
    def __init__(self, existing: list[_Container]):
        self.existing = {c.name: c for c in existing}
        self.created: list[str] = []
        self.containers = SimpleNamespace(get=self._get, run=self._run)

    def _get(self, name: str):
        if name not in self.existing:
            raise NotFound(name)
        return self.existing[name]

    def _run(self, image, command, name, **kw):
        self.created.append(name)
        self.existing[name] = _Container(name, kw.get("labels", {}))
        return self.existing[name]


def _runner(stack_file: Path, client: _Client) -> ContainerRunner:
    r = ContainerRunner(stack_file.parent, "c1", stack_file)
    r._client = client
    r._specs["gemma"] = ContainerSpec("stackgen-c1-gemma", "img", ["serve"], {}, {}, {},
                                      {f"{LABEL}.stack-file": str(stack_file), f"{LABEL}.config-hash": "h"})
    return r


def test_a_same_named_container_of_another_stack_file_is_refused_not_removed(tmp_path):
    """Two stack files of one folder without `name:` (or two folders with the same `name:`) get the same container
    name; the second `up --containers` force-removed the first stack's running container. It is refused now, naming
    the owner and the fix, and the other container is left as it is."""
    mine, other = tmp_path / "stack.yaml", tmp_path / "other.yaml"
    mine.write_text("x"), other.write_text("x")
    theirs = _Container("stackgen-c1-gemma", {f"{LABEL}.stack-file": str(other)})
    client = _Client([theirs])
    with pytest.raises(LaunchError) as exc:
        _runner(mine, client).start(SimpleNamespace(name="gemma"), None, 60)
    text = str(exc.value)
    assert f"container stackgen-c1-gemma belongs to stack file {other}" in text, text
    assert "`name:`" in text and f"stackgen down {other}" in text, text
    assert not theirs.removed and client.created == []
    unlabelled = _Container("stackgen-c1-gemma", {})  # someone's own container: never removed either
    with pytest.raises(LaunchError, match="no stackgen stack"):
        _runner(mine, _Client([unlabelled])).start(SimpleNamespace(name="gemma"), None, 60)
    assert not unlabelled.removed


def test_this_stack_files_own_old_container_is_replaced(tmp_path):
    mine = tmp_path / "stack.yaml"
    mine.write_text("x")
    old = _Container("stackgen-c1-gemma", {f"{LABEL}.stack-file": str(mine)})
    r = _runner(mine, _Client([old]))
    r._remove_named("stackgen-c1-gemma")
    assert old.removed
    r._remove_named("stackgen-c1-nothing")  # none of that name: nothing to do


class _EndedRunner:
    """A container runner whose container has ended as `code` says (ContainerRunner.exited's values)."""

    kind = "container"

    def __init__(self, code):
        self.code = code

    def exited(self, st, handle):
        return self.code

    def is_alive(self, st):
        return False

    def log_tail(self, st, lines):
        return []

    def where(self, st):
        return f"container {st.container_name}"


@pytest.mark.parametrize("code, says", [
    (137, "exited with status 137 (SIGKILL: killed (docker/podman kill, or out of memory))"),
    ("container removed", "its container was removed (docker/podman rm?): its exit status went with it"),
    ("OOM-killed (137)", "OOM-killed (137)"),
    (1, "exited with status 1"),
])
def test_status_of_an_ended_container_says_how_it_ended(code, says):
    """Audit L7: a killed container showed `crashed` with only its last log line (empty once removed); status
    --help promises the exit status or signal."""
    from stackgen.run.lifecycle import _status_of
    from stackgen.run.state import ServiceState

    st = ServiceState(name="gemma", engine="llama.cpp", kind="container", host="127.0.0.1", port=19110,
                      config_hash="h", started_at=0.0, container_id="abc", container_name="stackgen-c1-gemma")
    row = _status_of(_EndedRunner(code), st, 1.0)
    assert row.state == "crashed" and row.last_exit == says and row.detail == says, row


def test_a_key_the_engine_would_split_is_refused_once(write_stack, cli, monkeypatch):
    """Review L1: up's preflight (check_keys) refused a key holding ',' for LLAMA_API_KEY, then the container spec
    refused it again in other words, and both were printed."""
    monkeypatch.setenv("FIXF_KEY", "abc,def-longsecret")
    f = write_stack("version: 1\nname: l1\nhardware: cpu-server-64gb\nserve: {api_key_env: FIXF_KEY}\nservices:\n"
                    "  gemma: {model: gemma-3-270m, engine: llama.cpp, port: 19901}\ntargets: [script]\n")
    res = cli("up", "--containers", f)
    assert res.exit_code == 1
    assert res.output.count("the key in FIXF_KEY holds ','") == 1, res.output
    assert "use a key without ','" in res.output and "abc,def" not in res.output
