"""confirm-m1 (benchmarks/results/confirm-m1-candidates.md): the confirmatory rule, fixed by the lead before any of its
new points existed, that decides whether Apple's M1 Max and M1 Ultra GPUs decode at their datasheet bandwidth (M0) or
at a share g = 0.86 of it (M1: 344 of 400 GB/s, 688 of 800), on every engine's plan, with no line changed. Steps 2-4
of the rule, recomputed from the fixture:

2. Score M0 and M1 on the new points of both collections (confirm-m1-metal: llama.cpp Metal; confirm-m1-mlx: MLX),
   at most the first 6 per source: within-15% count, then mean |ln(pred/measured)|.
3. Adopt M1 only if (i) its count on the new points is higher than M0's, (ii) its mean |ln| there is lower and (iii)
   the whole corpus (every point, the new ones included) within 15% with it is at least M0's.
4. Fewer than 6 new points, new points from one source only, or all on one of the two chips: no decision (keep M0).

M1 is public_logs' reading of an Apple point (point_bandwidth: the datasheet x detect.apple_bandwidth_share, as the
planner's GPUSpec.decode_bandwidth_gbs reads a GPU); M0 is datasheet_apple()."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (confirm_score, confirm_verdict, datasheet_apple, first_per_source, fit_share, point_bandwidth,
                         point_line, point_source, points_of_its_time, readings_of_its_time)
from stackgen.host.detect import APPLE_BANDWIDTH_SHARE, apple_bandwidth_share, apple_chip
from stackgen.plan import speed

POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-m1")  # later corpora out
TAGS = ("confirm-m1-metal", "confirm-m1-mlx")
CHIPS = ("M1 Max", "M1 Ultra")


@pytest.fixture(autouse=True)
def _readings_of_the_time():
    """Every reading a later decision adopted is reverted (readings_of_its_time): the arms as they were decided."""
    with readings_of_its_time("confirm-m1"):
        yield


def new_points() -> list[dict]:
    return [p for p in POINTS if p.get("corpus") in TAGS]


def decision_points() -> list[dict]:
    """The new points steps 2-3 score: at most 6 per source, the first in fixture order."""
    return first_per_source(new_points())


def scores(points: list[dict] = POINTS, new: list[dict] | None = None) -> dict:
    new = decision_points() if new is None else new
    with datasheet_apple():
        m0 = confirm_score(points, {}, new)
    return {"M0": m0, "M1": confirm_score(points, {}, new)}


def chip_points(points: list[dict]) -> list[dict]:
    """The points with their chip (detect.apple_chip of gpu:) as the key step 4's spread counts."""
    return [{**p, "chip": apple_chip(p["gpu"])} for p in points]


def test_the_share_is_the_preregistered_fit_of_the_fitted_m1_points():
    """The arm's g: the least relative step error over the 14 fitted (not held-out) Metal points on an M1 Max or M1
    Ultra, the lines fixed, on the grid 0.70..1.00 by 0.01 (0.86, error 0.2838 as the candidates file records); the
    planner's table carries it for both chips."""
    fit = [p for p in POINTS if p["backend"] == "metal" and not p.get("outlier") and not p.get("held_out")
           and apple_chip(p["gpu"]) in CHIPS]
    assert len(fit) == 14
    g, err = fit_share(fit)
    assert (g, round(err, 4)) == (0.86, 0.2838)
    assert {c: APPLE_BANDWIDTH_SHARE[c][0] for c in CHIPS} == {"M1 Max": g, "M1 Ultra": g}
    assert set(APPLE_BANDWIDTH_SHARE) == set(CHIPS)  # every other chip at its datasheet bandwidth


