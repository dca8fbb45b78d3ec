"""The AWQ-INT4 weight kind (speed.weight_kind "int4-awq"): its efficiency (Backend.efficiency_for), its slope in the
fit (fit_kinds, fit_backend, fit_backend_build: SPLIT_KINDS, _own_slopes' 2-point rule), and the plans that take it
(an SGLang or vLLM plan of an AWQ checkpoint: service_forecast and capacity.service_curve through step_parts). Each
expected figure is derived from the model's formula (in the docstring), not pasted from an output."""

from __future__ import annotations

import pytest

from stackgen.plan import speed
from tools.stacks import plan_for

# --- efficiency_for --------------------------------------------------------------------------------------------------


def test_each_kind_reads_at_its_own_efficiency_where_the_backend_has_one():
    """A backend with all three figures: "int4-awq" at efficiency_int4_awq, "16bit" at efficiency_16bit, "quantized"
    (and any other kind) at efficiency; none of the kinds takes another's figure."""
    b = speed.Backend(0.5, 1.0, efficiency_16bit=0.7, efficiency_int4_awq=0.2)
    assert [b.efficiency_for(k) for k in ("int4-awq", "16bit", "quantized", "other")] == [0.2, 0.7, 0.5, 0.5]
    assert b.efficiency_for() == 0.5


def test_a_backend_without_an_awq_figure_reads_awq_at_its_block_quantized_efficiency():
    """efficiency_int4_awq 0 (the default: no fitted AWQ slope, llama.cpp CUDA's case): AWQ at `efficiency`, not at
    the 16-bit figure; one with only an AWQ figure reads 16-bit weights at `efficiency`."""
    b = speed.Backend(0.6, 0.0, efficiency_16bit=0.75)
    assert b.efficiency_for("int4-awq") == 0.6
    assert speed.Backend(0.6, 0.0, efficiency_int4_awq=0.3).efficiency_for("16bit") == 0.6
    cuda = speed.BACKENDS["cuda"]
    assert not cuda.efficiency_int4_awq and cuda.efficiency_for("int4-awq") == cuda.efficiency


def test_sglang_reads_awq_weights_at_its_awq_slope():
    """The fitted SGLang line has its own AWQ slope, below its FP8 one (the awq_marlin rows of the H20 run decode
    about as fast as FP8 with 0.54x the bytes); a single stream: weights / (e_int4_awq x BW) + KV / (e x BW) + t0."""
    b = speed.BACKENDS["sglang"]
    assert 0 < b.efficiency_int4_awq < b.efficiency
    t = 1 / speed.single_stream_tokens_per_s(5e9, 1e8, 4000, "sglang", "int4-awq")
    assert t == pytest.approx(5e9 / (b.efficiency_int4_awq * 4000e9) + 1e8 / (b.efficiency * 4000e9) + b.t0_ms / 1000)
    assert speed.single_stream_tokens_per_s(5e9, 1e8, 4000, "sglang", "quantized") > 1 / t


# --- the fit -----------------------------------------------------------------------------------------------------


def _pt(x: float, t: float, kind: str = "quantized", before: bool | None = None) -> tuple:
    """A point whose step at full bandwidth is x seconds (x GB at 1 GB/s) and whose measured step is t seconds."""
    p = (x * 1e9, 1.0, 1 / t, kind)
    return p if before is None else p + (before,)


def _on(slopes: dict, t0: float, spec, tb: float = 0.0) -> list[tuple]:
    """Points exactly on t = x / e_kind + t0 (+ tb for an older build) for spec = [(x, kind[, before]), ...]."""
    return [_pt(s[0], s[0] / slopes[s[1]] + t0 + (tb if len(s) > 2 and s[2] else 0.0), *s[1:]) for s in spec]


