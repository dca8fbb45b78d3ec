#!/usr/bin/env python3
"""Write a random-weight GGUF with the exact shape, tensor types and tokenizer of a real model.

Used by benchmarks/gpu/llamacpp_h200.sh: a session's GPU machine has no network, so no real model can be
downloaded there, and memory buffers and decode speed depend on tensor shapes, types and the vocabulary, not on the
weights' values. Quantized blocks get random bytes with a small fixed scale (so activations stay finite); norms are
ones. The tokenizer is copied from the vocab-only GGUFs llama.cpp ships in models/ (ggml-vocab-*.gguf).

    python3 make_random_gguf.py llama2-7b-q4_0 OUT.gguf --vocab models/ggml-vocab-llama-spm.gguf

Needs gguf-py (llama.cpp's gguf-py folder on PYTHONPATH, or the `gguf` package) and numpy.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

# name: (arch facts, tensor type of the layer matrices, of token_embd, of output, file_type)
SHAPES = {
    # Llama 2 7B: the model of llama.cpp's CUDA/Metal scoreboards (llama 7B Q4_0, 3.56 GiB, 6.74 B params)
    "llama2-7b-q4_0": dict(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, ctx=4096, rope_base=10000.0,
                            mat=Q.Q4_0, embd=Q.Q4_0, out=Q.Q6_K, file_type=2, eps=1e-5),
    # Llama 3.1 8B with every matrix Q4_K and output Q6_K (a real Q4_K_M mixes in Q6_K for half the ffn_down/attn_v)
    "llama3-8b-q4_k": dict(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, ctx=131072, rope_base=500000.0,
                           mat=Q.Q4_K, embd=Q.Q4_K, out=Q.Q6_K, file_type=14, eps=1e-5),
}

# byte offset of the fp16 scale(s) inside one block, per type (ggml-common.h block layouts)
SCALE_OFFSETS = {Q.Q4_0: (0,), Q.Q8_0: (0,), Q.Q4_K: (0, 2), Q.Q6_K: (208,)}


def random_blocks(rng: np.random.Generator, qtype: Q, rows: int, cols: int) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0, (qtype, cols)
    data = np.frombuffer(rng.bytes(rows * (cols // block) * size), dtype=np.uint8).reshape(rows, cols // block, size).copy()
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        data[:, :, off:off + 2] = scale
    return data.reshape(rows, (cols // block) * size)


def copy_tokenizer(writer: gguf.GGUFWriter, vocab_path: str) -> int:
    reader = gguf.GGUFReader(vocab_path)
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
        writer.add_key_value(name, value, vtype, sub_type=sub)
    return n_vocab


def tensors(shape: dict, n_vocab: int):
    h, f, kvh = shape["hidden"], shape["ffn"], shape["kv_heads"] * (shape["hidden"] // shape["heads"])
    yield "token_embd.weight", shape["embd"], n_vocab, h
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", Q.F32, 1, h
        yield p + "attn_q.weight", shape["mat"], h, h
        yield p + "attn_k.weight", shape["mat"], kvh, h
        yield p + "attn_v.weight", shape["mat"], kvh, h
        yield p + "attn_output.weight", shape["mat"], h, h
        yield p + "ffn_norm.weight", Q.F32, 1, h
        yield p + "ffn_gate.weight", shape["mat"], f, h
        yield p + "ffn_up.weight", shape["mat"], f, h
        yield p + "ffn_down.weight", shape["mat"], h, f
    yield "output_norm.weight", Q.F32, 1, h
    yield "output.weight", shape["out"], n_vocab, h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--vocab", required=True, help="a vocab-only GGUF (llama.cpp models/ggml-vocab-*.gguf)")
    ap.add_argument("--layers", type=int, help="fewer layers (a quick local check)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shape = dict(SHAPES[args.shape])
    if args.layers:
        shape["layers"] = args.layers
    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(f"random {args.shape}")
    w.add_context_length(shape["ctx"])
    w.add_embedding_length(shape["hidden"])
    w.add_block_count(shape["layers"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_layer_norm_rms_eps(shape["eps"])
    w.add_rope_freq_base(shape["rope_base"])
    w.add_file_type(shape["file_type"])
    n_vocab = copy_tokenizer(w, args.vocab)
    w.add_vocab_size(n_vocab)
    plan = list(tensors(shape, n_vocab))
    for name, qtype, rows, cols in plan:
        if qtype == Q.F32:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = rows * (cols // block) * size
            w.add_tensor_info(name, (rows, cols // block * size), np.dtype(np.uint8), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(args.seed)
    for name, qtype, rows, cols in plan:
        if qtype == Q.F32:
            w.write_tensor_data(np.ones(cols, dtype=np.float32))
        else:
            # one tensor at a time, in row chunks, so a 4 GB model needs little RAM
            w.write_tensor_data(random_blocks(rng, qtype, rows, cols))
    w.close()
    print(f"{args.out}: {args.shape}, {shape['layers']} layers, vocab {n_vocab}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
