"""The "legacy" weight kind (speed.weight_kind of GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, speed.LEGACY_QUANTS): its efficiency
(Backend.efficiency_for), its slope in the fit (SPLIT_KINDS, _own_slopes' 2-point rule, the per-backend exclusion
split_kinds / LEGACY_SLOPE_EXCLUDED), and the plans that take it (a llama.cpp plan of a Q8_0 file on CUDA and on Metal,
and on a CPU, whose ggml tiles are for block quants, legacy ones included). Each expected figure is derived from the
model's formula (in the docstring), not pasted from an output."""

from __future__ import annotations

import pytest

from stackgen.plan import speed
from tools.stacks import plan_for

# --- weight_kind / efficiency_for -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "q8_0", " Q4_0 "])
def test_legacy_gguf_types_are_the_legacy_kind(fmt):
    assert speed.weight_kind(fmt) == "legacy"


@pytest.mark.parametrize("fmt,kind", [("Q4_K_M", "quantized"), ("Q6_K", "quantized"), ("IQ4_NL", "quantized"),
                                      ("IQ2_XXS", "quantized"), ("MXFP4", "quantized"), ("TQ1_0", "quantized"),
                                      ("8bit", "quantized"), ("fp8", "quantized"), ("F16", "16bit"),
                                      ("bf16", "16bit"), ("awq", "int4-awq"), (None, "quantized"), ("", "quantized")])
def test_other_formats_keep_their_kind(fmt, kind):
    """Only the five legacy block types move: K-quants, i-quants, ternary and MXFP4 GGUFs, MLX n-bit and FP8 stay
    "quantized", floats "16bit", AWQ "int4-awq"."""
    assert speed.weight_kind(fmt) == kind


def test_legacy_reads_at_its_own_efficiency_where_the_backend_has_one():
    """A backend with every figure: "legacy" at efficiency_legacy and no other kind takes it; one without a legacy
    figure reads legacy weights at its block-quantized `efficiency` (not the 16-bit or AWQ one)."""
    b = speed.Backend(0.5, 1.0, efficiency_16bit=0.7, efficiency_int4_awq=0.2, efficiency_legacy=0.6)
    assert [b.efficiency_for(k) for k in ("legacy", "int4-awq", "16bit", "quantized")] == [0.6, 0.2, 0.7, 0.5]
    assert speed.Backend(0.5, 1.0, efficiency_16bit=0.7, efficiency_int4_awq=0.2).efficiency_for("legacy") == 0.5
    assert speed.Backend(0.5, 1.0, efficiency_legacy=0.6).batch_mfu_for("legacy") == 0.35  # batch MFU: the shared one


def test_lines_with_a_legacy_slope_read_legacy_at_it_and_the_others_at_their_shared_one():
    """CUDA's fit gave the kind a slope of its own; Metal's, Vulkan's and ROCm's too since the lead's confirmatory rule
    adopted their arms (benchmarks/results/confirm-metal-candidates.md, confirm-amd-candidates.md); the datacenter CUDA
    line has none (no fitted legacy point): a single stream is weights / (e_kind x BW) + KV / (e x BW) + t0, e_kind
    the shared e where a line has no legacy slope."""
    own = {name: speed.BACKENDS[name] for name in ("cuda", "metal", "vulkan", "rocm")}
    assert all(b.efficiency_legacy > 0 and b.efficiency_legacy != b.efficiency for b in own.values())
    assert not {"metal", "vulkan", "rocm"} & set(speed.LEGACY_SLOPE_EXCLUDED)
    dc = speed.BACKENDS["cuda-datacenter"]
    assert dc.efficiency_legacy == 0
    for name, b, eff in [(n, b, b.efficiency_legacy) for n, b in own.items()] + [("cuda-datacenter", dc, dc.efficiency)]:
        t = 1 / speed.single_stream_tokens_per_s(5e9, 1e8, 900, name, "legacy")
        bw = b.read_gbs(900) * 1e9  # 900 GB/s as the line reads it (its bandwidth exponent: confirm-bw)
        assert t == pytest.approx(5e9 / (eff * bw) + 1e8 / (b.efficiency * bw) + b.t0_ms / 1000)


# --- the fit ------------------------------------------------------------------------------------------------------


