"""confirm-graphs (benchmarks/results/confirm-graphs-candidates.md): the confirmatory rule, fixed by the lead before
any of its new points existed, that decides between today's llama.cpp CUDA lines (G0: the older era by build alone)
and G1 (public_logs.graphs_lines: the older era wherever CUDA graphs are off for the build and the GPU's compute
capability, speed.cuda_graphs_off; the datacenter line's current-era t0 its older-era fit less the consumer line's
graphs saving). Steps 2-4 of the rule, recomputed from the fixture:

2. Score G0 and G1 on the new points (both CUDA lines together): within-15% count, then mean |ln(pred/measured)|.
3. Adopt G1 only if (i) its count is higher than G0's, (ii) its mean |ln| is lower and (iii) the whole corpus within
   15% with it is at least G0's.
4. Fewer than 6 new points, one source only, or all at one bandwidth: no decision (keep G0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (LINES_BEFORE_CONFIRM_GRAPHS, confirm_score, confirm_verdict, graphs_lines, lines, point_cc,
                         points_of_its_time, readings_of_its_time,
                         point_source, predict_decode)
from stackgen.plan import speed

# the points this rule decided on: confirm-tier (confirm-tier-candidates.md) came after, all held out
POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-graphs")
TAG = "confirm-graphs"
CUDA = ("cuda", "cuda-datacenter")
G0 = LINES_BEFORE_CONFIRM_GRAPHS  # the lines when the rule was fixed (b5d1f58): the older era by build alone


@pytest.fixture(autouse=True)
def _routing_of_the_time():
    """This rule decided before confirm-tier: datacenter CUDA points are scored on the datacenter line
    (routes_by_tier), Apple GPUs at their datasheet bandwidth (datasheet_apple: confirm-m1 came after): readings_of_its_time."""
    with readings_of_its_time("confirm-graphs"):
        yield


def new_points() -> list[dict]:
    return [p for p in POINTS if p.get("corpus") == TAG]


def decision() -> tuple[str, dict]:
    """("no decision" | "adopt G1" | "keep G0", the scores) by steps 2-4."""
    new = new_points()
    s = {"G0": confirm_score(POINTS, G0, new), "G1": confirm_score(POINTS, graphs_lines(POINTS), new)}
    return {None: "no decision", True: "adopt G1", False: "keep G0"}[confirm_verdict(new, s["G0"], s["G1"])], s


def test_new_points_are_cuda_held_out_and_at_most_six_a_source():
    new = new_points()
    assert all(p.get("held_out") and p["backend"] in CUDA for p in new)
    per: dict[str, int] = {}
    for p in new:
        per[point_source(p)] = per.get(point_source(p), 0) + 1
    assert all(n <= 6 for n in per.values()), per


def test_g0_is_the_lines_of_the_time_and_g1_the_rules_arm():
    """G0 is the linear-era fit of today's fitted points as speed.py rounded it; G1 keeps the consumer line's figures
    (none of its fitted points changes era) and moves the datacenter line's current-era t0 to 3.09 - 1.39 ms."""
    g0, g1 = G0, graphs_lines(POINTS)
    assert g1["cuda"].efficiency == pytest.approx(g0["cuda"].efficiency, abs=0.001)
    assert g1["cuda"].t0_before_ms == pytest.approx(g0["cuda"].t0_before_ms, abs=0.01)
    assert g1["cuda-datacenter"].efficiency == pytest.approx(g0["cuda-datacenter"].efficiency, abs=0.001)
    assert g1["cuda-datacenter"].t0_ms == pytest.approx(3.09 - 1.39, abs=0.01)
    assert all(b.graphs_by_arch for b in g1.values()) and not any(b.graphs_by_arch for b in g0.values())


def test_the_lines_are_the_rules_verdict():
    """speed.BACKENDS's CUDA lines carry graphs_by_arch exactly where the rule adopts G1."""
    verdict, _ = decision()
    assert all(speed.BACKENDS[b].graphs_by_arch == (verdict == "adopt G1") for b in CUDA), verdict


