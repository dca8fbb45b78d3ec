"""stack.lock: the remote models of a stack, resolved once and pinned, so plans and renders need no network.

The lock sits beside the stack (``stack.yaml`` -> ``stack.lock``; ``prod.yaml`` -> ``prod.lock``). Per remote model
reference (and ``quant:``) it records where the facts came from (repository, revision sha or manifest digest, the
exact files with sizes and sha256 where the registry gives them, bytes per dtype) and the facts themselves, as
the planner uses them. When the lock is present, plans read only it; a reference it lacks is an error that says to
run ``stackgen lock``. The file is JSON with sorted keys and no timestamps: the same resolution writes the same
bytes, so it can be committed and reviewed (like uv.lock or .terraform.lock.hcl).
"""

from __future__ import annotations

import collections.abc
import json
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Mapping

from stackgen import datafile
from stackgen.errors import ModelError

__all__ = ["LOCK_VERSION", "LockError", "LockEntry", "RemoteModels", "lock_path_for", "read_lock", "dump_lock",
           "diff_entries", "facts_from_resolved"]

LOCK_VERSION = 1
_MAPPINGS = ("gguf_sizes", "hf_sizes", "mlx_sizes", "hf_variants", "gguf_variants")


class LockError(ModelError):
    """The lock file is unreadable, or does not match the stack."""


def lock_path_for(stack_path: Path) -> Path:
    return stack_path.with_suffix(".lock")


@dataclass(frozen=True)
class LockEntry:
    reference: str
    quant: str | None
    resolved: Mapping[str, Any]  # kind, repo, revision, url, files, weights_bytes, format, dtype_bytes, notes
    facts: Mapping[str, Any]  # ModelFacts fields

    @property
    def key(self) -> tuple[str, str]:
        return (self.reference, self.quant or "")

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "quant": self.quant, "resolved": dict(self.resolved),
                "facts": dict(self.facts)}

    def model_facts(self):
        from stackgen.models.facts import LongContext, ModelFacts

        names = {f.name for f in fields(ModelFacts)}
        data = {k: v for k, v in self.facts.items() if k in names}
        for k in _MAPPINGS:
            data[k] = dict(data.get(k) or {})
        if "kv_heads_per_layer" in data:
            data["kv_heads_per_layer"] = tuple(int(k) for k in data["kv_heads_per_layer"] or ())
        if isinstance(data.get("long_context"), Mapping):  # JSON keeps it as a mapping; the planner reads attributes
            data["long_context"] = LongContext(**data["long_context"])
        return pin_gguf_url(ModelFacts(**data), self.resolved)


def facts_to_json(facts) -> dict[str, Any]:
    out = asdict(facts)
    for k in _MAPPINGS:
        out[k] = dict(sorted(dict(out[k]).items()))
    for k in ("hf_variants", "gguf_variants"):
        if not out[k]:  # catalog-only (a remote reference is its own checkpoint): locks stay as written
            del out[k]
    if out.get("ref") is None:  # a catalog name's reference; remote facts have none, so locks stay as written
        out.pop("ref", None)
    for k in ("kv_heads_per_layer", "recurrent_layers", "recurrent_state_bytes", "kv_k_only"):
        if not out.get(k):  # only hybrid, recurrent and MLA models have them: other locks stay as written
            out.pop(k, None)
        elif k == "kv_heads_per_layer":
            out[k] = list(out[k])
    return out


def facts_from_resolved(reference: str, quant: str | None, r) -> Any:
    """ModelFacts of a hub.Resolved; raises LockError when the stack's `quant:` contradicts the checkpoint."""
    from dataclasses import replace

    from stackgen.models.facts import HF_BYTES_PER_PARAM, ModelFacts

    name = (r.repo or r.files[0].name).rsplit("/", 1)[-1].removesuffix(".gguf")
    facts = ModelFacts.from_summary(name, r.source, None, r.summary)  # type: ignore[arg-type]
    if r.kind == "gguf":
        if quant and r.fmt and quant != r.fmt and r.source != "gguf":
            raise LockError(f"{reference} is {r.fmt}, not {quant}: remove `quant:` or name a tag that has {quant}")
        sizes = {r.fmt: r.weights_bytes} if r.fmt else {}
        return replace(facts, quant=r.fmt, gguf_sizes=sizes, gguf_repo=r.repo if r.source == "gguf" else None,
                       ollama=r.ollama, url=r.url, revision=r.revision, sizes_from="header")
    if r.fmt is None or r.fmt not in HF_BYTES_PER_PARAM:
        raise LockError(f"{reference}: its quantization ({r.summary.get('quantization')}) is not one stackgen plans "
                        f"(bf16, fp16, fp32, fp8, awq, gptq)")
    if quant and quant != r.fmt:
        raise LockError(f"{reference} is a {r.fmt} checkpoint, not {quant}: the plan must size the bytes the engine "
                        f"will load; remove `quant:` or name a {quant} repository (e.g. one ending in -{quant.upper()})")
    from stackgen.models.hf import checkpoint_sizes

    sizes = checkpoint_sizes(r.fmt, r.dtype_bytes) if r.dtype_bytes else {r.fmt: r.weights_bytes}
    return replace(facts, quant=r.fmt, hf_sizes=sizes, hf_repo=r.repo, revision=r.revision, sizes_from="header")