def test_only_m1_max_and_ultra_points_read_a_share():
    """point_bandwidth reads an Apple point of either chip at 0.86 of its datasheet on both lines, every other point at
    the datasheet; datasheet_apple() (M0) reads them all at the datasheet."""
    seen = set()
    for p in POINTS:
        share = 0.86 if apple_chip(p["gpu"]) in CHIPS and point_line(p) in ("metal", "mlx") else 1.0
        assert point_bandwidth(p) == pytest.approx(p["bandwidth_gbs"] * share), p["id"]
        with datasheet_apple():
            assert point_bandwidth(p) == p["bandwidth_gbs"]
        if share < 1:
            seen.add((apple_chip(p["gpu"]), point_line(p)))
    assert seen == {(c, line) for c in CHIPS for line in ("metal", "mlx")}
    assert [apple_bandwidth_share(n) for n in ("Apple M1 Max", "M1 Ultra (64-core GPU)", "Apple M1 Pro", "Apple M1",
                                               "Apple M2 Max", "Apple M3 Ultra", "Tesla M40")] == [0.86, 0.86] + [None] * 5


def test_new_points_are_held_out_apple_m1_max_or_ultra_and_sourced():
    for p in new_points():
        assert p.get("held_out") is True, p["id"]
        assert apple_chip(p["gpu"]) in CHIPS, p["id"]
        assert (p["backend"], p["corpus"]) in (("metal", "confirm-m1-metal"), ("mlx", "confirm-m1-mlx")), p["id"]
        assert p["source"].startswith("https://github.com/"), p["id"]
        assert p["bandwidth_gbs"] == {"M1 Max": 400, "M1 Ultra": 800}[apple_chip(p["gpu"])], p["id"]


def test_step_4_refuses_too_few_points_one_source_or_one_chip():
    """confirm_verdict's step 4 on the chip key: 5 points, one source or one chip is no decision, whatever the scores."""
    pts = chip_points([p for p in POINTS if apple_chip(p["gpu"]) in CHIPS and p.get("held_out")])
    by_source: dict[str, list[dict]] = {}
    for p in pts:
        by_source.setdefault(point_source(p), []).append(p)
    base, arm = {"new": 0, "ln": 1.0, "all": 0}, {"new": 9, "ln": 0.1, "all": 1}
    two = [p for ps in list(by_source.values())[:2] for p in ps[:3]]
    assert len({point_source(p) for p in two}) == 2
    assert confirm_verdict(two[:5], base, arm, spread="chip") is None
    one_source = next(ps for ps in by_source.values() if len(ps) >= 6)[:6]
    assert confirm_verdict(one_source, base, arm, spread="chip") is None
    one_chip = first_per_source([p for p in pts if p["chip"] == "M1 Max"], cap=3)[:6]
    assert len(one_chip) == 6 and len({point_source(p) for p in one_chip}) >= 2
    assert confirm_verdict(one_chip, base, arm, spread="chip") is None
    mixed = [p for p in pts if p["chip"] == "M1 Max"][:3] + [p for p in pts if p["chip"] == "M1 Ultra"][:3]
    assert len({point_source(p) for p in mixed}) >= 2
    assert confirm_verdict(mixed, base, arm, spread="chip") is True  # the same scores decide once step 4 is met


def _m1_max_plan(write_stack, engine: str, share: float | None) -> tuple:
    """(service plan, hardware) of `engine` serving an 8B on an M1 Max described inline (64 GB, 400 GB/s), with
    `share` as its GPU's bandwidth_share (None: not stated)."""
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack
    stated = f", bandwidth_share: {share}" if share else ""
    f = write_stack("version: 1\nhardware:\n  gpus:\n    - {vendor: apple, name: Apple M1 Max, memory_gib: 64, "
                    f"bandwidth_gbs: 400, unified: true, memory_type: lpddr{stated}}}\n  memory_gib: 64\n"
                    "  memory_bandwidth_gbs: 400\n  os: macos\n  cpu: {cores: 10, arch: arm64}\nservices:\n  chat:\n"
                    f"    model: llama-3.1-8b-instruct\n    engine: {engine}\n")
    plan = resolve(load_stack(f), HostFacts(hardware=None))  # type: ignore[arg-type]
    return plan.services[0], plan.hardware


