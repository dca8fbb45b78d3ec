"""Read the shape and weight size of a Hugging Face model folder.

vLLM and MLX serve safetensors folders, and planning their memory needs the
same facts :func:`stackgen.models.gguf.summarize` gives for a GGUF.  Only
``config.json`` and the JSON header at the front of each ``*.safetensors``
file are read (8-byte length + header), never the weights, and nothing
outside the standard library is imported.

config.json written by ``save_pretrained`` omits values equal to the config
class defaults (Gemma 3's nested ``text_config`` commonly lacks heads and
head_dim), so a small table of transformers' defaults fills those in; every
filled-in key is listed in ``HFModelInfo.defaults_used``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from stackgen import datafile
from stackgen.models.gguf import experts_summary as _experts

__all__ = [
    "HFModelError",
    "HFConfigError",
    "check_config",
    "SafetensorsInfo",
    "HFModelInfo",
    "MAX_HEADER_BYTES",
    "SAFETENSORS_DTYPE_BYTES",
    "read_safetensors_header",
    "read_hf_folder",
    "read_safetensors_header_from",
    "hf_info",
    "checkpoint_format",
    "checkpoint_sizes",
    "PLANNED_FORMATS",
]

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library itself refuses headers over 100 MB."""

# Bytes per element; sub-byte types (F4, F6_*) are packed and counted from
# data_offsets only.
SAFETENSORS_DTYPE_BYTES: Mapping[str, float] = MappingProxyType({
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
})

# transformers config-class defaults for keys save_pretrained leaves out.
# Source: Gemma2Config / Gemma3TextConfig __init__ signatures.
_MODEL_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "gemma3_text": {
        "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "max_position_embeddings": 131_072, "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
    "gemma2": {
        "vocab_size": 256_000, "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "max_position_embeddings": 8192, "sliding_window": 4096,
        "sliding_window_pattern": 2,
    },
})

# Older or non-Llama configs spell the same hyperparameter differently.
_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads"),
    "context_length": ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "experts_used": ("num_experts_per_tok", "moe_top_k", "num_experts_per_token"),
})

# torch dtype name -> the GGUF-style short name used as ``quant`` when the
# weights are not quantised, so GGUF and HF summaries compare directly.
_DTYPE_SHORT: Mapping[str, str] = MappingProxyType({
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "F32": "F32", "F16": "F16", "BF16": "BF16",
})


class HFModelError(ValueError):
    """A model folder this module cannot read; the message names the file."""


