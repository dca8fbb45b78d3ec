"""stack.lock: the remote models of a stack, resolved once and pinned, so plans and renders need no network.

The lock sits beside the stack (``stack.yaml`` -> ``stack.lock``; ``prod.yaml`` -> ``prod.lock``). Per remote model
reference (and ``quant:``) it records where the facts came from (repository, revision sha or manifest digest, the
exact files with sizes and sha256 where the registry gives them, bytes per dtype) and the facts themselves, as
the planner uses them. When the lock is present, plans read only it; a reference it lacks is an error that says to
run ``stackgen lock``. The file is JSON with sorted keys and no timestamps: the same resolution writes the same
bytes, so it can be committed and reviewed (like uv.lock or .terraform.lock.hcl).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Mapping

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
        from stackgen.models.facts import ModelFacts

        names = {f.name for f in fields(ModelFacts)}
        data = {k: v for k, v in self.facts.items() if k in names}
        for k in _MAPPINGS:
            data[k] = dict(data.get(k) or {})
        if "kv_heads_per_layer" in data:
            data["kv_heads_per_layer"] = tuple(int(k) for k in data["kv_heads_per_layer"] or ())
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


def read_lock(path: Path) -> dict[tuple[str, str], LockEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LockError(f"{path}: not a stackgen lock file ({exc}); delete it and run `stackgen lock`") from None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(data.get("models"), list):
        raise LockError(f"{path}: not a version {LOCK_VERSION} stackgen lock file; run `stackgen lock --upgrade`")
    out = {}
    for m in data["models"]:
        try:
            e = LockEntry(str(m["reference"]), m.get("quant"), dict(m["resolved"]), dict(m["facts"]))
            e.model_facts()
        except (KeyError, TypeError, ValueError) as exc:
            raise LockError(f"{path}: a model entry is malformed ({exc}); run `stackgen lock --upgrade`") from None
        out[e.key] = e
    return out


def dump_lock(entries: Mapping[tuple[str, str], LockEntry]) -> str:
    doc = {"version": LOCK_VERSION,
           "_comment": "Generated by `stackgen lock`: the remote models of the stack, pinned. Commit it; "
                       "`stackgen lock --upgrade` re-resolves.",
           "models": [entries[k].to_json() for k in sorted(entries)]}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, entries: Mapping[tuple[str, str], LockEntry]) -> None:
    """Atomic: a reader never sees half a lock."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dump_lock(entries), encoding="utf-8")
    os.replace(tmp, path)


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


def _file_text(f: Mapping[str, Any] | None) -> str:
    return "absent" if f is None else f"{f.get('size')} bytes" + (f", sha256 {f['sha256'][:12]}" if f.get("sha256") else "")


@dataclass
class RemoteModels:
    """The remote references of one stack. mode: `auto` (the lock when it exists, else the network), `lock`
    (refresh: keep locked entries, resolve only missing ones) or `upgrade` (re-resolve everything)."""

    lock_path: Path
    stack_display: str = "stack.yaml"
    mode: str = "auto"
    client_factory: Callable[[], Any] | None = None
    locked: dict[tuple[str, str], LockEntry] | None = None
    used: dict[tuple[str, str], LockEntry] = field(default_factory=dict)
    resolved_now: list[tuple[str, str]] = field(default_factory=list)
    # Catalog names whose `ref:` to resolve and pin (`stackgen lock --catalog`): True for all, or the set of references
    # to re-pin (`lock --upgrade` keeps pinning what the old lock pinned). Otherwise a catalog name uses its pinned
    # entry when the lock has one, else the catalog's offline figures.
    pin_catalog: bool | frozenset[str] = False
    _client: Any = None

    def __post_init__(self) -> None:
        if self.locked is None and self.lock_path.is_file() and self.mode != "upgrade":
            self.locked = read_lock(self.lock_path)

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