def entry_from_resolved(reference: str, quant: str | None, r, facts) -> LockEntry:
    resolved = {"kind": r.kind, "repo": r.repo, "revision": r.revision, "url": r.url, "format": r.fmt,
                "weights_bytes": r.weights_bytes, "dtype_bytes": dict(sorted(r.dtype_bytes.items())),
                "files": [f.to_json() for f in r.files], "notes": list(r.notes)}
    return LockEntry(reference, quant, resolved, facts_to_json(facts))


def pin_gguf_url(facts, resolved: Mapping[str, Any]):
    """A GGUF from a Hugging Face repo, served by URL at the locked commit. llama-server's `-hf repo:QUANT` takes no
    revision (it fetches the branch head), but `-mu` downloads any URL, and the Hub's resolve URL takes a commit sha:
    /{repo}/resolve/{sha}/{file}. The first part of a split file is named; llama-server fetches the other parts from
    the same URL pattern. The public endpoint, not HF_ENDPOINT: the lock and the artifacts are the same everywhere."""
    from dataclasses import replace

    from stackgen.models.remote import DEFAULT_HF_ENDPOINT

    files = resolved.get("files") or []
    repo, sha = resolved.get("repo"), resolved.get("revision")
    if (facts.source != "gguf" or facts.url or resolved.get("kind") != "gguf" or not repo or not sha or not files
            or not isinstance(files[0], Mapping) or not files[0].get("name")):
        return facts
    name = urllib.parse.quote(str(files[0]["name"]))
    return replace(facts, url=f"{DEFAULT_HF_ENDPOINT}/{repo}/resolve/{sha}/{name}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def control_fields(value: Any, path: tuple = ()) -> list[tuple]:
    """The paths of every string (keys included) in `value` with a control character (newline, NUL, tab, ...). Lock
    facts reach unit files, Modelfiles and ConfigMaps as stack.yaml values do, which refuse them at the door: a
    newline in an `ollama:` name wrote `[Service]` / `ExecStartPre=+...` into a systemd unit (audit a2 #5)."""
    if isinstance(value, Mapping):
        return [hit for k, v in value.items()
                for hit in ([path + (k,)] if isinstance(k, str) and _CONTROL.search(k) else [])
                + control_fields(v, path + (k,))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in control_fields(v, path + (i,))]
    return [path] if isinstance(value, str) and _CONTROL.search(value) else []


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def read_lock(path: Path, stack: str | None = None) -> dict[tuple[str, str], LockEntry]:
    """The entries of a lock file. Every figure is checked (type and range) before a plan uses it: a lock is committed
    and merged by hand, and a bad value must be an error naming its place, not a crash or a negative KV cache.
    `stack`: the stack file, for the fix the errors give (`stackgen lock --upgrade STACK` rebuilds it)."""
    fix = f"run `stackgen lock --upgrade {stack or 'STACK'}` to rebuild it from the stack"
    try:
        text = datafile.read_text(path, "the lock file", fix)
        data = datafile.parse_json(text, path, "the lock file", fix)
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock file: {exc.strerror or exc}") from None
    except datafile.DataFileError as exc:
        raise LockError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LockError(f"{path}: not a stackgen lock file ({exc}); {fix}") from None
    where = _Where(path, text)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise LockError(f"{where.at(())}: not a stackgen lock file (no `models` list); {fix}")
    if data.get("version") != LOCK_VERSION:
        raise LockError(f"{where.at(('version',))}: version: {json.dumps(data.get('version'))} is not a lock version this "
                        f"stackgen reads, {LOCK_VERSION} ({fix})")
    out = {}
    for i, m in enumerate(data["models"]):
        at: tuple[str | int, ...] = ("models", i)
        if not isinstance(m, dict):
            raise where.error(at, "not a mapping", fix)
        for key, kind in (("reference", str), ("resolved", dict), ("facts", dict)):
            if not isinstance(m.get(key), kind):
                what = "missing" if key not in m else f"{json.dumps(m[key])} is not a {'text' if kind is str else 'mapping'}"
                raise where.error(at + (key,), what, fix)
        if m.get("quant") is not None and not isinstance(m["quant"], str):
            raise where.error(at + ("quant",), f"{json.dumps(m['quant'])} is not a quant name", fix)
        _check_resolved(where, at + ("resolved",), m["resolved"], fix)
        _check_facts(where, at + ("facts",), m["facts"], fix)
        e = LockEntry(m["reference"], m.get("quant"), dict(m["resolved"]), dict(m["facts"]))
        try:
            e.model_facts()
        except (KeyError, TypeError, ValueError) as exc:
            raise where.error(at + ("facts",), f"malformed ({exc})", fix) from None
        bad = control_fields(m)
        if bad:
            raise where.error(at + bad[0], "control characters (newline, NUL, ...) are not allowed here", fix)
        out[e.key] = e
    return out


class _Where:
    """Positions in a lock file (JSON is YAML, whose loader keeps line:col) for errors: file:line:col: field."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text, self._doc = path, text, None

    def at(self, field_path: tuple[str | int, ...]) -> str:
        from stackgen.spec.yaml_nodes import YamlError, load_document

        if self._doc is None:
            try:
                self._doc = load_document(self.text)
            except YamlError:
                return str(self.path)
        mark = self._doc.mark_for(field_path, key=True)
        return f"{self.path}:{mark.line}:{mark.col}"

    def error(self, field_path: tuple[str | int, ...], message: str, fix: str) -> LockError:
        name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(field_path))
        return LockError(f"{self.at(field_path)}: {name}: {message} ({fix})")


# Figures a model cannot have zero of; every other count or byte size may be 0 (not known, or none).
_POSITIVE = frozenset({"layers", "hidden", "context_length", "params"})


def _check_facts(where: _Where, at: tuple[str | int, ...], facts: Mapping[str, Any], fix: str) -> None:
    """Each ModelFacts field the entry holds has its declared type, and counts and sizes are not negative."""
    from stackgen.models.facts import ModelFacts

    problem = _fields_problem(facts, ModelFacts)
    if problem:
        raise where.error(at + problem[0], problem[1], fix)


def _fields_problem(value: Mapping[str, Any], cls: type) -> tuple[tuple[str, ...], str] | None:
    """(the field, why) for the first field of dataclass `cls` that `value` (from JSON) lacks or holds wrongly."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name not in value:
            if f.default is MISSING and f.default_factory is MISSING:
                return (f.name,), "missing"
            continue
        problem = _type_problem(value[f.name], hints[f.name], f.name in _POSITIVE)
        if problem:
            return (f.name,), problem
    return None


def _type_problem(value: Any, hint: Any, positive: bool = False) -> str | None:
    """Why `value` (from JSON) is not a `hint`, or None. Types this does not know are accepted as they are."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _type_problem(value, inner[0], positive) if len(inner) == 1 else None
    if hint is bool:
        return None if isinstance(value, bool) else f"{json.dumps(value)} is not true or false"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{json.dumps(value)} is not a whole number"
        least = 1 if positive else 0
        return None if value >= least else f"{value} is less than {least}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        return None if ok else f"{json.dumps(value)} is not a number >= 0"
    if hint is str:
        return None if isinstance(value, str) else f"{json.dumps(value)} is not a text"
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return f"{json.dumps(value)} is not a mapping"
        for k, v in value.items():
            problem = _type_problem(v, args[1]) if len(args) == 2 else None
            if problem:
                return f"{k}: {problem}"
        return None
    if isinstance(hint, type) and is_dataclass(hint):
        if not isinstance(value, dict):
            return f"{json.dumps(value)} is not a mapping"
        unknown = sorted(set(value) - {f.name for f in fields(hint)})
        if unknown:
            return f"{unknown[0]}: not a field of it"
        problem = _fields_problem(value, hint)
        if problem is None:
            return None
        return f"{problem[0][0]}: {problem[1]}" if problem[0] else problem[1]
    return None


def _check_resolved(where: _Where, at: tuple[str | int, ...], resolved: Mapping[str, Any], fix: str) -> None:
    """What `lock --upgrade` and `--check` compare: the weights' size and the file list (name, size, sha256)."""
    w = resolved.get("weights_bytes")
    if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
        raise where.error(at + ("weights_bytes",), f"{json.dumps(w)} is not a size in bytes", fix)
    files = resolved.get("files", [])
    if not isinstance(files, list):
        raise where.error(at + ("files",), f"{json.dumps(files)} is not a list", fix)
    for j, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise where.error(at + ("files", j), "not a mapping with a `name`", fix)
        size = f.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < -1):
            raise where.error(at + ("files", j, "size"), f"{json.dumps(size)} is not a size in bytes", fix)


