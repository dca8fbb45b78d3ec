"""Predictions for the public-log corpus (shared by tests/test_public_logs.py and benchmarks/bench_public_logs.py)."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from stackgen.plan.memory import GIB, VLLM_NON_TORCH_GIB, VLLM_NON_TORCH_TP_GIB, vllm_activation_bytes


def predict_vllm_case(c: dict) -> dict:
    """vLLM's own arithmetic with stackgen's terms: KV = total x util - weights - non-torch - activation peak."""
    m = c["model"]
    model = SimpleNamespace(hidden=m["hidden"], ffn=m["ffn"], vocab=m["vocab"])
    non_torch = (VLLM_NON_TORCH_GIB[c["tier"]] + (VLLM_NON_TORCH_TP_GIB if c["tp"] > 1 else 0.0)) * GIB
    act = vllm_activation_bytes(model, c["batched_tokens"], c["max_seqs"], c["tp"])
    graphs = 0.5 * GIB if c["cudagraphs"] else 0
    kv = c["total_gib"] * GIB * c["utilization"] - c["weights_gib"] * GIB - non_torch - act - graphs
    per_token = m["layers"] * max(1, m["kv_heads"] // c["tp"]) * m["head_dim"] * 2 * 2
    verdict = "started" if kv / per_token >= c["max_model_len"] else "refused"
    return {"non_torch": non_torch, "activation": act, "kv": kv, "verdict": verdict}


def ollama_case_inputs(c: dict):
    """The estimate's inputs from a case of ollama_memory.yaml: the model, the GPUs as the log lists them, options."""
    from stackgen.engines.ollama_estimate import GPU, OllamaModel
    model = OllamaModel(**c["model"], layer_bytes=int(c["layer_gib"] * GIB), output_bytes=int(c["output_gib"] * GIB))
    g = c["gpus"]
    gpus = [GPU(int(g["free_gib"] * GIB), g["library"])] * g["count"]
    return model, gpus, {"num_ctx": c["num_ctx"], "parallel": c["parallel"], "kv_type": c.get("kv_type", "f16")}


def predict_ollama_case(c: dict) -> dict:
    """Ollama's estimate (stackgen/engines/ollama_estimate.py) for a logged configuration, in the log's units."""
    from stackgen.engines.ollama_estimate import estimate
    model, gpus, opts = ollama_case_inputs(c)
    e = estimate(model, gpus, **opts)
    return {"layers": e.layers, "kv_gib": e.kv_bytes / GIB, "graph_full_gib": e.graph_full / GIB,
            "graph_partial_gib": e.graph_partial / GIB, "vram_gib": e.vram_bytes / GIB}


def predict_llamacpp_case(c: dict) -> dict:
    """llama.cpp's KV cache and compute buffer by stackgen's rules (MiB), for a logged context."""
    from stackgen.plan.memory import MIB, llamacpp_compute_bytes, llamacpp_kv_bytes, llamacpp_kq_scratch_bytes
    m = c["model"]
    model = SimpleNamespace(layers=m["layers"], hidden=m["hidden"], ffn=m["ffn"], heads=m["heads"],
                            kv_heads=m["kv_heads"], head_dim_k=m["head_dim"], head_dim_v=m.get("head_dim_v", m["head_dim"]),
                            vocab=m["vocab"], swa_layers=0, sliding_window=None, full_attention_layers=m["layers"],
                            recurrent_state_bytes=0,  # the logged models are attention-only
                            kv_bytes_per_token_per_layer=lambda bpe: m["kv_heads"] * (
                                m["head_dim"] + m.get("head_dim_v", m["head_dim"])) * bpe)
    slots, ctx = c["slots"], c["n_ctx"] // c["slots"]
    kv = llamacpp_kv_bytes(model, ctx, slots, c["kv_type"], c["ubatch"])
    compute = llamacpp_compute_bytes(model, slots, c["ubatch"])
    if not c["flash_attn"]:
        compute += llamacpp_kq_scratch_bytes(model, ctx, slots, c["ubatch"])
    return {"kv_mib": kv / MIB, "compute_mib": compute / MIB}


def predict_vllm_kv_case(c: dict) -> dict:
    """The plan's vLLM KV term (stackgen.plan.memory.vllm_kv_bytes_per_request) for a V1 capacity line: the bytes the
    logged token count needs on one rank, or the bytes max_model_len needs and whether the available memory holds it."""
    from stackgen.plan.memory import vllm_kv_bytes_per_request
    m = c["model"]
    model = SimpleNamespace(kv_heads=m["kv_heads"], head_dim_k=m["head_dim"], head_dim_v=m["head_dim"],
                            full_attention_layers=m["layers"], swa_layers=0, sliding_window=None)
    out = {}
    if "tokens" in c["logged"]:
        out["kv_gib"] = vllm_kv_bytes_per_request(model, c["logged"]["tokens"], c["kv_dtype"], c["tp"]) / GIB
    if "max_model_len" in c:
        need = vllm_kv_bytes_per_request(model, c["max_model_len"], c["kv_dtype"], c["tp"]) / GIB
        out["needed_gib"] = need
        out["verdict"] = "started" if need <= c["available_gib"] else "refused"
    return out


