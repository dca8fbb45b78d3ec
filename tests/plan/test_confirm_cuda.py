"""The lead's confirmatory rule for the CUDA lines (benchmarks/results/confirm-cuda-candidates.md, fixed before any of
the new points existed): cuda-board's refit arms and today's lines, scored on the confirm-cuda corpus's new points
only, consumer first, then datacenter. This recomputes steps 2-3 of the rule from the fixture and checks the verdict
recorded there (no arm adopted: first no decision on 5 + 5 points, then A0 kept for both
backends on 8 + 11) and what it leaves in stackgen.plan.speed."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from public_logs import points_of_its_time, readings_of_its_time, lines as with_lines, predict_decode, refit_arm
from stackgen.plan import speed

# the points these decisions were made on: the confirm-bw corpora (confirm-bw-candidates.md) and confirm-graphs
# (confirm-graphs-candidates.md) and confirm-tier (confirm-tier-candidates.md) came after, all held out
POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                    .read_text())["points"], "confirm-cuda")  # later corpora out
TAG = "confirm-cuda"


@pytest.fixture(autouse=True)
def _lines_of_the_time():
    """This rule decided before confirm-bw and confirm-tier: its arms are scored under the linear lines of their time
    (linear_lines), datacenter CUDA points on the datacenter line (routes_by_tier), Apple GPUs at their datasheet bandwidth
    (datasheet_apple: confirm-m1 came after): readings_of_its_time."""
    with readings_of_its_time("confirm-cuda"):
        yield


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
    with with_lines(lines):
        ratio = {id(p): predict_decode(p) / p["tokens_per_s"] for p in POINTS}
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
    public repository or URL: confirm-cuda-candidates.md, "Lead's review"), leaving 5 consumer and 5 datacenter; the
    second collection (confcuda2, the same rule) added 3 consumer (one RTX 3060 table) and 6 datacenter (ggml CI's
    V100 PCIe run of b4343): 8 and 11, every one held out, at most 6 from one source, every source a GitHub URL."""
    new = [p for p in POINTS if p.get("corpus") == TAG]
    assert all(p.get("held_out") for p in new)
    assert (sum(p["backend"] == "cuda" for p in new), sum(p["backend"] == "cuda-datacenter" for p in new)) == (8, 11)
    by_source: dict[str, int] = {}
    for p in new:
        assert p["source"].startswith("https://github.com/"), p["id"]
        src = p["source"].split(" ")[0].rsplit("/", 1)[0]  # a file's folder: one CI run, one table, one thread
        by_source[src] = by_source.get(src, 0) + 1
    assert max(by_source.values()) <= 6


def test_the_rule_keeps_both_lines():
    """Steps 2-3 on all 19 new points, consumer first: C1 ties A0's count (7 of 8 within 15%), so (i) fails and A0 is
    kept; then datacenter, D2 on the consumer line kept (A0's): A0 5 of 11 within 15%, D1 0, D2 1; the best-scoring
    arm, D2, does not beat A0's count ((i) fails). Both lines stand; no point loses held_out. The figures are in
    confirm-cuda-candidates.md ("Second collection (confcuda2)")."""
    arms = _cuda_board_arms()
    a0 = _score({}, "cuda")
    c1 = _score({"cuda": arms["C1"]}, "cuda")
    assert (a0["n"], a0["within"], round(a0["ln"], 3)) == (8, 7, 0.143), a0
    assert (c1["within"], round(c1["ln"], 3)) == (7, 0.142), c1
    consumer = _decide(a0, {"C1": c1})
    assert consumer == "A0"
    line = speed.BACKENDS["cuda"] if consumer == "A0" else arms["C1"]  # D2 plans on the consumer line adopted
    d0 = _score({}, "cuda-datacenter")
    d1 = _score({"cuda-datacenter": arms["D1"]}, "cuda-datacenter")
    d2 = _score({"cuda-datacenter": line}, "cuda-datacenter")  # datacenter tier -> the consumer line
    assert (d0["n"], d0["within"], round(d0["ln"], 3)) == (11, 5, 0.258), d0
    assert (d1["within"], round(d1["ln"], 3), d2["within"], round(d2["ln"], 3)) == (0, 0.373, 1, 0.621)
    assert (d0["all"], d1["all"], d2["all"], d0["first115"]) == (301, 297, 296, 92)
    assert _decide(d0, {"D1": d1, "D2": d2}) == "A0"
    assert speed.BACKENDS["cuda"].fitted_on == 17
    assert "cuda-datacenter" in speed.BACKENDS and speed.BACKENDS["cuda-datacenter"].fitted_on == 2
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"


def test_no_decision_below_six_new_points_a_backend():
    """Rule 4, as it stood before the second collection: the first collection's 5 + 5 points (those not from
    confcuda2's two sources) gave no decision for either backend."""
    second = ("https://github.com/ggml-org/ci/", "https://github.com/yeswearecoding/")
    first = [p for p in POINTS if p.get("corpus") == TAG and not p["source"].startswith(second)]
    assert len(first) == 10
    for backend in ("cuda", "cuda-datacenter"):
        n = sum(p["backend"] == backend for p in first)
        assert n == 5 and _decide({"n": n, "within": 0, "ln": 1.0, "all": 0}, {}) is None


def test_the_rule_would_adopt_an_arm_that_met_all_three_conditions():
    """The decision function can say yes: an arm that beats A0's count and mean |ln| and keeps the corpus's count is
    adopted; one that loses the corpus count is not (guards _decide against always answering A0)."""
    a0 = {"n": 7, "within": 0, "ln": 0.44, "all": 263, "first115": 94}
    good = {"n": 7, "within": 2, "ln": 0.35, "all": 266, "first115": 94}
    assert _decide(a0, {"X": good}) == "X"
    assert _decide(a0, {"X": dict(good, all=262)}) == "A0"
    assert _decide(dict(a0, n=5), {"X": good}) is None
