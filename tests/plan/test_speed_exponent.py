"""speed's bandwidth exponent (Backend.bandwidth_exponent, read_gbs, fit_exponent): confirm-bw's arm X1
(benchmarks/results/confirm-bw-candidates.md) as code."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stackgen.plan import speed


def _points(a: float, e: float, t0_ms: float, bws=(120, 273, 400, 546, 800), sizes=(1e9, 4e9, 16e9)) -> list[tuple]:
    """Exact points of a line with exponent `a`: (bytes, bandwidth, tokens/s)."""
    return [(b, bw, 1 / (b / (e * speed.scaled_gbs(bw, a) * 1e9) + t0_ms / 1000)) for bw in bws for b in sizes]


def test_scaled_gbs_is_the_pivot_power_law():
    assert speed.scaled_gbs(800, 1.0) == 800 and speed.scaled_gbs(0, 0.5) == 0
    assert speed.scaled_gbs(speed.BANDWIDTH_PIVOT_GBS, 0.7) == pytest.approx(speed.BANDWIDTH_PIVOT_GBS)
    assert speed.scaled_gbs(1600, 0.5) == pytest.approx(800)  # 400 x 4^0.5
    assert speed.scaled_gbs(100, 0.5) == pytest.approx(200)  # 400 x (1/4)^0.5
    assert speed.Backend(0.7, 1.0, bandwidth_exponent=0.5).read_gbs(1600) == pytest.approx(800)
    assert speed.Backend(0.7, 1.0).read_gbs(1600) == 1600


@pytest.mark.parametrize("a", [0.62, 0.85, 0.9, 1.0])
def test_fit_exponent_recovers_the_line_of_exact_points(a):
    got, f = speed.fit_exponent(_points(a, 0.75, 2.0))
    assert got == pytest.approx(a)
    assert f["quantized"] == pytest.approx(0.75, rel=1e-6) and f["t0_ms"] == pytest.approx(2.0, rel=1e-6)


def test_fit_exponent_keeps_the_kinds_and_the_era_term():
    pts = [p + ("16bit" if i % 3 == 0 else "quantized", i % 2 == 0) for i, p in enumerate(_points(0.8, 0.7, 1.0))]
    pts = [(b, bw, 1 / (b / ((0.9 if k == "16bit" else 0.7) * speed.scaled_gbs(bw, 0.8) * 1e9) + (1.0 + 0.5 * o) / 1000),
            k, o) for b, bw, _, k, o in pts]
    a, f = speed.fit_exponent(pts)
    assert a == pytest.approx(0.8)
    assert f["16bit"] == pytest.approx(0.9, rel=1e-6) and f["t0_before_ms"] == pytest.approx(0.5, rel=1e-5)


def test_fit_exponent_takes_the_first_of_equal_fits():
    # every point at the pivot: each exponent fits exactly; the first of the grid wins
    pts = [(b, speed.BANDWIDTH_PIVOT_GBS, 1 / (b / (0.7 * 400e9) + 0.001)) for b in (1e9, 2e9, 8e9)]
    assert speed.fit_exponent(pts)[0] == speed.EXPONENT_GRID[0]
    assert speed.fit_exponent(pts, grid=(0.9, 0.7))[0] == 0.9
    assert speed.EXPONENT_GRID[0] == 0.5 and speed.EXPONENT_GRID[-1] == 1.0 and len(speed.EXPONENT_GRID) == 51


def test_step_reads_at_the_scaled_bandwidth():
    b = speed.Backend(0.7, 1.0, bandwidth_exponent=0.8)
    with_line = dict(speed.BACKENDS)
    try:
        speed.BACKENDS["test-line"] = b
        t = speed.step_seconds(8e9, 800, "test-line")
    finally:
        speed.BACKENDS.clear()
        speed.BACKENDS.update(with_line)
    assert t == pytest.approx(8e9 / (0.7 * speed.scaled_gbs(800, 0.8) * 1e9) + 0.001)


def test_tensor_parallel_scales_each_devices_bandwidth():
    """gpu_bandwidth_gbs is already x tensor parallel: each of the TP GPUs reads at read_gbs of its own bandwidth."""
    b = speed.Backend(0.7, 0.0, bandwidth_exponent=0.8)
    cpu = speed.BACKENDS["cpu"]
    kw = dict(weights_bytes=8e9, kv_bytes_per_stream=0.0, gpu_fraction=1.0, host_bandwidth_gbs=50.0,
              active_params=8e9, peak_flops=1e14)
    one = speed.step_parts(b, cpu, gpu_bandwidth_gbs=800, **kw)
    two = speed.step_parts(b, cpu, gpu_bandwidth_gbs=1600, tensor_parallel=2, layers=32, **kw)
    assert one.weights_s == pytest.approx(8e9 / (0.7 * speed.scaled_gbs(800, 0.8) * 1e9))
    assert two.weights_s == pytest.approx(one.weights_s / 2)
    linear = speed.step_parts(replace(b, bandwidth_exponent=1.0), cpu, gpu_bandwidth_gbs=800, **kw)
    assert linear.weights_s == pytest.approx(8e9 / (0.7 * 800e9))


# --- CUDA graphs by architecture (speed.cuda_graphs_off; confirm-graphs) -----------------------------------------

@pytest.mark.parametrize("build, cc, off", [
    (2799, None, True), (2799, 9.0, True), (2800, None, False), (None, None, False),  # the build alone
    (None, 6.1, True), (20000, 6.1, True), (20000, 5.2, True),  # Pascal and older: never graphs
    (None, 7.5, False), (9999, 7.5, True), (9999, 7.0, True), (10000, 7.0, False), (10000, 6.9, True),  # PR 25749
    (9999, 8.0, False), (2800, 8.6, False), (2799, 8.6, True)])
def test_cuda_graphs_off(build, cc, off):
    assert speed.cuda_graphs_off(build, cc) is off


def test_a_graphs_line_takes_its_era_from_build_and_gpu():
    with_line = dict(speed.BACKENDS)
    try:
        speed.BACKENDS["g"] = speed.Backend(0.7, 1.0, build_before=2800, t0_before_ms=2.0, graphs_by_arch=True)
        speed.BACKENDS["b"] = speed.Backend(0.7, 1.0, build_before=2800, t0_before_ms=2.0)
        assert speed.backend_params("g", None, 6.1).t0_ms == 3.0  # Pascal: older era whatever the build
        assert speed.backend_params("g", 9000, 7.5).t0_ms == 3.0 and speed.backend_params("g", 10488, 7.5).t0_ms == 1.0
        assert speed.backend_params("g", 2000, None).t0_ms == 3.0 and speed.backend_params("g", None, None).t0_ms == 1.0
        assert speed.backend_params("b", None, 6.1).t0_ms == 1.0  # a line without graphs_by_arch: the build alone
        assert speed.backend_params("b", 2000, 9.0).t0_ms == 3.0
        t = speed.step_seconds(7e9, 700, "g", compute_capability=6.1)
        assert t == pytest.approx(7e9 / (0.7 * 700e9) + 0.003)
    finally:
        speed.BACKENDS.clear()
        speed.BACKENDS.update(with_line)


# --- fit_exponent's details (mutation testing: benchmarks/results/mutation-speed.md) -----------------------------

def _noisy(a: float = 0.8) -> list[tuple]:
    """Points of a line with exponent `a`, each off it by a fixed pseudo-noise of up to +-12%: the objective is not 0
    at any exponent, so its exact form decides the answer."""
    pts = _points(a, 0.75, 1.5)
    return [(b, bw, tps * (1 + 0.12 * math.sin(7.3 * i + 1)), "16bit" if i % 4 == 0 else "legacy" if i % 4 == 1
             else "quantized", i % 5 == 0) for i, (b, bw, tps) in enumerate(pts)]


def _objective(points: list[tuple], a: float, split=speed.SPLIT_KINDS) -> float:
    """The relative least squares fit_exponent minimises, written out here: sum of (predicted / measured step - 1)^2
    over the points with fit_kinds' line at exponent a."""
    pts = [(p[0], speed.scaled_gbs(p[1], a), *p[2:]) for p in points]
    f = speed.fit_kinds(pts, split)
    out = 0.0
    for b, bw, tps, kind, older in pts:
        e = f[kind] or f["quantized"]
        step = b / (e * bw * 1e9) + (f["t0_ms"] + (f["t0_before_ms"] if older else 0.0)) / 1000
        out += (step * tps - 1) ** 2
    return out