def test_three_kinds_with_two_points_each_get_three_slopes():
    """2 quantized, 2 16-bit and 2 AWQ points on one t0: each kind's slope comes back (e 0.8, e_16bit 0.9, e_int4_awq
    0.25, t0 2 ms); fit_backend's (e, t0, e_16bit) and fit_backend_build's (…, t0_before 0) are the same fit's."""
    slopes = {"quantized": 0.8, "16bit": 0.9, "int4-awq": 0.25}
    pts = _on(slopes, 0.002, [(0.01, "quantized"), (0.05, "quantized"), (0.02, "16bit"), (0.08, "16bit"),
                              (0.004, "int4-awq"), (0.03, "int4-awq")])
    f = speed.fit_kinds(pts)
    for k, e in slopes.items():
        assert f[k] == pytest.approx(e, rel=1e-9), k
    assert f["t0_ms"] == pytest.approx(2.0, rel=1e-9) and f["t0_before_ms"] == 0.0
    e, t0, e16 = speed.fit_backend(pts)
    assert (e, t0, e16) == (pytest.approx(0.8, rel=1e-9), pytest.approx(2.0, rel=1e-9), pytest.approx(0.9, rel=1e-9))
    assert speed.fit_backend_build(pts) == (f["quantized"], f["t0_ms"], f["16bit"], 0.0)


def test_one_awq_point_plans_on_the_shared_slope():
    """1 AWQ point: no slope of its own (it would be that point's exact fit), e_int4_awq 0, and the point fits on the
    shared slope with the quantized ones: points all on t = x / 0.7 + 1 ms give (0.7, 1 ms) back."""
    pts = _on({"quantized": 0.7, "int4-awq": 0.7}, 0.001, [(0.01, "quantized"), (0.04, "quantized"),
                                                             (0.02, "int4-awq")])
    f = speed.fit_kinds(pts)
    assert f["int4-awq"] == 0.0 and f["16bit"] == 0.0
    assert (f["quantized"], f["t0_ms"]) == (pytest.approx(0.7, rel=1e-9), pytest.approx(1.0, rel=1e-9))


def test_an_awq_slope_needs_two_points_left_on_the_shared_one():
    """_own_slopes takes SPLIT_KINDS in order, each with 2+ points while 2+ stay on the shared slope: 3 AWQ + 1
    quantized, no AWQ slope; 2 AWQ + 2 quantized, one; 2 16-bit + 2 AWQ + 1 quantized, the 16-bit one only (the
    AWQ slope would leave 1 on the shared one); 2 16-bit + 2 AWQ + 2 quantized, both."""
    assert speed._own_slopes(["int4-awq"] * 3 + ["quantized"]) == []
    assert speed._own_slopes(["int4-awq"] * 2 + ["quantized"] * 2) == ["int4-awq"]
    assert speed._own_slopes(["16bit"] * 2 + ["int4-awq"] * 2 + ["quantized"]) == ["16bit"]
    assert speed._own_slopes(["16bit"] * 2 + ["int4-awq"] * 2 + ["quantized"] * 2) == ["16bit", "int4-awq"]
    assert speed.SPLIT_KINDS[:2] == ("16bit", "int4-awq")  # then "legacy": test_speed_legacy.py
    # the fit follows it: the 5-point case on t = x / e_kind + 1 ms with AWQ on the quantized slope (0.6) is exact
    pts = _on({"16bit": 0.9, "int4-awq": 0.6, "quantized": 0.6}, 0.001,
              [(0.01, "16bit"), (0.05, "16bit"), (0.02, "int4-awq"), (0.06, "int4-awq"), (0.03, "quantized")])
    f = speed.fit_kinds(pts)
    assert f["int4-awq"] == 0.0
    assert (f["quantized"], f["16bit"], f["t0_ms"]) == (pytest.approx(0.6, rel=1e-9), pytest.approx(0.9, rel=1e-9),
                                                        pytest.approx(1.0, rel=1e-9))


