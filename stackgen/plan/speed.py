"""Decode and prefill speed per backend, for one stream and for N streams (plain functions, no I/O).

Model: one decode step reads every active weight byte once plus each stream's KV cache, at a backend-specific share
`efficiency` of the peak memory bandwidth, plus a fixed per-step overhead `t0_ms` (kernel launches, sampling, host
sync): t_step = bytes / (efficiency x bandwidth) + t0. Parameters are fitted on the public figures in
tests/fixtures/public-logs/decode_speed.yaml by benchmarks/bench_public_logs.py (results in
benchmarks/results/public_logs.md) from the points not marked held_out (those check the fit); backends without public
points there keep the old single 0.70 and no overhead.
Prefill: a compute-bound rate, prefill_mfu x peak FLOP/s / (2 x active parameters), with prefill_mfu fitted per backend
(fit_prefill_mfu) on tests/fixtures/public-logs/prefill_speed.yaml's points not held out; PREFILL_CHECK holds how
many public points check each backend's TTFT and the error they show.
Used by the planner and by issue 20's replica sizing (service curve: aggregate tokens/s vs concurrency)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    efficiency: float  # share of peak bandwidth a decode step reaches on big models
    t0_ms: float  # per-step overhead that does not scale with bytes read
    prefill_mfu: float = 0.35  # share of peak FLOPs a prefill reaches (compute-bound)
    fitted_on: int = 0  # public points behind the two figures (0: a default, not fitted)
    # The model's stated error for this backend: the largest |predicted/measured - 1| over its public points, fitted
    # and held out (outliers aside), rounded up to 5%; 0.5 for a backend with no public point (a default, not a fit).
    error: float = 0.5
    # Share of peak FLOPs a batched decode step reaches past the batch knee. Not the prefill's: a decode step of b
    # single-token sequences runs smaller, less efficient kernels than a 512-token prompt. 0.35 keeps llama 1B F16 on
    # an RTX 3090 within 20% from b = 4 to 64 (service_curve.yaml); the fitted prefill MFU (0.93 on CUDA) over-predicts
    # it (b = 64 by 42%). The CPU backend has its own (CPU_BATCH_MFU).
    batch_mfu: float = 0.35


# The CPU's batched-decode share of capacity.CPU_FLOPS_PER_THREAD: the quickstart's llama-server (Gemma 3 270M Q4_K_M,
# build 11434, -np 4, 2 threads, this project's 2-core AMD EPYC CI host) decoding 4 streams reached 103-106 tokens/s
# aggregate (median 105.2 over 3 rounds, load average ~0.7; benchmarks/bench_cpu_aggregate.py, results in
# benchmarks/results/cpu_aggregate.md): 105.2 x 2 x 268.1M params / (2 x 60 GFLOP/s) = 0.47. The prefill's 1.0 puts the
# knee at the prompt rate (~490 tokens/s there: +148% at 4 streams); the GPU's 0.35 under-predicts it by 26%. Below
# 4 streams ggml's CPU kernels decode each sequence on its own (2 streams: 70 aggregate, 3: 65, against 60 alone):
# GGML_CPU_DECODE_TILE.
CPU_BATCH_MFU = 0.47
# ggml's CPU matrix multiplication with repacked weights (ggml-cpu/repack.cpp: Q4_0, Q4_K, IQ4_NL, ... on AVX2 and
# NEON) runs the batch's activations 4 columns at a time through one pass over a weight matrix (gemm) and the
# columns left over one by one (gemv, a whole pass each). So a CPU decode step of n sequences on a ggml engine is
# n // 4 batched passes (bandwidth- or compute-bound: the roofline) plus n % 4 single-sequence passes, each as long
# as a step of one stream alone. Measured on the quickstart (2 EPYC threads, server timings, 2 rounds): 1 stream
# 49-62 tokens/s, 2: 73 aggregate, 3: 65-66, 4: 107-111; the roofline alone said 2 streams 105 (+45%).
GGML_CPU_DECODE_TILE = 4


BACKENDS = {
    "vulkan": Backend(0.731, 0.77, fitted_on=4, error=0.25, prefill_mfu=0.421),
    "metal": Backend(0.790, 3.45, fitted_on=6, error=0.30, prefill_mfu=0.706),
    "cpu": Backend(0.606, 0.0, fitted_on=1, error=0.15, prefill_mfu=1.004,  # one point: 0% on it; the floor of the fitted ones
                   batch_mfu=CPU_BATCH_MFU),
    # llama.cpp CUDA, split by the GPU's tier (issue 13): one line through consumer and datacenter points misses the
    # H100 PCIe by 38% and the A100 by 23% (the per-token overhead dominates at high bandwidth): a line per tier.
    # Consumer: builds from January 2024 to PR 24216 on one line; 16-bit weights on PR 24216's build run faster than it
    # (-28..-33%), the held-out January-2024 RTX 3090 Ti build slower (+30%).
    "cuda": Backend(0.728, 0.81, fitted_on=9, error=0.35, prefill_mfu=0.926),
    # datacenter: 2 points, 2 parameters (exact, none held out); prefill: the consumer fit (no datacenter prefill point)
    "cuda-datacenter": Backend(0.677, 3.09, fitted_on=2, error=0.15, prefill_mfu=0.926),
    "rocm": Backend(0.70, 0.0, prefill_mfu=0.426),
    "mlx": Backend(0.829, 0.0, fitted_on=1, error=0.15, prefill_mfu=0.667),  # one point (70B bf16); the 70B 4-bit is held out
    "vllm": Backend(0.70, 0.0),
}
DEFAULT_BACKEND = Backend(0.70, 0.0)
# TTFT against public prefill figures (tests/fixtures/public-logs/prefill_speed.yaml): backend -> (points that check
# it, fitted and held out, outliers aside; the largest |predicted/measured - 1| over them, rounded up to 5%). The MFU is
# relative to capacity.GPU_TFLOPS (GeForce: FP16 tensor with FP32 accumulate, so quantized llama.cpp CUDA kernels on
# int8 tensor cores can pass 1.0) and, on CPU, to CPU_FLOPS_PER_THREAD x threads. The big misses: RTX 4090 CUDA 1.7-2x
# over-predicted, Vulkan spread from NVIDIA with cooperative matrices to RDNA2 without matrix units, CPUs other than
# the calibration EPYC; benchmarks/results/public_logs.md lists every point.
PREFILL_CHECK = {"cuda": (6, 1.05), "metal": (6, 0.30), "vulkan": (5, 0.80), "rocm": (3, 0.10), "cpu": (5, 0.40),
                 "mlx": (3, 0.10)}


def backend_params(backend: str) -> Backend:
    return BACKENDS.get(backend, DEFAULT_BACKEND)


def backend_for(own_kernels: str | None, vendor: str | None, tier: str | None = None) -> str:
    """Which fitted backend an engine on a GPU vendor (None: CPU only) runs as: its own kernels' fit
    (`Engine.speed_backend`) on a GPU, else ggml's backend for the vendor; on NVIDIA the GPU's tier (the hardware
    profile's gpus[].tier) picks the CUDA line: datacenter GPUs their own (their public points show a ~3 ms
    per-token overhead), consumer and workstation GPUs the consumer one."""
    if own_kernels:
        return own_kernels if vendor else "cpu"
    if vendor == "nvidia" and tier == "datacenter":
        return "cuda-datacenter"
    return {"nvidia": "cuda", "amd": "rocm", "apple": "metal", "intel": "vulkan"}.get(vendor or "", "cpu")


def step_seconds(bytes_read: float, bandwidth_gbs: float, backend: str) -> float:
    """Seconds for one decode step that reads `bytes_read` bytes on a device of `bandwidth_gbs` peak GB/s."""
    b = backend_params(backend)
    return bytes_read / (b.efficiency * bandwidth_gbs * 1e9) + b.t0_ms / 1000


def single_stream_tokens_per_s(weights_bytes: float, kv_bytes: float, bandwidth_gbs: float, backend: str) -> float:
    """Decode tokens/s of one stream: active weights plus that stream's KV cache per token."""
    t = step_seconds(weights_bytes + kv_bytes, bandwidth_gbs, backend)
    return 1 / t if t > 0 else 0.0