class HFConfigError(HFModelError):
    """config.json lacks, or garbles, a value the planner needs; `hint` says what to write instead."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class SafetensorsInfo:
    """What one safetensors header says about its tensors."""

    path: str
    header_bytes: int
    tensor_count: int
    dtype_bytes: Mapping[str, int]
    dtype_elements: Mapping[str, int]
    tensor_elements: Mapping[str, int] = field(repr=False)

    @property
    def weights_bytes(self) -> int:
        return sum(self.dtype_bytes.values())


@dataclass(frozen=True)
class HFModelInfo:
    """A model folder's config (flattened to the text model) and weight sizes."""

    path: str
    config: Mapping[str, Any] = field(repr=False)
    text_config: Mapping[str, Any] = field(repr=False)
    architecture: str | None
    model_type: str | None
    dtype: str | None
    quantization: str | None
    quantization_bits: int | None
    weights_bytes: int
    params: int
    dtype_bytes: Mapping[str, int]
    safetensors_files: tuple[str, ...]
    defaults_used: tuple[str, ...] = ()

    @property
    def checkpoint_format(self) -> str | None:
        """The stackgen format of the weights (see checkpoint_format); None when the planner has none for them."""
        return checkpoint_format(self.quantization, self.quantization_bits, self.dtype, self.dtype_bytes)

    def get(self, name: str) -> Any:
        """First present alias of a hyperparameter (see _ALIASES)."""
        for key in _ALIASES.get(name, (name,)):
            value = self.text_config.get(key)
            if value is not None:
                return value
        return None

    def summarize(self) -> dict[str, Any]:
        """Same keys as gguf.summarize where they apply, plus weights_bytes,
        dtype and quantization."""
        tc = self.text_config
        layers = _int(self.get("layers"))
        hidden = _int(self.get("hidden"))
        heads = _int(self.get("heads"))
        kv_heads = _int(self.get("kv_heads"))
        if kv_heads is None:
            kv_heads = 1 if tc.get("multi_query") else heads
        head_dim_k, head_dim_v = _head_dims(tc, hidden, heads)
        mla = _mla_cache_dims(tc)
        if mla is not None:  # one latent per token per layer, whatever the heads (see _mla_cache_dims)
            kv_heads, (head_dim_k, head_dim_v) = 1, mla
        window = _sliding_window(tc)
        layer_types = tc.get("layer_types")
        layer_types = tuple(layer_types) if isinstance(layer_types, list) else None
        # transformers 5 keeps the legacy period as "_sliding_window_pattern" beside layer_types.
        raw_pattern = tc.get("sliding_window_pattern", tc.get("_sliding_window_pattern"))
        pattern = _int(raw_pattern) if layer_types is None else None
        quant = self.quantization or _DTYPE_SHORT.get(self.dtype or "")
        return {
            "architecture": self.architecture,
            "model_type": self.model_type,
            "layers": layers,
            "hidden": hidden,
            "ffn": _int(self.get("ffn")),
            "heads": heads,
            "kv_heads": kv_heads,
            "kv_heads_per_layer": None,
            "head_dim_k": head_dim_k,
            "head_dim_v": head_dim_v,
            "context_length": _int(self.get("context_length")),
            "sliding_window": window,
            "sliding_window_pattern": pattern,
            "layer_types": layer_types,
            "swa_layers": _sliding_layers(layers, window, pattern, layer_types),
            "experts": _experts(_int(self.get("experts")), _int(self.get("experts_used"))),
            "vocab_size": _int(tc.get("vocab_size")),
            "params": self.params,
            "quant": quant,
            "weights_bytes": self.weights_bytes,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "rope_scaling": _rope_scaling(tc),
        }


# Unquantized weights: config.json's torch dtype, or the dominant safetensors dtype where it names none (_dtype).
_DTYPE_FORMAT: Mapping[str, str] = MappingProxyType({
    "bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "BF16": "bf16", "F16": "fp16", "F32": "fp32",
})
PLANNED_FORMATS = ("bf16", "fp16", "fp32", "fp8", "awq", "gptq")
MLX_BITS = (3, 4, 6, 8)  # mlx_lm quantizations the planner sizes (facts.MLX_BYTES_PER_PARAM)
MLX_AFFINE = "mlx-affine"  # mlx_lm's group-wise affine quantization ({"group_size": 64, "bits": 4}, no quant_method)


def checkpoint_format(quantization: str | None, bits: int | None, dtype: str | None,
                      dtype_bytes: Mapping[str, int]) -> str | None:
    """The stackgen format name of a checkpoint (one of PLANNED_FORMATS, or an mlx_lm quantization: 4bit, ...), the
    same for a local folder and a remote repository; None for weights the planner has no format for: bitsandbytes,
    mxfp4, a compressed-tensors scheme other than FP8 (its packed int4 `weight_packed` tensors hold 8 weights per
    int32 element), an int8 dtype."""
    if quantization in ("awq", "gptq", "fp8"):
        return quantization
    if quantization == MLX_AFFINE:
        return f"{bits}bit" if bits in MLX_BITS else None
    if quantization == "compressed-tensors":  # llm-compressor's FP8 checkpoints (e.g. neuralmagic/*-FP8)
        return "fp8" if "F8_E4M3" in dtype_bytes else None
    if quantization is not None:
        return None
    return _DTYPE_FORMAT.get(str(dtype))


