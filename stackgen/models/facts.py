"""Model facts: what the planner needs to know about a model, from the catalog, a GGUF header or an HF folder.

A model reference in stack.yaml is one of: a catalog name, a path to a .gguf, a path to an HF folder,
``hf:org/repo`` or ``ollama:name:tag``. Each becomes a frozen :class:`ModelFacts`. Weight sizes depend on the
format an engine loads (GGUF quant, HF dtype, MLX bits), so they are looked up per format, from real file sizes
where the catalog has them and from bits-per-weight otherwise.
"""

from __future__ import annotations

import math
import os
import re

from stackgen.errors import ModelRefError
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

# The Ollama registry as a model source (`ollama:` references, the catalog's registry-tag key) and the catalog's key
# for MLX weight sizes: names of data, not of the engines (tests/test_architecture.py allows these two).
OLLAMA_REGISTRY = "ollama"
MLX_SIZES_KEY = "mlx"

GIB = 1024**3
GB = 1000**3

# Effective bits per weight of llama.cpp quant types (llama.cpp tools/quantize: "size" column of the quant table
# for Llama 3 8B, i.e. including the larger output/embedding tensors). Used only when no real file size is known.
GGUF_BPW: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.50, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_0": 5.54, "Q5_1": 6.0, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.55, "Q4_1": 5.0, "IQ4_XS": 4.46,
    "IQ4_NL": 4.68, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.64, "IQ3_M": 3.76, "IQ3_XS": 3.5, "Q2_K": 3.35,
    "IQ2_M": 2.93, "IQ2_XS": 2.59, "IQ1_M": 2.01, "MXFP4": 4.25, "TQ1_0": 1.69, "TQ2_0": 2.06,
    # Types llama.cpp's quantize tool makes that the size column does not cover (tools/quantize/quantize.cpp
    # QUANT_OPTIONS gives their main tensors' bits per weight: IQ1_S 1.56, IQ2_XXS 2.06, IQ2_S 2.5, IQ3_XXS 3.06,
    # IQ3_S 3.44), plus 0.21, the median by which this table's other i-quant rows exceed their QUANT_OPTIONS bpw
    # (IQ1_M 1.75 -> 2.01, IQ2_XS 2.31 -> 2.59, IQ2_M 2.7 -> 2.93, IQ3_XS 3.3 -> 3.5, IQ3_M 3.66 -> 3.76,
    # IQ4_XS 4.25 -> 4.46, IQ4_NL 4.5 -> 4.68: the output and embedding tensors llama-quant keeps at larger types).
    "IQ1_S": 1.77, "IQ2_XXS": 2.27, "IQ2_S": 2.71, "IQ3_XXS": 3.27, "IQ3_S": 3.65,
    # Q2_K_S: QUANT_OPTIONS gives the same size as Q2_K for Llama 3 8B ("2.96G" both).
    "Q2_K_S": 3.35,
    # Whole-file types whose main tensors are one ggml type, at that type's block size (ggml/src/ggml.c type_traits,
    # models/gguf.py GGML_TYPES: bytes per block x 8 / weights per block): MXFP4_MOE (gpt-oss; llama_ftype 38) is
    # MXFP4, 17 B / 32 = 4.25 as the MXFP4 row; NVFP4 36 B / 64 = 4.5; Q1_0 18 B / 128 = 1.125 (QUANT_OPTIONS:
    # "1.125 bpw quantization").
    "MXFP4_MOE": 4.25, "NVFP4": 4.5, "Q1_0": 1.125,
}
# HF/vLLM formats: bytes per parameter (AWQ/GPTQ 4-bit with group-128 scales and zeros ~ 4.25 bits, plus
# unquantized embeddings; measured on Llama-3.1-70B-Instruct-AWQ-INT4: 39.8 GB for 70.6 B params = 0.56 B/param).
HF_BYTES_PER_PARAM: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8": 1.03, "awq": 0.56, "gptq": 0.56}
# MLX quantization: 4-bit with group size 64 stores a bf16 scale and bias per group -> 4.5 bits per weight.
MLX_BYTES_PER_PARAM: dict[str, float] = {"4bit": 0.5625, "8bit": 1.0625, "bf16": 2.0, "fp16": 2.0, "3bit": 0.4375, "6bit": 0.8125}