def predict_vllm_concurrency_point(p: dict) -> dict:
    """stackgen's aggregate decode prediction for a vllm_concurrency.yaml point: the active share of the planned weights
    (an MoE model's: the union of the experts its streams route to, from the point's `experts`) read once per step and
    each stream's KV cache at its average context, at the "vllm" backend's efficiency of
    TP x the GPU's bandwidth, capped by 2 x active params FLOPs per token at TP x the GPU's peak (speed.py), on the
    line's era for the run's vLLM `version:` (speed.vllm_build)."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import gpu_peak_flops

    tp = int(p.get("tensor_parallel", 1))
    active = p["weights_bytes"] * (float(p["active_params"]) / float(p["params"]))
    kv = p["kv_bytes_per_token"] * p["avg_context"]
    peak = gpu_peak_flops(p["gpu"], p["bandwidth_gbs"]) * tp
    e = p.get("experts") or {}
    experts = speed.ExpertRouting.of(float(p["params"]), float(p["active_params"]), e.get("total"), e.get("active"))
    build = speed.vllm_build(p.get("version"))  # the vLLM engine era of the run (speed.VLLM_V1_DEFAULT_BUILD)
    agg = speed.aggregate_tokens_per_s(active, kv, p["bandwidth_gbs"] * tp, "vllm", p["streams"],
                                       active_params=float(p["active_params"]), peak_tflops=peak / 1e12,
                                       experts=experts, build=build)
    single = speed.aggregate_tokens_per_s(active, kv, p["bandwidth_gbs"] * tp, "vllm", 1, build=build)
    comm = comm_seconds(p)  # tensor parallel's all-reduces: one more fixed time on every step
    agg, single = p["streams"] / (p["streams"] / agg + comm), 1 / (1 / single + comm)
    return {"aggregate": agg, "single": single, "ratio": agg / p["measured_tokens_per_s"]}


def predict_service_curve_point(curve: dict, batch: int) -> float:
    """Aggregate decode tokens/s at `batch` tokens per step for a curve of service_curve.yaml: speed's model with the
    planner's compute peak for that GPU (capacity.gpu_peak_flops); a codebook i-quant curve (`quant`) with its
    floor (speed.codebook_quant)."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import gpu_peak_flops
    peak = gpu_peak_flops(curve["gpu"], curve["bandwidth_gbs"]) / 1e12
    return speed.aggregate_tokens_per_s(curve["bytes_mib"] * 2**20, 0, curve["bandwidth_gbs"], curve["backend"],
                                        batch, active_params=curve["active_params"], peak_tflops=peak,
                                        weights=curve.get("weights", "quantized"),
                                        codebook_params=curve["active_params"]
                                        if speed.codebook_quant(curve.get("quant")) else 0.0)


def prefill_inputs(p: dict) -> tuple[float, float, float]:
    """(active parameters, the peak FLOP/s stackgen uses, measured prompt tokens/s) of a prefill_speed.yaml point:
    the GPU's peak_tflops, or on CPU stackgen's CPU_FLOPS_PER_THREAD x threads."""
    from stackgen.plan.capacity import CPU_FLOPS_PER_THREAD
    peak = CPU_FLOPS_PER_THREAD * p["threads"] if p["backend"] == "cpu" else p["peak_tflops"] * 1e12
    return p["params_b"] * 1e9, peak, p["tokens_per_s"]


def speed_line(backend: str) -> str:
    """The fitted line (a speed.BACKENDS key) a fixture point's `backend` is checked against: its own, or for an
    engine that has no line of its own the one its plans decode and prefill on (its Engine.speed_backend), so the
    point tests what that engine's plan prints. Every engine in the corpus has its own line now (SGLang's since it
    was fitted on half of its H20 rows; before, its points checked vLLM's)."""
    from stackgen import engines
    from stackgen.plan import speed
    if backend in speed.BACKENDS:
        return backend
    return engines.get(backend).speed_backend


def point_build(p: dict) -> int | None:
    """A fixture point's position on speed's build axis: a llama.cpp point's `build:`, a vLLM point's `version:`
    encoded by speed.vllm_build (major x 10000 + minor x 100 + patch; a version the source does not give, None: the
    current era)."""
    from stackgen.plan import speed
    if p.get("build") is not None:
        return p["build"]
    if speed_line(p["backend"]) == "vllm":
        return speed.vllm_build(p.get("version"))
    return None


# NVIDIA GPU name -> compute capability (NVIDIA's CUDA GPUs list, developer.nvidia.com/cuda-gpus), for the CUDA
# points' GPUs (decode_speed.yaml's gpu:); the first pattern that matches. test_every_cuda_point_has_a_compute_capability
# keeps every CUDA point matched.
CUDA_CC = (
    (r"K80", 3.7), (r"M40|M60|GTX 9\d\d", 5.2),
    (r"P100", 6.0), (r"P40|P4\b|GTX 10\d\d|TITAN XP?\b|Quadro P", 6.1),
    (r"V100|TITAN V\b", 7.0), (r"T4\b|RTX 20\d\d|GTX 16\d\d|Quadro RTX|TITAN RTX", 7.5),
    (r"A100|A30\b", 8.0), (r"RTX 30\d\d|A40\b|A10\b|RTX A\d{4}", 8.6),
    (r"RTX 40\d\d|L40S?\b|L4\b|Ada\b", 8.9), (r"GH200|H100|H200", 9.0),
    (r"GB10\b", 12.1), (r"RTX 50\d\d|RTX PRO \d{4} Blackwell", 12.0), (r"B200|B100", 10.0),
)


# confirm-tier (benchmarks/results/confirm-tier-candidates.md): whether a `cuda-datacenter` point is routed by its
# GPU's memory (T1, adopted) or by its tier alone (T0, every decision before it); routes_by_tier() switches to T0.
_ROUTE_BY_MEMORY = [True]


def point_memory(p: dict) -> str | None:
    """A datacenter CUDA point's memory type as `stackgen detect` gives its GPU (detect.known_gpu, the known-parts
    table a plan's hardware comes from; tests/plan/test_confirm_tier.py::test_every_datacenter_point_has_a_memory_type
    keeps every such point matched); None for other points or a part the table does not know."""
    from stackgen.host.detect import known_gpu
    if p["backend"] != "cuda-datacenter":
        return None
    known = known_gpu("nvidia", p["gpu"])
    return known[2] if known else None


