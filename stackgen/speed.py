"""Decode and prefill speed per backend, for one stream and for N streams (plain functions, no I/O).

Model: one decode step reads every active weight byte once plus each stream's KV cache, at a backend-specific share
`efficiency` of the peak memory bandwidth, plus a fixed per-step overhead `t0_ms` (kernel launches, sampling, host
sync): t_step = bytes / (efficiency x bandwidth) + t0. Parameters are fitted on the public figures in
tests/fixtures/public-logs/decode_speed.yaml by benchmarks/bench_public_logs.py (results in
benchmarks/results/public_logs.md) from the points not marked held_out (those check the fit); backends without public
points there keep the old single 0.70 and no overhead.
Used by the planner and by issue 20's replica sizing (service curve: aggregate tokens/s vs concurrency)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    efficiency: float  # share of peak bandwidth a decode step reaches on big models
    t0_ms: float  # per-step overhead that does not scale with bytes read
    prefill_mfu: float = 0.35  # share of peak FLOPs a prefill reaches (compute-bound)
    fitted_on: int = 0  # public points behind the two figures (0: a default, not fitted)


BACKENDS = {
    "vulkan": Backend(0.731, 0.77, fitted_on=4),
    "metal": Backend(0.790, 3.45, fitted_on=6),
    "cpu": Backend(0.606, 0.0, fitted_on=1),
    "cuda": Backend(0.644, 0.0, fitted_on=2),  # two points: a through-origin fit (t0 came out negative)
    "rocm": Backend(0.70, 0.0),
    "mlx": Backend(0.70, 0.0),
    "vllm": Backend(0.70, 0.0),
}


def backend_params(backend: str) -> Backend:
    return BACKENDS.get(backend, Backend(0.70, 0.0))


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
    the backend's prefill MFU), when `peak_tflops` is given."""
    n = max(1, streams)
    t = step_seconds(weights_bytes + n * kv_bytes_per_stream, bandwidth_gbs, backend)
    if peak_tflops and active_params:
        t = max(t, 2 * active_params * n / (backend_params(backend).prefill_mfu * peak_tflops * 1e12))
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