def checkpoint_sizes(fmt: str, dtype_bytes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per format a checkpoint of `fmt` gives the planner (ModelFacts.hf_sizes), for a folder and a remote
    repository alike: its own bytes, and for a float32 checkpoint also the bytes it is loaded in, 16 bits per F32
    weight: vLLM's `--dtype auto` loads float32 weights as bf16, or fp16 where the platform has no bf16
    (config/model.py `_resolve_auto_dtype`: "Downcast for float32 models"), SGLang's as float16
    (srt/configs/model_config.py `_get_and_verify_dtype`: "we use float16 for float32 models")."""
    sizes = {fmt: sum(dtype_bytes.values())}
    if fmt == "fp32":
        sizes["bf16"] = sum(b // 2 if d == "F32" else b for d, b in dtype_bytes.items())
    return sizes


def _rope_scaling(tc: Mapping[str, Any]) -> dict[str, Any] | None:
    """config.json's RoPE scaling (`rope_scaling`, or transformers 5's `rope_parameters`; a per-layer-type nested
    dict is left out), under the names gguf.summarize uses."""
    rope = tc.get("rope_scaling") or tc.get("rope_parameters")
    if not isinstance(rope, Mapping):
        return None
    kind = rope.get("rope_type") or rope.get("type")
    if not isinstance(kind, str) or kind == "default":
        return None
    factor = rope.get("factor")
    theta = rope.get("rope_theta", tc.get("rope_theta"))
    return {"type": kind, "factor": float(factor) if isinstance(factor, (int, float)) else None,
            "original_context": _int(rope.get("original_max_position_embeddings")),
            "rope_theta": theta if isinstance(theta, (int, float)) and not isinstance(theta, bool) else None}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _head_dims(tc: Mapping[str, Any], hidden: int | None, heads: int | None) -> tuple[int | None, int | None]:
    """MLA models (DeepSeek) split K into nope+rope parts and size V apart;
    everyone else has head_dim, defaulting to hidden / heads."""
    nope, rope, v = (_int(tc.get(k)) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    if nope is not None and rope is not None:
        return nope + rope, v if v is not None else nope + rope
    head_dim = _int(tc.get("head_dim"))
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    return head_dim, head_dim


# Model types whose attention vLLM runs as MLA when the config has a kv_lora_rank (vllm/transformers_utils/
# model_arch_config_convertor.py `is_deepseek_mla`; deepseek_v4 is left out: its cache is sized from head_dim and
# compress_ratios).
MLA_MODEL_TYPES = frozenset({
    "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_mtp", "kimi_k2", "kimi_linear", "glm_moe_dsa",
    "glm4_moe_lite", "longcat_flash", "pangu_ultra_moe", "bailing_hybrid",
})


def _mla_cache_dims(tc: Mapping[str, Any]) -> tuple[int, int] | None:
    """(kv_lora_rank, qk_rope_head_dim) of a multi-head latent attention model, else None.

    MLA caches one compressed latent of kv_lora_rank + qk_rope_head_dim values per token per layer, shared by every
    head, not a K and V per head: vLLM's head size for these models is `kv_lora_rank + qk_rope_head_dim`
    (model_arch_config_convertor.py `get_head_size`) with one KV head whatever the tensor parallelism
    (config/model.py `get_num_kv_heads`: "When using MLA during decode it becomes MQA"), and its MLAAttentionSpec
    page holds block_size x head_size values (v1/kv_cache_interface.py: no separate V); SGLang's MLA pool the same
    per cell (kv_lora_rank + qk_rope_head_dim); mlx_lm's deepseek_v3 caches the latent as the keys and the RoPE key
    as the values (models/deepseek_v3.py `cache.update_and_fetch(kv_latent, k_pe)`). So the summary gives one KV
    head with head_dim_k = kv_lora_rank and head_dim_v = qk_rope_head_dim: K + V per token is the latent."""
    if tc.get("model_type") not in MLA_MODEL_TYPES:
        return None
    rank = _int(tc.get("kv_lora_rank"))
    rope = _int(tc.get("qk_rope_head_dim"))
    if not rank or not rope or rank < 0 or rope < 0:
        return None
    return rank, rope


def _sliding_window(tc: Mapping[str, Any]) -> int | None:
    """Qwen2-style configs carry a sliding_window that is switched off by
    use_sliding_window=false; it must not shrink the KV plan."""
    if tc.get("use_sliding_window") is False:
        return None
    return _int(tc.get("sliding_window")) or None


def _sliding_layers(
    layers: int | None, window: int | None, pattern: int | None, layer_types: tuple[Any, ...] | None
) -> int | None:
    if not layers or not window:
        return None
    if layer_types is not None:
        return sum(1 for t in layer_types[:layers] if t == "sliding_attention")
    if not pattern:
        return layers
    # transformers: layer i is sliding when (i + 1) % pattern != 0 (as llama.cpp).
    return layers - layers // pattern if pattern > 0 else None


def _load_json(path: Path, what: str) -> Any:
    fix = f"check that {path.name} is the model's own"
    try:
        return datafile.load_json(path, what, fix)
    except FileNotFoundError:
        raise HFModelError(f"{path}: missing {what}") from None
    except datafile.DataFileError as exc:
        raise HFModelError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HFModelError(f"{path}: cannot read {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise HFModelError(f"{path}: {what} is not valid JSON: {exc}") from None


# Where multimodal configs nest the LLM: text_config (Gemma 3, Llava, Mistral 3, Llama 4), llm_config (InternVL's
# InternVLChatConfig), language_config (DeepSeek-VL2, Janus), and the thinker's text_config (Qwen2.5-Omni).
_NESTED_LLM = ("text_config", "llm_config", "language_config")


def _nested_llm(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in _NESTED_LLM:
        if isinstance(config.get(key), Mapping):
            return config[key]
    thinker = config.get("thinker_config")
    if isinstance(thinker, Mapping) and isinstance(thinker.get("text_config"), Mapping):
        return thinker["text_config"]
    return None


def _text_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Multimodal configs nest the LLM's hyperparameters (_NESTED_LLM); those win over top-level keys."""
    merged = dict(config)
    nested = _nested_llm(config)
    if isinstance(nested, Mapping):
        merged.update({k: v for k, v in nested.items() if v is not None or k not in merged})
    model_type = merged.get("model_type")
    if model_type == "gemma3" and isinstance(nested, Mapping):
        model_type = "gemma3_text"  # text_config without its own model_type
    defaults = _MODEL_DEFAULTS.get(str(model_type), {})
    used = []
    for key, value in defaults.items():
        if key == "sliding_window_pattern" and ("layer_types" in merged or "_sliding_window_pattern" in merged):
            continue
        if merged.get(key) is None:
            merged[key] = value
            used.append(key)
    return merged, tuple(used)