def point_line(p: dict) -> str:
    """The fitted line a fixture point is predicted on, as a plan on its hardware picks it: speed_line of its
    `backend`, and for a `cuda-datacenter` point (the tier) speed.backend_for with its GPU's memory (point_memory):
    a GDDR datacenter GPU decodes on the consumer CUDA line (confirm-tier's T1); under routes_by_tier(), its tier's."""
    from stackgen.plan import speed
    line = speed_line(p["backend"])
    if line == "cuda-datacenter" and _ROUTE_BY_MEMORY[0]:
        return speed.backend_for(None, "nvidia", "datacenter", point_memory(p))
    return line


@contextmanager
def _switched_off(flag: list[bool]):
    """A module flag of the fixture's reading (_ROUTE_BY_MEMORY, _APPLE_SHARE) off for the block, on again after: how
    a decision made before the rule that set it is recomputed as it was."""
    flag[0] = False
    try:
        yield
    finally:
        flag[0] = True


def routes_by_tier():
    """For the block, datacenter CUDA points plan on the datacenter line whatever their memory (confirm-tier's T0):
    the routing of every decision made before confirm-tier, recomputed as it was."""
    return _switched_off(_ROUTE_BY_MEMORY)


# confirm-m1 (benchmarks/results/confirm-m1-candidates.md): whether an Apple point's GPU decodes at its datasheet
# bandwidth x its share (detect.apple_bandwidth_share: M1 Max and M1 Ultra 0.86; arm M1) or at the datasheet (M0, every
# decision before it); datasheet_apple() switches to M0.
_APPLE_SHARE = [True]


def point_bandwidth(p: dict) -> float:
    """The bandwidth a fixture point decodes at, as a plan on its hardware reads it (speed.step_inputs): its datasheet
    `bandwidth_gbs`, times the chip's share for an Apple point (on the Metal or MLX line) whose chip `stackgen detect`
    gives one (detect.apple_bandwidth_share, GPUSpec.decode_bandwidth_gbs), times its line's share for an AMD GPU's
    gfx target (detect.amd_arch, speed.Backend.bandwidth_share_for: confirm-gfx9's arm, a line's figure, so lines()
    switches it); under datasheet_apple(), the Apple chip's datasheet. The lines' fits read the datasheet (fit_point):
    confirm-m1 and confirm-gfx9 fixed the lines as they were fitted."""
    from stackgen.host.detect import amd_arch, apple_bandwidth_share
    from stackgen.plan import speed
    line = point_line(p)
    share = apple_bandwidth_share(p["gpu"]) if _APPLE_SHARE[0] and line in ("metal", "mlx") else None
    arch = speed.BACKENDS[line].bandwidth_share_for(amd_arch(p["gpu"]))
    return p["bandwidth_gbs"] * (share or 1.0) * arch


def datasheet_apple():
    """For the block, every Apple point decodes at its datasheet bandwidth (confirm-m1's M0): how every decision
    before confirm-m1 scored its points, recomputed as it was."""
    return _switched_off(_APPLE_SHARE)


# confirm-m1's grid for the share: 0.70 to 1.00 by 0.01 (its pre-registered arm).
SHARE_GRID = tuple(i / 100 for i in range(70, 101))


def fit_share(points: list[dict], grid: tuple[float, ...] = SHARE_GRID) -> tuple[float, float]:
    """confirm-m1's share g with the lines fixed: the `grid` value whose bandwidth x g gives `points` (fixture points,
    on the lines speed.BACKENDS has) the least sum of (predicted step / measured step - 1)^2, fit_kinds' and
    fit_exponent's relative residual; (g, that sum), each point predicted as predict_decode does at bandwidth x g.
    Ties: the smaller g (the first in `grid`)."""
    best: tuple[float, float] | None = None
    with datasheet_apple():  # g scales the datasheet figure, not a share already applied
        for g in grid:
            err = sum((p["tokens_per_s"] / predict_decode({**p, "bandwidth_gbs": p["bandwidth_gbs"] * g}) - 1) ** 2
                      for p in points)
            if best is None or err < best[1]:
                best = (g, err)
    assert best is not None, "fit_share needs a share to try"
    return best


def point_cc(p: dict) -> float | None:
    """A CUDA point's compute capability from its gpu: (CUDA_CC); None for other backends or an unmatched name."""
    import re
    if speed_line(p["backend"]) not in ("cuda", "cuda-datacenter"):
        return None
    return next((cc for pat, cc in CUDA_CC if re.search(pat, p["gpu"], re.I)), None)


def older_build(p: dict) -> bool:
    """A decode_speed.yaml point's era in fit_backend_build: its build (point_build: llama.cpp's build, vLLM's encoded
    version) older than its backend's build term's cut (speed.Backend.build_before), or on a line whose era is CUDA
    graphs' (Backend.graphs_by_arch) graphs off for its build and GPU (speed.cuda_graphs_off, point_cc)."""
    from stackgen.plan import speed
    line = speed.backend_params(point_line(p))
    b = point_build(p)
    if line.graphs_by_arch:
        return speed.cuda_graphs_off(b, point_cc(p))
    return bool(line.build_before) and b is not None and b < line.build_before


def comm_seconds(p: dict) -> float:
    """Tensor parallel's all-reduces per step for a fixture point (speed.tp_comm_seconds): its `tensor_parallel`, the
    model's `layers` and the GPUs' `gpu_link` (0 for a point without tensor parallel)."""
    from stackgen.plan import speed
    return speed.tp_comm_seconds(int(p.get("layers", 0)), int(p.get("tensor_parallel", 1)), p.get("gpu_link", "pcie"))