def aggregate_tokens_per_s(weights_bytes: float, kv_bytes_per_stream: float, bandwidth_gbs: float, backend: str,
                           streams: int, *, active_params: float = 0.0, peak_tflops: float = 0.0) -> float:
    """Total decode tokens/s of `streams` concurrent streams batched in one step: the weights are read once per step,
    each stream's KV cache once; past the batch knee the step is compute-bound (2 x active_params FLOPs per token at
    the backend's batch MFU), when `peak_tflops` is given."""
    n = max(1, streams)
    t = step_seconds(weights_bytes + n * kv_bytes_per_stream, bandwidth_gbs, backend)
    if peak_tflops and active_params:
        t = max(t, 2 * active_params * n / (backend_params(backend).batch_mfu * peak_tflops * 1e12))
    return n / t if t > 0 else 0.0


def per_stream_tokens_per_s(*args, streams: int, **kw) -> float:
    """What each user sees at `streams` concurrent streams: the aggregate divided by the streams."""
    return aggregate_tokens_per_s(*args, streams=streams, **kw) / max(1, streams)


def prefill_tokens_per_s(active_params: float, peak_tflops: float, backend: str) -> float:
    """Prompt tokens/s when prefill is compute-bound: peak FLOPs x MFU / (2 x active parameters)."""
    if not active_params or not peak_tflops:
        return 0.0
    return backend_params(backend).prefill_mfu * peak_tflops * 1e12 / (2 * active_params)


