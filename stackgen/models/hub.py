"""Resolve a remote model reference to its real metadata without downloading weights.

- ``hf:org/repo[@revision]`` with safetensors: the Hub API's file list (``/api/models/{repo}/revision/{rev}?blobs=true``,
  what ``huggingface_hub``'s ``model_info(files_metadata=True)`` requests), config.json, the index, and each
  shard's safetensors header read by range: exact bytes per dtype (an FP8 checkpoint that keeps attention and
  embeddings in bf16 is priced as it is stored, not at 8 bits per weight).
- ``hf:org/repo-GGUF[:QUANT]``: the GGUF file for the quant (all parts of a split ``-00001-of-0000N.gguf``), each
  header read by range.
- ``https://host/path/x.gguf``: that file's header by range.
- ``ollama:name[:tag]``: the registry manifest (``/v2/{namespace}/{name}/manifests/{tag}``) names the model layer;
  its blob's GGUF header is read by range; the params and template layers are small and read whole.

Every result is a :class:`Resolved`: the facts the planner uses plus the provenance stack.lock pins (revision or
digest, files with sizes and sha256).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Mapping

from stackgen.models import gguf, hf as hfmodel
from stackgen.models.facts import OLLAMA_REGISTRY
from stackgen.models.remote import HttpClient, RangeReader, RemoteError

__all__ = ["Resolved", "RemoteFile", "resolve_remote", "is_remote_ref", "GGUF_QUANT_PREFERENCE"]

_SPLIT = gguf.SPLIT_NAME
# With no quant named, llama.cpp's `-hf repo` takes Q4_K_M when the repo has it (common/arg.cpp: default tag);
# the others in this order are the usual fall-backs.
GGUF_QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0", "BF16", "F16")
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
_SMALL_LAYER = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Resolved:
    """What a reference resolved to. `summary` has gguf.summarize()/HFModelInfo.summarize() keys."""

    kind: str  # gguf | safetensors
    source: str  # gguf | hf | ollama (the ModelFacts source: which engines can load it)
    repo: str | None
    revision: str | None  # commit sha, or the manifest digest for Ollama
    files: tuple[RemoteFile, ...]
    summary: Mapping[str, Any]
    weights_bytes: int
    fmt: str | None  # GGUF quant or HF format (bf16, fp8, awq, ...)
    dtype_bytes: Mapping[str, int] = field(default_factory=dict)
    url: str | None = None
    ollama: str | None = None
    notes: tuple[str, ...] = ()
    bytes_received: int = 0


def is_remote_ref(ref: str) -> bool:
    return ref.startswith(("hf:", "ollama:", "https://", "http://"))


def resolve_remote(ref: str, quant: str | None, client: HttpClient) -> Resolved:
    """`quant` is the stack's normalized `quant:` (or None)."""
    before = client.bytes_received
    if ref.startswith("hf:"):
        out = _resolve_hf(ref[3:], quant, client)
    elif ref.startswith("ollama:"):
        out = _resolve_ollama(ref[7:], client)
    else:
        out = _resolve_url(ref, client)
    return _with_bytes(out, client.bytes_received - before)


def _with_bytes(r: Resolved, n: int) -> Resolved:
    from dataclasses import replace

    return replace(r, bytes_received=n)


# ---------------------------------------------------------------------------------------------- Hugging Face


def parse_hf(name: str) -> tuple[str, str, str | None]:
    """org/repo[@revision][:QUANT] -> (repo, revision, quant tag)."""
    tag = None
    if ":" in name:
        name, tag = name.split(":", 1)
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RemoteError(f"hf:{name}: a Hugging Face reference is hf:org/repo, optionally @revision and :QUANT")
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", revision) or (tag is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", tag)):
        raise RemoteError(f"hf:{name}: revision and quant tag are letters, digits, '.', '_', '-' (and '/')")
    return name, revision, tag


def _resolve_hf(name: str, quant: str | None, client: HttpClient) -> Resolved:
    repo, revision, tag = parse_hf(name)
    what = f"hf:{repo}"
    api = f"{client.hf_endpoint}/api/models/{repo}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"
    info = _json(client.get(api, what).body, what, "the Hub's model info")
    sha = info.get("sha")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise RemoteError(f"{what}: the Hub's model info has no commit sha")
    siblings = _siblings(info, what)
    ggufs = {n: f for n, f in siblings.items() if n.lower().endswith(".gguf")}
    if ggufs:
        want = (tag.upper() if tag else None) or quant
        return _resolve_hf_gguf(repo, sha, ggufs, want, client)
    return _resolve_hf_safetensors(repo, sha, siblings, client)


def _siblings(info: Mapping[str, Any], what: str) -> dict[str, RemoteFile]:
    out = {}
    for s in info.get("siblings") or []:
        if not isinstance(s, Mapping) or not isinstance(s.get("rfilename"), str):
            continue
        lfs = s.get("lfs") if isinstance(s.get("lfs"), Mapping) else {}
        size = lfs.get("size", s.get("size"))
        out[s["rfilename"]] = RemoteFile(s["rfilename"], int(size) if isinstance(size, int) else -1, lfs.get("sha256"))
    if not out:
        raise RemoteError(f"{what}: the repository lists no files")
    return out