def fit_point(p: dict) -> tuple:
    """A decode_speed.yaml point as speed.fit_backend_build takes it: (bytes, bandwidth GB/s, tokens/s, weight kind,
    older build). A tensor-parallel point's rate is net of its all-reduces (comm_seconds: the measured step less
    them), which come from public all-reduce latencies (speed.ALLREDUCE_US), not from the fit."""
    tps = p["tokens_per_s"]
    comm = comm_seconds(p)
    if comm:
        tps = 1 / (1 / tps - comm)
    return p["bytes_mib"] * 2**20, p["bandwidth_gbs"], tps, p.get("weights", "quantized"), older_build(p)


def fit_line(points: list[tuple], split: tuple[str, ...], exponent: bool) -> tuple[float, dict]:
    """(bandwidth exponent, fit_kinds' dict) of a line over fit_point tuples: with the exponent fitted with it
    (speed.fit_exponent: confirm-bw's X1, a line whose Backend.bandwidth_exponent is not 1) where `exponent`, else
    linear (1.0 and speed.fit_kinds). The one place the bench, refit_line and loo_predicted choose between them."""
    from stackgen.plan import speed
    return speed.fit_exponent(points, split) if exponent else (1.0, speed.fit_kinds(points, split))


def loo_predicted(others: list[tuple], p: dict, split: tuple[str, ...] | None = None, exponent: bool = False) -> float:
    """A point's decode rate by the line fitted on `others` (fit_point tuples; speed.fit_kinds with the kinds in
    `split`, all of speed.SPLIT_KINDS by default; `exponent`: with a bandwidth exponent, speed.fit_exponent): its
    kind's slope (the shared one where the kind has none), t0 and its era's t0_before, tensor parallel's all-reduces.
    The leave-one-out prediction of the bench and the refit arms."""
    from stackgen.plan import speed

    split = speed.SPLIT_KINDS if split is None else split
    a, f = fit_line(others, split, exponent)
    eff = f.get(p.get("weights", "quantized")) or f["quantized"]  # a kind without its own slope: the shared one
    return 1 / (p["bytes_mib"] * 2**20 / (eff * speed.scaled_gbs(p["bandwidth_gbs"], a) * 1e9)
                + (f["t0_ms"] + (f["t0_before_ms"] if older_build(p) else 0)) / 1000 + comm_seconds(p))


def predict_decode(p: dict) -> float:
    """stackgen's single-stream decode tokens/s for a decode_speed.yaml point, on its backend's line (a codebook
    i-quant's with the codebook floor at the planner's peak for its GPU), with a tensor-parallel point's all-reduces
    on its step (comm_seconds)."""
    from stackgen.plan import speed
    tps = speed.single_stream_tokens_per_s(p["bytes_mib"] * 2**20, 0, point_bandwidth(p), point_line(p),
                                           p.get("weights", "quantized"), point_build(p), codebook_params(p),
                                           peak_flops(p), point_cc(p))
    return 1 / (1 / tps + comm_seconds(p))


def predict_prefill(p: dict) -> float:
    """stackgen's prefill tokens/s for the point's model, device and backend (its line: speed_line)."""
    from stackgen.plan.speed import prefill_tokens_per_s
    params, peak, _ = prefill_inputs(p)
    return prefill_tokens_per_s(params, peak / 1e12, speed_line(p["backend"]))


def partial_offload_inputs(fix: dict, p: dict) -> dict:
    """The forecast's inputs for a point of partial_offload.yaml: the model (ModelFacts from the fixture's catalog
    entry), the host, memory.py's layer split of the file and the GPU share of the bytes three ways:
    `gpu_fraction` (stackgen's: speed.partial_offload_read of the plan memory.py makes at that -ngl, i.e. of the bytes
    a decode step reads, the file less the token embedding, the share memory.llamacpp_step_read puts on the GPU: the
    output layer and ngl - 1 repeating layers; the check), `gpu_fraction_file` (the same GPU bytes over the whole
    file, the token embedding charged as a RAM read: stackgen before this change) and `gpu_fraction_layers`
    (mem.gpu_layers / mem.total_layers, service_forecast's share before this change). `read_bytes`: the bytes
    of the file a step reads under `gpu_fraction` (the whole file at ngl 0 or every layer)."""
    from types import SimpleNamespace
    from stackgen.models.facts import ModelFacts
    from stackgen.plan.memory import llamacpp_layer_split
    from stackgen.plan.speed import partial_offload_read
    host, m = fix["hosts"][p["host"]], fix["models"][p["model"]]
    model = ModelFacts.from_catalog(p["model"], m["catalog"])
    weights = int(float(m["file_bytes"]))
    split = llamacpp_layer_split(model, weights, m["quant"])
    ngl = min(int(p["ngl"]), model.layers)
    on_gpu = split.gpu_weights(ngl, model.layers) if ngl < model.layers else weights
    # the MemoryPlan fields partial_offload_read takes, as plan_llamacpp fills them at -ngl ngl
    mem = SimpleNamespace(gpu_layers=ngl, total_layers=model.layers, weights_bytes=weights, weights_format=m["quant"])
    read = partial_offload_read(model, mem)
    return {"model": model, "host": host, "weights": weights, "split": split, "ngl": ngl,
            "read_bytes": read[0] if read else weights,
            "gpu_fraction": read[1] if read else on_gpu / weights,
            "gpu_fraction_file": on_gpu / weights,
            "gpu_fraction_layers": ngl / model.layers,
            "gpu_bandwidth_gbs": min(g["bandwidth_gbs"] for g in host["gpus"])}


