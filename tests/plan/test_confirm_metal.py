"""confirm-metal (benchmarks/results/confirm-metal-candidates.md): the confirmatory rule, fixed by the lead before any
of its new points existed, that decided between Metal's 16-point line (A0) and metal-k's two refit arms on 6 new
held-out Apple-GPU points. Steps 2-3 of the rule, recomputed from the fixture:

2. Score A0 and each arm on the new points only: within-15% count, then mean |ln(pred/measured)|.
3. Adopt the best-scoring arm (most within 15%; ties by the lower mean |ln|) only if (i) its within-15% count on the
   new points is higher than A0's, (ii) its mean |ln| there is lower than A0's and (iii) the whole corpus (every
   point, the new ones included) within 15% with it is at least A0's. Otherwise keep A0.

The arms (fixed): M1, one shared quantized slope (16-bit slope of its own) fitted on metal-k's rule-2 set (the 16
points + the 1st, 3rd, ... metal-m1 and metal-k rows in fixture order, 66 points); M2, the same set with the legacy
kind given its own slope. Recorded: A0 1 of 6 (mean |ln| 0.216), M1 2 (0.159), M2 4 (0.142); the whole corpus 258 /
272 / 272 of 350: M2 adopted, so speed.BACKENDS["metal"] is its fit and the fixture fits its 66 points."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from public_logs import points_of_its_time, readings_of_its_time, arm_backends, arm_figures, lines, predict_decode, today_fitted
from stackgen.plan import speed

# the points these decisions were made on: the confirm-bw corpora (confirm-bw-candidates.md) came after, all held out
POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                    .read_text())["points"], "confirm-metal")  # later corpora out
NEW = [p for p in POINTS if p.get("corpus") == "confirm-metal"]


@pytest.fixture(autouse=True)
def _lines_of_the_time():
    """This rule decided before confirm-bw and confirm-tier: its arms are scored under the linear lines of their time
    (linear_lines), datacenter CUDA points on the datacenter line (routes_by_tier), Apple GPUs at their datasheet bandwidth
    (datasheet_apple: confirm-m1 came after): readings_of_its_time."""
    with readings_of_its_time("confirm-metal"):
        yield


def _arm_fitted(p: dict) -> bool:
    """metal-k's rule-2 set: the 16-point line's points + metal-m1's and metal-k's 1st, 3rd, ... rows."""
    odd = {q["id"] for tag in ("metal-m1", "metal-k") for q in [r for r in POINTS if r.get("corpus") == tag][::2]}
    return today_fitted(p) or p["id"] in odd


def _score(line: speed.Backend) -> dict:
    """Under `line` as Metal's (every other backend as speed.BACKENDS has it): the new points' within-15% count and
    mean |ln(pred/measured)|, the whole corpus's and the first 115's within-15% counts."""
    with lines({"metal": line}):
        ratio = {p["id"]: predict_decode(p) / p["tokens_per_s"] for p in POINTS}
    within = {k: abs(r - 1) <= 0.15 for k, r in ratio.items()}
    return {"new": sum(within[p["id"]] for p in NEW),
            "ln": sum(abs(math.log(ratio[p["id"]])) for p in NEW) / len(NEW),
            "all": sum(within.values()),
            "first": sum(within[p["id"]] for p in POINTS if not p.get("corpus"))}


def _arms() -> dict:
    return {"A0": arm_backends(POINTS, today_fitted, False)["metal"][0],
            "M1": arm_figures(POINTS, _arm_fitted, False)["backends"]["metal"]["params"],
            "M2": arm_figures(POINTS, _arm_fitted, True)["backends"]["metal"]["params"]}


def test_new_points_are_held_out_and_outside_every_arms_fit():
    """Step 1: at least 6 new points (rule 4), all held out, none in any arm's fitted set, one source (ggml CI's
    M4 run 9755129c, build 4545) at the 6-row cap."""
    assert len(NEW) == 6 and all(p.get("held_out") and p["backend"] == "metal" for p in NEW)
    assert not any(_arm_fitted(p) for p in NEW)
    assert {p["build"] for p in NEW} == {4545} and all("9755129c" in p["source"] for p in NEW)


def test_confirmatory_rule_adopts_the_legacy_slope_arm():
    arms = _arms()
    assert arms["A0"].fitted_on == 16 and arms["M1"].fitted_on == arms["M2"].fitted_on == 66
    assert not arms["M1"].efficiency_legacy and arms["M2"].efficiency_legacy > arms["M2"].efficiency
    s = {k: _score(b) for k, b in arms.items()}
    # step 2, as recorded in confirm-metal-candidates.md
    assert [s[k]["new"] for k in ("A0", "M1", "M2")] == [1, 2, 4]
    assert [round(s[k]["ln"], 3) for k in ("A0", "M1", "M2")] == [0.216, 0.159, 0.142]
    # the whole corpus as recorded (258 / 272 / 272 of 350) plus what merged beside it: confirm-cuda's 19 points (10,
    # then confcuda2's 9, 8 of them within 15%) and confirm-amd's 17 with the Vulkan and ROCm arms it adopted (the
    # same for each arm: condition (iii) is unmoved)
    assert [s[k]["all"] for k in ("A0", "M1", "M2")] == [287, 301, 301] and len(POINTS) == 386
    assert [s[k]["first"] for k in ("A0", "M1", "M2")] == [94, 91, 92]  # reported, not a condition of the rule
    # step 3
    best = max(("M1", "M2"), key=lambda k: (s[k]["new"], -s[k]["ln"]))
    adopt = (s[best]["new"] > s["A0"]["new"] and s[best]["ln"] < s["A0"]["ln"] and s[best]["all"] >= s["A0"]["all"])
    assert (best, adopt) == ("M2", True)


def test_speed_py_has_the_adopted_arm():
    """Step 5: Metal's line is M2's fit (test_backend_parameters_are_the_fit_of_the_points_not_held_out checks it
    against the fixture too), its legacy kind no longer excluded, and the fixture's fitted Metal points are M2's set."""
    m2 = _arms()["M2"]
    b = speed.BACKENDS["metal"]
    assert "metal" not in speed.LEGACY_SLOPE_EXCLUDED and "legacy" in speed.split_kinds("metal")
    assert b.fitted_on == m2.fitted_on == 66
    for f in ("efficiency", "efficiency_16bit", "efficiency_legacy"):
        assert getattr(b, f) == pytest.approx(getattr(m2, f), abs=0.001), f
    assert b.t0_ms == pytest.approx(m2.t0_ms, abs=0.01)
    metal = [p for p in POINTS if p["backend"] == "metal" and not p.get("outlier")]
    assert {p["id"] for p in metal if not p.get("held_out")} == {p["id"] for p in metal if _arm_fitted(p)}