def _on(slopes: dict, t0: float, spec) -> list[tuple]:
    """Points exactly on t = x / e_kind + t0 for spec = [(x, kind), ...] (x GB at 1 GB/s)."""
    return [(x * 1e9, 1.0, 1 / (x / slopes[k] + t0), k) for x, k in spec]


SLOPES = {"quantized": 0.7, "16bit": 0.9, "legacy": 0.8}
SPEC = [(0.01, "quantized"), (0.04, "quantized"), (0.02, "legacy"), (0.05, "legacy"), (0.03, "16bit"),
        (0.06, "16bit")]


def test_two_legacy_points_get_their_own_slope():
    """2 quantized, 2 legacy, 2 16-bit points on one t0 (2 ms): each kind's slope comes back."""
    f = speed.fit_kinds(_on(SLOPES, 0.002, SPEC))
    for k, e in SLOPES.items():
        assert f[k] == pytest.approx(e, rel=1e-9)
    assert f["t0_ms"] == pytest.approx(2.0, rel=1e-9) and f["int4-awq"] == 0.0


def test_an_excluded_backend_fits_its_legacy_points_on_the_shared_slope():
    """split without "legacy" (speed.split_kinds of a backend in LEGACY_SLOPE_EXCLUDED): no legacy slope, and the
    fit is the one of the same points marked "quantized"."""
    pts = _on(SLOPES, 0.002, SPEC)
    split = tuple(k for k in speed.SPLIT_KINDS if k != "legacy")
    f = speed.fit_kinds(pts, split)
    as_quantized = speed.fit_kinds([p[:3] + ("quantized" if p[3] == "legacy" else p[3],) for p in pts])
    assert f["legacy"] == 0.0 and f == pytest.approx(as_quantized, rel=1e-12)
    assert speed.fit_backend(pts, split) == pytest.approx(speed.fit_backend(pts[:2] + [p[:3] for p in pts[2:4]]
                                                                            + pts[4:]), rel=1e-12)
    assert speed.split_kinds("cuda") == speed.SPLIT_KINDS
    # no backend is excluded since confirm-metal adopted Metal's legacy slope; the exclusion still applies by name
    saved = dict(speed.LEGACY_SLOPE_EXCLUDED)
    try:
        speed.LEGACY_SLOPE_EXCLUDED["metal"] = "a test's"
        assert speed.split_kinds("metal") == split
    finally:
        speed.LEGACY_SLOPE_EXCLUDED.clear()
        speed.LEGACY_SLOPE_EXCLUDED.update(saved)
    assert speed.split_kinds("metal") == speed.SPLIT_KINDS


def test_one_legacy_point_or_too_few_others_share_the_slope():
    """_own_slopes: a kind needs 2 points and must leave 2 on the shared slope; legacy comes after 16bit and AWQ."""
    assert speed._own_slopes(["legacy", "quantized", "quantized"]) == []
    assert speed._own_slopes(["legacy", "legacy", "quantized"]) == []
    assert speed._own_slopes(["legacy", "legacy", "quantized", "quantized"]) == ["legacy"]
    assert speed._own_slopes(["16bit", "16bit", "legacy", "legacy", "quantized", "quantized"]) == ["16bit", "legacy"]
    # 16-bit takes its slope first; then only 2 legacy + 1 quantized are left: legacy shares
    assert speed._own_slopes(["16bit", "16bit", "legacy", "legacy", "quantized"]) == ["16bit"]
    assert speed._own_slopes(["legacy", "legacy", "quantized", "quantized"], ("16bit",)) == []


# --- plans --------------------------------------------------------------------------------------------------------

STACK = """
version: 1
hardware: {hardware}
workload: {{concurrent_users: 1, context_tokens: 4096, prompt_tokens: 500, output_tokens: 200}}
serve: {{api_key_env: STACK_KEY}}
services:
  chat: {{model: qwen2.5-7b-instruct, engine: llama.cpp, quant: {quant}}}
"""