def _file_url(client: HttpClient, repo: str, sha: str, name: str) -> str:
    return f"{client.hf_endpoint}/{repo}/resolve/{sha}/{urllib.parse.quote(name)}"


def _quant_matches(filename: str, quant: str) -> bool:
    base = filename.rsplit("/", 1)[-1].upper()
    return re.search(rf"(?<![A-Z0-9]){re.escape(quant.upper())}(?![A-Z0-9_])", base) is not None


def _gguf_groups(ggufs: Mapping[str, RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Model files (not mmproj projectors), the parts of a split file grouped under the first part's name."""
    groups: dict[str, list[RemoteFile]] = {}
    for name in sorted(ggufs):
        if "mmproj" in name.lower():
            continue
        key = _SPLIT.sub(lambda m: f"-00001-of-{m.group(2)}.gguf", name)
        groups.setdefault(key, []).append(ggufs[name])
    return groups


def _resolve_hf_gguf(repo: str, sha: str, ggufs: Mapping[str, RemoteFile], want: str | None,
                     client: HttpClient) -> Resolved:
    what = f"hf:{repo}"
    groups = _gguf_groups(ggufs)
    if not groups:
        raise RemoteError(f"{what}: the repository has only projector (mmproj) GGUF files")
    notes = []
    if want:
        hits = [k for k in groups if _quant_matches(k, want)]
        if not hits:
            have = ", ".join(sorted(groups))
            raise RemoteError(f"{what}: no GGUF file for quant {want} (files: {have})")
    else:
        hits = next(([k for k in groups if _quant_matches(k, q)] for q in GGUF_QUANT_PREFERENCE
                     if any(_quant_matches(k, q) for k in groups)), sorted(groups))
    chosen = sorted(hits, key=lambda k: (len(k), k))[0]
    parts = sorted(groups[chosen], key=lambda f: f.name)
    if len(hits) > 1 or not want:
        notes.append(f"chose {chosen}" + (f" of {len(hits)} files matching {want}" if want else
                                          " (no quant named: llama.cpp's default preference)"))
    urls = [_file_url(client, repo, sha, p.name) for p in parts]
    summary, size = _gguf_summary(client, urls, what)
    fmt = summary.get("quant") or want
    if want and summary.get("quant") and summary["quant"] != want and not summary["quant"].startswith(want):
        notes.append(f"the file's header says {summary['quant']}, its name says {want}")
    return Resolved("gguf", "gguf", repo, sha, tuple(parts), summary, size, fmt,
                    ollama=f"hf.co/{repo}:{fmt}" if fmt else None, notes=tuple(notes))


def _gguf_summary(client: HttpClient, urls: list[str], what: str,
                  readers: list[RangeReader] | None = None) -> tuple[dict[str, Any], int]:
    """Every part's header read by range, summarized as one file (gguf.summarize_parts, as a local split GGUF).
    `readers` receives each part's RangeReader (its size and the server's validators)."""
    headers = []
    for url in urls:
        r = RangeReader(client, url, what)
        if readers is not None:
            readers.append(r)
        try:
            headers.append(gguf.read_gguf_header_from(r, url, r.size))
        except gguf.GGUFError as exc:
            raise RemoteError(f"{what}: not a readable GGUF: {exc}") from None
    try:
        s = gguf.summarize_parts(headers)
    except gguf.GGUFModelError as exc:
        raise RemoteError(f"{what}: {exc} ({exc.hint})") from None
    except gguf.GGUFError as exc:
        raise RemoteError(f"{what}: {exc}") from None
    return s, s["tensor_data_bytes"]


def _resolve_hf_safetensors(repo: str, sha: str, siblings: Mapping[str, RemoteFile], client: HttpClient) -> Resolved:
    what = f"hf:{repo}"
    if "config.json" not in siblings:
        raise RemoteError(f"{what}: no config.json and no GGUF file: not a model repository stackgen can plan")
    config = _json(client.get(_file_url(client, repo, sha, "config.json"), what).body, what, "config.json")
    names = _shard_names(client, repo, sha, siblings, what)
    if not names:
        raise RemoteError(f"{what}: no weights found (no *.safetensors file in the repository)")
    infos = []
    for n in names:
        r = RangeReader(client, _file_url(client, repo, sha, n), what, first_block=256 << 10)
        try:
            infos.append(hfmodel.read_safetensors_header_from(r, n, r.size))
        except hfmodel.HFModelError as exc:
            raise RemoteError(f"{what}: {exc}") from None
    info = hfmodel.hf_info(what, config, infos)
    s = info.summarize()
    try:
        hfmodel.check_config(info, s)
    except hfmodel.HFConfigError as exc:
        raise RemoteError(f"{what}: {exc} ({exc.hint})") from None
    files = tuple(siblings[n] for n in names)
    return Resolved("safetensors", "hf", repo, sha, files, s, info.weights_bytes, info.checkpoint_format,
                    dtype_bytes=dict(info.dtype_bytes))


def _shard_names(client: HttpClient, repo: str, sha: str, siblings: Mapping[str, RemoteFile], what: str) -> list[str]:
    """With an index, only the shards it names (Mistral repos also ship consolidated.safetensors)."""
    if "model.safetensors.index.json" in siblings:
        idx = _json(client.get(_file_url(client, repo, sha, "model.safetensors.index.json"), what).body, what,
                    "model.safetensors.index.json")
        wm = idx.get("weight_map")
        if not isinstance(wm, Mapping):
            raise RemoteError(f"{what}: model.safetensors.index.json has no weight_map object")
        names = sorted(set(map(str, wm.values())))
        missing = [n for n in names if n not in siblings]
        if missing:
            raise RemoteError(f"{what}: the index names {missing[0]}, which the repository does not have")
        return names
    return hfmodel.unindexed_weight_files(n for n in siblings if n.endswith(".safetensors") and "/" not in n)


# ---------------------------------------------------------------------------------------------- URL and Ollama


def _resolve_url(url: str, client: HttpClient) -> Resolved:
    path = urllib.parse.urlsplit(url).path
    if not path.lower().endswith(".gguf"):
        raise RemoteError(f"{url}: a model URL must name a .gguf file")
    readers: list[RangeReader] = []
    summary, size = _gguf_summary(client, [url], url, readers)
    name = path.rsplit("/", 1)[-1]
    revision, note = url_pin(readers[0].validators, int(summary["file_size"]))
    return Resolved("gguf", "gguf", None, revision, (RemoteFile(name, int(summary["file_size"])),), summary, size,
                    summary.get("quant"), url=url, notes=(note,))


def url_pin(validators: Mapping[str, str], size: int) -> tuple[str | None, str]:
    """A URL has no commit: its lock entry pins what the server says identifies this version of the file (the ETag,
    else Last-Modified; RFC 9110 8.8) besides its size, and a note says which. stackgen reads the header only, so
    it has no sha256 of the weights to pin."""
    if validators.get("etag"):
        return f"etag:{validators['etag']}", f"pinned by the server's ETag {validators['etag']} and the size, {size} bytes"
    if validators.get("last-modified"):
        return (f"last-modified:{validators['last-modified']}",
                f"pinned by the server's Last-Modified {validators['last-modified']} and the size, {size} bytes")
    return None, (f"pinned by the size only, {size} bytes: the server sends no ETag or Last-Modified, so a replaced "
                  "file of the same size goes unseen")


def parse_ollama(name: str) -> tuple[str, str, str]:
    """name[:tag] -> (namespace, model, tag); library models have no namespace in their short name."""
    tag = "latest"
    if ":" in name:
        name, tag = name.rsplit(":", 1)
    ns, model = name.split("/", 1) if "/" in name else ("library", name)
    for part in (ns, model, tag):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part):
            raise RemoteError(f"ollama:{name}:{tag}: an Ollama reference is ollama:name[:tag] or ollama:user/name[:tag]")
    return ns, model, tag


def _resolve_ollama(name: str, client: HttpClient) -> Resolved:
    ns, model, tag = parse_ollama(name)
    what = f"ollama:{name}"
    base = f"{client.ollama_registry}/v2/{ns}/{model}"
    resp = client.get(f"{base}/manifests/{tag}", what, accept=MANIFEST_ACCEPT)
    manifest = _json(resp.body, what, "the registry manifest")
    digest = resp.headers.get("docker-content-digest") or _sha256_digest(resp.body)
    layers = [x for x in manifest.get("layers") or [] if isinstance(x, Mapping)]
    by_type = {str(x.get("mediaType")): x for x in layers}
    model_layer = by_type.get("application/vnd.ollama.image.model")
    if model_layer is None:
        raise RemoteError(f"{what}: the manifest has no application/vnd.ollama.image.model layer (safetensors-only "
                          "models cannot be planned from the registry yet)")
    summary, size = _gguf_summary(client, [f"{base}/blobs/{model_layer['digest']}"], what)
    notes = []
    params = by_type.get("application/vnd.ollama.image.params")
    if params and int(params.get("size") or 0) <= _SMALL_LAYER:
        p = _json(client.get(f"{base}/blobs/{params['digest']}", what).body, what, "the params layer")
        notes.append("params: " + json.dumps(p, sort_keys=True))
    tmpl = by_type.get("application/vnd.ollama.image.template")
    if tmpl:
        notes.append(f"template layer {tmpl['digest']} ({tmpl.get('size')} bytes)")
    files = tuple(RemoteFile(str(x.get("mediaType")).rsplit(".", 1)[-1], int(x.get("size") or 0),
                             str(x.get("digest")).removeprefix("sha256:")) for x in layers)
    short = f"{model}:{tag}" if ns == "library" else f"{ns}/{model}:{tag}"
    return Resolved("gguf", OLLAMA_REGISTRY, f"{ns}/{model}", digest, files, summary, size, summary.get("quant"),
                    ollama=short, notes=tuple(notes))


def _sha256_digest(body: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(body).hexdigest()


def _json(body: bytes, what: str, which: str) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoteError(f"{what}: {which} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RemoteError(f"{what}: {which} is not a JSON object")
    return data
