"""confirm-graphs2 (benchmarks/results/confirm-graphs2-candidates.md): confirm-graphs' arm G1 put to a second blind
collection, recomputed from the fixture.

1. New points: the `confirm-graphs2` corpus (held out), collected after the rule was on main: upstream llama.cpp CUDA
   single-stream decode rows on (a) NVIDIA GPUs below compute capability 7.0 at build b2800+ or unknown, (b) Volta /
   Turing at a known build, (c) HBM datacenter GPUs of compute capability 8.0+ at b2800+ or unknown; no run built with
   GGML_CUDA_GRAPHS=OFF or run with GGML_CUDA_DISABLE_GRAPHS.
2. Score G0 (the lines before it: the older era by build alone) and G1 (public_logs.graphs_lines: the older era
   wherever CUDA graphs are off for the build and the GPU) on the new points, at most the first 6 per source.
3. Adopt G1 only if more new points within 15%, a lower mean |ln| on them, and the whole corpus at least G0's.
4. Fewer than 6 new points, one source, or all in one group: no decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (LINES_BEFORE_CONFIRM_GRAPHS2, confirm_score, confirm_verdict, first_per_source, graphs_lines,
                         point_build, point_cc, point_line, point_source, points_of_its_time, readings_of_its_time)
from stackgen.plan import speed

POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-graphs2")
TAG = "confirm-graphs2"
CUDA = ("cuda", "cuda-datacenter")
G0 = LINES_BEFORE_CONFIRM_GRAPHS2


@pytest.fixture(autouse=True)
def _readings_of_the_time():
    """Every reading a later decision adopted is reverted (readings_of_its_time): the arms as they were decided."""
    with readings_of_its_time(TAG):
        yield


def group(p: dict) -> str | None:
    """The rule's group of a CUDA point (by its GPU's compute capability, its line and its build), None outside them:
    (a) below 7.0 at b2800+ or unknown, (b) 7.x at a known build, (c) 8.0+ on the HBM datacenter line at b2800+ or
    unknown."""
    cc, b = point_cc(p), point_build(p)
    if cc is None:
        return None
    if cc < 7.0:
        return "a" if b is None or b >= 2800 else None
    if cc < 8.0:
        return "b" if b is not None else None
    if point_line(p) == "cuda-datacenter":
        return "c" if b is None or b >= 2800 else None
    return None


def new_points() -> list[dict]:
    return [p for p in POINTS if p.get("corpus") == TAG]


def decision_points() -> list[dict]:
    """The new points steps 2-3 score (at most 6 per source, the first in fixture order), each with its group, the key
    step 4's spread counts."""
    return [{**p, "group": group(p)} for p in first_per_source(new_points())]


def scores() -> dict:
    new = decision_points()
    return {"G0": confirm_score(POINTS, G0, new), "G1": confirm_score(POINTS, graphs_lines(POINTS), new)}


def verdict() -> bool | None:
    s = scores()
    return confirm_verdict(decision_points(), s["G0"], s["G1"], spread="group")


def test_new_points_are_held_out_cuda_rows_of_the_rules_groups():
    for p in new_points():
        assert p.get("held_out") is True and p["backend"] in CUDA, p["id"]
        assert group(p) in ("a", "b", "c"), p["id"]
        assert p["source"].startswith("https://github.com/"), p["id"]
        assert not any(s in p["source"].upper() for s in ("GRAPHS=OFF", "GRAPHS:BOOL=OFF", "DISABLE_GRAPHS")), p["id"]


def test_g0_is_the_lines_before_and_g1_confirm_graphs_arm():
    """G0: the older era by build alone (the consumer line's b2800 term, the datacenter line without one); G1: the
    consumer line's figures unchanged, the datacenter line's current era 3.09 - 1.39 = 1.70 ms, both by graphs."""
    g1 = graphs_lines(POINTS)
    assert not any(b.graphs_by_arch for b in G0.values()) and all(b.graphs_by_arch for b in g1.values())
    assert (G0["cuda-datacenter"].t0_ms, G0["cuda-datacenter"].build_before) == (3.09, 0)
    assert g1["cuda"].efficiency == pytest.approx(G0["cuda"].efficiency, abs=0.001)
    assert g1["cuda"].t0_ms == pytest.approx(G0["cuda"].t0_ms, abs=0.01)
    assert g1["cuda-datacenter"].t0_ms == pytest.approx(1.70, abs=0.01)
    assert g1["cuda-datacenter"].t0_before_ms == pytest.approx(1.39, abs=0.01)


def test_step_4_refuses_one_group():
    """confirm_verdict on the group key: points all of one group are no decision, whatever the scores."""
    pts = [{**p, "group": group(p)} for p in POINTS if p["backend"] in CUDA and group(p)]
    base, arm = {"new": 0, "ln": 1.0, "all": 0}, {"new": 9, "ln": 0.1, "all": 1}
    by = {g: first_per_source([p for p in pts if p["group"] == g], cap=3) for g in ("a", "b", "c")}
    one = next(v for v in by.values() if len(v) >= 6 and len({point_source(p) for p in v}) >= 2)[:6]
    assert confirm_verdict(one, base, arm, spread="group") is None
    mixed = [p for v in by.values() for p in v[:3]][:6]
    assert len({p["group"] for p in mixed}) >= 2 and len({point_source(p) for p in mixed}) >= 2
    assert confirm_verdict(mixed, base, arm, spread="group") is True


def test_the_lines_hold_the_verdict():
    """speed.BACKENDS's CUDA lines carry graphs_by_arch exactly where the rule adopts G1 (outside this test's
    readings: readings_of_its_time reverts nothing for the latest decision)."""
    adopted = verdict() is True
    assert all(speed.BACKENDS[b].graphs_by_arch == adopted for b in CUDA)
    if adopted:
        assert speed.BACKENDS["cuda-datacenter"].t0_ms == pytest.approx(graphs_lines(POINTS)["cuda-datacenter"].t0_ms,
                                                                        abs=0.005)


def test_recorded_decision():
    """Steps 2-4 as confirm-graphs2-candidates.md records them: 11 rows collected, the two microbatch-1 pp128 V100 rows
    of PR 28912 removed by the lead before scoring (not tg rows under step 1), leaving 9 from 2 sources, all in group
    (c): no decision (G0 stays). Reported: G0 3 within 15% (mean |ln| 0.210), G1 0 (0.301) -- G1 would have failed
    (i) and (ii) too; the whole corpus (485, under the lines the rule was fixed on) 387 / 389."""
    new = new_points()
    assert (len(POINTS), len(new), len(decision_points())) == (485, 9, 9)
    assert {p["group"] for p in decision_points()} == {"c"} and len({point_source(p) for p in new}) == 2
    s = scores()
    assert (s["G0"]["new"], round(s["G0"]["ln"], 3), s["G0"]["all"]) == (3, 0.210, 387)
    assert (s["G1"]["new"], round(s["G1"]["ln"], 3), s["G1"]["all"]) == (0, 0.301, 389)
    assert verdict() is None
    assert confirm_verdict(decision_points(), s["G0"], s["G1"]) is False  # step 4 on bandwidth alone: (i), (ii) fail