def _quantization(config: Mapping[str, Any], tc: Mapping[str, Any]) -> tuple[str | None, int | None]:
    qc = config.get("quantization_config") or tc.get("quantization_config") or config.get("quantization")
    if not isinstance(qc, Mapping):
        return None, None
    method = qc.get("quant_method")
    if not isinstance(method, str):
        # mlx_lm writes {"group_size": 64, "bits": 4} (as "quantization", and as "quantization_config" since 0.20)
        return (MLX_AFFINE if "group_size" in qc else "unknown"), _int(qc.get("bits"))
    method = method.lower().replace("_", "-")
    bits = _int(qc.get("bits") or qc.get("w_bit"))
    if method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit") else 8 if qc.get("load_in_8bit") else bits
    if method == "fp8":
        bits = 8
    return method, bits


def _dtype(config: Mapping[str, Any], tc: Mapping[str, Any], dtype_bytes: Mapping[str, int]) -> str | None:
    """transformers 5 writes ``dtype``, 4.x ``torch_dtype``; without either,
    the dominant safetensors dtype is what will be loaded."""
    for source in (config, tc):
        for key in ("dtype", "torch_dtype"):
            value = source.get(key)
            if isinstance(value, str) and value != "auto":
                return value.removeprefix("torch.")
    if dtype_bytes:
        return max(dtype_bytes.items(), key=lambda kv: kv[1])[0]
    return None


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsInfo:
    """Parse one file's header and check every tensor lies inside the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return read_safetensors_header_from(f, str(p), os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise HFModelError(f"{p}: cannot read safetensors file: {exc}") from None


def read_safetensors_header_from(f: Any, name: str, size: int) -> SafetensorsInfo:
    """The same from any reader with read() positioned at 0 (a local file or stackgen.models.remote.RangeReader)."""
    p = Path(name) if "://" not in name else _UrlName(name)
    prefix = _read_exact(f, 8)
    if len(prefix) < 8:
        raise HFModelError(f"{name}: truncated safetensors file: {len(prefix)} bytes, need 8 for the header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise HFModelError(f"{name}: safetensors header too large: {n} bytes (limit {MAX_HEADER_BYTES})")
    if 8 + n > size:
        raise HFModelError(f"{name}: truncated safetensors file: header of {n} bytes but file has {size}")
    raw = _read_exact(f, n)
    try:
        header = datafile.parse_json(raw.decode("utf-8"), name, "its safetensors header", "download the file again")
    except datafile.DataFileError as exc:
        raise HFModelError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFModelError(f"{name}: safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise HFModelError(f"{name}: safetensors header is not a JSON object")
    return _tally(p, header, size - 8 - n, 8 + n)


def _read_exact(f: Any, n: int) -> bytes:
    """A remote reader returns what its last block holds; read on until `n` bytes or the end."""
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


class _UrlName(str):
    """A URL where messages want a Path: formats as itself."""


def _tally(p: Path, header: Mapping[str, Any], data_size: int, header_bytes: int) -> SafetensorsInfo:
    dtype_bytes: dict[str, int] = {}
    dtype_elements: dict[str, int] = {}
    elements: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, start, end = _tensor_entry(p, name, entry)
        if end > data_size:
            raise HFModelError(
                f"{p}: truncated safetensors file: tensor {name!r} ends at data byte {end} "
                f"but only {data_size} data bytes follow the header"
            )
        n = 1
        for d in shape:
            n *= d
        elements[name] = n
        dtype_bytes[dtype] = dtype_bytes.get(dtype, 0) + (end - start)
        dtype_elements[dtype] = dtype_elements.get(dtype, 0) + n
    return SafetensorsInfo(
        path=str(p),
        header_bytes=header_bytes,
        tensor_count=len(elements),
        dtype_bytes=MappingProxyType(dtype_bytes),
        dtype_elements=MappingProxyType(dtype_elements),
        tensor_elements=MappingProxyType(elements),
    )


def _tensor_entry(p: Path, name: str, entry: Any) -> tuple[str, list[int], int, int]:
    bad = HFModelError(f"{p}: safetensors header entry {name!r} is malformed: {entry!r:.200}")
    if not isinstance(entry, Mapping):
        raise bad
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if len(offsets) != 2 or not all(type(x) is int and x >= 0 for x in [*offsets, *shape]):
        raise bad
    start, end = offsets
    if end < start:
        raise bad
    return dtype, shape, start, end


def _weight_files(folder: Path) -> list[Path]:
    """With an index, only the shards it names: Mistral repos ship a
    consolidated.safetensors beside the shards, which would count twice."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _load_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise HFModelError(f"{index}: no weight_map object")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        for f in files:
            if not f.is_file():
                raise HFModelError(f"{f}: listed in {index.name} but missing")
        return files
    return [folder / n for n in unindexed_weight_files(p.name for p in folder.glob("*.safetensors"))]


