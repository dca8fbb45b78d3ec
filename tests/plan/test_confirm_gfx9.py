"""confirm-gfx9 (benchmarks/results/confirm-gfx9-candidates.md): the confirmatory rule, fixed by the lead before any of
its new points existed, recomputed from the fixture.

1. New points: the `confirm-gfx9` corpus (held out), collected blind after the rule was on main: upstream llama.cpp
   ROCm / Vulkan single-stream decode rows on AMD gfx906 (MI50, MI60, Radeon VII, Radeon Pro VII), gfx908 (MI100) or
   gfx90a (MI210, MI250 / MI250X per GCD) GPUs.
2. Score A0 (every AMD GPU at its datasheet bandwidth) and A1 (those parts at 0.55 of it on llama.cpp's ROCm and Vulkan
   lines, no line changed) on the new points, at most the first 6 per source: within-15% count, then mean |ln|.
3. Adopt A1 only if it has more new points within 15%, a lower mean |ln| on them, and the whole corpus within 15% at
   least A0's.
4. Fewer than 6 new points, one source, or one GPU model: no decision.

A1 is a line's figure (speed.Backend.arch_bandwidth_share, speed.GFX9_HBM_SHARE on the ROCm and Vulkan lines), read by
a plan through the GPU's gfx target (GPUSpec.arch: rocm-smi's, else detect.amd_arch of its name) and by the fixture's
points the same way (public_logs.point_bandwidth); public_logs.gfx9_lines builds both arms."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (confirm_score, confirm_verdict, first_per_source, fit_share, gfx9_lines, lines, point_bandwidth,
                         point_line, point_source, points_of_its_time, readings_of_its_time)
from stackgen.host.detect import amd_arch, known_gpu
from stackgen.plan import speed

POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-gfx9")
TAG = "confirm-gfx9"
ARCHS = ("gfx906", "gfx908", "gfx90a")
GRID = tuple(i / 100 for i in range(40, 101))  # the rule's grid for g: 0.40..1.00 by 0.01


@pytest.fixture(autouse=True)
def _readings_of_the_time():
    """Every reading a later decision adopted is reverted (readings_of_its_time): the arms as they were decided."""
    with readings_of_its_time(TAG):
        yield


def gfx9(p: dict) -> bool:
    return point_line(p) in ("rocm", "vulkan") and amd_arch(p["gpu"]) in ARCHS


def new_points() -> list[dict]:
    return [p for p in POINTS if p.get("corpus") == TAG]


def decision_points() -> list[dict]:
    """The new points steps 2-3 score: at most 6 per source, the first in fixture order."""
    return first_per_source(new_points())


def scores(new: list[dict] | None = None) -> dict:
    new = decision_points() if new is None else new
    return {"A0": confirm_score(POINTS, gfx9_lines(share=False), new),
            "A1": confirm_score(POINTS, gfx9_lines(share=True), new)}


def verdict() -> bool | None:
    s = scores()
    return confirm_verdict(decision_points(), s["A0"], s["A1"], spread="gpu")


def test_the_share_is_the_preregistered_fit_of_the_four_points():
    """The arm's g: the least relative step error over the corpus's four gfx9 HBM points before the rule (the two
    boards' MI50, Radeon Pro VII, MI100, MI210), both lines fixed, on the grid 0.40..1.00 (0.55, error 0.0086); the
    planner's constant carries it for the three targets."""
    before = [p for p in POINTS if gfx9(p) and p.get("corpus") != TAG and not p.get("outlier")]
    assert sorted(p["gpu"] for p in before) == ["Instinct MI100", "Instinct MI210", "Radeon Instinct MI50",
                                                "Radeon Pro VII"]
    with lines(gfx9_lines(share=False)):
        g, err = fit_share(before, GRID)
    assert (g, round(err, 4)) == (0.55, 0.0086)
    assert speed.GFX9_HBM_SHARE == tuple((a, g) for a in ARCHS)


def test_only_gfx9_points_read_the_share():
    """Under A1 point_bandwidth reads an AMD gfx906 / gfx908 / gfx90a point on the ROCm or Vulkan line at 0.55 of its
    datasheet and every other point (RDNA, Strix Halo, the MI300X, NVIDIA, Apple) as before; under A0 at the
    datasheet."""
    seen = set()
    for p in POINTS:
        with lines(gfx9_lines(share=False)):
            before = point_bandwidth(p)
        with lines(gfx9_lines(share=True)):
            after = point_bandwidth(p)
        assert after == pytest.approx(before * (0.55 if gfx9(p) else 1.0)), p["id"]
        if gfx9(p):
            seen.add((amd_arch(p["gpu"]), point_line(p)))
    assert {a for a, _ in seen} >= {"gfx906", "gfx908", "gfx90a"} and {line for _, line in seen} == {"rocm", "vulkan"}
    assert [amd_arch(n) for n in ("AMD Instinct MI50", "Radeon VII", "AMD Radeon Pro VII", "Instinct MI100",
                                  "AMD Instinct MI250X", "AMD Instinct MI300X", "Radeon RX 7900 XTX", "RTX 4090",
                                  "AMD Instinct MI500")] == [
        "gfx906", "gfx906", "gfx906", "gfx908", "gfx90a", "gfx942", "gfx1100", None, None]


def test_new_points_are_held_out_gfx9_llamacpp_rows_and_sourced():
    bw = {"gfx906": 1024, "gfx908": 1228.8, "gfx90a": 1638.4}
    for p in new_points():
        assert p.get("held_out") is True, p["id"]
        assert p["backend"] in ("rocm", "vulkan") and gfx9(p), p["id"]
        assert p["source"].startswith("https://github.com/"), p["id"]
        assert p["bandwidth_gbs"] == bw[amd_arch(p["gpu"])], p["id"]


def test_step_4_refuses_too_few_points_one_source_or_one_gpu():
    """confirm_verdict's step 4 on the GPU-model key: 5 points, one source or one GPU model is no decision."""
    pts = [p for p in POINTS if gfx9(p)]
    base, arm = {"new": 0, "ln": 1.0, "all": 0}, {"new": 9, "ln": 0.1, "all": 1}
    fake = [{**p, "id": f"x{i}", "source": f"https://github.com/o/r/issues/{i % 2}", "gpu": ("MI50", "MI100")[i % 2]}
            for i, p in enumerate(pts * 3)][:6]
    assert confirm_verdict(fake, base, arm, spread="gpu") is True
    assert confirm_verdict(fake[:5], base, arm, spread="gpu") is None
    assert confirm_verdict([{**p, "source": "https://github.com/o/r/issues/1"} for p in fake], base, arm,
                           spread="gpu") is None
    assert confirm_verdict([{**p, "gpu": "MI50"} for p in fake], base, arm, spread="gpu") is None


def test_the_lines_hold_the_verdict():
    """speed.BACKENDS's ROCm and Vulkan lines carry the share exactly where the rule adopts A1."""
    adopted = verdict() is True
    for line in ("rocm", "vulkan"):
        assert speed.BACKENDS[line].arch_bandwidth_share == (speed.GFX9_HBM_SHARE if adopted else ())


def test_detect_knows_the_parts_and_their_targets():
    """`stackgen detect` plans these parts at their datasheet bandwidth (not the unknown part's 300 GB/s guess) and
    gives their gfx target where rocm-smi prints none; the line's share reads that target (a ROCm arch string with
    feature flags included)."""
    assert [known_gpu("amd", n)[0] for n in ("AMD Instinct MI50", "Radeon Instinct MI60", "AMD Radeon VII",
                                             "AMD Radeon Pro VII", "AMD Instinct MI100", "AMD Instinct MI210",
                                             "AMD Instinct MI250X")] == [1024, 1024, 1024, 1024, 1228.8, 1638.4, 1638.4]
    line = speed.Backend(0.8, 1.0, arch_bandwidth_share=speed.GFX9_HBM_SHARE)
    assert [line.bandwidth_share_for(a) for a in ("gfx906", "gfx90a:sramecc+:xnack-", "GFX908", "gfx942", "gfx1100",
                                                  None)] == [0.55, 0.55, 0.55, 1.0, 1.0, 1.0]


def _mi50_plan(write_stack, arch: str | None) -> tuple:
    """(service plan, hardware) of llama.cpp serving an 8B on one Radeon Instinct MI50 described inline (32 GB,
    1024 GB/s), with `arch` as its gfx target (None: not stated)."""
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack
    stated = f", arch: {arch}" if arch else ""
    f = write_stack("version: 1\nhardware:\n  gpus:\n    - {vendor: amd, name: Radeon Instinct MI50, memory_gib: 32, "
                    f"bandwidth_gbs: 1024, tier: datacenter, memory_type: hbm{stated}}}\n  memory_gib: 64\n"
                    "  memory_bandwidth_gbs: 50\n  os: linux\n  cpu: {cores: 16}\nservices:\n  chat:\n"
                    "    model: llama-3.1-8b-instruct\n    engine: llama.cpp\n")
    plan = resolve(load_stack(f), HostFacts(hardware=None))  # type: ignore[arg-type]
    return plan.services[0], plan.hardware


def test_a_planned_mi50_decodes_at_the_lines_share(write_stack):
    """The plan itself (step_inputs): an MI50 stated as gfx906 reaches the ROCm step at the line's share of its 1024
    GB/s (under A1: 563.2 GB/s), the same card without a stated target at the datasheet; the memory plan is the same."""
    (known, hw0), (unstated, hw1) = (_mi50_plan(write_stack, a) for a in ("gfx906", None))
    si = [speed.step_inputs("llama.cpp", s.model, s.memory, h, avg_context=2048, threads=8)
          for s, h in ((known, hw0), (unstated, hw1))]
    assert (si[0].backend, si[1].backend) == ("rocm", "rocm")
    share = speed.BACKENDS["rocm"].bandwidth_share_for("gfx906")
    assert (si[0].gpu_bandwidth_gbs, si[1].gpu_bandwidth_gbs) == (pytest.approx(1024 * share), 1024.0)
    assert known.memory == unstated.memory
    with lines(gfx9_lines(share=True)):
        a1 = speed.step_inputs("llama.cpp", known.model, known.memory, hw0, avg_context=2048, threads=8)
        note = speed.decode_share_note("llama.cpp", hw0)
    assert a1.gpu_bandwidth_gbs == pytest.approx(563.2)
    assert note is not None and "reads 563.2 of its 1024 GB/s" in note and "0.55 of it under the rocm kernels on gfx906" in note
    if share < 1:  # the plan says so among its reasons; the card without a stated target reads all of it, no reason
        assert note in known.reasons
    assert speed.decode_share_note("llama.cpp", hw1) is None and not any("as public measurements put it" in r for r in unstated.reasons)
    # the plan's bandwidth roofline (predicted_decode_tokens_per_s) reads the same share: both cards' memory plans are
    # alike and GPU-bound, so the rooflines stand in the share's ratio (an 8B on one GPU: no RAM term)
    assert known.predicted_decode_tokens_per_s == pytest.approx(unstated.predicted_decode_tokens_per_s * share, rel=0.01)


def test_recorded_decision():
    """Steps 2-4 as confirm-gfx9-candidates.md records them: 10 new points (6 MI50 ROCm BF16, 4 Radeon Pro VII Vulkan)
    from 3 sources, all scored; A0 0 within 15% (mean |ln| 0.556), A1 2 (0.318); the whole corpus (485, confirm-graphs2's
    corpus included, under the lines its rule was fixed on) 387 -> 393: A1 adopted."""
    new = new_points()
    assert (len(POINTS), len(new), len(decision_points())) == (485, 10, 10)
    assert len({point_source(p) for p in new}) == 3 and len({p["gpu"] for p in new}) == 2
    s = scores()
    assert (s["A0"]["new"], round(s["A0"]["ln"], 3), s["A0"]["all"]) == (0, 0.556, 387)
    assert (s["A1"]["new"], round(s["A1"]["ln"], 3), s["A1"]["all"]) == (2, 0.318, 393)
    assert verdict() is True


def test_step_3_needs_every_condition():
    s = scores()
    pts, a0, a1 = decision_points(), s["A0"], s["A1"]
    assert confirm_verdict(pts, a0, dict(a1, new=a0["new"]), spread="gpu") is False  # (i) a tie on the count
    assert confirm_verdict(pts, a0, dict(a1, ln=a0["ln"]), spread="gpu") is False  # (ii) no lower mean |ln|
    assert confirm_verdict(pts, a0, dict(a1, all=a0["all"] - 1), spread="gpu") is False  # (iii) the corpus fell


def test_detect_gives_a_part_its_target_where_rocm_smi_prints_none():
    """A detected MI50 whose rocm-smi printed no gfx version plans as gfx906 (detect.amd_arch by name), at 1024 GB/s; a
    printed target is kept; an unknown AMD part gets no target (and the unknown part's guess)."""
    from stackgen.host.detect import DetectedGPU, _gpu_spec
    gib = 2**30
    notes: list[str] = []
    mi50 = _gpu_spec(DetectedGPU("amd", "AMD Instinct MI50", 32 * gib), notes, None)
    assert (mi50.arch, mi50.bandwidth_gbs, mi50.memory_type) == ("gfx906", 1024.0, "hbm")
    printed = _gpu_spec(DetectedGPU("amd", "AMD Instinct MI210", 64 * gib, arch="gfx90a:sramecc+:xnack-"), notes, None)
    assert printed.arch == "gfx90a:sramecc+:xnack-"
    odd = _gpu_spec(DetectedGPU("amd", "AMD Radeon Mystery", 16 * gib), notes, None)
    assert odd.arch is None and odd.bandwidth_gbs == 300.0
