#!/usr/bin/env python3
"""Convert the Gemma 3 270M Q4_K_M GGUF into Hugging Face safetensors (bf16, dequantized).

Usage: python convert_gemma_hf.py MODEL.gguf OUT_DIR

Run in the conversion venv (torch 2.13.0, transformers 5.24.0, accelerate, gguf); transformers
5.19 drops <bos> in the tokenizer (junk output), 5.24 is fine. Takes ~1 min, writes ~544 MB.
OUT_DIR is written beside itself and renamed into place. A greedy check of
"The capital of France is" must continue with " the capital of the country of France".
"""
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(gguf: str, out: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = Path(gguf).resolve()
    dst = Path(out).resolve()
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for p in tmp.iterdir():
        p.chmod(0o644)  # save_pretrained writes the safetensors 0600
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(gen[0, enc["input_ids"].shape[1]:])
    print(f"greedy: {text!r}")
    if "capital" not in text:
        raise SystemExit(f"unexpected greedy continuation: {text!r}")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