def predict_partial_offload(fix: dict, p: dict, rule: str = "memory") -> float:
    """stackgen's single-stream decode tokens/s (speed.forecast, as `stackgen plan` prints it: one decimal) for a
    partial_offload.yaml point: one token's active weights and the stream's KV cache, the GPU share at the GPU
    backend's fit of the slowest GPU's bandwidth, the rest at the CPU backend's fit of the host's peak RAM bandwidth.
    `rule` picks the bytes and the GPU share (partial_offload_inputs): "memory" (stackgen's: the bytes a step
    reads, memory.py's split of them; the check), "file" (the whole file at memory.py's GPU bytes: before this
    change) or "layers" (the whole file at the layer count's share: service_forecast before this change)."""
    from stackgen.plan import speed
    i = partial_offload_inputs(fix, p)
    model, host = i["model"], i["host"]
    backend = speed.backend_for(None, "nvidia", host["gpus"][0].get("tier"))
    weights = i["read_bytes"] if rule == "memory" else i["weights"]
    share = {"memory": i["gpu_fraction"], "file": i["gpu_fraction_file"], "layers": i["gpu_fraction_layers"]}[rule]
    fc = speed.forecast(backend, weights_bytes=weights * model.active_params / model.params,
                        kv_bytes_per_stream=float(p["kv_bytes"]), streams=1, gpu_fraction=share,
                        gpu_bandwidth_gbs=i["gpu_bandwidth_gbs"], host_bandwidth_gbs=host["ram_bandwidth_gbs"],
                        active_params=model.active_params, peak_flops=0.0, prompt_tokens=0,
                        experts=speed.ExpertRouting.of(model.params, model.active_params, model.experts_total,
                                                       model.experts_active))
    return fc.single_stream_tokens_per_s


def partial_offload_stated_error(fix: dict, p: dict) -> float:
    """The error the plan states for the point's forecast (Forecast.error: a partial offload takes the larger of the
    GPU and CPU backends' stated errors)."""
    from stackgen.plan import speed
    i = partial_offload_inputs(fix, p)
    backend = speed.backend_for(None, "nvidia", i["host"]["gpus"][0].get("tier"))
    fc = speed.forecast(backend, weights_bytes=1e9, kv_bytes_per_stream=0.0, streams=1, gpu_fraction=i["gpu_fraction"],
                        gpu_bandwidth_gbs=i["gpu_bandwidth_gbs"], host_bandwidth_gbs=i["host"]["ram_bandwidth_gbs"],
                        active_params=1e9, peak_flops=0.0, prompt_tokens=0)
    return fc.error


def partial_prefill_inputs(fix: dict, p: dict) -> dict:
    """A prefill_points row of partial_offload.yaml: the model, the host, the bytes service_forecast splits at that
    -ngl (speed.partial_offload_read: the GPU's share of the bytes a step reads), the RAM side's bytes, the link."""
    from types import SimpleNamespace
    from stackgen.models.facts import ModelFacts
    from stackgen.plan.speed import DEFAULT_HOST_LINK_GBS, partial_offload_read
    host, m = fix["prefill_hosts"][p["host"]], fix["prefill_models"][p["model"]]
    model = ModelFacts.from_catalog(p["model"], m["catalog"])
    weights = int(float(m["file_bytes"]))
    mem = SimpleNamespace(gpu_layers=int(p["ngl"]), total_layers=model.layers, weights_bytes=weights,
                          weights_format=m["quant"])
    read, share, _ = partial_offload_read(model, mem)
    return {"model": model, "host": host, "read_bytes": read, "gpu_fraction": share,
            "ram_bytes": read * (1 - share), "link_gbs": host.get("host_link_gbs") or DEFAULT_HOST_LINK_GBS}


def predict_partial_prefill(fix: dict, p: dict, copies: bool = True) -> float:
    """stackgen's prompt tokens/s (speed.forecast's prefill_tokens_per_s for the point's prompt) at a partial -ngl:
    the prompt's compute on the GPU at the CUDA prefill fit, plus (copies) the RAM layers copied over the host link
    once per micro-batch; copies=False: the compute alone (stackgen before this change)."""
    from stackgen.plan import speed
    from stackgen.plan.capacity import gpu_peak_flops
    i = partial_prefill_inputs(fix, p)
    model, g = i["model"], i["host"]["gpus"][0]
    backend = speed.backend_for(None, "nvidia", g.get("tier"))
    fc = speed.forecast(backend, weights_bytes=i["read_bytes"], kv_bytes_per_stream=0.0, streams=1,
                        gpu_fraction=i["gpu_fraction"], gpu_bandwidth_gbs=g["bandwidth_gbs"],
                        host_bandwidth_gbs=50.0,  # the decode's RAM read: not part of a prompt's rate
                        active_params=model.active_params, peak_flops=gpu_peak_flops(g["name"], g["bandwidth_gbs"]),
                        prompt_tokens=int(p["prompt"]), host_link_gbs=i["link_gbs"] if copies else 0.0,
                        ubatch=int(p["ubatch"]))
    return fc.prefill_tokens_per_s


def codebook_params(p: dict) -> float:
    """The weights a decode_speed.yaml point's plan counts through the codebook floor: the model's parameters
    (params_b, as llama-bench prints them) when its quant is a codebook i-quant (speed.codebook_quant), else 0."""
    from stackgen.plan import speed
    return float(p.get("params_b", 0.0)) * 1e9 if speed.codebook_quant(p.get("quant")) else 0.0


def peak_flops(p: dict) -> float:
    """The planner's peak for the point's GPU (capacity.gpu_peak_flops), what the codebook floor scales by."""
    from stackgen.plan.capacity import gpu_peak_flops
    return gpu_peak_flops(p["gpu"], p["bandwidth_gbs"])


