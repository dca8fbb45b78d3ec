"""A model named by URL has no commit to pin: stack.lock recorded revision None and sha256 None, so a file replaced on
the server passed `lock --check` ("up to date") and the rendered -mu downloaded the new file (audit a1 #13). The lock
now pins what the server says identifies the file (ETag, else Last-Modified) besides its size and says which; `lock
--check` asks the server and reports a replaced file (exit 2). Plain http:// is refused except from this machine."""

from __future__ import annotations

import json

from tools.hub_server import OnDisk, Repo

from stackgen.models.lock import lock_path_for

from test_remote import env_hub, stack_text, write_llama_gguf  # noqa: F401  (env_hub: the fixture)


def serve(hub_repo_files, tmp_path, big: int, etag: str | None, sub: str) -> None:
    (tmp_path / sub).mkdir()
    [p] = write_llama_gguf(tmp_path / sub, "mut-Q4_K_M.gguf", big=big)
    hub_repo_files["org/mut-GGUF"] = Repo({p.name: OnDisk(p)}, etag={p.name: etag} if etag else {})


def test_a_url_is_pinned_by_etag_and_a_replaced_file_is_stale(env_hub, write_stack, cli, tmp_path,  # noqa: F811
                                                                monkeypatch):
    from tools.hub_server import Hub

    hub = Hub()
    serve(hub.repos, tmp_path, 64, '"v1"', "a")
    url = env_hub(hub) + "/org/mut-GGUF/resolve/main/mut-Q4_K_M.gguf"
    f = write_stack(stack_text(url))
    res = cli("lock", f)
    assert res.exit_code == 0, res.output
    [entry] = json.loads(lock_path_for(f).read_text())["models"]
    assert entry["resolved"]["revision"] == 'etag:"v1"' and entry["facts"]["revision"] == 'etag:"v1"'
    size = entry["resolved"]["files"][0]["size"]
    assert entry["resolved"]["notes"] == [f'pinned by the server\'s ETag "v1" and the size, {size} bytes']
    assert cli("lock", f, "--check").exit_code == 0

    serve(hub.repos, tmp_path, 64, '"v2"', "b")  # same size, new content
    res = cli("lock", f, "--check")
    assert res.exit_code == 2, res.output
    assert f'~ {url}: the file changed since it was locked: etag:"v1" -> etag:"v2"' in res.output
    serve(hub.repos, tmp_path, 128, None, "c")  # another size, no ETag
    res = cli("lock", f, "--check")
    assert res.exit_code == 2 and "the file changed since it was locked: size" in res.output

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the lock alone, and a note that the URL was not asked
    requests = len(hub.log)  # Hub.log waits for the answered requests' entries
    res = cli("lock", f, "--check")
    assert res.exit_code == 0 and f"{url}: not checked against the server (HF_HUB_OFFLINE=1 is set)" in res.output
    assert len(hub.log) == requests


def test_without_validators_the_note_says_only_the_size_is_pinned(env_hub, write_stack, cli, tmp_path):  # noqa: F811
    from tools.hub_server import Hub

    hub = Hub()
    serve(hub.repos, tmp_path, 64, None, "a")
    url = env_hub(hub) + "/org/mut-GGUF/resolve/main/mut-Q4_K_M.gguf"
    f = write_stack(stack_text(url))
    assert cli("lock", f).exit_code == 0
    [entry] = json.loads(lock_path_for(f).read_text())["models"]
    assert entry["resolved"]["revision"] is None
    assert "pinned by the size only" in entry["resolved"]["notes"][0]


def test_plain_http_is_refused_off_this_machine(write_stack, cli):
    f = write_stack(stack_text("http://models.example.org/m/x-Q4_K_M.gguf"))
    res = cli("validate", f)
    assert res.exit_code == 1
    assert "stack.yaml:5:12: services.chat.model: http://models.example.org/m/x-Q4_K_M.gguf is plain http://" \
        in res.output
    assert "write the https:// URL of the file" in res.output
