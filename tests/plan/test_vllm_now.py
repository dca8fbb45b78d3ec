"""Corpus vllm-now (benchmarks/results/vllm-now-candidates.md): 14 public single-stream rows of current vLLM (>= 0.8,
V1 the default engine), taken held out; then the lead's rule 2, fixed before any fit: the rows in fixture order, the
1st, 3rd, ... fitted and the 2nd, 4th, ... held out, the refit adopted only if ALL of (a) vLLM's held-out points
within 15% rise against today's line, (b) vLLM's leave-one-out share within 15% does not fall, (c) the first 115
points keep >= 94 within 15%, (d) every other SPEED_FLOORS row holds (and vllm2's split test). Both arms are
recomputed here from the fixture (no figure pasted from an output); the adopted arm must be speed.py's line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stackgen.plan import speed

from public_logs import lines, loo_within, predict_decode, refit_line
from test_public_logs import FLOORS_BEFORE_CONFIRM, metal_line_before_confirm

POINTS = yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                        .read_text())["points"]
NOW = [p for p in POINTS if p.get("corpus") == "vllm-now"]
# the vLLM points of this decision's time: every confirmatory corpus (confirm-*, confirm-vllm-rocm's AMD rows among
# them) was collected after it
VLLM = [p for p in POINTS if p["backend"] == "vllm" and not p.get("outlier")
        and not str(p.get("corpus")).startswith("confirm-")]


def _line(fitted: list[dict]) -> speed.Backend:
    """BACKENDS["vllm"] refitted (refit_line: fit_kinds, vLLM's kinds) on `fitted`; the rest of the Backend as
    speed.py has it."""
    return refit_line(fitted, "vllm", lambda p: True, speed.split_kinds("vllm"))


def _within(points: list[dict], line: speed.Backend) -> int:
    with lines({"vllm": line}):
        return sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in points)


def _loo(fitted: list[dict]) -> int:
    """Leave-one-out within 15% over `fitted`: each point predicted by the fit of the others (its era, its kind)."""
    return loo_within(fitted, speed.split_kinds("vllm"))


def test_the_split_is_by_fixture_position():
    """14 rows; the 1st, 3rd, ... 13th fitted (no held_out), the 2nd, 4th, ... 14th held out."""
    assert len(NOW) == 14
    assert [not p.get("held_out") for p in NOW] == [i % 2 == 0 for i in range(14)]
    assert all(p["backend"] == "vllm" and speed.vllm_build(p["version"]) >= speed.VLLM_V1_DEFAULT_BUILD for p in NOW)


def test_the_refit_passes_rule_2_and_is_speed_pys_line():
    """Today's line: the fit without vllm-now's rows (15 points). The refit: those plus vllm-now's 7 odd rows (22).
    Held out for both (the refit's split): 19 vLLM points. Recomputed: (a) 13 -> 14 of 19, (b) 9 of 15 (0.60) ->
    15 of 22 (0.68), (c) 94 of the first 115 under both, (d) metal-m1 62, iquant 11, vllm2 10 -> 11 (its halves 5
    and 5 -> 6), vllm-now 12 -> 13. All hold: adopted, so speed.BACKENDS["vllm"] is the refit. (c) and (d) are
    recomputed as decided: under the Metal line and against the floors of the time (confirm-metal moved both since:
    test_public_logs.metal_line_before_confirm, FLOORS_BEFORE_CONFIRM)."""
    today_fit = [p for p in VLLM if not p.get("held_out") and p.get("corpus") != "vllm-now"]
    refit_fit = [p for p in VLLM if not p.get("held_out")]
    held = [p for p in VLLM if p.get("held_out")]
    assert (len(today_fit), len(refit_fit), len(held)) == (15, 22, 19)
    today, refit = _line(today_fit), _line(refit_fit)
    # (a) and (b)
    assert _within(held, refit) > _within(held, today)
    assert _loo(refit_fit) / len(refit_fit) >= _loo(today_fit) / len(today_fit)
    # (c) the first 115 (no corpus tag)
    first = [p for p in POINTS if not p.get("corpus")]
    with metal_line_before_confirm():
        assert len(first) == 115 and _within(first, refit) >= 94
        # (d) every other corpus floor, and vllm2's two halves
        for corpus, n, within, share in FLOORS_BEFORE_CONFIRM:
            ps = [p for p in POINTS if p.get("corpus") == corpus]
            if corpus in (None, "vllm-now"):
                continue
            close = _within(ps, refit)
            assert len(ps) >= n and close >= within and close / len(ps) >= share, corpus
    v2 = [p for p in POINTS if p.get("corpus") == "vllm2"]
    assert _within([p for p in v2 if not p.get("held_out")], refit) >= 5
    assert _within([p for p in v2 if p.get("held_out")], refit) >= 5
    # adopted: speed.py's line is the refit
    b = speed.BACKENDS["vllm"]
    assert b.fitted_on == refit.fitted_on == 22
    for name in ("efficiency", "efficiency_16bit", "efficiency_int4_awq"):
        assert getattr(b, name) == pytest.approx(getattr(refit, name), abs=0.001), name
    assert (b.t0_ms, b.t0_before_ms) == (pytest.approx(refit.t0_ms, abs=0.01),
                                         pytest.approx(refit.t0_before_ms, abs=0.01))


def test_the_arm_not_adopted_was_the_line_before():
    """Today's arm (the fit without vllm-now) is the line speed.py had: e 0.604, 16-bit 0.775, AWQ 0.885, t0
    0.26 ms, V0 3.04 ms -- so the comparison above is against the line as it was, not a refit of it."""
    today = _line([p for p in VLLM if not p.get("held_out") and p.get("corpus") != "vllm-now"])
    assert (round(today.efficiency, 3), round(today.efficiency_16bit, 3), round(today.efficiency_int4_awq, 3),
            round(today.t0_ms, 2), round(today.t0_before_ms, 2)) == (0.604, 0.775, 0.885, 0.26, 3.04)