HF_FORMATS = tuple(HF_BYTES_PER_PARAM)
MLX_FORMATS = tuple(MLX_BYTES_PER_PARAM)


def normalize_quant(q: str | None) -> str | None:
    """Canonical spelling: GGUF types upper case (Q4_K_M), HF/MLX formats lower case (bf16, awq, 4bit)."""
    if q is None:
        return None
    low = q.strip().lower()
    if low in HF_BYTES_PER_PARAM or low in MLX_BYTES_PER_PARAM:
        return low
    if low in {"int4", "w4a16"}:
        return "awq"
    up = q.strip().upper()
    if up in GGUF_BPW:
        return up
    raise ValueError(f"unknown quant {q!r}")


def known_quants() -> list[str]:
    return sorted(GGUF_BPW) + list(HF_FORMATS) + [f for f in MLX_FORMATS if f not in HF_FORMATS]


def is_gguf_quant(q: str | None) -> bool:
    return q is not None and q in GGUF_BPW


@dataclass(frozen=True)
class LongContext:
    """A model's documented way past its trained context: RoPE scaling (YaRN) over `original_context` positions, up
    to `factor` times as many. `factor` is the documented maximum in model facts; a plan carries the factor it uses.

    `in_file`: the model file itself carries it (config.json rope_scaling or GGUF rope.scaling keys), so an engine
    that reads the file applies it without flags. `rope_theta`: the RoPE base (vLLM's override replaces the whole
    rope dict, so it must be given again)."""

    method: str  # yarn
    factor: float
    original_context: int
    source: str  # where the figures come from: a model card URL, "config.json rope_scaling", "GGUF rope.scaling.*"
    rope_theta: float | None = None
    in_file: bool = False

    @property
    def max_context(self) -> int:
        return int(self.original_context * self.factor)

    def scaled_to(self, ctx: int) -> "LongContext":
        """The smallest factor (in steps of 0.5, at most the documented one) that reaches `ctx`. Static YaRN can
        lower quality on short texts; the Qwen3 model card advises a factor sized to the typical context ("if the
        typical context length for your application is 65,536 tokens, it would be better to set factor as 2.0")."""
        need = math.ceil(ctx / self.original_context * 2) / 2
        return replace(self, factor=min(self.factor, max(1.0, need)))


