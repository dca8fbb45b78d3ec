"""Mapping a requested quant to the nearest format each engine family loads."""

from __future__ import annotations

from typing import Mapping

from stackgen.engines.base import Unsupported, Weights
from stackgen.models.facts import GGUF_BPW, HF_BYTES_PER_PARAM, MLX_BYTES_PER_PARAM

# Nearest GGUF type for a non-GGUF request.
TO_GGUF = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp8": "Q8_0", "8bit": "Q8_0", "6bit": "Q6_K",
           "awq": "Q4_K_M", "gptq": "Q4_K_M", "4bit": "Q4_K_M", "3bit": "Q3_K_M"}
# Nearest HF/vLLM format for a GGUF or MLX request, by bits per weight.
TO_HF_8BIT, TO_HF_4BIT = "fp8", "awq"
TO_MLX = {"bf16": "bf16", "fp16": "fp16", "fp32": "bf16", "fp8": "8bit", "awq": "4bit", "gptq": "4bit"}


def gguf_for(quant: str | None, default: str = "Q4_K_M", measured: Mapping[str, int] | None = None) -> tuple[str, str]:
    """(GGUF type, note about the mapping or ''). `measured`: the model's GGUF sizes; a type it has a size for (a
    local or locked file's own type, read from its header) is the file llama.cpp loads as it is, whatever its name,
    and is sized from those bytes (ModelFacts.gguf_bytes), not mapped to another type."""
    if quant is None:
        return default, ""
    if quant in GGUF_BPW or (measured and quant in measured):
        return quant, ""
    mapped = TO_GGUF.get(quant, default)
    if quant in ("bf16", "fp16", "fp32"):  # the same type in GGUF's spelling (BF16, F16, F32): nothing to say
        return mapped, ""
    return mapped, f"{quant} is not a GGUF type; llama.cpp would load the nearest GGUF, {mapped}"


def hf_for(quant: str | None, default: str = "bf16") -> tuple[str, str]:
    if quant is None:
        return default, ""
    if quant in HF_BYTES_PER_PARAM:
        return quant, ""
    bits = GGUF_BPW.get(quant) or MLX_BYTES_PER_PARAM.get(quant, 2.0) * 8
    mapped = "bf16" if bits >= 12 else TO_HF_8BIT if bits >= 6 else TO_HF_4BIT
    return mapped, f"{quant} is a GGUF/MLX format; vLLM would serve the nearest HF checkpoint, {mapped}"


def hf_checkpoint(model, who: str) -> tuple[str, int, str, str]:
    """(format, bytes, source, note) of the HF checkpoint an engine that loads safetensors (`who`: "vLLM", "SGLang")
    serves for `model.quant`, and the rule that keeps the launched checkpoint the one the plan sized (issue 12): a
    catalog model in awq/gptq needs a known pre-quantized repo (`hf_variants`), else it is refused; fp8 without one
    is the bf16 repo quantized on load (`quantize_on_load`), both sizes said."""
    fmt, note = hf_for(model.quant)
    if note and who != "vLLM":
        note = note.replace("vLLM", who)
    if fmt == "fp32":  # a float32 checkpoint (a folder or an hf: repository), or `quant: fp32` of a catalog model
        # `--dtype auto` (stackgen passes no --dtype) loads float32 weights in 16 bits: vLLM config/model.py
        # _resolve_auto_dtype ("Downcast for float32 models": bf16, fp16 where the platform lacks bf16), SGLang
        # srt/configs/model_config.py _get_and_verify_dtype (float16). The plan counts the loaded bytes
        # (hf.checkpoint_sizes gives a float32 checkpoint's; a catalog model its bf16 size), not fp32's.
        how = ("--dtype auto: fp16 for every model but Gemma's" if who == "SGLang" else  # review L4: its own rule
               "--dtype auto: bf16, or fp16 where the GPU has no bf16")
        fmt, note = "bf16", (f"fp32: {who} loads float32 weights in 16 bits ({how}), so the plan counts 2 bytes a "
                             "weight, half of float32's")
    size, source = model.hf_bytes(fmt)
    if model.source == "catalog" and fmt not in model.hf_variants:
        if fmt in ("awq", "gptq"):
            raise Unsupported(f"no {fmt} checkpoint of {model.name} is known (catalog hf_variants), and {who} would "
                              f"load {model.hf_repo}'s bf16 weights, not the {fmt} size the plan counts: name the "
                              f"checkpoint (`model: hf:ORG/REPO`) or use quant bf16 or fp8")
        if fmt == "fp8":  # no FP8 checkpoint: the bf16 repo, quantized on load (--quantization fp8)
            bf16, _ = model.hf_bytes("bf16")
            dyn = (f"fp8: no FP8 checkpoint of {model.name} is known, so {who} downloads {model.hf_repo} in bf16 "
                   f"({bf16 / 1e9:.1f} GB on disk) and quantizes it to fp8 as it loads (--quantization fp8); the "
                   f"plan counts the fp8 size in memory ({size / 1e9:.1f} GB)")
            note = f"{note}; {dyn}" if note else dyn
    return fmt, size, source, note


def safetensors_weights(model, who: str, gguf_why: str) -> Weights:
    """The weights of an engine that serves HF safetensors checkpoints only (`who`: "vLLM", "SGLang"): a GGUF or an
    Ollama-registry model is refused (`gguf_why`: why its GGUF loader will not do), else hf_checkpoint's."""
    if model.source == "gguf":
        raise Unsupported(f"serves HF safetensors checkpoints; {gguf_why}")
    if model.source == "ollama":
        raise Unsupported(f"the model comes from Ollama's registry; {who} needs an HF checkpoint")
    return Weights(*hf_checkpoint(model, who))


def quantize_on_load(model, fmt: str) -> bool:
    """fp8 planned for a checkpoint that is not FP8 (no `hf:` FP8 repo, no known variant): `--quantization fp8`."""
    return fmt == "fp8" and model.source != "hf" and "fp8" not in model.hf_variants


def mlx_for(quant: str | None, default: str = "4bit") -> tuple[str, str]:
    if quant is None:
        return default, ""
    if quant in MLX_BYTES_PER_PARAM:
        return quant, ""
    if quant in TO_MLX:
        return TO_MLX[quant], ""
    bits = GGUF_BPW.get(quant, 4.5)
    mapped = "bf16" if bits >= 12 else "8bit" if bits >= 6 else "4bit"
    return mapped, f"{quant} is a GGUF type; MLX would load the nearest MLX quantization, {mapped}"
