"""confirm-bw (benchmarks/results/confirm-bw-candidates.md): the confirmatory rule, fixed by the lead before any of
its new points existed, that decides per backend (Metal; consumer CUDA) between today's linear line (X0) and the
same fitted points with a bandwidth exponent fitted with the line (X1: speed.fit_exponent, the weight read at
400 x (BW / 400)^a GB/s). Steps 2-4 of the rule, recomputed from the fixture:

2. Score X0 and X1 on the backend's new points only: within-15% count, then mean |ln(pred/measured)|.
3. Adopt X1 only if (i) its count on the new points is higher than X0's, (ii) its mean |ln| there is lower and (iii)
   the whole corpus (every point, the new ones included) within 15% with it is at least X0's.
4. Fewer than 6 new points, new points from one source only, or all at one bandwidth: no decision (keep X0).

Both arms are fitted on the same set, the backend's points not held out (outliers aside), so the verdict does not
depend on which line speed.BACKENDS holds: the test checks that the line there is the verdict's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (confirm_score, confirm_verdict, first_per_source, point_source, points_of_its_time,
                         readings_of_its_time, refit_line)
from stackgen.plan import speed

# the points this rule decided on (the later decisions' corpora, all held out, left out)
POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-bw")
TAGS = {"metal": ("confirm-bw-metal-a", "confirm-bw-metal-b"), "cuda": ("confirm-bw-cuda",)}


@pytest.fixture(autouse=True)
def _routing_of_the_time():
    """This rule decided before confirm-tier and confirm-m1: datacenter CUDA points are scored on the datacenter line
    (routes_by_tier), Apple GPUs at their datasheet bandwidth (datasheet_apple): readings_of_its_time."""
    with readings_of_its_time("confirm-bw"):
        yield


def new_points(backend: str) -> list[dict]:
    """Every new point of the backend's confirm-bw corpora (held out, in the whole corpus's count)."""
    return [p for p in POINTS if p.get("corpus") in TAGS[backend] and p["backend"] == backend]


def decision_points(backend: str) -> list[dict]:
    """The new points steps 2-3 score: at most 6 per source, the first in fixture order (the rule's step 1 cap; the
    lead's note in confirm-bw-candidates.md, fixed before X1 was scored)."""
    return first_per_source(new_points(backend))


def arms(backend: str) -> dict[str, speed.Backend]:
    """X0 and X1 for `backend`, each fitted on its points not held out (outliers aside)."""
    def fitted(p):
        return not p.get("held_out")
    split = speed.split_kinds(backend)
    return {"X0": refit_line(POINTS, backend, fitted, split),
            "X1": refit_line(POINTS, backend, fitted, split, exponent=True)}


def score(backend: str, line: speed.Backend, new: list[dict] | None = None) -> dict:
    """Under `line` as `backend`'s (every other line as speed.BACKENDS has it): the new points' (`new`, by default
    decision_points) within-15% count and mean |ln(pred/measured)|, and the whole corpus's within-15% count."""
    return confirm_score(POINTS, {backend: line}, decision_points(backend) if new is None else new)


def decision(backend: str) -> tuple[str, dict]:
    """("no decision" | "adopt X1" | "keep X0", the scores) by steps 2-4."""
    s = {k: score(backend, b) for k, b in arms(backend).items()}
    adopt = confirm_verdict(decision_points(backend), s["X0"], s["X1"])
    return {None: "no decision", True: "adopt X1", False: "keep X0"}[adopt], s


def test_x1_is_the_pre_registered_fit():
    """The exponents the rule's file states for the fitted sets at 5ea2645 (new points are held out: unchanged)."""
    assert arms("metal")["X1"].bandwidth_exponent == 0.90 and arms("metal")["X1"].fitted_on == 66
    assert arms("cuda")["X1"].bandwidth_exponent == 0.97 and arms("cuda")["X1"].fitted_on == 17
    assert arms("metal")["X0"].bandwidth_exponent == arms("cuda")["X0"].bandwidth_exponent == 1.0


def test_new_points_are_held_out():
    for backend in TAGS:
        assert all(p.get("held_out") for p in new_points(backend)), backend
    assert not [p for p in POINTS if str(p.get("corpus", "")).startswith("confirm-bw")
                and p["backend"] not in TAGS]


@pytest.mark.parametrize("backend", sorted(TAGS))
def test_line_is_the_rules_verdict(backend):
    """speed.BACKENDS holds the arm the rule picks: X1's exponent where it adopts X1, a linear line otherwise."""
    verdict, _ = decision(backend)
    assert (speed.BACKENDS[backend].bandwidth_exponent != 1.0) == (verdict == "adopt X1"), verdict


def test_the_lines_of_the_time_are_x0():
    """public_logs.LINES_BEFORE_CONFIRM_BW, the lines the earlier decisions are recomputed under, are X0 (the
    linear fit of the same points) as speed.py rounded it."""
    from public_logs import LINES_BEFORE_CONFIRM_BW
    for backend, then in LINES_BEFORE_CONFIRM_BW.items():
        x0 = arms(backend)["X0"]
        assert then.bandwidth_exponent == 1.0 and then.fitted_on == x0.fitted_on
        for f in ("efficiency", "efficiency_16bit", "efficiency_legacy"):
            assert getattr(then, f) == pytest.approx(getattr(x0, f), abs=0.001), (backend, f)
        assert then.t0_ms == pytest.approx(x0.t0_ms, abs=0.01) and then.t0_before_ms == pytest.approx(x0.t0_before_ms,
                                                                                                       abs=0.01)


def test_recorded_decisions():
    """The figures confirm-bw-candidates.md records: Metal's X1 adopted on 21 of its 34 new points (at most 6 per
    source), CUDA's not (a tie on the count, X1's mean |ln| higher); the whole corpus at 429 points."""
    assert len(POINTS) == 429 and [len(new_points(b)) for b in ("metal", "cuda")] == [34, 9]
    assert [len(decision_points(b)) for b in ("metal", "cuda")] == [21, 9]
    v, s = decision("metal")
    assert v == "adopt X1"
    assert (s["X0"]["new"], round(s["X0"]["ln"], 3), s["X1"]["new"], round(s["X1"]["ln"], 3)) == (16, 0.112, 20, 0.081)
    assert (s["X0"]["all"], s["X1"]["all"]) == (328, 345)
    every = {k: score("metal", b, new_points("metal"))["new"] for k, b in arms("metal").items()}
    assert every == {"X0": 23, "X1": 28}  # all 34 (the sensitivity check): the same way
    v, s = decision("cuda")
    assert v == "keep X0"
    assert (s["X0"]["new"], round(s["X0"]["ln"], 3), s["X1"]["new"], round(s["X1"]["ln"], 3)) == (4, 0.160, 4, 0.161)


def test_the_rule_can_decline_on_too_few_points_or_one_source(monkeypatch):
    """Step 4: fewer than 6 new points, one source, or one bandwidth: no decision, whatever the scores."""
    pts = decision_points("metal")
    for cut in (pts[:5], [p for p in pts if point_source(p) == point_source(pts[0])],
                [p for p in pts if p["bandwidth_gbs"] == 800]):
        monkeypatch.setattr(__import__(__name__), "decision_points", lambda backend, cut=cut: cut)
        assert decision("metal")[0] == "no decision"