@pytest.mark.parametrize("hardware,backend", [("rtx-3090", "cuda"), ("m3-max-64gb", "metal")])
def test_a_q8_0_plan_takes_the_legacy_kind(hardware, backend, tmp_path):
    """A llama.cpp plan of a Q8_0 GGUF: weight_kind "legacy", and its step reads the weights at the backend's
    efficiency_for("legacy") (CUDA's legacy slope, Metal's shared one): the curve's weight read is the active bytes
    over that x the GPU's bandwidth."""
    from stackgen.plan.capacity import service_curve
    plan = plan_for(tmp_path, STACK.format(hardware=hardware, quant="Q8_0"))
    sp = plan.services[0]
    assert speed.weight_kind(sp.memory.weights_format) == "legacy" and sp.speed.backend == backend
    b = speed.backend_params(backend)
    want = b.efficiency_legacy or b.efficiency
    curve = service_curve(sp, plan.hardware)
    gpu = plan.hardware.gpus[0]
    active = sp.memory.weights_bytes * sp.model.active_params / sp.model.params
    assert curve.weights_read_s == pytest.approx(active / (want * b.read_gbs(gpu.bandwidth_gbs) * 1e9))


def test_a_cpu_plan_of_a_legacy_file_keeps_ggmls_tiles(tmp_path):
    """ggml's CPU tiles (GGML_CPU_DECODE_TILE) are for block-quantized weights, which the legacy types are (Q4_0 is
    among ggml-cpu/repack.cpp's types): a llama.cpp plan on a CPU-only host tiles a Q4_0 or Q8_0 file as a Q4_K_M one, and
    not an F16 one (step_inputs' kind != "16bit")."""
    tiles = {}
    for fmt in ("Q4_0", "Q8_0", "Q4_K_M", "F16"):
        plan = plan_for(tmp_path / fmt, STACK.format(hardware="cpu-server-64gb", quant=fmt))
        sp = plan.services[0]
        assert sp.memory.weights_format == fmt
        tiles[fmt] = speed.step_inputs(sp.engine, sp.model, sp.memory, plan.hardware, avg_context=1000,
                                       threads=8).decode_tile
    assert tiles["Q4_0"] == tiles["Q8_0"] == tiles["Q4_K_M"] == speed.GGML_CPU_DECODE_TILE > 0 and tiles["F16"] == 0


def test_fit_kinds_gives_legacy_no_slope_where_the_backend_excludes_it():
    """Two legacy and two block-quantized points at different shares: with "legacy" in the split its own slope comes
    back; with a split that leaves it out (a backend in LEGACY_SLOPE_EXCLUDED) every point shares one slope."""
    def pt(b, e, kind):
        return (b, 100.0, 1 / (b / (e * 100e9) + 0.0005), kind, False)
    pts = [pt(1e9, 0.6, "quantized"), pt(5e9, 0.6, "quantized"), pt(2e9, 0.8, "legacy"), pt(7e9, 0.8, "legacy")]
    own = speed.fit_kinds(pts)
    assert own["legacy"] == pytest.approx(0.8, rel=1e-6) and own["quantized"] == pytest.approx(0.6, rel=1e-6)
    shared = speed.fit_kinds(pts, ("16bit", "int4-awq"))
    assert shared["legacy"] == 0.0 and 0.6 < shared["quantized"] < 0.8


def test_fit_kinds_with_a_build_era_keeps_the_backends_split():
    """The build-era branch of fit_kinds (2+ points of each era) honours `split` too: points made exactly from
    t = x / e_kind + t0 (+ t0_before for the older builds) give back e_legacy 0.8 with "legacy" in the split, and no
    legacy slope (0.0) without it."""
    def pt(b, e, kind, old):
        return (b, 100.0, 1 / (b / (e * 100e9) + 0.0005 + (0.001 if old else 0.0)), kind, old)
    pts = [pt(1e9, 0.6, "quantized", False), pt(5e9, 0.6, "quantized", True), pt(3e9, 0.6, "quantized", True),
           pt(2e9, 0.8, "legacy", False), pt(7e9, 0.8, "legacy", True), pt(4e9, 0.6, "quantized", False)]
    own = speed.fit_kinds(pts)
    assert own["legacy"] == pytest.approx(0.8, rel=1e-6) and own["quantized"] == pytest.approx(0.6, rel=1e-6)
    assert own["t0_ms"] == pytest.approx(0.5, rel=1e-6) and own["t0_before_ms"] == pytest.approx(1.0, rel=1e-6)
    shared = speed.fit_kinds(pts, ("16bit", "int4-awq"))
    assert shared["legacy"] == 0.0