@dataclass(frozen=True)
class ModelFacts:
    """Architecture facts and weight sizes of one model. Sizes are in bytes."""

    name: str
    source: str  # catalog | gguf | hf | ollama
    architecture: str
    params: int
    active_params: int
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim_k: int
    head_dim_v: int
    vocab: int
    context_length: int
    sliding_window: int | None = None
    swa_layers: int = 0
    experts_total: int | None = None
    experts_active: int | None = None
    path: str | None = None  # local .gguf file or HF folder
    quant: str | None = None  # the quant the stack asked for, or the file's own
    hf_repo: str | None = None
    gguf_repo: str | None = None
    mlx_repo: str | None = None
    ollama: str | None = None
    gguf_sizes: Mapping[str, int] = field(default_factory=dict)
    hf_sizes: Mapping[str, int] = field(default_factory=dict)
    mlx_sizes: Mapping[str, int] = field(default_factory=dict)
    # Pre-quantized HF checkpoints of this model by format (awq, gptq, fp8 -> org/repo): the repository vLLM must load
    # for the bytes hf_sizes[format] to be what it loads (catalog `hf_variants`).
    hf_variants: Mapping[str, str] = field(default_factory=dict)
    # GGUF quants held in another repository than gguf_repo (catalog `gguf_variants`: gpt-oss's MXFP4 file is
    # ggml-org's, unsloth's repo has the other names): the repository llama-server -hf fetches that quant from.
    gguf_variants: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    url: str | None = None  # a remote .gguf named by URL (llama-server -mu)
    revision: str | None = None  # the commit sha or manifest digest stack.lock pins
    sizes_from: str = "catalog"  # where gguf/hf sizes came from: catalog | header (a remote file's own header)
    long_context: LongContext | None = None  # documented RoPE scaling past context_length (the trained context)
    # A catalog name is a short name for this reference (hf:org/repo, ollama:name:tag or https://.../x.gguf): the
    # catalog's figures are the offline defaults; `stackgen lock` resolves the reference and pins its real facts.
    ref: str | None = None
    # Bytes outside the repeating layers, read from a GGUF's tensor list (0: not known, memory.llamacpp_layer_split
    # estimates them): the input layer (token embedding) and the output layer as llama.cpp offloads it (a tied output
    # is a GPU copy of the embedding, which the file holds once: output_tied).
    gguf_input_bytes: int = 0
    gguf_output_bytes: int = 0
    gguf_output_tied: bool = False
    # Layers that differ (a GGUF's per-layer head_count_kv, hybrid and recurrent models): the KV heads of each layer,
    # 0 where a layer holds no attention KV (empty: every layer has kv_heads); the layers that keep a recurrent state
    # instead, and that state's bytes for one sequence over all of them (f32, fixed, whatever the context).
    kv_heads_per_layer: tuple[int, ...] = ()
    recurrent_layers: int = 0
    recurrent_state_bytes: int = 0
    # Multi-head latent attention in a GGUF (DeepSeek V2/V3, GLM-DSA, Mistral 4, ...: attention.key_length_mla and
    # value_length_mla set, llama_hparams::is_mla()): llama.cpp caches K only, key_length wide (kv_lora_rank + the
    # rope dims, 576 for DeepSeek V3), and reads V as a view of it (src/llama-kv-cache.cpp: has_v = !is_mla).
    kv_k_only: bool = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_catalog(cls, name: str, entry: Mapping[str, Any]) -> "ModelFacts":
        if not isinstance(entry, Mapping):
            raise ValueError("a model entry is a mapping")
        need = ("architecture", "params_b", "layers", "hidden_size", "heads", "kv_heads", "vocab_size", "context_length")
        missing = [k for k in need if entry.get(k) is None]
        if missing:
            raise ValueError(f"missing keys: {', '.join(missing)}")
        heads = int(entry["heads"])
        hidden = int(entry["hidden_size"])
        head_dim = int(entry.get("head_dim") or hidden // heads)
        experts = entry.get("experts") or {}
        params = int(float(entry["params_b"]) * 1e9)
        return cls(
            name=name,
            source="catalog",
            architecture=str(entry["architecture"]),
            params=params,
            active_params=int(float(entry.get("active_params_b") or entry["params_b"]) * 1e9),
            layers=int(entry["layers"]),
            hidden=hidden,
            ffn=int(entry.get("intermediate_size") or 4 * hidden),
            heads=heads,
            kv_heads=int(entry["kv_heads"]),
            head_dim_k=head_dim,
            head_dim_v=int(entry.get("head_dim_v") or head_dim),
            vocab=int(entry["vocab_size"]),
            context_length=int(entry["context_length"]),
            sliding_window=int(entry["sliding_window"]) if entry.get("sliding_window") else None,
            swa_layers=int(entry.get("sliding_window_layers") or 0),
            experts_total=int(experts["total"]) if experts else None,
            experts_active=int(experts["active"]) if experts else None,
            hf_repo=entry.get("hf_repo"),
            gguf_repo=entry.get("gguf_repo"),
            mlx_repo=entry.get("mlx_repo"),
            ollama=entry.get(OLLAMA_REGISTRY),
            gguf_sizes={normalize_quant(str(k)): int(v) for k, v in (entry.get("gguf") or {}).items()},
            hf_sizes={normalize_quant(str(k)): int(v) for k, v in (entry.get("hf") or {}).items()},
            mlx_sizes={normalize_quant(str(k)): int(v) for k, v in (entry.get(MLX_SIZES_KEY) or {}).items()},
            hf_variants={normalize_quant(str(k)): str(v) for k, v in (entry.get("hf_variants") or {}).items()},
            gguf_variants={normalize_quant(str(k)): str(v) for k, v in (entry.get("gguf_variants") or {}).items()},
            description=str(entry.get("description") or ""),
            long_context=_catalog_long_context(entry.get("long_context")),
            ref=_catalog_ref(entry.get("ref")),
        )

    @classmethod
    def from_summary(cls, name: str, source: str, path: str, s: Mapping[str, Any]) -> "ModelFacts":
        """From the dict that gguf.summarize() / HFModelInfo.summarize() give."""
        arch = str(s.get("architecture") or "unknown")
        layers = int(s["layers"])
        heads = int(s.get("heads") or 1)
        # A recurrent-only GGUF (Mamba, RWKV) has no attention heads: 0 KV heads, no KV cache (gguf.check_summary
        # refuses a missing or zero head count anywhere else). Otherwise a missing kv_heads is multi-head attention.
        kv_heads = int(s.get("kv_heads") or 0) if s.get("recurrent_layers") else int(s.get("kv_heads") or heads)
        kv_layers = tuple(int(k) for k in (s.get("attention_kv_heads_per_layer") or ()))
        hidden = int(s.get("hidden") or 0)
        head_k = int(s.get("head_dim_k") or (hidden // heads if heads else 0))
        sw = s.get("sliding_window")
        swa_layers = int(s.get("swa_layers") or 0)
        if sw and not swa_layers:
            swa_layers = _default_swa_layers(arch, layers, s.get("sliding_window_pattern"))
        experts = s.get("experts") or {}
        params = int(s.get("params") or 0)
        active = params
        total_e, used_e = experts.get("total") or experts.get("expert_count"), experts.get("active") or experts.get("expert_used_count")
        if total_e and used_e and params:
            active = int(params * (used_e / total_e) * 0.9 + params * 0.1)  # experts hold ~90% of MoE weights
        ctx = int(s.get("context_length") or 0)
        return cls(
            long_context=_file_long_context(s.get("rope_scaling"), ctx, source),
            name=name, source=source, architecture=arch, params=params, active_params=active, layers=layers,
            hidden=hidden, ffn=int(s.get("ffn") or 4 * hidden), heads=heads, kv_heads=kv_heads,
            head_dim_k=head_k, head_dim_v=int(s.get("head_dim_v") or head_k), vocab=int(s.get("vocab_size") or 0),
            context_length=ctx, sliding_window=int(sw) if sw else None,
            swa_layers=swa_layers if sw else 0, experts_total=int(total_e) if total_e else None,
            experts_active=int(used_e) if used_e else None, path=path, quant=s.get("quant") or s.get("dtype"),
            gguf_input_bytes=int(s.get("input_bytes") or 0), gguf_output_bytes=int(s.get("output_bytes") or 0),
            gguf_output_tied=bool(s.get("output_tied")),
            kv_heads_per_layer=kv_layers if len(kv_layers) == layers else (),
            kv_k_only=bool(s.get("kv_k_only")),
            recurrent_layers=int(s.get("recurrent_layers") or 0),
            recurrent_state_bytes=int(s.get("recurrent_state_bytes") or 0),
        )

    # ------------------------------------------------------------------ derived facts

    @property
    def is_moe(self) -> bool:
        return bool(self.experts_total)

    @property
    def full_attention_layers(self) -> int:
        return self.layers - self.swa_layers

    def kv_bytes_per_token_per_layer(self, bytes_per_element: float) -> float:
        """KV bytes of one token in an average layer: x layers is llama.cpp's sum over the layers of n_head_kv(il)
        (engines.md 1.4), so layers without KV heads (recurrent or MLP-only layers of a hybrid) count nothing."""
        heads = sum(self.kv_heads_per_layer) / self.layers if self.kv_heads_per_layer and self.layers else self.kv_heads
        return heads * (self.head_dim_k + (0 if self.kv_k_only else self.head_dim_v)) * bytes_per_element

    def gguf_bytes(self, quant: str) -> tuple[int, str]:
        """Weights of the GGUF in `quant`, and where the figure came from."""
        if self.source == "gguf" and self.path and quant == self.quant and quant in self.gguf_sizes:
            return self.gguf_sizes[quant], "file"  # the file's own quant: its measured size
        if quant in self.gguf_sizes:
            return self.gguf_sizes[quant], self.sizes_from
        return int(self.params * GGUF_BPW[quant] / 8), "estimate"

    def hf_bytes(self, fmt: str) -> tuple[int, str]:
        if fmt in self.hf_sizes:
            return self.hf_sizes[fmt], self.sizes_from if self.source != "hf" or not self.path else "file"
        return int(self.params * HF_BYTES_PER_PARAM[fmt]), "estimate"

    def hf_repo_for(self, fmt: str) -> str | None:
        """The HF repository whose checkpoint holds the weights in `fmt`: a pre-quantized variant (awq, gptq, fp8),
        else the model's own repo (its bf16/fp16 weights; fp8 without a variant is quantized on load from them)."""
        return self.hf_variants.get(fmt) or self.hf_repo

    def gguf_repo_for(self, quant: str) -> str | None:
        """The HF repository llama-server -hf fetches the GGUF of `quant` from: a gguf_variants repo, else gguf_repo."""
        return self.gguf_variants.get(quant) or self.gguf_repo

    def mlx_bytes(self, fmt: str) -> tuple[int, str]:
        if fmt in self.mlx_sizes:
            return self.mlx_sizes[fmt], "catalog"
        if self.source == "hf" and fmt in self.hf_sizes:
            return self.hf_sizes[fmt], "file" if self.path else self.sizes_from
        return int(self.params * MLX_BYTES_PER_PARAM[fmt]), "estimate"

    def with_quant(self, quant: str | None) -> "ModelFacts":
        return replace(self, quant=quant) if quant else self


# The forms a catalog `ref:` may take: the remote references stackgen/models/hub.py resolves.
CATALOG_REF = re.compile(r"(hf:[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?(:[A-Za-z0-9_.-]+)?"
                         r"|ollama:[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?|https://[^\s]+\.gguf)")


def _catalog_ref(ref: Any) -> str | None:
    """A catalog entry's `ref:`, checked for form (hf:org/repo[@rev][:QUANT], ollama:name[:tag], https://.../x.gguf)."""
    if ref is None:
        return None
    if not isinstance(ref, str) or not CATALOG_REF.fullmatch(ref):
        raise ValueError(f"ref {ref!r} is not hf:org/repo[@rev][:QUANT], ollama:name[:tag] or https://.../x.gguf")
    return ref


def _catalog_long_context(entry: Any) -> LongContext | None:
    if not entry:
        return None
    if not isinstance(entry, Mapping) or str(entry.get("method")) != "yarn":
        raise ValueError("long_context is a mapping with method: yarn, factor, original_context, source")
    return LongContext("yarn", float(entry["factor"]), int(entry["original_context"]), str(entry["source"]),
                       float(entry["rope_theta"]) if entry.get("rope_theta") else None)


def _file_long_context(rope: Any, ctx: int, source: str) -> LongContext | None:
    """YaRN that a config.json rope_scaling or the GGUF rope.scaling keys carry, when it reaches past the file's own
    context length. Where the context length already covers original x factor (DeepSeek V3: 4096 x 40 = 163840;
    Llama 3.1's llama3 type), the scaling is built in: nothing to add (vLLM's _get_and_verify_max_len reads YaRN the
    same way)."""
    if not isinstance(rope, Mapping) or rope.get("type") != "yarn":
        return None
    factor, orig = rope.get("factor"), rope.get("original_context")
    if not isinstance(factor, (int, float)) or factor <= 1 or not isinstance(orig, int) or orig <= 0:
        return None
    if ctx and orig * factor <= ctx:
        return None
    where = "config.json rope_scaling" if source == "hf" else "GGUF rope.scaling keys"
    theta = rope.get("rope_theta")
    return LongContext("yarn", float(factor), orig, where, float(theta) if isinstance(theta, (int, float)) else None,
                       in_file=True)


def _default_swa_layers(arch: str, layers: int, pattern: Any) -> int:
    """How many layers use the sliding window when the file does not list them.

    llama.cpp hard-codes Gemma 3's pattern (5 local : 1 global, src/llama-model.cpp set_swa_pattern(6));
    Gemma 2 alternates; Mistral v0.1 style models slide on every layer.
    """
    if isinstance(pattern, int) and pattern > 1:
        return layers - layers // pattern
    if isinstance(pattern, (list, tuple)) and pattern:
        return sum(1 for p in pattern if p)
    if arch in ("gemma3", "gemma3n", "gemma3_text"):
        return layers - layers // 6
    if arch == "gemma2":
        return layers // 2
    return layers


# ---------------------------------------------------------------------------------------------- references


def resolve_model(ref: str, quant: str | None, base_dir: Path, catalog: Mapping[str, ModelFacts],
                  remote: Any = None) -> ModelFacts:
    """Turn a stack's model reference into facts; raise errors.ModelRefError with a hint on failure.

    `remote` (a stackgen.models.lock.RemoteModels) answers references the catalog does not know (hf:, ollama:, https://)
    from stack.lock, or over the network when there is no lock."""

    try:
        q = normalize_quant(quant)
    except ValueError:
        import difflib

        close = difflib.get_close_matches((quant or "").upper(), [k.upper() for k in known_quants()], n=3, cutoff=0.5)
        close = [normalize_quant(c) for c in close]
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else "e.g. Q4_K_M, Q8_0, F16, bf16, fp8, awq, 4bit"
        raise ModelRefError(f"unknown quant {quant!r}", hint, field="quant") from None
    if ref.startswith(("hf:", "ollama:")):
        key, source, name = ("hf_repo", "hf", ref[3:]) if ref.startswith("hf:") else (OLLAMA_REGISTRY, OLLAMA_REGISTRY, ref[7:])
        found = _from_registry(name, key, catalog, q, source)
        return found if found is not None else _from_remote(ref, q, remote)
    if ref.startswith(("https://", "http://")):
        _check_url_scheme(ref)
        return _from_remote(ref, q, remote)
    if ref in catalog:
        return _catalog_or_pinned(ref, catalog[ref], q, remote)
    if ref.lower().endswith(".gguf") or "/" in ref or ref.startswith("."):
        return _from_path(ref, q, base_dir)
    import difflib

    close = difflib.get_close_matches(ref, list(catalog), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "use a catalog name (stackgen models), a .gguf path, an HF folder, hf:org/repo or ollama:name:tag"
    raise ModelRefError(f"unknown model {ref!r}", hint)


def catalog_pin_ref(facts: ModelFacts, q: str | None) -> str | None:
    """The reference `stackgen lock --catalog` pins for a catalog name with the stack's quant: the GGUF repo's file for a
    GGUF quant (hf:ORG/REPO-GGUF:QUANT), the pre-quantized checkpoint for awq/gptq/fp8, else the entry's `ref:`. None
    for an MLX format (the resolver reads GGUF and safetensors headers of HF repos, not MLX conversions)."""
    if not facts.ref:
        return None
    if is_gguf_quant(q):
        if q in facts.gguf_variants:
            return f"hf:{facts.gguf_variants[q]}"  # the repository of that one file (catalog gguf_variants)
        return f"hf:{facts.gguf_repo}:{q}" if facts.gguf_repo else None
    if q in facts.hf_variants:
        return f"hf:{facts.hf_variants[q]}"
    if q is not None and q not in ("bf16", "fp16", "fp32"):
        return None  # MLX, or awq/gptq/fp8 with no pre-quantized checkpoint: the catalog's own rule decides
    return facts.ref


def _catalog_or_pinned(name: str, facts: ModelFacts, q: str | None, remote: Any) -> ModelFacts:
    """A catalog name: its offline figures, or, when stack.lock pins its reference (`stackgen lock --catalog`), the
    facts the resolver read from the real files, under the catalog name."""
    from stackgen.errors import ModelError

    pin = catalog_pin_ref(facts, q) if remote is not None and hasattr(remote, "pinned") else None
    if pin is None:
        return facts.with_quant(q)
    try:
        got = remote.pinned(pin, q)
    except ModelError as exc:
        raise ModelRefError(f"{name} (= {pin}): {exc}", "") from None
    if got is None:
        return facts.with_quant(q)
    # Exact architecture and bytes from the headers; the catalog keeps the names engines fetch by where the pinned
    # reference has none (sizes of other formats are then estimates from the exact parameter count).
    return replace(got, name=name, ref=pin, description=facts.description, ollama=got.ollama or facts.ollama,
                   gguf_repo=got.gguf_repo or facts.gguf_repo, gguf_variants=facts.gguf_variants,
                   mlx_repo=facts.mlx_repo,
                   hf_repo=got.hf_repo or facts.hf_repo, long_context=got.long_context or facts.long_context)


def _from_registry(name: str, key: str, catalog: Mapping[str, ModelFacts], q: str | None,
                   source: str) -> ModelFacts | None:

    if not re.fullmatch(r"[A-Za-z0-9._/:@-]+", name) or not name:
        raise ModelRefError(f"invalid {source} reference {name!r}", "letters, digits, '.', '_', '-', '/', '@' and ':' "
                            "only")
    for facts in catalog.values():
        if (getattr(facts, key) or "").lower() == name.lower():
            out = facts.with_quant(q)
            return replace(out, source=source, name=f"{source}:{name}") if source == OLLAMA_REGISTRY else out
    return None


def _check_url_scheme(ref: str) -> None:
    """A model URL is https:// (the README's form, as a catalog `ref:`): the plan, the lock and the engine's own
    download (llama-server -mu) trust what arrives. Plain http:// only to this machine (a local mirror), where no one
    on the path can read or replace the file."""
    import urllib.parse

    if not ref.startswith("http://"):
        return
    host = (urllib.parse.urlsplit(ref).hostname or "").lower()
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        return
    raise ModelRefError(f"{ref} is plain http://: anyone on the path can read or replace the weights, and the plan "
                        "and stack.lock would describe a file the engine may not get",
                        "write the https:// URL of the file (plain http:// is read only from this machine: "
                        "localhost or 127.0.0.1)")


def _from_remote(ref: str, q: str | None, remote: Any) -> ModelFacts:
    """A reference the catalog does not know: its real metadata, pinned in stack.lock (stackgen/models/lock.py)."""
    from stackgen.errors import ModelError

    if remote is None:
        raise ModelRefError(f"{ref} is not in the model catalog and no lock file or network resolver was given",
                            "run `stackgen lock` on the stack")
    try:
        return remote.facts(ref, q)
    except ModelError as exc:
        raise ModelRefError(str(exc), "") from None


def _from_path(ref: str, q: str | None, base_dir: Path) -> ModelFacts:

    # Not resolved: a symlink (into an HF cache's blobs/<sha256>, a shared model store) keeps the name the stack wrote,
    # which names the model and the file every artifact installs, copies or mounts; llama.cpp too opens a split
    # GGUF's other parts beside the path it is given. `..` is folded as written, as render/paths.local_weights does.
    path = Path(os.path.abspath(base_dir / ref)) if not Path(ref).is_absolute() else Path(ref)
    if not path.exists():
        raise ModelRefError(f"model file {ref!r} does not exist (looked at {path})",
                            "fix the path (relative paths start at the stack file's folder)")
    if path.is_file():
        return _from_gguf(path, q)
    return _from_hf(path, q)


def _from_gguf(path: Path, q: str | None) -> ModelFacts:
    from stackgen.models import gguf

    parts = _gguf_parts(path)
    try:
        files = []
        for p in parts:
            st = p.stat()
            files.append((str(p.resolve()), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
        s = _gguf_summary(tuple(files))
    except gguf.GGUFModelError as exc:
        raise ModelRefError(f"{path.name}: {exc}", exc.hint) from None
    except gguf.GGUFError as exc:
        raise ModelRefError(f"{path.name}: not a readable GGUF file: {exc}", "point `model:` at a .gguf file") from None
    except OSError as exc:
        raise ModelRefError(f"{path.name}: cannot read the GGUF file: {exc.strerror or exc}",
                            "check the file's permissions") from None
    facts = ModelFacts.from_summary(path.stem, "gguf", str(path), s)
    file_quant = s.get("quant")  # general.file_type, or llama.cpp's guess from the tensor types when it is absent
    if q and file_quant and q != file_quant:
        how = " (it has no general.file_type; llama.cpp names it by its tensors' most common type)" \
            if s.get("quant_guessed") else ""
        try:
            fix = f"remove `quant:` or write `quant: {normalize_quant(file_quant)}`"
        except ValueError:  # a type with no quant: spelling (Q4_1_SOME_F16): the file is planned as it is without one
            fix = "remove `quant:`; the file is planned as the type it is"
        raise ModelRefError(f"quant {q} does not match the file, which is {file_quant}{how}", fix, field="quant")
    size = int(s.get("tensor_data_bytes") or s.get("file_size") or 0)
    return replace(facts, quant=file_quant, gguf_sizes={file_quant: size} if file_quant else {})


def _gguf_parts(path: Path) -> list[Path]:
    """The files llama.cpp loads for `model: path`: the file, or every part of a split GGUF named by its first part
    (the others beside it, by name: gguf.split_part_names). A later part, or a first part without all the others,
    is an error here, as it is when llama-server loads it."""
    from stackgen.models import gguf

    m = gguf.SPLIT_NAME.search(path.name)
    if m is None:
        return [path]
    names = gguf.split_part_names(path.name)
    if names is None:
        first = path.name[:m.start()] + f"-00001-of-{m.group(2)}.gguf"
        raise ModelRefError(f"{path.name} is part {int(m.group(1))} of {int(m.group(2))} of a split GGUF: llama.cpp "
                            "loads a split model from its first part, which names the others",
                            f"write the first part, {first}")
    missing = [n for n in names if not (path.parent / n).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelRefError(f"{path.name} is the first of {len(names)} parts of a split GGUF and {missing[0]}{more} is "
                            "not beside it: llama.cpp loads every part from the first one's folder",
                            "download every part of the split into the same folder")
    return [path.parent / n for n in names]


@lru_cache(maxsize=1024)
def _gguf_summary(files: tuple[tuple[str, tuple[int, ...]], ...]) -> Mapping[str, Any]:
    """One header read per file: a stack with many services on one GGUF (10,000 in the security review) read the
    same header once per service. `files`: each part's resolved path and identity (device, inode, size, mtime,
    ctime), so a changed part makes a new key; errors are not cached. All the parts of a split GGUF are summed
    (gguf.summarize_parts, the rule the remote path uses)."""
    from stackgen.models import gguf

    return MappingProxyType(gguf.summarize_parts([gguf.read_gguf_header(p) for p, _ in files]))


def _from_hf(path: Path, q: str | None) -> ModelFacts:
    from stackgen.models import hf as hfmodel

    try:
        info = hfmodel.read_hf_folder(path)
    except hfmodel.HFModelError as exc:
        raise ModelRefError(f"{path.name}: not a readable HF model folder: {exc}",
                            "point `model:` at a folder with config.json and *.safetensors") from None
    if not info.safetensors_files or not info.weights_bytes:
        raise ModelRefError(f"{path.name}: no weights found (config.json but no *.safetensors): it would plan 0 bytes "
                            "of weights", "download the *.safetensors files into the folder, or name the repository "
                            "as hf:org/repo")
    s = info.summarize()
    try:
        hfmodel.check_config(info, s)
    except hfmodel.HFConfigError as exc:
        raise ModelRefError(f"{path.name}: {exc}", exc.hint) from None
    # The format as a remote repository's (hub.py reads the same HFModelInfo.checkpoint_format): a quantization the
    # planner has no format for is refused, not sized as bf16 from element counts (a packed int4 tensor counts 8
    # weights as one element).
    fmt = info.checkpoint_format
    if fmt is None:
        what = f"quantized with {info.quantization}" if info.quantization else f"stored as {info.dtype}"
        raise ModelRefError(f"{path.name}: its weights are {what}, which stackgen cannot size (it plans "
                            f"{', '.join(hfmodel.PLANNED_FORMATS)} and mlx_lm checkpoints)",
                            "point `model:` at a bf16, FP8, AWQ or GPTQ checkpoint of the model (or its GGUF for "
                            "llama.cpp)")
    facts = ModelFacts.from_summary(path.name, "hf", str(path), s)
    return replace(facts, quant=q or fmt, hf_sizes=hfmodel.checkpoint_sizes(fmt, info.dtype_bytes))