def codebook_fit_points() -> list[tuple]:
    """decode_speed.yaml's `codebook_fit` points as speed.fit_codebook takes them (bytes, bandwidth GB/s, tokens/s,
    codebook params, peak FLOP/s, the older build's extra t0 ms)."""
    from pathlib import Path
    import yaml
    from stackgen.plan import speed
    pts = yaml.safe_load((Path(__file__).parent / "fixtures" / "public-logs" / "decode_speed.yaml").read_text())["points"]
    out = []
    for p in pts:
        if p.get("codebook_fit"):
            extra = speed.BACKENDS[p["backend"]].t0_before_ms if older_build(p) else 0.0
            out.append((p["bytes_mib"] * 2**20, speed.BACKENDS[p["backend"]].read_gbs(p["bandwidth_gbs"]),
                        p["tokens_per_s"], codebook_params(p), peak_flops(p), extra))
    return out


@contextmanager
def lines(overrides: dict):
    """speed.BACKENDS with `overrides` ({backend: speed.Backend}) in place for the block, restored after: how an arm's
    lines are scored against the corpus."""
    from stackgen.plan import speed
    saved = dict(speed.BACKENDS)
    speed.BACKENDS.update(overrides)
    try:
        yield
    finally:
        speed.BACKENDS.clear()
        speed.BACKENDS.update(saved)


@contextmanager
def linear_lines():
    """speed.BACKENDS as before confirm-bw (benchmarks/results/confirm-bw-candidates.md) for the block: the lines it
    could change (Metal, consumer CUDA) as they stood, linear, at main 5ea2645 (LINES_BEFORE_CONFIRM_BW). The
    decisions made before it (the confirm-* tests) are recomputed under the lines of their time."""
    with lines(LINES_BEFORE_CONFIRM_BW):
        yield


def _lines_before_confirm_bw() -> dict:
    from stackgen.plan.speed import LLAMA_CUDA_GRAPHS_BUILD, Backend
    return {"metal": Backend(0.774, 3.92, fitted_on=66, error=0.21, prefill_mfu=0.706, efficiency_16bit=0.874,
                             efficiency_legacy=0.850),
            "cuda": Backend(0.733, 0.48, fitted_on=17, error=0.20, prefill_mfu=0.926, efficiency_16bit=0.925,
                            batch_mfu=0.212, batch_mfu_16bit=0.900, build_before=LLAMA_CUDA_GRAPHS_BUILD,
                            t0_before_ms=1.39, codebook_flop_per_weight=56.3, efficiency_legacy=0.748)}


LINES_BEFORE_CONFIRM_BW = _lines_before_confirm_bw()


def _lines_before_confirm_graphs() -> dict:
    """The llama.cpp CUDA lines when confirm-graphs' rule was fixed (main b5d1f58): the consumer line as before
    confirm-bw (its stated error 0.21 by then), the datacenter line as it stood (stated 0.46)."""
    from dataclasses import replace
    from stackgen.plan.speed import Backend
    return {"cuda": replace(LINES_BEFORE_CONFIRM_BW["cuda"], error=0.21),
            "cuda-datacenter": Backend(0.677, 3.09, fitted_on=2, error=0.46, prefill_mfu=0.926)}


LINES_BEFORE_CONFIRM_GRAPHS = _lines_before_confirm_graphs()


def _lines_before_confirm_graphs2() -> dict:
    """The llama.cpp CUDA lines when confirm-graphs2's rule was fixed (main 08fb86f): the older era by build alone, the
    datacenter line without one (G0; speed.BACKENDS still has them: G1 was not adopted)."""
    from dataclasses import replace
    from stackgen.plan.speed import BACKENDS, Backend
    return {"cuda": replace(BACKENDS["cuda"], graphs_by_arch=False),
            "cuda-datacenter": Backend(0.677, 3.09, fitted_on=2, error=0.40, prefill_mfu=0.926)}


LINES_BEFORE_CONFIRM_GRAPHS2 = _lines_before_confirm_graphs2()


# --- the confirmatory decisions' time: the points each was made on and the readings it was made under ---

# The confirmatory decisions in the order they were made; the ones of one tuple were decided together (their arms move
# disjoint points, or their corpora were collected side by side), each on the others' corpora too.
DECISION_ERAS = (
    ("confirm-metal", "confirm-amd", "confirm-cuda"),
    ("confirm-bw",),
    ("confirm-graphs",),
    ("confirm-tier",),
    ("confirm-m1",),
    ("confirm-gfx9", "confirm-graphs2"),
    ("confirm-vllm-rocm",),
)
# the held-out corpora (decode_speed.yaml's corpus:) a decision's step 1 collected, where not its own name
DECISION_CORPORA = {
    "confirm-bw": ("confirm-bw-metal-a", "confirm-bw-metal-b", "confirm-bw-cuda"),
    "confirm-tier": ("confirm-tier-a", "confirm-tier-b"),
    "confirm-m1": ("confirm-m1-metal", "confirm-m1-mlx"),
}
# the reading a decision adopted that changes how other points are scored, as the switch that reverts it for a block
# (a decision that adopted nothing, or nothing a later test must revert, has none)
DECISION_READINGS = {
    "confirm-bw": lambda: linear_lines(),
    "confirm-tier": lambda: routes_by_tier(),
    "confirm-m1": lambda: datasheet_apple(),
    "confirm-gfx9": lambda: lines(gfx9_lines(share=False)),
}


def _era(decision: str) -> int:
    return next(i for i, era in enumerate(DECISION_ERAS) if decision in era)


def _later(decision: str) -> list[str]:
    return [d for era in DECISION_ERAS[_era(decision) + 1:] for d in era]


def points_of_its_time(points: list[dict], decision: str) -> list[dict]:
    """`points` less every corpus collected for a decision made after `decision` (all held out): the points it was
    decided on."""
    later = {c for d in _later(decision) for c in DECISION_CORPORA.get(d, (d,))}
    return [p for p in points if p.get("corpus") not in later]