def dump_lock(entries: Mapping[tuple[str, str], LockEntry]) -> str:
    doc = {"version": LOCK_VERSION,
           "_comment": "Generated by `stackgen lock`: the remote models of the stack, pinned. Commit it; "
                       "`stackgen lock --upgrade` re-resolves.",
           "models": [entries[k].to_json() for k in sorted(entries)]}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, entries: Mapping[tuple[str, str], LockEntry]) -> None:
    """Atomic: a reader never sees half a lock; a random temp name, so no planted symlink is written through."""
    from stackgen.run.state import write_new

    write_new(path, dump_lock(entries), shared=True)


def diff_entries(old: Mapping[tuple[str, str], LockEntry], new: Mapping[tuple[str, str], LockEntry]) -> list[str]:
    """What `lock --upgrade` changed, one line per difference."""
    lines = []
    for key in sorted(set(old) | set(new)):
        label = key[0] + (f" (quant {key[1]})" if key[1] else "")
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            lines.append(f"{'+' if a is None else '-'} {label}")
            continue
        for k in ("revision", "weights_bytes", "format"):
            if a.resolved.get(k) != b.resolved.get(k):
                lines.append(f"~ {label}: {k} {a.resolved.get(k)} -> {b.resolved.get(k)}")
        fa = {f["name"]: f for f in a.resolved.get("files") or []}
        fb = {f["name"]: f for f in b.resolved.get("files") or []}
        for n in sorted(set(fa) | set(fb)):
            if fa.get(n) != fb.get(n):
                lines.append(f"~ {label}: file {n}: {_file_text(fa.get(n))} -> {_file_text(fb.get(n))}")
        for k in sorted(set(a.facts) | set(b.facts)):
            if k != "revision" and a.facts.get(k) != b.facts.get(k):
                lines.append(f"~ {label}: {k} {a.facts.get(k)!r} -> {b.facts.get(k)!r}")
    return lines


