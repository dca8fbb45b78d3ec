"""confirm-tier (benchmarks/results/confirm-tier-candidates.md): the confirmatory rule, fixed by the lead before any of
its new points existed, that decides how llama.cpp's CUDA line is picked for an NVIDIA datacenter GPU: by its tier
alone (T0: every datacenter GPU on `cuda-datacenter`) or by its memory (T1: a GDDR datacenter GPU -- T4, A10, A40,
L4, L40, L40S -- on the consumer line `cuda`, HBM ones on `cuda-datacenter`; no parameter of either line changes).
Steps 2-4 of the rule, recomputed from the fixture:

2. Score T0 and T1 on the new points of both collections (confirm-tier-a: the ggml-org organisation, none found;
   confirm-tier-b: every other repository): within-15% count, then mean |ln(pred/measured)|.
3. Adopt T1 only if (i) its count on the new points is higher than T0's, (ii) its mean |ln| there is lower and (iii)
   the whole corpus (every point, the new ones included) within 15% with it is at least T0's.
4. Fewer than 6 new points, new points from one source only, or all on one GPU model: no decision (keep T0).

A source is a repository or a thread (public_logs.point_source), at most 6 rows each: the decision takes a source's
first 6 in fixture order (as confirm-bw's note fixed it). T1 is public_logs' routing (point_line, as the planner's
speed.backend_for picks the line from the hardware's memory_type); T0 is routes_by_tier()."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from public_logs import (confirm_score, confirm_verdict, first_per_source, point_line, point_memory, point_source,
                         points_of_its_time, readings_of_its_time, routes_by_tier)
from stackgen.plan import speed

# the points this rule decided on: confirm-m1's corpora (confirm-m1-candidates.md) came after, all held out
POINTS = points_of_its_time(yaml.safe_load((Path(__file__).parent.parent / "fixtures" / "public-logs" / "decode_speed.yaml")
                                           .read_text())["points"], "confirm-tier")
TAGS = ("confirm-tier-a", "confirm-tier-b")
# step 1's GPUs: NVIDIA datacenter GPUs with GDDR6/GDDR6X memory, Turing or newer (the fixture's gpu: names them so)
RULE_GPUS = ("T4", "A2", "A10", "A10G", "A16", "A40", "L4", "L20", "L40", "L40S")


@pytest.fixture(autouse=True)
def _bandwidths_of_the_time():
    """This rule decided before confirm-m1: Apple GPUs at their datasheet bandwidth (datasheet_apple):
    readings_of_its_time."""
    with readings_of_its_time("confirm-tier"):
        yield


def new_points() -> list[dict]:
    return [p for p in POINTS if p.get("corpus") in TAGS]


def decision_points() -> list[dict]:
    """The new points steps 2-3 score: at most 6 per source, the first in fixture order."""
    return first_per_source(new_points())


def scores(new: list[dict] | None = None) -> dict:
    """T0's and T1's confirm_score on `new` (by default decision_points) and the whole corpus."""
    new = decision_points() if new is None else new
    with routes_by_tier():
        t0 = confirm_score(POINTS, {}, new)
    return {"T0": t0, "T1": confirm_score(POINTS, {}, new)}


def test_new_points_are_held_out_gddr_datacenter_gpus_of_the_rule():
    for p in new_points():
        assert p.get("held_out") and p["backend"] == "cuda-datacenter", p["id"]
        assert p["gpu"].split()[0] in RULE_GPUS, p["id"]


def test_every_datacenter_point_has_a_memory_type():
    """T1 reads each datacenter CUDA point's memory from its GPU's name as `stackgen detect` does (public_logs.
    point_memory, detect's known-parts table): none unmatched, each as NVIDIA's datasheet gives it, and only
    datacenter points get one."""
    missing = [p["id"] for p in POINTS if p["backend"] == "cuda-datacenter" and point_memory(p) is None]
    assert not missing
    dc = "cuda-datacenter"
    for gpu, memory in (("L40S 48GB", "gddr"), ("L40 48GB", "gddr"), ("A40 48GB", "gddr"), ("L4 24GB", "gddr"),
                        ("Tesla T4", "gddr"), ("A10G 24GB", "gddr"), ("Tesla M40 24GB", "gddr"), ("A30 24GB", "hbm"),
                        ("A100 SXM 80GB", "hbm"), ("Tesla V100 PCIe 16GB", "hbm"), ("H100 PCIe 80GB", "hbm"),
                        ("Tesla P100 PCIe 16GB", "hbm")):
        assert point_memory({"backend": dc, "gpu": gpu}) == memory, gpu
    assert point_memory({"backend": "cuda", "gpu": "RTX 4090"}) is None
    assert point_memory({"backend": dc, "gpu": "Some Future GPU"}) is None  # unmatched: the tier's line


def test_the_arms_differ_only_in_the_line_a_new_point_is_planned_on():
    """T0 plans every new point on the datacenter line, T1 on the consumer line; the lines themselves are
    speed.BACKENDS' in both (no parameter is refitted)."""
    with routes_by_tier():
        assert {point_line(p) for p in new_points()} == {"cuda-datacenter"}
    assert {point_line(p) for p in new_points()} == {"cuda"}
    hbm = [p for p in POINTS if p["backend"] == "cuda-datacenter" and p["gpu"].split()[0] in ("A100", "H100", "A30")]
    assert hbm and {point_line(p) for p in hbm} == {"cuda-datacenter"}  # HBM GPUs keep the datacenter line


def test_recorded_decision():
    """The figures confirm-tier-candidates.md records: 12 new points (confirm-tier-a none), 10 scored (XiongjieDai's
    repository capped at its first 6 of 8), from 4 sources on 3 GPU models; T0 2 within 15% (mean |ln| 0.242), T1 9
    (0.069); the whole corpus 355 -> 367 of 451: T1 adopted."""
    assert len(POINTS) == 451 and len(new_points()) == 12 and len(decision_points()) == 10
    assert not [p for p in new_points() if p["corpus"] == "confirm-tier-a"]
    assert len({point_source(p) for p in decision_points()}) == 4
    assert len({p["gpu"] for p in decision_points()}) == 3
    s = scores()
    assert (s["T0"]["new"], round(s["T0"]["ln"], 3), s["T1"]["new"], round(s["T1"]["ln"], 3)) == (2, 0.242, 9, 0.069)
    assert (s["T0"]["all"], s["T1"]["all"]) == (355, 367)
    assert confirm_verdict(decision_points(), s["T0"], s["T1"], spread="gpu") is True
    every = scores(new_points())  # sensitivity, not the decision: all 12 new points
    assert (every["T0"]["new"], every["T1"]["new"]) == (3, 11)


def test_the_planner_holds_the_verdict():
    """Adopted: speed.backend_for routes a GDDR datacenter GPU to the consumer line, and the built-in L4 profile
    (GDDR6) plans on it; an HBM one, or one whose memory is not stated, keeps the datacenter line."""
    from stackgen.spec.profiles import load_profiles
    assert speed.backend_for(None, "nvidia", "datacenter", "gddr") == "cuda"
    assert speed.backend_for(None, "nvidia", "datacenter", "hbm") == "cuda-datacenter"
    assert speed.backend_for(None, "nvidia", "datacenter") == "cuda-datacenter"
    hw = load_profiles().hardware
    l4, a100 = hw["l4"].gpus[0], hw["a100-80gb"].gpus[0]
    assert speed.backend_for(None, l4.vendor, l4.tier, l4.memory_type) == "cuda"
    assert speed.backend_for(None, a100.vendor, a100.tier, a100.memory_type) == "cuda-datacenter"


def test_step_4_refuses_too_few_one_source_or_one_gpu_model():
    s = scores()
    pts = decision_points()
    assert confirm_verdict(pts[:5], s["T0"], s["T1"], spread="gpu") is None
    one_source = [p for p in pts if point_source(p) == point_source(pts[0])]
    assert len(one_source) >= 6 and confirm_verdict(one_source, s["T0"], s["T1"], spread="gpu") is None
    l40s = [dict(p, gpu="L40S 48GB") for p in pts]  # one GPU model, the sources kept
    assert confirm_verdict(l40s, s["T0"], s["T1"], spread="gpu") is None
    assert confirm_verdict(l40s, s["T0"], s["T1"]) is True  # by bandwidth alone it would decide: the key matters


def test_step_3_needs_every_condition():
    s = scores()
    pts = decision_points()
    t0, t1 = s["T0"], s["T1"]
    assert confirm_verdict(pts, t0, dict(t1, new=t0["new"]), spread="gpu") is False  # (i) a tie on the count
    assert confirm_verdict(pts, t0, dict(t1, ln=t0["ln"]), spread="gpu") is False  # (ii) no lower mean |ln|
    assert confirm_verdict(pts, t0, dict(t1, all=t0["all"] - 1), spread="gpu") is False  # (iii) the corpus fell


def _l4_plan(write_stack, memory: str | None) -> object:
    """llama.cpp serving an 8B on one L4 described inline (the built-in profile's figures), with `memory` as its
    memory_type (None: not stated)."""
    from stackgen.host.facts import HostFacts
    from stackgen.plan.resolve import resolve
    from stackgen.spec.stack import load_stack
    mem = f", memory_type: {memory}" if memory else ""
    f = write_stack("version: 1\nhardware:\n  gpus:\n    - {vendor: nvidia, name: L4, memory_gib: 22.49, bandwidth_gbs: 300, "
                    f"tier: datacenter, compute_capability: '8.9'{mem}}}\n  memory_gib: 64\n  memory_bandwidth_gbs: 100\n"
                    "  cpu: {cores: 8, threads: 16}\nservices:\n  chat:\n    model: llama-3.1-8b-instruct\n"
                    "    engine: llama.cpp\n")
    return resolve(load_stack(f), HostFacts(hardware=None)).services[0]  # type: ignore[arg-type]


def test_a_planned_gddr_datacenter_gpu_decodes_on_the_consumer_line(write_stack):
    """The plan itself (step_inputs, not only backend_for): the hardware's memory_type reaches the line its forecast
    uses; an L4 stated as GDDR plans on `cuda` and faster than the same L4 with its memory not stated or HBM, which
    keep the datacenter line's larger per-token time."""
    gddr, unstated, hbm = (_l4_plan(write_stack, m) for m in ("gddr", None, "hbm"))
    assert (gddr.speed.backend, unstated.speed.backend, hbm.speed.backend) == ("cuda", "cuda-datacenter",
                                                                                "cuda-datacenter")
    assert gddr.speed.single_stream_tokens_per_s > unstated.speed.single_stream_tokens_per_s
    assert unstated.speed.single_stream_tokens_per_s == hbm.speed.single_stream_tokens_per_s