@contextmanager
def readings_of_its_time(decision: str):
    """For the block, every reading a decision made after `decision`, or with it, adopted is reverted
    (DECISION_READINGS): its arms are scored under the lines of the main its rule was fixed on."""
    from contextlib import ExitStack
    with_it = [d for d in DECISION_ERAS[_era(decision)] if d != decision]
    with ExitStack() as stack:
        for d in with_it + _later(decision):
            if d in DECISION_READINGS:
                stack.enter_context(DECISION_READINGS[d]())
        yield


def gfx9_lines(share: bool) -> dict:
    """confirm-gfx9's arms (confirm-gfx9-candidates.md): llama.cpp's ROCm and Vulkan lines as speed.BACKENDS has them,
    with AMD's gfx906 / gfx908 / gfx90a parts at speed.GFX9_HBM_SHARE of their bandwidth (A1, `share`) or at their
    datasheet (A0); no other figure differs."""
    from dataclasses import replace
    from stackgen.plan import speed
    return {k: replace(speed.BACKENDS[k], arch_bandwidth_share=speed.GFX9_HBM_SHARE if share else ())
            for k in ("rocm", "vulkan")}


def point_source(p: dict) -> str:
    """A decode point's source as the confirmatory rules count them (at most 6 points each): a file URL cut at
    "/blob/" (its repository), an issue or PR thread as itself."""
    return p["source"].split()[0].split("/blob/")[0]


def first_per_source(points: list[dict], cap: int = 6) -> list[dict]:
    """The points a confirmatory rule scores: at most `cap` per source (point_source), the first in fixture order
    (step 1's cap, read as confirm-bw's note fixed it: a source is a repository or a thread)."""
    seen: dict[str, int] = {}
    out = []
    for p in points:
        source = point_source(p)
        seen[source] = seen.get(source, 0) + 1
        if seen[source] <= cap:
            out.append(p)
    return out


def confirm_score(points: list[dict], overrides: dict, new: list[dict]) -> dict:
    """Step 2 of confirm-bw's and confirm-graphs' rule, under `overrides` ({backend: speed.Backend}, the other lines as
    speed.BACKENDS has them): the `new` points within 15% ("new") and their mean |ln(pred/measured)| ("ln"), and the
    whole of `points` within 15% ("all")."""
    import math
    with lines(overrides):
        ratio = {p["id"]: predict_decode(p) / p["tokens_per_s"] for p in points}
    return {"new": sum(abs(ratio[p["id"]] - 1) <= 0.15 for p in new),
            "ln": sum(abs(math.log(ratio[p["id"]])) for p in new) / len(new) if new else 0.0,
            "all": sum(abs(r - 1) <= 0.15 for r in ratio.values())}


def confirm_verdict(new: list[dict], base: dict, arm: dict, spread: str = "bandwidth_gbs") -> bool | None:
    """Steps 3-4 of confirm-bw's, confirm-graphs' and confirm-tier's rule on confirm_score's figures: None (no
    decision) for fewer than 6 new points, one source, or one value of `spread` (a point's key: one bandwidth for
    confirm-bw and confirm-graphs, one GPU model, "gpu", for confirm-tier); else whether the arm is adopted: more new
    points within 15%, a lower mean |ln| on them, and the whole corpus at least the base's."""
    if len(new) < 6 or len({point_source(p) for p in new}) < 2 or len({p[spread] for p in new}) < 2:
        return None
    return arm["new"] > base["new"] and arm["ln"] < base["ln"] and arm["all"] >= base["all"]


def graphs_lines(points: list[dict]) -> dict:
    """confirm-graphs' arm G1 (benchmarks/results/confirm-graphs-candidates.md): both llama.cpp CUDA lines with their
    era by CUDA graphs (Backend.graphs_by_arch: speed.cuda_graphs_off of a point's build and compute capability).
    The consumer line is refitted on its points not held out with those era flags (refit_line); the datacenter
    line's fitted points are all older builds, so its older-era extra is the consumer line's, and its e and t0 the
    fit of its points with that extra taken off their steps."""
    from dataclasses import replace
    from stackgen.plan import speed
    fitted = [p for p in points if p["backend"] == "cuda-datacenter" and not p.get("outlier") and not p.get("held_out")]
    flagged = {k: replace(speed.BACKENDS[k], graphs_by_arch=True) for k in ("cuda", "cuda-datacenter")}
    with lines(flagged):
        cuda = refit_line(points, "cuda", lambda p: not p.get("held_out"), speed.split_kinds("cuda"))
        extra = cuda.t0_before_ms / 1000
        sel = [(b, bw, 1 / (1 / tps - (extra if o else 0.0)), k) for b, bw, tps, k, o in map(fit_point, fitted)]
    f = speed.fit_kinds(sel, speed.split_kinds("cuda-datacenter"))
    dc = replace(flagged["cuda-datacenter"], efficiency=f["quantized"], t0_ms=f["t0_ms"], efficiency_16bit=f["16bit"],
                 efficiency_legacy=f["legacy"], build_before=speed.LLAMA_CUDA_GRAPHS_BUILD,
                 t0_before_ms=cuda.t0_before_ms, fitted_on=len(sel))
    return {"cuda": cuda, "cuda-datacenter": dc}