@dataclass(frozen=True)
class UrlPinCheck:
    """One URL model's locked pin against what its server serves now (check_url_pin)."""

    reference: str
    url: str
    locked_size: int | None
    change: str = ""  # what changed since it was locked ("size 64 -> 128 bytes", 'etag:"v1" -> etag:"v2"'); "": same
    unchecked: str = ""  # why the server was not asked or did not answer ("": it answered)


def check_url_pin(entry: LockEntry, client) -> UrlPinCheck | None:
    """A one-byte range request for a model named by URL, which has no commit: its size (Content-Range) and validator
    (ETag or Last-Modified, as hub.url_pin recorded it) against the lock's. None for an entry that is not a URL.
    Offline (STACKGEN_OFFLINE / HF_HUB_OFFLINE), the server is not asked."""
    from stackgen.models.hub import url_pin
    from stackgen.models.remote import RemoteError, offline_requested

    r = entry.resolved
    url = r.get("url")
    if r.get("kind") != "gguf" or not url:
        return None
    was_size = (r.get("files") or [{}])[0].get("size")
    check = UrlPinCheck(entry.reference, url, was_size)
    offline = offline_requested(client.env)
    if offline:
        return replace(check, unchecked=f"not checked against the server ({offline}=1 is set)")
    try:
        resp = client.get(url, url, byte_range=(0, 0))
    except RemoteError as exc:
        return replace(check, unchecked=f"could not check it against the server: {exc}")
    total = (resp.headers.get("content-range") or "").rpartition("/")[2]
    size = int(total) if total.isdigit() else int(resp.headers.get("content-length") or -1)
    validators = {k: resp.headers[k] for k in ("etag", "last-modified") if resp.headers.get(k)}
    revision = url_pin(validators, size)[0]
    if size != was_size:
        return replace(check, change=f"size {was_size} -> {size} bytes")
    if r.get("revision") and revision != r.get("revision"):
        return replace(check, change=f"{r.get('revision')} -> {revision}")
    return check


