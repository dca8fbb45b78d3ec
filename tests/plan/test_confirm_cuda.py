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


def test_confirm_cuda_points_are_new_and_held_out():
    """15 points were taken; the lead removed 5 whose sources are not citable (stored-file ids of a search index, no
    public repository or URL: confirm-cuda-candidates.md, "Lead's review"), leaving 5 consumer and 5 datacenter."""
    new = [p for p in POINTS if p.get("corpus") == TAG]
    assert all(p.get("held_out") for p in new)
    assert (sum(p["backend"] == "cuda" for p in new), sum(p["backend"] == "cuda-datacenter" for p in new)) == (5, 5)


def test_no_decision_with_five_new_points_a_backend():
    """Rule 4: fewer than 6 new points for a backend, no decision; the lines stand. The figures, recorded in the
    candidates file: consumer A0 4 of 5 within 15%, C1 the same; datacenter A0 0 of 5, D1 and D2 as computed here."""
    arms = _cuda_board_arms()
    a0 = _score({}, "cuda")
    c1 = _score({"cuda": arms["C1"]}, "cuda")
    assert (a0["n"], a0["within"]) == (5, 4), a0
    assert _decide(a0, {"C1": c1}) is None
    d0 = _score({}, "cuda-datacenter")
    d1 = _score({"cuda-datacenter": arms["D1"]}, "cuda-datacenter")
    d2 = _score({"cuda-datacenter": speed.BACKENDS["cuda"]}, "cuda-datacenter")  # datacenter tier -> the consumer line
    assert (d0["n"], d0["within"]) == (5, 0), d0
    assert _decide(d0, {"D1": d1, "D2": d2}) is None
    assert speed.BACKENDS["cuda"].fitted_on == 17
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