def test_fit_exponent_is_the_argmin_of_the_relative_least_squares_on_noisy_points():
    pts = _noisy()
    a, f = speed.fit_exponent(pts)
    assert a == min(speed.EXPONENT_GRID, key=lambda x: _objective(pts, x))
    assert 0.6 <= a <= 0.95 and f == speed.fit_kinds([(p[0], speed.scaled_gbs(p[1], a), *p[2:]) for p in pts])


def test_fit_exponent_and_fit_backend_build_honour_the_split():
    """A split without "legacy" puts the legacy points on the shared slope: a different line (and exponent search)."""
    pts = _noisy()
    no_legacy = tuple(k for k in speed.SPLIT_KINDS if k != "legacy")
    a, f = speed.fit_exponent(pts, no_legacy)
    assert f["legacy"] == 0.0 and speed.fit_exponent(pts)[1]["legacy"] > 0
    assert a == min(speed.EXPONENT_GRID, key=lambda x: _objective(pts, x, no_legacy))
    assert speed.fit_backend_build(pts, no_legacy) != speed.fit_backend_build(pts)


def test_fit_exponent_reads_a_kind_without_a_slope_at_the_shared_one_and_short_points():
    """One 16-bit point gets no slope of its own (fit_kinds' 0): it is read at the shared e. Points without the era
    flag (4-tuples) are current-era."""
    pts = [p + ("quantized",) for p in _points(0.7, 0.75, 2.0)]
    pts[0] = pts[0][:3] + ("16bit",)
    a, f = speed.fit_exponent(pts)
    assert f["16bit"] == 0.0 and a == pytest.approx(0.7)


def test_fit_exponent_counts_the_overhead_of_current_builds():
    """Small steps where t0 is most of the step: a wrong t0 in the objective would move the exponent."""
    pts = _points(0.7, 0.75, 1.0, sizes=(2e7, 5e7, 2e8))
    assert speed.fit_exponent(pts)[0] == pytest.approx(0.7)


def test_scaled_gbs_guards():
    assert speed.scaled_gbs(800, 2.0) == pytest.approx(1600)  # 400 x 2^2: any exponent but 1 scales
    assert speed.scaled_gbs(1, 0.5) == pytest.approx(20)  # 400 x (1/400)^0.5: a small bandwidth is scaled too
    assert speed.scaled_gbs(-1, 0.9) == -1  # no bandwidth (<= 0): itself, not a power of a negative number
