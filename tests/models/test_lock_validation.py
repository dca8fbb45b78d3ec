"""A lock is committed and merged by hand: each figure in it is checked before a plan uses it, and a bad one is a
`stack.lock:line:col: field: message (fix)` error, never "internal error" or a negative KV cache (audit a1 #10).
`lock --upgrade`, the fix those errors give, rebuilds the lock from the stack without reading the bad one."""

from __future__ import annotations

import json

import pytest

from stackgen.models.lock import LockError, lock_path_for, read_lock

from test_remote import _gguf_hub, env_hub, stack_text  # noqa: F401  (env_hub: the fixture)

REF = "hf:org/tiny-GGUF:Q4_K_M"


@pytest.fixture
def locked(env_hub, write_stack, cli, tmp_path):  # noqa: F811
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    f = write_stack(stack_text(REF))
    res = cli("lock", f)
    assert res.exit_code == 0, res.output
    return f


def edit_facts(lock, **changes) -> None:
    doc = json.loads(lock.read_text())
    facts = doc["models"][0]["facts"]
    for k, v in changes.items():
        if v is KeyError:
            del facts[k]
        else:
            facts[k] = v
    lock.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def line_of(lock, key: str) -> int:
    return next(i for i, line in enumerate(lock.read_text().splitlines(), 1) if line.strip().startswith(f'"{key}"'))


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"layers": "abc"}, "layers", '"abc" is not a whole number'),
    ({"layers": None}, "layers", "null is not a whole number"),
    ({"layers": -3}, "layers", "-3 is less than 1"),  # planned `0/-3 layers on GPU` before
    ({"kv_heads": -8}, "kv_heads", "-8 is less than 0"),  # planned `KV cache (f16) -1.07 GB` before
    ({"gguf_sizes": {"F16": "big"}}, "gguf_sizes", 'F16: "big" is not a whole number'),
    ({"quant": 4}, "quant", "4 is not a text"),
])
def test_a_bad_figure_is_an_error_at_its_line(locked, cli, monkeypatch, changes, field, message):
    lock = lock_path_for(locked)
    edit_facts(lock, **changes)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = cli("plan", locked)
    assert res.exit_code == 1
    assert "internal error" not in res.output
    assert f"{lock}:{line_of(lock, field)}:9: models[0].facts.{field}: {message}" in res.output
    assert f"run `stackgen lock --upgrade {locked}` to rebuild it from the stack" in res.output


def test_a_missing_key_names_it(locked):
    lock = lock_path_for(locked)
    edit_facts(lock, layers=KeyError)
    with pytest.raises(LockError, match=r"models\[0\]\.facts\.layers: missing"):
        read_lock(lock)


def test_an_unknown_version_names_the_line(locked):
    lock = lock_path_for(locked)
    lock.write_text(lock.read_text().replace('"version": 1', '"version": 2'))
    with pytest.raises(LockError) as info:
        read_lock(lock, "stack.yaml")
    assert f"{lock}:{line_of(lock, 'version')}:3: version: 2 is not a lock version this stackgen reads, 1" \
        in str(info.value)


@pytest.mark.parametrize("damage", ["version", "layers", "garbage"])
def test_lock_upgrade_rebuilds_a_lock_it_cannot_read(locked, cli, damage):
    lock = lock_path_for(locked)
    good = lock.read_text()
    if damage == "version":
        lock.write_text(good.replace('"version": 1', '"version": 2'))
    elif damage == "layers":
        edit_facts(lock, layers=KeyError)
    else:
        lock.write_text("<<<<<<< HEAD\n" + good)
    assert cli("lock", locked).exit_code == 1  # without --upgrade the bad lock is an error
    res = cli("lock", locked, "--upgrade")
    assert res.exit_code == 0, res.output
    assert lock.read_text() == good
    assert cli("lock", locked, "--check").exit_code == 0


def test_a_locked_long_context_is_read_back_as_one(locked):
    """facts_to_json writes LongContext as a JSON mapping; the planner reads its attributes (lc.max_context), so a
    locked model with YaRN asked past its trained context stopped with "internal error" (a dict has no max_context)."""
    from dataclasses import replace

    from stackgen.models.facts import LongContext
    from stackgen.models.lock import LockEntry, facts_to_json
    from stackgen.plan.memory import context_for

    entry = read_lock(lock_path_for(locked))[(REF, "")]
    facts = entry.model_facts()
    yarn = LongContext("yarn", 4.0, facts.context_length, "GGUF rope.scaling.*", 10000.0, True)
    stored = LockEntry(entry.reference, entry.quant, entry.resolved, facts_to_json(replace(facts, long_context=yarn)))
    assert isinstance(stored.facts["long_context"], dict)
    back = stored.model_facts()
    assert back.long_context == yarn
    assert context_for(back, 2 * facts.context_length) == (2 * facts.context_length, None)