def unindexed_weight_files(names: Any) -> list[str]:
    """The safetensors files a folder or repository without model.safetensors.index.json loads: every one, except that
    Mistral's consolidated*.safetensors (mistral_inference's own copy of the whole model, beside the HF shards that
    `huggingface-cli download --include "*.safetensors" config.json` also leaves) is left out when HF-format files are
    there too: vLLM loads one of the two copies, never both (model_loader/default_loader.py `_prepare_weights`: the
    "mistral" load format reads only consolidated*.safetensors, the HF one the rest; the index, when there is one,
    drops the files it does not name)."""
    names = sorted(set(names))
    hf_format = [n for n in names if not n.startswith("consolidated")]
    return hf_format or names


def _params(infos: list[SafetensorsInfo], quantization: str | None, bits: int | None) -> int:
    """Element counts, except AWQ/GPTQ pack 32/bits weights into each int32
    of ``*.qweight`` and add zeros/scales that are not parameters."""
    per_int32 = 32 // bits if quantization in ("awq", "gptq") and bits else 0
    total = 0
    for info in infos:
        for name, n in info.tensor_elements.items():
            if per_int32 and name.endswith((".qzeros", ".scales", ".g_idx")):
                continue
            if per_int32 and name.endswith(".qweight"):
                n *= per_int32
            total += n
    return total


