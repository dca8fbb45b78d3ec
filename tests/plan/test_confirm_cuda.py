"""The lead's confirmatory rule for the CUDA lines (benchmarks/results/confirm-cuda-candidates.md, fixed before any of
the new points existed): cuda-board's refit arms and today's lines, scored on the confirm-cuda corpus's new points
only, consumer first, then datacenter. This recomputes steps 2-3 of the rule from the fixture and checks the verdict
recorded there (no arm adopted) and what it leaves in stackgen.plan.speed."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from public_logs import predict_decode, refit_arm
from stackgen.plan import speed

POINTS = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml").read_text())[
    "points"]
TAG = "confirm-cuda"


def _cuda_board_arms() -> dict:
    """C1 and D1: cuda-board's rule-4 refits, built as test_cuda_board_refit_follows_its_preregistered_rules builds
    them (each backend's fitted points plus the 1st, 3rd, ... cuda-board rows in fixture order; outliers, the K80
    among them, out of every fit)."""
    board = [p for p in POINTS if p.get("corpus") == "cuda-board"]
    odd = {id(p) for p in board[::2]}

    def fitted(p):
        return (not p.get("outlier") and not p.get("held_out")) or id(p) in odd
    arms = refit_arm(POINTS, fitted, ("cuda", "cuda-datacenter"))
    return {"C1": arms["cuda"]["params"], "D1": arms["cuda-datacenter"]["params"]}


def _score(lines: dict, backend: str) -> dict:
    """Step 2 under `lines` (speed.BACKENDS entries replaced for the call): on the new points of `backend`, the count
    within 15% and the mean |ln(predicted / measured)|; the whole corpus's and the first 115's counts within 15%."""
    saved = dict(speed.BACKENDS)
    try:
        speed.BACKENDS.update(lines)
        ratio = {id(p): predict_decode(p) / p["tokens_per_s"] for p in POINTS}
    finally:
        speed.BACKENDS.clear()
        speed.BACKENDS.update(saved)
    new = [p for p in POINTS if p.get("corpus") == TAG and p["backend"] == backend]

    def within(ps):
        return sum(abs(ratio[id(p)] - 1) <= 0.15 for p in ps)
    return {"n": len(new), "within": within(new), "ln": sum(abs(math.log(ratio[id(p)])) for p in new) / len(new),
            "all": within(POINTS), "first115": within([p for p in POINTS if not p.get("corpus")])}


def _decide(a0: dict, arms: dict) -> str | None:
    """Step 3: the best-scoring arm (most within 15%, ties by the lower mean |ln|) is adopted only if it beats A0's
    count, has a lower mean |ln| than A0 and keeps the whole corpus's count within 15% at least at A0's; rule 4: no
    decision below 6 new points."""
    if a0["n"] < 6:
        return None
    name, best = min(arms.items(), key=lambda kv: (-kv[1]["within"], kv[1]["ln"]))
    if best["within"] > a0["within"] and best["ln"] < a0["ln"] and best["all"] >= a0["all"]:
        return name
    return "A0"


def test_confirm_cuda_points_are_new_held_out_and_enough_for_a_decision():
    new = [p for p in POINTS if p.get("corpus") == TAG]
    assert all(p.get("held_out") for p in new)
    assert sum(p["backend"] == "cuda" for p in new) >= 6 and sum(p["backend"] == "cuda-datacenter" for p in new) >= 6


def test_consumer_arm_c1_is_not_adopted_on_the_new_points():
    """Consumer first. As recorded: A0 6 of 8 within 15% (mean |ln| 0.126), C1 6 of 8 (0.124): C1 does not raise
    the count (rule 3 (i)), so today's line stands."""
    arms = _cuda_board_arms()
    a0 = _score({}, "cuda")
    c1 = _score({"cuda": arms["C1"]}, "cuda")
    assert (a0["n"], a0["within"], c1["within"]) == (8, 6, 6), (a0, c1)
    assert _decide(a0, {"C1": c1}) == "A0"
    assert speed.BACKENDS["cuda"].fitted_on == 17


def test_datacenter_arms_d1_d2_are_not_adopted_on_the_new_points():
    """Then datacenter, D2 on the consumer line the consumer step adopted (A0's). As recorded: A0 0 of 7 within 15%
    (mean |ln| 0.444), D1 2 (0.355), D2 3 (0.470). The best-scoring arm is D2 (most within 15%), and its mean |ln| is
    above A0's (rule 3 (ii) fails), so today's datacenter line stands. (D1, not the best-scoring arm, is not eligible
    under the rule as written; its figures are recorded in the candidates file.)"""
    arms = _cuda_board_arms()
    a0 = _score({}, "cuda-datacenter")
    d1 = _score({"cuda-datacenter": arms["D1"]}, "cuda-datacenter")
    d2 = _score({"cuda-datacenter": speed.BACKENDS["cuda"]}, "cuda-datacenter")  # datacenter tier -> the consumer line
    assert (a0["n"], a0["within"], d1["within"], d2["within"]) == (7, 0, 2, 3), (a0, d1, d2)
    assert d2["ln"] > a0["ln"] > d1["ln"]
    assert _decide(a0, {"D1": d1, "D2": d2}) == "A0"
    assert "cuda-datacenter" in speed.BACKENDS and speed.BACKENDS["cuda-datacenter"].fitted_on == 2
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"


def test_the_rule_would_adopt_an_arm_that_met_all_three_conditions():
    """The decision function can say yes: an arm that beats A0's count and mean |ln| and keeps the corpus's count is
    adopted; one that loses the corpus count is not (guards _decide against always answering A0)."""
    a0 = {"n": 7, "within": 0, "ln": 0.44, "all": 263, "first115": 94}
    good = {"n": 7, "within": 2, "ln": 0.35, "all": 266, "first115": 94}
    assert _decide(a0, {"X": good}) == "X"
    assert _decide(a0, {"X": dict(good, all=262)}) == "A0"
    assert _decide(dict(a0, n=5), {"X": good}) is None