def test_every_cuda_point_has_a_compute_capability():
    """G1 reads each CUDA point's compute capability from its GPU's name (public_logs.CUDA_CC): none unmatched."""
    missing = [p["id"] for p in POINTS if p["backend"] in CUDA and point_cc(p) is None]
    assert not missing
    assert point_cc({"backend": "cuda", "gpu": "Tesla P40"}) == 6.1
    assert point_cc({"backend": "cuda-datacenter", "gpu": "Tesla V100 PCIe 16GB"}) == 7.0
    assert point_cc({"backend": "cuda", "gpu": "RTX 2080 Ti"}) == 7.5
    assert point_cc({"backend": "cuda", "gpu": "RTX 4090"}) == 8.9 and point_cc({"backend": "metal", "gpu": "M4"}) is None


P40_STACK = """version: 1
hardware:
  gpus:
    - {{vendor: nvidia, name: Tesla P40, memory_gib: 24, bandwidth_gbs: 347, count: 1, tier: {tier}{cc}}}
  memory_gib: 64
  memory_bandwidth_gbs: 51.2
  cpu: {{cores: 16, threads: 32, arch: x86_64}}
  os: linux
workload: {{concurrent_users: 1, context_tokens: 4096, prompt_tokens: 500, output_tokens: 200}}
services:
  s: {{model: llama-3.1-8b-instruct, engine: llama.cpp}}
"""


@pytest.mark.parametrize("tier", ["consumer", "datacenter"])
def test_a_plan_on_a_pascal_gpu_pays_the_graphs_overhead_on_a_graphs_line(write_stack, tier):
    """A Pascal GPU (compute capability 6.1, stated in the hardware) decodes without CUDA graphs on any build: on G1's
    lines its plan's step is t0_before longer than the same GPU's without a stated compute capability; on G0's the
    two are the same (the era by build alone; the plan's default build is past b2800)."""
    from stackgen.host.facts import HostFacts
    from stackgen.plan import resolve
    from stackgen.spec.stack import load_stack

    def one_stream(arm, cc):
        path = write_stack(P40_STACK.format(tier=tier, cc=', compute_capability: "6.1"' if cc else ""))
        with lines(arm):
            sp = resolve.resolve(load_stack(path), HostFacts(hardware=None)).services[0]
        return sp.speed.single_stream_tokens_per_s
    g1 = graphs_lines(POINTS)
    line = g1[speed.backend_for(None, "nvidia", tier)]
    slow, fast = one_stream(g1, True), one_stream(g1, False)
    assert 1 / slow - 1 / fast == pytest.approx(line.t0_before_ms / 1000, rel=0.02)
    assert one_stream(G0, True) == one_stream(G0, False)


def test_recorded_decision():
    """The figures confirm-graphs-candidates.md records: 10 new points from 3 sources; G0 7 within 15% (mean |ln|
    0.173), G1 6 (0.173, higher by 0.001): G1 not adopted, though the whole corpus would rise 352 -> 357 of 439 (the
    gain is on points seen before the rule). 8 of the 10 are in the same era under both arms (builds before b2800 or
    a Volta GPU before b10000); the two that differ, an L40S and an A30 at b7199, were built with
    GGML_CUDA_GRAPHS=OFF (their sources' CMake caches), so neither arm's premise held for them."""
    assert len(POINTS) == 439 and len(new_points()) == 10
    verdict, s = decision()
    assert verdict == "keep G0"
    assert (s["G0"]["new"], s["G1"]["new"], s["G0"]["all"], s["G1"]["all"]) == (7, 6, 352, 357)
    assert (round(s["G0"]["ln"], 4), round(s["G1"]["ln"], 4)) == (0.1726, 0.1733)
    g0, g1 = G0, graphs_lines(POINTS)
    differ = []
    for p in new_points():
        with lines(g0):
            a = predict_decode(p)
        with lines(g1):
            b = predict_decode(p)
        if abs(a / b - 1) > 0.01:  # another era (G1 refits unrounded figures: the rest differ by <0.2%)
            differ.append(p["gpu"])
    assert sorted(differ) == ["A30 24GB", "L40S 48GB"]
