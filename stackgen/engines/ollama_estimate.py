"""A port of Ollama's own memory estimate, so an Ollama plan places layers the way the daemon will.

Pinned to Ollama v0.12.10 (the last release that carries it; f560bd077, 2025-11-05, replaced it with layouts the
runner measures): llm/memory.go `estimateGPULayers` (lines 154-445), fs/ggml/ggml.go `GraphSize` (lines 550-800),
ml/device.go `MinimumMemory` (lines 320-325). Only the parts a text-only GGUF reaches are ported: no projector, no
user OLLAMA_GPU_OVERHEAD (0 by default).

Every term, named as Ollama names it (all bytes):
- kv[i]: per layer, num_ctx x num_parallel x (head_k + head_v) x n_head_kv(i) x bytes/element (2 for f16, 1 for
  q8_0, 0.5 for q4_0: `kvCacheBytesPerElement`, not ggml's block sizes); gemma3's five local layers of six hold
  num_parallel x sliding_window + batch cells instead. Recurrent layers add their state,
  ((d_conv - 1)(d_inner + 2 n_group d_state) + d_state d_inner) x 4 B (engines.md 2.5), spread here evenly over the
  layers (the model facts carry its total, not which layers hold it).
- graph_full / graph_partial: the compute graph when every layer / not every layer is on the GPU, per
  architecture (`GraphSize`); batch = min(num_ctx, num_batch), context = num_ctx x num_parallel. An architecture
  without a formula gets partial = (heads / kv_heads) x kv_total / 6 and full = partial. Metal: partial = full;
  more than one GPU: full = partial.
- minimum: 457 MiB per CUDA/ROCm GPU, 512 MiB on Metal (`MinimumMemory`).
- layer buffer: one more layer (blk.0 weights + kv[0]) held on every GPU that takes layers.
- output: output_norm + output (or token_embd when tied) weights, placed last, as the (layers+1)-th layer.
A GPU takes layers while free > allocation + max(graph_partial, graph_full) + next layer; the layers go to the GPUs
round-robin from the last layer down (i % gpus_with_space).

Before v0.6.2 Ollama logged `memory.weights.repeating` with the KV cache included (memoryWeights += layerSize); the
placement arithmetic is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024**2
MINIMUM_MEMORY = {"cuda": 457 * MIB, "rocm": 457 * MIB, "metal": 512 * MIB}
KV_BYTES_PER_ELEMENT = {"q8_0": 1.0, "q4_0": 0.5, "f32": 4.0}  # default f16: 2 (ggml.go kvCacheBytesPerElement)
# fs/ggml/ggml.go FlashAttention(): architectures Ollama turns flash attention on for by default (v0.12.10).
FLASH_ATTENTION_BY_DEFAULT = {"gemma3", "gptoss", "gpt-oss", "qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe"}


@dataclass(frozen=True)
class OllamaModel:
    """What the estimate reads from a GGUF: the architecture keys and the tensor sizes grouped by layer."""

    architecture: str  # general.architecture (llama, qwen2, gemma2, gemma3, command-r, ...)
    block_count: int
    embedding: int
    heads: int
    kv_heads: int
    head_k: int
    head_v: int
    vocab: int
    layer_bytes: int  # weights of one repeating block (blk.N); Ollama reads each, a model has them equal here
    output_bytes: int  # output_norm + output (or token_embd when the output is tied)
    sliding_window: int = 0  # gemma3's attention.sliding_window
    kv_heads_per_layer: tuple[int, ...] = ()  # a per-layer head_count_kv (0: no KV on that layer); empty: kv_heads
    recurrent_state_bytes: int = 0  # the recurrent layers' state, all of them (engines.md 2.5)


@dataclass(frozen=True)
class GPU:
    free_bytes: int
    library: str = "cuda"  # cuda | rocm | metal


@dataclass(frozen=True)
class Estimate:
    layers: int  # layers offloaded, output included (Ollama's layers.offload)
    model_layers: int  # block_count + 1 (layers.model)
    kv_bytes: int  # memory.required.kv
    graph_full: int
    graph_partial: int
    graph: int  # the one applied: full when every layer is on the GPU
    vram_bytes: int  # memory.required.partial: what the GPUs hold
    total_bytes: int  # memory.required.full: the whole model's need, GPU and CPU
    tensor_split: tuple[int, ...] = ()
    allocations: tuple[int, ...] = field(default=())

    @property
    def fully_loaded(self) -> bool:
        return self.layers >= self.model_layers


def kv_per_layer(m: OllamaModel, num_ctx: int, batch: int, parallel: int, kv_type: str) -> list[int]:
    bpe = KV_BYTES_PER_ELEMENT.get(kv_type, 2.0)
    context = num_ctx * parallel
    full = int(context * (m.head_k + m.head_v) * m.kv_heads * bpe)
    kv = [full] * m.block_count
    if len(m.kv_heads_per_layer) == m.block_count:
        kv = [int(context * (m.head_k + m.head_v) * h * bpe) for h in m.kv_heads_per_layer]
    if m.architecture == "gemma3" and m.sliding_window:
        local = int((parallel * m.sliding_window + batch) * (m.head_k + m.head_v) * m.kv_heads * bpe)
        kv = [full if (i + 1) % 6 == 0 else local for i in range(m.block_count)]
    if m.recurrent_state_bytes and m.block_count:
        kv = [k + m.recurrent_state_bytes // m.block_count for k in kv]
    return kv


def graph_size(m: OllamaModel, num_ctx: int, batch: int, parallel: int, kv_total: int) -> tuple[int, int]:
    """(partial, full) compute graph bytes, fs/ggml/ggml.go GraphSize per architecture (integer arithmetic)."""
    ctx = num_ctx * parallel
    emb, heads, hkv, vocab, ehead = m.embedding, m.heads, m.kv_heads, m.vocab, max(m.head_k, m.head_v)
    arch = m.architecture
    full = partial = 0
    if arch in ("llama", "llama4"):
        full = max(4 * batch * (1 + 4 * emb + ctx * (1 + heads)), 4 * batch * (emb + vocab))
        partial = 4 * batch * emb + max(
            4 * batch * (1 + emb + max(ctx, emb)) + emb * emb * 9 // 16 + 4 * ctx * (batch * heads + ehead * hkv),
            4 * batch * (emb + vocab) + emb * vocab * 105 // 128)
    elif arch in ("gemma", "gemma2", "gemma3", "gemma3n"):
        hk = m.head_k
        full = max(4 * batch * (emb + vocab), 4 * batch * (2 + ctx + ctx * heads + 2 * emb + 2 * hk * heads))
        partial = max(4 * emb * batch + emb * vocab * 105 // 128 + 4 * vocab * batch,
                      4 * batch * (2 * emb + 1 + 2 * hk * heads + ctx + ctx * heads) + 4 * hk * ctx * 8
                      + emb * hk * heads * 9 // 16)
        if arch == "gemma3n":
            full, partial = full * 4, partial * 4
    elif arch == "command-r":
        full = max(4 * batch * (emb + vocab), 4 * batch * (2 + 4 * emb + ctx * (1 + heads)))
        partial = max(4 * batch * (emb + vocab) + emb * vocab * 105 // 128,
                      4 * batch * (1 + 2 * emb + ctx * (1 + heads)) + 4 * emb * ctx + emb * emb * 9 // 16)
    elif arch == "qwen2":
        full = max(4 * batch * (emb + vocab), 4 * batch * (1 + 2 * emb + ctx + ctx * heads))
        partial = max(4 * batch * (emb + vocab) + emb * vocab * 105 // 128,
                      4 * (batch * (1 + 2 * emb + ctx * (1 + heads)) + emb * (1 + ctx)))
    elif arch == "phi2":
        full = max(4 * batch * (emb + vocab), 4 * batch * (1 + 4 * emb + ctx + ctx * heads))
        partial = max(4 * batch * (2 * emb + vocab) + emb * vocab * 105 // 128,
                      4 * batch * (2 + 3 * emb + ctx + ctx * heads))
    elif arch == "deepseek2":
        hk = m.head_k
        full = max(4 * batch * (3 * emb + vocab), 4 * batch * (3 * emb + 2 + ctx * (1 + hkv) + 2 * hk * hkv))
        partial = max(4 * batch * (3 * emb + vocab) + emb * vocab * 105 // 128,
                      4 * batch * (2 * emb + 1 + 2 * hk * hkv + ctx + ctx * hkv) + 4 * hk * ctx * hkv
                      + emb * hk * hkv * 9 // 16)
    if partial == 0:  # memory.go: an architecture without a formula
        partial = (heads // max(1, hkv)) * kv_total // 6
    if full == 0:
        full = partial
    return partial, full


def estimate(m: OllamaModel, gpus: list[GPU], *, num_ctx: int, parallel: int = 1, num_batch: int = 512,
             kv_type: str = "f16", num_gpu: int = -1) -> Estimate:
    """estimateGPULayers: how many layers Ollama offloads to `gpus` (all one library) and what each GPU holds."""
    batch = min(num_ctx, num_batch)
    kv = kv_per_layer(m, num_ctx, batch, parallel, kv_type)
    kv_total = sum(kv)
    partial, full = graph_size(m, num_ctx, batch, parallel, kv_total)
    if gpus and gpus[0].library == "metal":
        partial = full
    elif len(gpus) > 1:
        full = partial
    layer_size = m.layer_bytes + kv[0]  # the one-layer buffer
    graph_max = max(partial, full)
    alloc = [0] * len(gpus)
    split = [0] * len(gpus)
    with_space: list[int] = []
    for i, g in enumerate(gpus):
        minimum = MINIMUM_MEMORY.get(g.library, MINIMUM_MEMORY["cuda"])
        if g.free_bytes < graph_max + minimum + 2 * layer_size:
            continue
        with_space.append(i)
        alloc[i] += minimum + layer_size
    count, overflow = 0, 0
    for i in range(m.block_count - 1, -1, -1):
        size = m.layer_bytes + kv[i]
        if 0 <= num_gpu <= count:
            overflow += size
            continue
        for j in range(len(with_space), 0, -1):
            g = with_space[i % j]
            if gpus[g].free_bytes > alloc[g] + graph_max + size:
                alloc[g] += size
                split[g] += 1
                count += 1
                break
            with_space.pop(i % j)
        if not with_space:
            overflow += size
    fully = count >= m.block_count
    if m.output_bytes and (num_gpu < 0 or count < num_gpu):
        for j in range(len(with_space), 0, -1):
            g = with_space[count % j]
            if gpus[g].free_bytes > alloc[g] + graph_max + m.output_bytes:
                alloc[g] += m.output_bytes
                split[g] += 1
                count += 1
                break
    if m.output_bytes and count < m.block_count + 1:
        fully = False
        overflow += m.output_bytes
    graph = full if fully else partial
    for i in range(len(gpus)):
        if split[i] > 0:
            alloc[i] += graph
    vram = sum(alloc)
    layers = count if gpus and count else 0
    return Estimate(layers=layers, model_layers=m.block_count + 1, kv_bytes=kv_total, graph_full=full,
                    graph_partial=partial, graph=graph, vram_bytes=vram if layers else 0, total_bytes=vram + overflow,
                    tensor_split=tuple(split), allocations=tuple(alloc))