def test_a_negative_overhead_falls_back_to_each_slope_through_the_origin():
    """Points whose line crosses below zero (t = x / e_kind - 1 ms): t0 = 0 and each kind's slope through the origin
    over its own points, 1/e = sum(x/t) / sum(x^2/t^2) (relative least squares with t0 = 0)."""
    pts = _on({"quantized": 0.8, "int4-awq": 0.3}, -0.001,
              [(0.01, "quantized"), (0.05, "quantized"), (0.004, "int4-awq"), (0.02, "int4-awq")])
    f = speed.fit_kinds(pts)

    def origin(kind):
        sel = [(p[0] / 1e9, 1 / p[2]) for p in pts if p[3] == kind]
        return sum(x * x / (t * t) for x, t in sel) / sum(x / t for x, t in sel)
    assert f["t0_ms"] == 0.0
    assert f["quantized"] == pytest.approx(origin("quantized"), rel=1e-9)
    assert f["int4-awq"] == pytest.approx(origin("int4-awq"), rel=1e-9)


def test_the_build_term_fits_with_an_awq_slope():
    """2 older and 2 current builds, 2 quantized and 2 AWQ, exactly on t = x / e_kind + 3 ms + 2 ms [older]: (e 0.75,
    e_int4_awq 0.3, t0 3, t0_before 2) come back from the one fit with the era column."""
    pts = _on({"quantized": 0.75, "int4-awq": 0.3}, 0.003,
              [(0.01, "quantized", True), (0.04, "quantized", False), (0.02, "int4-awq", True),
               (0.05, "int4-awq", False)], tb=0.002)
    f = speed.fit_kinds(pts)
    assert (f["quantized"], f["int4-awq"], f["16bit"]) == (pytest.approx(0.75, rel=1e-9), pytest.approx(0.3, rel=1e-9),
                                                           0.0)
    assert (f["t0_ms"], f["t0_before_ms"]) == (pytest.approx(3.0, rel=1e-9), pytest.approx(2.0, rel=1e-9))
    assert speed.fit_backend_build(pts) == (f["quantized"], f["t0_ms"], 0.0, f["t0_before_ms"])


# --- plans -------------------------------------------------------------------------------------------------------

STACK = """
version: 1
hardware: h100-80gb
workload: {{concurrent_users: 4, context_tokens: 8192, prompt_tokens: 1000, output_tokens: 300}}
serve: {{api_key_env: STACK_KEY}}
services:
  chat: {{model: qwen2.5-7b-instruct, engine: {engine}, quant: {quant}}}
"""


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_an_awq_plan_decodes_at_its_backends_awq_efficiency(engine, tmp_path):
    """An SGLang or vLLM plan of an AWQ checkpoint (weights_format awq): the kind is "int4-awq" and the single stream
    is the backend's step with the weights at efficiency_for("int4-awq") -- each backend's fitted AWQ slope (vLLM's
    since the vllmera split gave it 5 fitted AWQ points) -- so the SGLang AWQ plan decodes slower than the same plan's
    weights at the FP8 slope would."""
    from stackgen.plan.capacity import service_curve
    plan = plan_for(tmp_path, STACK.format(engine=engine, quant="awq"))
    sp = plan.services[0]
    assert sp.memory.weights_format == "awq" and speed.weight_kind(sp.memory.weights_format) == "int4-awq"
    b = speed.backend_params(sp.speed.backend)
    assert sp.speed.backend == engine
    assert b.efficiency_for("int4-awq") == b.efficiency_int4_awq > 0
    curve = service_curve(sp, plan.hardware)
    bw = plan.hardware.gpus[0].bandwidth_gbs * 1e9 * max(1, sp.memory.tensor_parallel)
    active = sp.memory.weights_bytes * sp.model.active_params / sp.model.params
    assert curve.weights_read_s == pytest.approx(active / (b.efficiency_int4_awq * bw))
    if engine == "sglang":  # below its FP8 slope; vLLM's AWQ slope is above its block-quantized one (speed.py's comment)
        assert curve.weights_read_s > active / (b.efficiency * bw)
    else:
        assert curve.weights_read_s < active / (b.efficiency * bw)
