"""`lock --check` answers from the lock alone: a model the lock has no entry for is drift (exit 2, as the README says
for a stale lock), found without the network; it exited 1 offline, and online spent ~4 s on retries when the
registry was unreachable (audit a1 #11)."""

from __future__ import annotations

import time

from stackgen.models.lock import lock_path_for

from test_remote import _gguf_hub, env_hub, stack_text  # noqa: F401  (env_hub: the fixture)

TWO = stack_text("hf:org/tiny-GGUF:Q4_K_M", "  other:\n    model: hf:org/tiny-GGUF:F16\n")


def test_a_model_the_lock_lacks_is_stale_offline_and_asks_nothing(env_hub, write_stack, cli, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    f = write_stack(stack_text("hf:org/tiny-GGUF:Q4_K_M"))
    assert cli("lock", f).exit_code == 0
    before = lock_path_for(f).read_text()
    f.write_text(TWO)
    requests = len(hub.log)  # Hub.log waits for the answered requests' entries
    for offline in ("1", None):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        res = cli("lock", f, "--check")
        assert res.exit_code == 2, res.output
        assert "+ hf:org/tiny-GGUF:F16: stack.lock has no entry for it" in res.output
        assert f"run `stackgen lock {f}`" in res.output
    assert len(hub.log) == requests and lock_path_for(f).read_text() == before  # no request, nothing written


def test_no_lock_is_stale_without_the_network(write_stack, cli, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would retry and fail
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    f = write_stack(TWO)
    start = time.monotonic()
    res = cli("lock", f, "--check")
    assert res.exit_code == 2, res.output
    assert "(there is no lock file)" in res.output and "+ hf:org/tiny-GGUF:Q4_K_M" in res.output
    assert time.monotonic() - start < 2 and not lock_path_for(f).exists()