# The hyperparameters a plan is built from: without them it would invent values (0 layers, 1 head of hidden width)
# or fail inside the planner.
_REQUIRED = (("layers", "the number of transformer layers"), ("hidden", "the hidden size"),
             ("heads", "the number of attention heads"))


def check_config(info: HFModelInfo, s: Mapping[str, Any]) -> None:
    """Refuse a config.json whose layer count, hidden size or heads are missing, not integers or not positive, whose
    other sizes are not positive, or whose KV heads do not divide the heads (transformers' repeat_kv, vLLM's split of
    the heads); `s` is info.summarize()."""
    def key(name: str) -> str:
        aliases = _ALIASES.get(name, (name,))
        return next((k for k in aliases if info.text_config.get(k) is not None), aliases[0])

    for name, what in _REQUIRED:
        raw, value = info.get(name), s.get(name)
        k = key(name)
        if raw is None:
            problem = f"config.json has no {k} ({what})"
        elif value is None:
            problem = f"config.json's {k} is {raw!r}, not an integer"
        elif value <= 0:
            problem = f"config.json's {k} is {value}; {what} must be positive"
        else:
            continue
        raise HFConfigError(problem, f"write {k} as a positive integer, as the model's own config.json has it"
                            + ("; a model without attention heads (Mamba-style) is not one stackgen plans"
                               if name == "heads" else ""))
    heads, kv = s["heads"], s.get("kv_heads")
    for name, value in (("kv_heads", kv), ("ffn", s.get("ffn")), ("head_dim_k", s.get("head_dim_k")),
                        ("head_dim_v", s.get("head_dim_v")), ("context_length", s.get("context_length")),
                        ("vocab_size", s.get("vocab_size"))):
        if value is not None and value <= 0:
            k = key(name) if name in _ALIASES else "head_dim" if name.startswith("head_dim") else name
            raise HFConfigError(f"config.json's {k} is {value}; it must be positive",
                                f"write {k} as a positive integer, or leave it out for the default")
    if kv is not None and (kv > heads or heads % kv):
        k = key("kv_heads")
        raise HFConfigError(f"config.json's {k} is {kv}, which does not divide {key('heads')} ({heads})",
                            f"write {k} as a divisor of {heads}, as the model's own config.json has it")


def read_hf_folder(path: str | os.PathLike[str]) -> HFModelInfo:
    """Read config.json and every safetensors header of a model folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise HFModelError(f"{folder}: not a directory")
    config = _load_json(folder / "config.json", "config.json")
    if not isinstance(config, dict):
        raise HFModelError(f"{folder / 'config.json'}: config.json is not a JSON object")
    files = _weight_files(folder)
    return hf_info(str(folder), config, [read_safetensors_header(f) for f in files])


def hf_info(label: str, config: Mapping[str, Any], infos: list[SafetensorsInfo]) -> HFModelInfo:
    """config.json plus the headers of the weight files, from a folder or from a remote repository."""
    tc, defaults_used = _text_config(config)
    dtype_bytes: dict[str, int] = {}
    for info in infos:
        for dtype, b in info.dtype_bytes.items():
            dtype_bytes[dtype] = dtype_bytes.get(dtype, 0) + b
    quantization, bits = _quantization(config, tc)
    architectures = config.get("architectures")
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    return HFModelInfo(
        path=label,
        config=MappingProxyType(dict(config)),
        text_config=MappingProxyType(tc),
        architecture=arch if isinstance(arch, str) else None,
        model_type=tc.get("model_type") if isinstance(tc.get("model_type"), str) else None,
        dtype=_dtype(config, tc, dtype_bytes),
        quantization=quantization,
        quantization_bits=bits,
        weights_bytes=sum(dtype_bytes.values()),
        params=_params(infos, quantization, bits),
        dtype_bytes=MappingProxyType(dict(sorted(dtype_bytes.items()))),
        safetensors_files=tuple(i.path for i in infos),
        defaults_used=defaults_used,
    )