def refit_line(points: list[dict], backend: str, fitted, split: tuple[str, ...], exponent: bool = False):
    """speed.BACKENDS[backend] refitted (fit_kinds with the kinds in `split`) on its points that `fitted(p)` selects,
    outliers aside, and its CUDA codebook floor refitted at that line (fit_codebook); None when it has none there.
    `exponent`: the bandwidth exponent fitted with it (speed.fit_exponent: confirm-bw's arm X1); else a linear line
    (bandwidth_exponent 1, every line before confirm-bw)."""
    from dataclasses import replace
    from stackgen.plan import speed
    b = speed.BACKENDS[backend]
    sel = [fit_point(p) for p in points if p["backend"] == backend and not p.get("outlier") and fitted(p)]
    if not sel:
        return None
    a, f = fit_line(sel, split, exponent)
    nb = replace(b, efficiency=f["quantized"], t0_ms=f["t0_ms"], efficiency_16bit=f["16bit"],
                 efficiency_int4_awq=f["int4-awq"], efficiency_legacy=f["legacy"], t0_before_ms=f["t0_before_ms"],
                 fitted_on=len(sel), bandwidth_exponent=a)
    if b.codebook_flop_per_weight:
        cb = [(p["bytes_mib"] * 2**20, nb.read_gbs(p["bandwidth_gbs"]), p["tokens_per_s"], codebook_params(p),
               peak_flops(p), nb.t0_before_ms if older_build(p) else 0.0) for p in points
              if p["backend"] == backend and p.get("codebook_fit")]
        nb = replace(nb, codebook_flop_per_weight=speed.fit_codebook(cb, nb.efficiency, nb.t0_ms))
    return nb


def loo_within(fit_pts: list[dict], split: tuple[str, ...], exponent: bool = False) -> int:
    """Leave-one-out over `fit_pts`: how many are within 15% of the line fitted on the others (loo_predicted; with a
    bandwidth exponent fitted each time where `exponent`)."""
    sel = [fit_point(p) for p in fit_pts]
    return sum(abs(loo_predicted(sel[:i] + sel[i + 1:], p, split, exponent) / p["tokens_per_s"] - 1) <= 0.15
               for i, p in enumerate(fit_pts))


# --- the "legacy" weight kind's pre-registered comparison (benchmarks/results/metal-candidates.md, "legacy kind") ---

def today_fitted(p: dict) -> bool:
    """The fitted set before the legacy-kind task (Metal's 16-point line, the "today's line" of the metal-m1, metal-k
    and confirm-metal tasks): every point not held out, less the metal-m1 and metal-k rows (all held out then; their
    odd-numbered ones are fitted since confirm-metal adopted metal-k's arm, decode_speed.yaml's comments)."""
    return not p.get("outlier") and not p.get("held_out") and p.get("corpus") not in ("metal-m1", "metal-k")


def arm_backends(points: list[dict], fitted, legacy: bool) -> dict:
    """speed.Backend per fitted backend refitted (refit_line) on the points `fitted(p)` selects, with the "legacy"
    kind given its own slope where the points allow (legacy=True) or kept on the shared slope (False); the CUDA
    codebook floor refitted at that line. Everything else as speed.BACKENDS has it."""
    from stackgen.plan import speed
    split = speed.SPLIT_KINDS if legacy else tuple(k for k in speed.SPLIT_KINDS if k != "legacy")
    out = {}
    for backend, b in speed.BACKENDS.items():
        nb = refit_line(points, backend, fitted, split) if b.fitted_on else None
        if nb is not None:
            out[backend] = (nb, split)
    return out


def arm_figures(points: list[dict], fitted, legacy: bool) -> dict:
    """One arm of the comparison: per backend, its figures (speed.Backend), the held-out points (not `fitted`,
    outliers aside) within 15% and their count, leave-one-out within 15% over its fitted points (each predicted by
    the fit of the others, fit_kinds with the arm's kinds; backends with 3+ fitted points), and the whole corpus's
    count within 15% under the arm's lines."""
    arms = arm_backends(points, fitted, legacy)
    with lines({k: v[0] for k, v in arms.items()}):
        within = {id(p): abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in points}
    out = {"all": (sum(within.values()), len(points)), "backends": {}}
    for backend, (b, split) in arms.items():
        mine = [p for p in points if p["backend"] == backend and not p.get("outlier")]
        fit_pts = [p for p in mine if fitted(p)]
        held = [p for p in mine if not fitted(p)]
        loo = loo_within(fit_pts, split) if len(fit_pts) >= 3 else None
        out["backends"][backend] = {"params": b, "held": sum(within[id(p)] for p in held), "held_n": len(held),
                                    "loo": loo, "fitted_n": len(fit_pts)}
    return out


# --- the cuda-board refit arm (benchmarks/results/cuda-board-candidates.md, rule 4; pre-registered) ---

def refit_arm(points: list[dict], fitted, backends: tuple[str, ...]) -> dict:
    """Rule 4 of the cuda-board task, one arm per backend in `backends`: that backend's line refitted (fit_kinds with
    its adopted kinds, speed.split_kinds; the CUDA codebook floor refitted at that line, as arm_backends does) on the
    points `fitted(p)` selects, every other line as speed.BACKENDS has it. Per backend: today's and the refit's
    figures -- its held-out points (not `fitted`, outliers aside) within 15%, leave-one-out within 15% over its fitted
    points (today's fitted set today, the refit's for the refit) as (count, n) -- and, per corpus tag (None: the
    first 115 points), the count within 15% under the refit."""
    from stackgen.plan import speed

    def close(ps):
        return sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in ps)

    def loo(ps, split):
        return loo_within(ps, split), len(ps)

    tags = sorted({p.get("corpus") for p in points}, key=str)
    out = {}
    for backend in backends:
        split = speed.split_kinds(backend)
        mine = [p for p in points if p["backend"] == backend and not p.get("outlier")]
        today_fit = [p for p in mine if not p.get("held_out")]
        new_fit = [p for p in mine if fitted(p)]
        held = [p for p in mine if not fitted(p)]
        nb = refit_line(points, backend, fitted, split)
        today = {"held": close(held), "loo": loo(today_fit, split),
                 "corpora": {t: close([p for p in points if p.get("corpus") == t]) for t in tags}}
        with lines({backend: nb}):
            refit = {"held": close(held), "loo": loo(new_fit, split),
                     "corpora": {t: close([p for p in points if p.get("corpus") == t]) for t in tags}}
        out[backend] = {"params": nb, "held_n": len(held), "today": today, "refit": refit}
    return out