@pytest.mark.parametrize("engine,line", [("llama.cpp", "metal"), ("mlx", "mlx")])
def test_a_planned_m1_max_decodes_at_its_share_of_the_bandwidth(write_stack, engine, line):
    """The plan itself (step_inputs, not only the fixture's reading): a stated share reaches the step the forecast
    uses, on llama.cpp's Metal line and MLX's alike: 0.86 x 400 = 344 GB/s, slower than the same M1 Max without it
    by the line's read of that bandwidth; the memory plan does not change."""
    (shared, hw0), (datasheet, hw1) = (_m1_max_plan(write_stack, engine, s) for s in (0.86, None))
    hw = [hw0, hw1]
    si = [speed.step_inputs(engine, s.model, s.memory, h, avg_context=2048, threads=8)
          for s, h in zip((shared, datasheet), hw)]
    assert (si[0].backend, si[1].backend) == (line, line)
    assert (si[0].gpu_bandwidth_gbs, si[1].gpu_bandwidth_gbs) == (pytest.approx(344.0), 400.0)
    assert shared.memory == datasheet.memory
    note = speed.decode_share_note(engine, hw0)  # the plan's reason: the chip's share, named
    assert note is not None and "reads 344 of its 400 GB/s" in note and "0.86 of it for the chip" in note
    assert note in shared.reasons and speed.decode_share_note(engine, hw1) is None
    fast, slow = datasheet.speed.single_stream_tokens_per_s, shared.speed.single_stream_tokens_per_s
    assert slow < fast
    b = speed.BACKENDS[line]
    read = b.read_gbs(344.0) / b.read_gbs(400.0)  # the weights' share of the step reads that much slower
    assert read < slow / fast < 1


def test_recorded_decision():
    """Steps 2-4 as confirm-m1-candidates.md records them: 15 new points (9 Metal, 6 MLX) from 4 sources on both chips,
    all scored (no source past 6); M0 4 within 15% (mean |ln| 0.248), M1 6 (0.180); the whole corpus 371 -> 384 of
    466: M1 adopted."""
    new = new_points()
    assert (len(new), len(decision_points())) == (15, 15)
    assert {p["corpus"]: sum(q["corpus"] == p["corpus"] for q in new) for p in new} == {"confirm-m1-metal": 9,
                                                                                     "confirm-m1-mlx": 6}
    assert len({point_source(p) for p in new}) == 4 and {apple_chip(p["gpu"]) for p in new} == set(CHIPS)
    s = scores()
    assert (s["M0"]["new"], round(s["M0"]["ln"], 3), s["M0"]["all"]) == (4, 0.248, 371)
    assert (s["M1"]["new"], round(s["M1"]["ln"], 3), s["M1"]["all"]) == (6, 0.180, 384)
    assert len(POINTS) == 466
    assert confirm_verdict(chip_points(decision_points()), s["M0"], s["M1"], spread="chip") is True


def test_the_planner_holds_the_verdict():
    """The rule adopted M1, so the planner's hardware carries it: `stackgen detect` gives an M1 Max and an M1 Ultra
    the share (and no other chip), and a GPUSpec reads its decode bandwidth at it."""
    from stackgen.spec.stack import GPUSpec
    s = scores()
    assert confirm_verdict(chip_points(decision_points()), s["M0"], s["M1"], spread="chip") is True
    assert all(apple_bandwidth_share(f"Apple {c}") == 0.86 for c in CHIPS)
    gpu = GPUSpec(vendor="apple", name="Apple M1 Ultra", memory_gib=128, bandwidth_gbs=800, unified=True,
                  bandwidth_share=apple_bandwidth_share("Apple M1 Ultra"))
    assert gpu.decode_bandwidth_gbs == pytest.approx(688.0)


def test_step_3_needs_every_condition():
    s = scores()
    pts = chip_points(decision_points())
    m0, m1 = s["M0"], s["M1"]
    assert confirm_verdict(pts, m0, dict(m1, new=m0["new"]), spread="chip") is False  # (i) a tie on the count
    assert confirm_verdict(pts, m0, dict(m1, ln=m0["ln"]), spread="chip") is False  # (ii) no lower mean |ln|
    assert confirm_verdict(pts, m0, dict(m1, all=m0["all"] - 1), spread="chip") is False  # (iii) the corpus fell