def url_pin_changes(entries: Mapping[tuple[str, str], LockEntry], client) -> tuple[list[str], list[str]]:
    """`lock --check` for models named by URL (check_url_pin for each). Returns (changes: the file was replaced since
    it was locked, notes: what could not be checked). Offline: notes only."""
    changes: list[str] = []
    notes: list[str] = []
    for key in sorted(entries):
        check = check_url_pin(entries[key], client)
        if check is None:
            continue
        if check.unchecked:
            notes.append(f"{check.url}: {check.unchecked}")
        elif check.change:
            changes.append(f"~ {key[0]}: the file changed since it was locked: {check.change}")
    return changes, notes


def _file_text(f: Mapping[str, Any] | None) -> str:
    return "absent" if f is None else f"{f.get('size')} bytes" + (f", sha256 {f['sha256'][:12]}" if f.get("sha256") else "")


@dataclass
class RemoteModels:
    """The remote references of one stack. mode: `auto` (the lock when it exists, else the network), `lock`
    (refresh: keep locked entries, resolve only missing ones), `upgrade` (re-resolve everything) or `check` (the lock
    only, never the network: a reference it lacks is recorded in `missing` and raised as a LockError)."""

    lock_path: Path
    stack_display: str = "stack.yaml"
    mode: str = "auto"
    client_factory: Callable[[], Any] | None = None
    locked: dict[tuple[str, str], LockEntry] | None = None
    used: dict[tuple[str, str], LockEntry] = field(default_factory=dict)
    resolved_now: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # `check`: references the lock has no entry for
    # Catalog names whose `ref:` to resolve and pin (`stackgen lock --catalog`): True for all, or the set of references
    # to re-pin (`lock --upgrade` keeps pinning what the old lock pinned). Otherwise a catalog name uses its pinned
    # entry when the lock has one, else the catalog's offline figures.
    pin_catalog: bool | frozenset[str] = False
    _client: Any = None

    def __post_init__(self) -> None:
        if self.locked is None and self.lock_path.is_file() and self.mode != "upgrade":
            self.locked = read_lock(self.lock_path, self.stack_display)

    @property
    def lock_hint(self) -> str:
        return f"run `stackgen lock {self.stack_display}` where the network is reachable and keep {self.lock_path.name}"

    def facts(self, reference: str, quant: str | None):
        key = (reference, quant or "")
        if self.locked is not None and key in self.locked:
            entry = self.locked[key]
        elif self.locked is not None and self.mode == "auto":
            what = reference + (f" with quant {quant}" if quant else "")
            raise LockError(f"{self.lock_path}: no entry for {what}: the stack changed since it was locked; "
                            f"run `stackgen lock {self.stack_display}`")
        elif self.mode == "check":  # the lock is stale whatever the network would say: ask nothing
            self.missing.append(key)
            what = reference + (f" with quant {quant}" if quant else "")
            raise LockError(f"{self.lock_path}: no entry for {what}")
        else:
            entry = self._resolve(reference, quant)
        self.used[key] = entry
        return entry.model_facts()

    def pinned(self, reference: str, quant: str | None):
        """The facts of a catalog name's reference when the lock pins it (or `lock --catalog` asks to), else None:
        the catalog's offline figures stay the default and a plan never reaches the network for a catalog name."""
        key = (reference, quant or "")
        wanted = self.pin_catalog is True or (bool(self.pin_catalog) and reference in self.pin_catalog)
        if wanted or (self.locked is not None and key in self.locked):
            return self.facts(reference, quant)
        return None

    def _resolve(self, reference: str, quant: str | None) -> LockEntry:
        from stackgen.models.hub import resolve_remote
        from stackgen.models.remote import HttpClient, offline_requested

        if self._client is None:
            self._client = self.client_factory() if self.client_factory else HttpClient()
        env_name = offline_requested(self._client.env)
        if env_name:
            where = (f"{self.lock_path} does not exist" if not self.lock_path.is_file()
                     else f"{self.lock_path} has no entry for it")
            raise LockError(f"{reference} needs the network to read its metadata and {env_name}=1 is set; {where}: "
                            f"{self.lock_hint}")
        r = resolve_remote(reference, quant, self._client)
        entry = entry_from_resolved(reference, quant, r, facts_from_resolved(reference, quant, r))
        bad = control_fields(entry.to_json())
        if bad:
            raise LockError(f"{reference}: the metadata it resolves to has control characters (newline, NUL, ...) in "
                            f"{_dotted(bad[0])}; stackgen will not write them into artifacts (use a local copy)")
        self.resolved_now.append(entry.key)
        return entry

    @property
    def client(self):
        return self._client

    def should_write(self) -> bool:
        """A plan/render writes the lock only when there was none and something was resolved."""
        return bool(self.resolved_now) and not self.lock_path.exists()

    def write(self) -> None:
        write_lock(self.lock_path, self.used)