def ttft_seconds(prompt_tokens: int, prefill_rate: float, first_step_s: float = 0.0, queued_prompts: int = 0) -> float:
    """Time to first token: the prompts ahead in the queue and this one at `prefill_rate`, then one decode step."""
    if prefill_rate <= 0:
        return float("inf")
    return prompt_tokens * (1 + queued_prompts) / prefill_rate + first_step_s


def queueing_point(max_streams: int, output_tokens: int, aggregate_at_max: float) -> float:
    """Requests per second past which requests queue: the engine's slots (or KV room) full at aggregate speed."""
    if output_tokens <= 0 or max_streams <= 0:
        return 0.0
    return aggregate_at_max / output_tokens


def fit_prefill_mfu(points: list[tuple[float, float, float]]) -> float:
    """Least squares of log(predicted / measured) over (active_params, peak_flops, tokens_per_s) points: the one
    prefill_mfu that over- and under-predicts by the same factors, i.e. the geometric mean of the measured MFUs."""
    import math
    logs = [math.log(2 * params * tps / peak) for params, peak, tps in points]
    return math.exp(sum(logs) / len(logs))


def fit_backend(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Least squares of t = x / e + t0 over (bytes, bandwidth_gbs, tokens_per_s) points: returns (e, t0_ms)."""
    xs = [b / (bw * 1e9) for b, bw, _ in points]
    ts = [1 / tps for _, _, tps in points]
    n = len(points)
    if n == 1:
        return xs[0] / ts[0], 0.0
    mx, mt = sum(xs) / n, sum(ts) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, ts)) / sxx if sxx else mt / mx
    t0 = mt - slope * mx
    if t0 < 0 or slope <= 0:  # a negative overhead is not physical: the constrained optimum is t0 = 0, t = x / e
        slope, t0 = sum(x * t for x, t in zip(xs, ts)) / sum(x * x for x in xs), 0.0
    return 1 / slope, t0 * 1000


@dataclass(frozen=True)
class Forecast:
    """What users should see at the workload's concurrency (plan) or a bench's (bench), and how sure it is."""

    backend: str
    streams: int  # requests decoding together: min(users, the engine's slots)
    per_user_tokens_per_s: float
    aggregate_tokens_per_s: float
    single_stream_tokens_per_s: float
    ttft_s: float  # one request alone: its prompt at the prefill rate, then one decode step
    ttft_all_s: float  # every stream's prompt arriving together: the last one waits for the others' prefill
    bound: str  # "memory bandwidth" or "compute" (past the batch knee)
    error: float  # the backend's stated error (Backend.error)
    fitted_on: int
    ttft_checked_on: int = 0  # public prefill points behind the TTFT (PREFILL_CHECK; 0: not checked)
    ttft_error: float = 0.0  # their largest |predicted/measured - 1| (0 when not checked)

    def to_json(self) -> dict:
        return {"backend": self.backend, "streams": self.streams,
                "per_user_tokens_per_s": self.per_user_tokens_per_s,
                "aggregate_tokens_per_s": self.aggregate_tokens_per_s,
                "single_stream_tokens_per_s": self.single_stream_tokens_per_s, "ttft_s": self.ttft_s,
                "ttft_all_s": self.ttft_all_s, "bound": self.bound, "error": self.error,
                "fitted_on": self.fitted_on, "ttft_checked_on": self.ttft_checked_on, "ttft_error": self.ttft_error}

    def text(self) -> str:
        fit = f"fitted on {self.fitted_on} public points" if self.fitted_on else "not fitted: a default"
        ttft = (f"TTFT +-{self.ttft_error * 100:.0f}%, checked on {self.ttft_checked_on} public prefill points"
                if self.ttft_checked_on else f"TTFT not checked: no public prefill point for the {self.backend} backend")
        return (f"{self.per_user_tokens_per_s:g} tokens/s per user at {self.streams} streams "
                f"({self.aggregate_tokens_per_s:g} aggregate, {self.bound}-bound), TTFT {self.ttft_s:.2f} s alone, "
                f"{self.ttft_all_s:.2f} s when all {self.streams} arrive together (decode +-{self.error * 100:.0f}%, "
                f"{self.backend} backend {fit}; {ttft})")


def forecast(backend: str, *, weights_bytes: float, kv_bytes_per_stream: float, streams: int, gpu_fraction: float,
             gpu_bandwidth_gbs: float, host_bandwidth_gbs: float, active_params: float, peak_flops: float,
             prompt_tokens: int, params: Backend | None = None, batch_flops: float = 0.0,
             decode_tile: int = 0) -> Forecast:
    """Decode per user and TTFT at `streams` concurrent streams.

    One step reads the active weights once and each stream's KV cache: the share `gpu_fraction` at the backend's
    efficiency of the GPU bandwidth, the rest (layers left in system RAM) at the CPU backend's efficiency of the host
    bandwidth, plus the backend's per-step overhead. Past the batch knee the step is compute-bound: 2 x active
    parameters FLOPs per token at the backend's prefill MFU of `peak_flops`. TTFT: the prompt at the compute-bound
    prefill rate, then one step. `params`: this host's calibrated figures in place of the backend's fit (a CPU plan
    on a host `stackgen calibrate` measured); `batch_flops`: the FLOP/s a batched decode reaches there (the knee), in
    place of batch_mfu x peak_flops. `decode_tile` (a ggml engine on the CPU: GGML_CPU_DECODE_TILE): the streams
    past a whole number of tiles decode one pass each, as long as a stream alone."""
    b, cpu = params or backend_params(backend), params or backend_params("cpu")
    n = max(1, streams)

    def memory_s(bytes_read: float) -> float:
        t = b.t0_ms / 1000
        if gpu_fraction > 0 and gpu_bandwidth_gbs > 0:
            t += bytes_read * gpu_fraction / (b.efficiency * gpu_bandwidth_gbs * 1e9)
        if gpu_fraction < 1:
            t += bytes_read * (1 - gpu_fraction) / (cpu.efficiency * host_bandwidth_gbs * 1e9)
        return t

    mfu = b.prefill_mfu if gpu_fraction > 0 else cpu.prefill_mfu
    batch_mfu = b.batch_mfu if gpu_fraction > 0 else cpu.batch_mfu
    # Layers split between GPU and RAM: the error of either part (the fits were made on whole-GPU or CPU runs).
    error = max(b.error, cpu.error) if 0 < gpu_fraction < 1 else b.error
    batch_peak = batch_flops or batch_mfu * peak_flops
    single = memory_s(weights_bytes + kv_bytes_per_stream)

    def roofline(streams: int) -> tuple[float, bool]:
        """(seconds, compute-bound) of one batched pass for `streams` streams."""
        mem = memory_s(weights_bytes + streams * kv_bytes_per_stream)
        compute = 2 * active_params * streams / batch_peak if batch_peak and active_params else 0.0
        return max(mem, compute), compute > mem

    if decode_tile > 1 and n >= decode_tile:
        tiles, rest = divmod(n, decode_tile)
        tile_s, compute_bound = roofline(decode_tile)
        step = tiles * tile_s + rest * single
    elif decode_tile > 1:
        step, compute_bound = n * single, False
    else:
        step, compute_bound = roofline(n)
    prefill = mfu * peak_flops / (2 * active_params) if peak_flops and active_params else 0.0
    ttft = ttft_seconds(prompt_tokens, prefill, single) if prefill else float("inf")
    ttft_all = ttft_seconds(prompt_tokens, prefill, step, queued_prompts=n - 1) if prefill else float("inf")
    # The prefill runs where the layers are: the CPU's check when none are on the GPU.
    checked, ttft_error = PREFILL_CHECK.get(backend if gpu_fraction > 0 else "cpu", (0, 0.0))
    return Forecast(backend=backend, streams=n, per_user_tokens_per_s=round(1 / step, 1),
                    aggregate_tokens_per_s=round(n / step, 1), single_stream_tokens_per_s=round(1 / single, 1),
                    ttft_s=round(ttft, 3), ttft_all_s=round(ttft_all, 3),
                    bound="compute" if compute_bound else "memory bandwidth", error=error,
                    fitted_on=b.fitted_on, ttft_checked_on=checked, ttft_error=ttft_error)


def service_forecast(engine: str, model, mem, hw, *, users: int, prompt_tokens: int, avg_context: int,
                     threads: int, calibration=None) -> Forecast:
    """The forecast for a planned service (its ModelFacts, MemoryPlan and HardwareSpec) at `users` users: the
    engine's slots cap the streams that decode together; layers left in system RAM read at host bandwidth.
    `calibration`: this host's measured engine point (stackgen.host.calibration.EnginePoint); a CPU plan of the
    engine it measured decodes with its efficiency and t0, prefills at its FLOP/s per thread and turns compute-bound
    at its batched-decode FLOP/s per thread (a calibration without that point: the CPU backend's batch_mfu of the
    nominal CPU_FLOPS_PER_THREAD, as uncalibrated; not the prefill rate, which is ~4x past the knee)."""
    from stackgen.plan.capacity import CPU_FLOPS_PER_THREAD, gpu_peak_flops
    from stackgen import engines
    from stackgen.plan.memory import _kv_bytes_read

    eng = engines.get(engine)
    vendor = hw.gpus[0].vendor if hw.gpus else None
    backend = backend_for(eng.speed_backend, vendor, hw.gpus[0].tier if hw.gpus else None)
    active = mem.weights_bytes * (model.active_params / model.params) if model.params else mem.weights_bytes
    if hw.gpus and not hw.is_apple and eng.layers_in_ram:
        gpu_fraction = mem.gpu_layers / mem.total_layers if mem.total_layers else 0.0
    else:
        gpu_fraction = 1.0 if hw.gpus else 0.0
    tp = max(1, mem.tensor_parallel)
    gpu_bw = min(g.bandwidth_gbs for g in hw.gpus) * tp if hw.gpus else 0.0
    if hw.gpus and gpu_fraction > 0:
        g = hw.gpus[0]
        peak = gpu_peak_flops(g.name, g.bandwidth_gbs) * tp
    else:
        peak = CPU_FLOPS_PER_THREAD * max(1, threads)
    params, batch_flops = None, 0.0
    if calibration is not None and calibration.engine == engine and gpu_fraction == 0:
        fit = backend_params(backend)
        params = Backend(calibration.efficiency, calibration.t0_ms, fit.prefill_mfu, fitted_on=fit.fitted_on,
                         error=fit.error, batch_mfu=fit.batch_mfu)
        batch_flops = getattr(calibration, "batch_flops_per_thread", 0.0) * max(1, threads) or \
            fit.batch_mfu * peak
        peak = calibration.prefill_flops_per_thread * max(1, threads) / fit.prefill_mfu
    return forecast(backend, weights_bytes=active, kv_bytes_per_stream=_kv_bytes_read(model, mem, avg_context),
                    streams=min(max(1, users), max(1, mem.parallel)), gpu_fraction=gpu_fraction,
                    gpu_bandwidth_gbs=gpu_bw, host_bandwidth_gbs=hw.memory_bandwidth_gbs,
                    active_params=model.active_params or model.params, peak_flops=peak, prompt_tokens=prompt_tokens,
                    params=params, batch_flops=batch_flops,
                    decode_tile=GGML_CPU_DECODE_TILE if eng.layers_in_ram and gpu_fraction == 0 else 0)


def forecast_at(sp, hw, users: int) -> Forecast | None:
    """The forecast for a resolved ServicePlan at `users` users: the plan's own (`sp.speed`, what `stackgen plan`
    prints) when `users` is the workload's concurrency, else the same model at `users` with the workload's lengths
    (bench --sweep, a verify capped below the declared users), with the host calibration the plan used
    (`sp.calibration`). None for a multi-node service (no per-user model) or
    when the plan has none and no hardware is given to compute one."""
    if sp.topology is not None:
        return None
    if users == sp.workload.concurrent_users and sp.speed is not None:
        return sp.speed
    if hw is None:
        return None
    wl = sp.workload
    return service_forecast(sp.engine, sp.model, sp.memory, hw, users=users, prompt_tokens=wl.prompt_tokens,
                            threads=sp.threads, calibration=sp.calibration,
                            avg_context=min(sp.memory.context_per_request, wl.prompt_tokens + wl.output_tokens // 2))
