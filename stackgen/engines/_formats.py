"""Mapping a requested quant to the nearest format each engine family loads."""

from __future__ import annotations

from stackgen.models.facts import GGUF_BPW, HF_BYTES_PER_PARAM, MLX_BYTES_PER_PARAM

# Nearest GGUF type for a non-GGUF request.
TO_GGUF = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp8": "Q8_0", "8bit": "Q8_0", "6bit": "Q6_K",
           "awq": "Q4_K_M", "gptq": "Q4_K_M", "4bit": "Q4_K_M", "3bit": "Q3_K_M"}
# Nearest HF/vLLM format for a GGUF or MLX request, by bits per weight.
TO_HF_8BIT, TO_HF_4BIT = "fp8", "awq"
TO_MLX = {"bf16": "bf16", "fp16": "fp16", "fp32": "bf16", "fp8": "8bit", "awq": "4bit", "gptq": "4bit"}


def gguf_for(quant: str | None, default: str = "Q4_K_M") -> tuple[str, str]:
    """(GGUF type, note about the mapping or '')."""
    if quant is None:
        return default, ""
    if quant in GGUF_BPW:
        return quant, ""
    mapped = TO_GGUF.get(quant, default)
    return mapped, f"{quant} is not a GGUF type; llama.cpp would load the nearest GGUF, {mapped}"


def hf_for(quant: str | None, default: str = "bf16") -> tuple[str, str]:
    if quant is None:
        return default, ""
    if quant in HF_BYTES_PER_PARAM:
        return quant, ""
    bits = GGUF_BPW.get(quant) or MLX_BYTES_PER_PARAM.get(quant, 2.0) * 8
    mapped = "bf16" if bits >= 12 else TO_HF_8BIT if bits >= 6 else TO_HF_4BIT
    return mapped, f"{quant} is a GGUF/MLX format; vLLM would serve the nearest HF checkpoint, {mapped}"


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
