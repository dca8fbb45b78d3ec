"""The public-log corpus against the planner: vLLM memory profiles and decode speed per backend.

Prints (and with --record writes benchmarks/results/public_logs.md) predicted, measured and their ratio for every
case in tests/fixtures/public-logs/, and the per-backend least-squares fit of t = bytes/(e x BW) + t0."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from stackgen.plan import speed  # noqa: E402
from stackgen.plan.memory import GIB  # noqa: E402
from public_logs import (comm_seconds, fit_line, fit_point, loo_predicted, older_build,  # noqa: E402
                         partial_offload_inputs, point_bandwidth, point_line,
                         partial_offload_stated_error,
                         partial_prefill_inputs, predict_decode, predict_llamacpp_case, predict_ollama_case, predict_partial_offload,
                         predict_partial_prefill, predict_prefill,
                         predict_service_curve_point, predict_vllm_case, predict_vllm_concurrency_point,
                         predict_vllm_kv_case, prefill_inputs, speed_line)

FIX = ROOT / "tests" / "fixtures" / "public-logs"


def memory_rows() -> list[str]:
    cases = yaml.safe_load((FIX / "vllm_memory.yaml").read_text())["cases"]
    out = ["| case | term | predicted GiB | logged GiB | ratio |", "|---|---|---:|---:|---:|"]
    for c in cases:
        p = predict_vllm_case(c)
        for term in ("non_torch", "activation", "kv"):
            logged = c.get(f"{term}_gib")
            if logged:
                out.append(f"| {c['id']} | {term} | {p[term] / GIB:.2f} | {logged:.2f} | {p[term] / GIB / logged:.3f} |")
        out.append(f"| {c['id']} | verdict | {p['verdict']} | {c['verdict']} | {'=' if p['verdict'] == c['verdict'] else 'DIFFERS'} |")
    return out


def vllm_kv_rows() -> list[str]:
    cases = yaml.safe_load((FIX / "vllm_kv_capacity.yaml").read_text())["cases"]
    out = ["| case | term | predicted | logged | ratio |", "|---|---|---:|---:|---:|"]
    for c in cases:
        p, logged = predict_vllm_kv_case(c), c["logged"]
        for term in ("kv_gib", "needed_gib"):
            if term in logged:
                out.append(f"| {c['id']} | {term} | {p[term]:.2f} | {logged[term]:.2f} | {p[term] / logged[term]:.3f} |")
        if "verdict" in logged:
            same = "=" if p["verdict"] == logged["verdict"] else "DIFFERS"
            out.append(f"| {c['id']} | verdict | {p['verdict']} | {logged['verdict']} | {same} |")
    return out


def corpus_count() -> list[str]:
    n = {f: len(yaml.safe_load((FIX / f).read_text())["cases"])
         for f in ("vllm_memory.yaml", "vllm_kv_capacity.yaml", "ollama_memory.yaml", "llamacpp_memory.yaml")}
    return [f"Memory cases: {sum(n.values())} (" + ", ".join(f"{k}: {v}" for k, v in n.items()) + ")", ""]


def ollama_rows() -> list[str]:
    cases = yaml.safe_load((FIX / "ollama_memory.yaml").read_text())["cases"]
    out = ["| case | term | predicted | logged | ratio |", "|---|---|---:|---:|---:|"]
    for c in cases:
        p = predict_ollama_case(c)
        for term in ("layers", "kv_gib", "graph_full_gib", "graph_partial_gib", "vram_gib"):
            got, logged = p[term], c["logged"][term]
            out.append(f"| {c['id']} | {term} | {got:.3f} | {logged} | {got / logged:.3f} |")
    return out


def llamacpp_rows() -> list[str]:
    cases = yaml.safe_load((FIX / "llamacpp_memory.yaml").read_text())["cases"]
    out = ["| case | term | predicted MiB | logged MiB | ratio |", "|---|---|---:|---:|---:|"]
    for c in cases:
        p = predict_llamacpp_case(c)
        for term in ("kv_mib", "compute_mib"):
            logged = c["logged"].get(term)
            if logged:
                out.append(f"| {c['id']} | {term} | {p[term]:.2f} | {logged:.2f} | {p[term] / logged:.3f} |")
    return out


def _cut(backend: str, cut: int) -> str:
    """A backend's build cut as its engine numbers it: vLLM's version (speed.vllm_build's encoding), llama.cpp's bN."""
    if speed_line(backend) == "vllm":
        return f"vLLM {cut // 10000}.{cut // 100 % 100}.{cut % 100}"
    return f"b{cut}"


def _era(p: dict) -> str:
    """The point's build era for its line's build term (point_line; speed.Backend.build_before; a vLLM point's version
    on the same axis): "before bN" / "before vLLM x.y.z", "current" (at or past it, or none known), or "" where the
    line has no build term."""
    line = point_line(p)
    cut = speed.backend_params(line).build_before
    if not cut:
        return ""
    return f"before {_cut(line, cut)}" if older_build(p) else "current"


def _amd_family(gpu: str) -> str:
    """An AMD GPU's family from a decode_speed.yaml gpu: (AMD's product lines: Instinct = CDNA; RX 6000 / PRO V620 =
    RDNA2; RX 7000 / PRO W7000 = RDNA3; RX 9000 / AI PRO R9700 = RDNA4; Radeon 8060S / 780M iGPUs = APU)."""
    import re
    for family, pat in (("CDNA", r"Instinct|\bMI\d"), ("APU", r"8060S|780M|890M"), ("RDNA4", r"RX 9\d{3}|R9700"),
                        ("RDNA2", r"RX 6\d{3}|V620"), ("RDNA3", r"RX 7\d{3}|W7\d{3}")):
        if re.search(pat, gpu):
            return family
    return "other"


def _group_line(label: str, ratios: list[float]) -> str:
    """One summary line of a group of points by their predicted/measured ratios: within 15% and 25%, the mean
    error and the ratios' range (the sections below print a group each way)."""
    e = [abs(x - 1) for x in ratios]
    return (f"- {label}: {sum(x <= 0.15 for x in e)} of {len(e)} within 15%, {sum(x <= 0.25 for x in e)} within 25%, "
            f"mean |error| {100 * sum(e) / len(e):.1f}%, predicted/measured {min(ratios):.2f}..{max(ratios):.2f}")


def speed_rows() -> list[str]:
    pts = yaml.safe_load((FIX / "decode_speed.yaml").read_text())["points"]
    out = ["| point | backend | weights | build | era | set | predicted tok/s | measured | ratio |",
           "|---|---|---|---:|---|---|---:|---:|---:|"]
    within = 0
    errors: dict[str, list[float]] = {"fitted": [], "held out": [], "codebook fit": []}
    dated: dict[str, list[float]] = {}  # held-out points dated 2025 or later (corpus2's check), by backend
    for p in pts:
        pred = predict_decode(p)
        r = pred / p["tokens_per_s"]
        within += abs(r - 1) <= 0.15
        # codebook fit: held out of its backend's e and t0, but what speed.fit_codebook fits the codebook floor on
        kind = ("outlier" if p.get("outlier") else "codebook fit" if p.get("codebook_fit")
                else "held out" if p.get("held_out") else "fitted")
        if kind in errors:
            errors[kind].append(abs(r - 1))
        if kind == "held out" and str(p.get("date", "")) >= "2025":
            dated.setdefault(p["backend"], []).append(abs(r - 1))
        line = p["backend"] if point_line(p) == p["backend"] else f"{p['backend']} (on {point_line(p)})"
        if point_bandwidth(p) != p["bandwidth_gbs"]:  # an M1 Max / Ultra (confirm-m1), an AMD gfx9 part (confirm-gfx9)
            line += f" (at {point_bandwidth(p):g} GB/s)"
        build = p.get("build", "")
        build = f"{build}" + (" (date)" if p.get("date") and build else "") if build else (p.get("date") or "")
        if not build and p.get("version"):  # a vLLM point: its version as the fixture quotes it
            build = f"vLLM {p['version']}"
        out.append(f"| {p['id']} | {line} | {p.get('weights', 'quantized')} | {build} | {_era(p)} | {kind} | "
                   f"{pred:.1f} | {p['tokens_per_s']} | {r:.3f} |")
    out.append(f"\nwithin 15%: {within} of {len(pts)}")
    for kind, errs in errors.items():
        if errs:
            out.append(f"- {kind}: {len(errs)} points, mean |error| {100 * sum(errs) / len(errs):.1f}%, "
                       f"max {100 * max(errs):.1f}%")
    out.append("\nBy corpus (decode_speed.yaml's `corpus:` tag; none: the first 115 points; each corpus's candidates file in "
               "benchmarks/results/ says how its points were chosen; tests/plan/test_public_logs.py::SPEED_FLOORS keeps "
               "each count from falling):")
    by_corpus: dict[str, list[float]] = {}
    for p in pts:
        by_corpus.setdefault(p.get("corpus") or "none", []).append(abs(predict_decode(p) / p["tokens_per_s"] - 1))
    for tag in sorted(by_corpus, key=lambda t: (t != "none", t)):
        e = by_corpus[tag]
        out.append(f"- {tag}: {sum(x <= 0.15 for x in e)} of {len(e)} within 15% ({100 * sum(x <= 0.15 for x in e) / len(e):.0f}%), "
                   f"{sum(x <= 0.25 for x in e)} within 25%, mean |error| {100 * sum(e) / len(e):.1f}%")
    out.append("\ncodebook fit: held out of the line's e and t0, the points speed.fit_codebook fits the codebook "
               "i-quant floor on (speed.Backend.codebook_flop_per_weight; benchmarks/results/iquant-candidates.md).")
    if dated:
        n = sum(len(e) for e in dated.values())
        close = sum(x <= 0.15 for e in dated.values() for x in e)
        out.append(f"\nHeld-out points dated 2025-2026 (corpus2's, benchmarks/results/corpus2-candidates.md; chosen by `date:`, so not the 2026 M1 Max IQ4_NL point, which has a build and no date; "
                   f"outliers aside): {close} of {n} within 15%, by backend:")
        for backend in sorted(dated):
            e = dated[backend]
            out.append(f"- {backend}: {sum(x <= 0.15 for x in e)} of {len(e)} within 15%, "
                       f"{sum(x <= 0.25 for x in e)} within 25%, mean |error| {100 * sum(e) / len(e):.1f}%, "
                       f"max {100 * max(e):.1f}%")
    m1 = [p for p in pts if p.get("corpus") == "metal-m1"]
    if m1:
        old = [p for p in pts if not p.get("corpus")]
        old_close = sum(abs(predict_decode(p) / p["tokens_per_s"] - 1) <= 0.15 for p in old)
        out.append(f"\nmetal-m1 (benchmarks/results/metal-candidates.md): {len(m1)} Apple-GPU points taken held out before "
                   f"their predictions (their 1st, 3rd, ... rows fitted since confirm-metal adopted metal-k's arm, "
                   f"confirm-metal-candidates.md); the {len(old)} points before them (and before iquant's): {old_close} within 15%. The metal-m1 points "
                   f"by chip generation (the first word of gpu:) and by weight type (the id's last part):")
        groups: dict[str, list[float]] = {}
        for p in m1:
            r = predict_decode(p) / p["tokens_per_s"]
            groups.setdefault(p["gpu"].split()[0], []).append(r)
            groups.setdefault(p["id"].rsplit("-", 1)[1], []).append(r)
            if "Ultra" in p["gpu"]:
                groups.setdefault("Ultra chips", []).append(r)
        groups["all"] = [predict_decode(p) / p["tokens_per_s"] for p in m1]
        for g in ["all"] + sorted(k for k in groups if k != "all"):
            out.append(_group_line(g, groups[g]))
    v2 = [p for p in pts if p.get("corpus") == "vllm2"]
    if v2:
        # what each vllm2 point's measured step has beyond the line's (a diagnostic of a fixed per-step cost, not a fit)
        out.append(f"\nvllm2 (benchmarks/results/vllm-candidates.md): {len(v2)} vLLM single-stream points taken "
                   f"before their predictions ({sum(not p.get('held_out') for p in v2)} of the Qwen2.5 rows fitted since the "
                   f"engine-era split, the rest held out), by set, era (speed.BACKENDS['vllm'].build_before: V0 before vLLM "
                   f"0.8.0, t0_before_ms on its steps), weight kind (quantized: its GPTQ-Int4 rows) and GPU; extra: the "
                   f"measured step less the line's (with its era's t0), ms:")
        groups: dict[str, list[dict]] = {"all": v2}
        for p in v2:
            groups.setdefault("held out" if p.get("held_out") else "fitted", []).append(p)
            groups.setdefault(f"era {_era(p)}", []).append(p)
            groups.setdefault(p.get("weights", "quantized"), []).append(p)
            groups.setdefault(p["gpu"], []).append(p)
        for g, ps in groups.items():
            rs = [predict_decode(p) / p["tokens_per_s"] for p in ps]
            e = [abs(x - 1) for x in rs]
            extra = sorted(1000 / p["tokens_per_s"] - 1000 / predict_decode(p) for p in ps)
            out.append(f"- {g}: {sum(x <= 0.15 for x in e)} of {len(e)} within 15%, {sum(x <= 0.25 for x in e)} within "
                       f"25%, predicted/measured {min(rs):.2f}..{max(rs):.2f}, extra {extra[0]:+.1f}..{extra[-1]:+.1f} ms "
                       f"(median {extra[len(extra) // 2]:+.1f})")
    rb = [p for p in pts if p.get("corpus") == "rocm-board"]
    if rb:
        # by AMD GPU family, which the by-corpus summary cannot show: the board's Instinct (CDNA) rows miss one way
        # while its RDNA3 / APU rows sit on the line (benchmarks/results/rocm-board-candidates.md)
        rocm = [p for p in pts if p["backend"] == "rocm" and not p.get("outlier")]
        out.append(f"\nrocm-board (benchmarks/results/rocm-board-candidates.md): {len(rb)} ROCm points, taken held out, the odd rows fitted since confirm-amd (llama.cpp "
                   f"discussion 15021's scoreboard as quoted, issue 13565) by GPU family (from gpu:), then all "
                   f"{len(rocm)} ROCm points (fitted and held out) by family:")
        for label, ps in (("rocm-board", rb), ("all rocm", rocm)):
            groups: dict[str, list[float]] = {}
            for p in ps:
                groups.setdefault(_amd_family(p["gpu"]), []).append(predict_decode(p) / p["tokens_per_s"])
            for g in sorted(groups):
                out.append(_group_line(f"{label}, {g}", groups[g]))
    vk = [p for p in pts if p.get("corpus") == "vulkan-board"]
    if vk:
        # the board runs one model on every card: its rows split by vendor and by the driver the source names show
        # whether the one Vulkan line fits some of them and not others (a question for the data: no term is fitted)
        def vendor(p):
            return "NVIDIA" if p["gpu"].startswith("RTX") else "Intel" if p["gpu"].startswith("Arc") else "AMD"

        def driver(p):
            src = p["source"]
            return ("RADV" if "driver RADV" in src else "NVIDIA proprietary" if "driver NVIDIA proprietary" in src
                    else "not stated")
        out.append(f"\nvulkan-board (benchmarks/results/vulkan-board-candidates.md): {len(vk)} rows, taken held out, the odd rows fitted since confirm-amd, of llama.cpp "
                   f"discussion 10879's summary (llama 2 7B Q4_0 tg128, FA off), by vendor and by the driver the source "
                   f"names:")
        groups: dict[str, list[float]] = {"all": []}
        for p in vk:
            r = predict_decode(p) / p["tokens_per_s"]
            for g in ("all", f"vendor {vendor(p)}", f"driver {driver(p)}"):
                groups.setdefault(g, []).append(r)
        for g, rs in groups.items():
            out.append(_group_line(g, rs))
        # repeats: the same card in the fixture's other Vulkan points (other models, hosts, builds, drivers); the
        # spread of their ratios is the noise one line cannot remove
        out.append("Repeats of a board GPU among the fixture's Vulkan points, outliers aside (predicted/measured; spread: "
                   "max / min):")
        for p in vk:
            same = [q for q in pts if q["backend"] == "vulkan" and q["gpu"] == p["gpu"] and not q.get("outlier")]
            if len(same) > 1:
                rs = {q["id"]: predict_decode(q) / q["tokens_per_s"] for q in same}
                out.append(f"- {p['gpu']}: " + ", ".join(f"{k} {v:.2f}" for k, v in rs.items())
                           + f"; spread {max(rs.values()) / min(rs.values()):.2f}")
    out.append("\nbuild: the llama.cpp build, as the source prints it or `(date)`: estimated from the source's date "
               "(decode_speed.yaml's header); a month alone where that straddles an era boundary; blank: unknown "
               "(planned as the current era); a vLLM point's version (`(date)`: the newest release by the source's "
               "date; unknown: the current era), on the same axis by speed.vllm_build. era: the backend's build term "
               "(speed.Backend.build_before, t0_before_ms), blank where it has none.")
    out.append("\nLeast-squares fit (of the relative error) per backend (t = bytes/(e x BW) + t0 [+ t0_before for builds "
               "before the backend's build_before]; 16-bit and AWQ-INT4 weights at their own e_16bit, e_int4_awq where a "
               "backend has 2+ fitted points of that kind and 2+ of the rest, legacy block types (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) "
               "likewise at e_legacy unless speed.LEGACY_SLOPE_EXCLUDED names the backend; the build term where it has 2+ fitted points of each era, speed.fit_backend_build), and "
               "leave-one-out: each fitted point predicted by the fit of the backend's other fitted points (backends "
               "with 3+ fitted points). Every point at its datasheet bandwidth here, an M1 Max / M1 Ultra too: the "
               "lines were fitted so, and confirm-m1 kept them as they were:")
    for backend in sorted({p["backend"] for p in pts} & set(speed.BACKENDS)):  # an engine without a line: no fit
        fitted = [p for p in pts if p["backend"] == backend and not p.get("outlier") and not p.get("held_out")]
        sel = [fit_point(p) for p in fitted]
        split = speed.split_kinds(backend)
        sub = speed.BACKENDS[backend].bandwidth_exponent != 1.0  # a line fitted with a bandwidth exponent (confirm-bw)
        a, f = fit_line(sel, split, sub)
        e, t0, t0b = f["quantized"], f["t0_ms"], f["t0_before_ms"]
        kinds = "".join(f", e_{k.replace('-', '_')} = {f[k]:.3f}" for k in speed.SPLIT_KINDS if f[k])
        cut = speed.backend_params(backend).build_before
        era = f", t0_before = {t0b:.2f} ms for builds before {_cut(backend, cut)}" if t0b else ""
        loo = ""
        if len(sel) >= 3:
            errs = [abs(loo_predicted(sel[:i] + sel[i + 1:], p, split, sub) / p["tokens_per_s"] - 1)
                    for i, p in enumerate(fitted)]
            loo = (f"; leave-one-out: {sum(x <= 0.15 for x in errs)} of {len(errs)} within 15%, mean |error| "
                   f"{100 * sum(errs) / len(errs):.1f}%, max {100 * max(errs):.1f}%")
        exp = (f", bandwidth exponent a = {a:.2f} (reads at {speed.BANDWIDTH_PIVOT_GBS:.0f} x (BW / "
               f"{speed.BANDWIDTH_PIVOT_GBS:.0f})^a GB/s; e quoted there)" if sub else "")
        out.append(f"- {backend}: e = {e:.3f}{kinds}, t0 = {t0:.2f} ms{era}{exp} over {len(sel)} points{loo}")
        if cut:
            for name, sel_era in (("before", True), ("current", False)):
                ps = [p for p in pts if p["backend"] == backend and not p.get("outlier") and older_build(p) == sel_era]
                errs = [abs(predict_decode(p) / p["tokens_per_s"] - 1) for p in ps]
                held = sum(1 for p in ps if p.get("held_out"))
                label = (f"builds before {_cut(backend, cut)}" if sel_era
                         else f"builds {_cut(backend, cut)} on or unknown")
                out.append(f"  - {label}: {len(ps)} points ({held} held out), {sum(x <= 0.15 for x in errs)} within "
                           f"15%, mean |error| {100 * sum(errs) / len(errs):.1f}%, max {100 * max(errs):.1f}%")
    for backend in sorted({p["backend"] for p in pts} - set(speed.BACKENDS)):
        out.append(f"- {backend}: no line of its own, its points check the {speed_line(backend)} line its plans use")
    return out


def tp_rows() -> list[str]:
    """Tensor parallel's all-reduces (speed.tp_comm_seconds) on every tensor-parallel point of the decode corpus."""
    out = ["Every step of a tensor-parallel point also waits for 2 all-reduces per layer (speed.tp_comm_seconds), each "
           "the public small-message latency of its GPUs' link (speed.ALLREDUCE_US: vLLM's custom all-reduce on "
           "NVLink H100, NCCL on PCIe with and without P2P, scaled to the GPU count as NCCL's ring); no latency was "
           "fitted to these points (the 4 x RTX 3090 point is held out from the term). The decode fit takes these "
           "points' measured steps less the term (tests/public_logs.fit_point). prefill_speed.yaml's TP points have "
           "no such term (a prefill's compute-bound rate; its all-reduces are large messages inside the fitted MFU).",
           "", "| point | TP | link | layers | us per all-reduce | ms per step | predicted without | predicted | "
           "measured | ratio |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in yaml.safe_load((FIX / "decode_speed.yaml").read_text())["points"]:
        if int(p.get("tensor_parallel", 1)) > 1:
            tp, link, comm = int(p["tensor_parallel"]), p.get("gpu_link", "pcie"), comm_seconds(p)
            pred = predict_decode(p)
            out.append(f"| {p['id']} | {tp} | {link} | {p['layers']} | "
                       f"{speed.allreduce_seconds(link, tp) * 1e6:.1f} | {comm * 1e3:.2f} | "
                       f"{1 / (1 / pred - comm):.1f} | {pred:.1f} | {p['tokens_per_s']} | "
                       f"{pred / p['tokens_per_s']:.3f} |")
    for p in yaml.safe_load((FIX / "vllm_concurrency.yaml").read_text())["points"]:
        if int(p.get("tensor_parallel", 1)) > 1:
            tp, link, comm = int(p["tensor_parallel"]), p.get("gpu_link", "pcie"), comm_seconds(p)
            r = predict_vllm_concurrency_point(p)
            n = p["streams"]
            out.append(f"| {p['id']} (aggregate, {n} streams) | {tp} | {link} | {p['layers']} | "
                       f"{speed.allreduce_seconds(link, tp) * 1e6:.1f} | {comm * 1e3:.2f} | "
                       f"{n / (n / r['aggregate'] - comm):.1f} | {r['aggregate']:.1f} | "
                       f"{p['measured_tokens_per_s']} | {r['ratio']:.3f} |")
    return out


def concurrency_rows() -> list[str]:
    pts = yaml.safe_load((FIX / "vllm_concurrency.yaml").read_text())["points"]
    out = ["| point | GPUs | vLLM | streams | predicted 1 stream | predicted aggregate | measured aggregate | ratio | check |",
           "|---|---|---|---:|---:|---:|---:|---:|---|"]
    within = 0
    for p in pts:
        r = predict_vllm_concurrency_point(p)
        ok = 0.75 <= r["ratio"] <= 1.25
        within += ok
        check = "within 25%" if ok else "known miss (xfail)" if p.get("known_miss") else "MISS"
        out.append(f"| {p['id']} | {p['gpus']} x {p['gpu']} | {p.get('version', '')} | {p['streams']} | {r['single']:.1f} | "
                   f"{r['aggregate']:.1f} | {p['measured_tokens_per_s']} | {r['ratio']:.2f} | {check} |")
    out.append(f"\nwithin 25%: {within} of {len(pts)}; the misses and why:")
    out += [f"- {p['id']}: {p['known_miss']}" for p in pts if p.get("known_miss")]
    return out


def service_curve_rows() -> list[str]:
    fix = yaml.safe_load((FIX / "service_curve.yaml").read_text())
    tol = fix["tolerance"]
    out = [f"Aggregate tokens/s at b tokens per step (llama.cpp microbatch tables) against "
           f"speed.aggregate_tokens_per_s (a step: the memory time plus, per token past the first, 2 x active params "
           f"FLOPs at the batch MFU, fitted per weight kind on the curves not held out); stated tolerance "
           f"+-{tol * 100:.0f}%.", "",
           "| curve | set | b | predicted tok/s | measured | ratio | |", "|---|---|---:|---:|---:|---:|---|"]
    within = total = 0
    counts: dict[str, list[int]] = {"fitted": [0, 0], "held out": [0, 0]}
    for c in fix["curves"]:
        kind = "held out" if c.get("held_out") else "fitted"
        for p in c["points"]:
            pred = predict_service_curve_point(c, p["batch"])
            r = pred / p["tokens_per_s"]
            ok = abs(r - 1) <= tol
            within, total = within + ok, total + 1
            counts[kind][0] += ok
            counts[kind][1] += 1
            note = "" if ok else "miss" + (" (known)" if p.get("known_miss") else "")
            out.append(f"| {c['id']} | {kind} | {p['batch']} | {pred:.1f} | {p['tokens_per_s']} | {r:.3f} | {note} |")
    out.append(f"\nwithin {tol * 100:.0f}%: {within} of {total} (fitted curves {counts['fitted'][0]} of "
               f"{counts['fitted'][1]}, held out {counts['held out'][0]} of {counts['held out'][1]})")
    cuda = speed.BACKENDS["cuda"]
    out.append(f"- cuda batch MFU: block-quantized {cuda.batch_mfu:.3f}, 16-bit {cuda.batch_mfu_16bit:.3f} "
               f"(speed.fit_batch_mfu: per curve the slope of the step time over b)")
    return out


def prefill_rows() -> list[str]:
    """Prefill tokens/s per point (stackgen's prefill_mfu x peak / (2 x active params)) and the per-backend fit."""
    pts = yaml.safe_load((FIX / "prefill_speed.yaml").read_text())["points"]
    out = ["| point | backend | set | params B | peak TFLOP/s | predicted tok/s | measured | ratio | measured MFU | "
           "ratio at the old 0.35 |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    checked = within = 0
    errors: dict[str, list[float]] = {"fitted": [], "held out": []}
    for p in pts:
        params, peak, tps = prefill_inputs(p)
        pred = predict_prefill(p)
        r = pred / tps
        kind = "outlier" if p.get("outlier") else "held out" if p.get("held_out") else "fitted"
        if kind != "outlier":
            checked += 1
            within += abs(r - 1) <= 0.30
            errors[kind].append(abs(r - 1))
        miss = " (known miss)" if p.get("known_miss") else ""
        out.append(f"| {p['id']} | {p['backend']} | {kind}{miss} | {p['params_b']} | {peak / 1e12:.3g} | {pred:.1f} | "
                   f"{tps} | {r:.3f} | {2 * params * tps / peak:.3f} | {0.35 * peak / (2 * params) / tps:.3f} |")
    out.append(f"\nwithin 30%: {within} of {checked} (outliers aside; {len(pts)} points in all)")
    for kind, errs in errors.items():
        if errs:
            out.append(f"- {kind}: {len(errs)} points, mean |error| {100 * sum(errs) / len(errs):.1f}%, "
                       f"max {100 * max(errs):.1f}%")
    out.append("\nprefill_mfu per backend (log least squares over the points neither held out nor outliers), and the "
               "TTFT check the plan prints (speed.PREFILL_CHECK):")
    for backend in sorted({p["backend"] for p in pts} & set(speed.BACKENDS)):
        sel = [prefill_inputs(p) for p in pts if p["backend"] == backend and not p.get("outlier")
               and not p.get("held_out")]
        n, err = speed.PREFILL_CHECK.get(backend, (0, 0.0))
        fit = (f"prefill_mfu = {speed.fit_prefill_mfu(sel):.3f} over {len(sel)} points" if sel else
               f"prefill_mfu = {speed.BACKENDS[backend].prefill_mfu:.3f}, not fitted (no point of its own that is "
               "not held out: another line's MFU, speed.py says whose)")
        out.append(f"- {backend}: {fit}; checked on {n}, largest error {err * 100:.0f}%")
    for backend in sorted({p["backend"] for p in pts} - set(speed.BACKENDS)):
        out.append(f"- {backend}: no line of its own, its points check the {speed_line(backend)} line its plans use")
    return out


PARTIAL_TOLERANCE = 0.25  # the single-stream decode check's (issue 13); tests/plan/test_public_logs.py asserts it


def partial_offload_rows() -> list[str]:
    """Single-stream decode with layers split between a GPU and system RAM (partial_offload.yaml) against
    speed.forecast, with the bytes and GPU share three ways (tests/public_logs.partial_offload_inputs)."""
    fix = yaml.safe_load((FIX / "partial_offload.yaml").read_text())
    out = ["Every point is held out (none fitted). `read share`: stackgen's (speed.partial_offload_read, what "
           "service_forecast and the simulator take): the bytes a decode step reads, the file less the token "
           "embedding (in host memory; a step gathers one row of it), of which memory.py's layer rule puts the output "
           "layer and ngl - 1 repeating layers on the GPU; the check. `file share`: the same GPU bytes over the whole "
           "file, the embedding read from RAM every token (stackgen before this change). `layers share`: the whole "
           "file at gpu_layers / total_layers (service_forecast before this change). Predicted at the GPU backend's "
           "fit of the slowest GPU's datasheet bandwidth and the CPU backend's fit of the host's peak RAM bandwidth "
           "(channels x MT/s x 8 B).", "",
           "| point | GPU GB/s | RAM GB/s | ngl / layers | read share | predicted | measured | ratio | check | "
           "file share | predicted | ratio | layers share | predicted | ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    pts = fix["points"]
    ratios, stated = [], []
    for p in pts:
        i = partial_offload_inputs(fix, p)
        pred, meas = predict_partial_offload(fix, p), p["tokens_per_s"]
        r = pred / meas
        ratios.append(r)
        err = partial_offload_stated_error(fix, p)
        stated.append(abs(r - 1) <= err)
        ok = abs(r - 1) <= PARTIAL_TOLERANCE
        check = "within 25%" if ok else "known miss (xfail)" if p.get("known_miss") else "MISS"
        fil, lay = predict_partial_offload(fix, p, "file"), predict_partial_offload(fix, p, "layers")
        out.append(f"| {p['id']} | {i['gpu_bandwidth_gbs']} | {i['host']['ram_bandwidth_gbs']} | "
                   f"{p['ngl']} / {i['model'].layers} | {i['gpu_fraction']:.3f} | {pred:.1f} | {meas} | {r:.3f} | "
                   f"{check} | {i['gpu_fraction_file']:.3f} | {fil:.1f} | {fil / meas:.3f} | "
                   f"{i['gpu_fraction_layers']:.3f} | {lay:.1f} | {lay / meas:.3f} |")
    n = len(pts)
    out.append(f"\nwithin 15%: {sum(abs(r - 1) <= 0.15 for r in ratios)} of {n}; within 25%: "
               f"{sum(abs(r - 1) <= 0.25 for r in ratios)} of {n}; within the error the plan states (Forecast.error, "
               f"{partial_offload_stated_error(fix, pts[0]) * 100:.0f}% for these backends): {sum(stated)} of {n}; "
               f"sources: {len({fix['hosts'][p['host']]['source'] for p in pts})}. The misses and why:")
    out += [f"- {p['id']}: {p['known_miss']}" for p in pts if p.get("known_miss")]
    for rule, label in (("file", "the file share (before)"), ("layers", "the layers share")):
        rs = [predict_partial_offload(fix, p, rule) / p["tokens_per_s"] for p in pts]
        out.append(f"- with {label}: within 15% {sum(abs(r - 1) <= 0.15 for r in rs)} of {n}, within 25% "
                   f"{sum(abs(r - 1) <= 0.25 for r in rs)} of {n}")
    out += ["", "Anchors (same host and model, no layer or every layer on the GPU; not partial offload, not checked; "
            "these read the whole file, as the decode fits were made):",
            "", "| anchor | ngl | predicted | measured | ratio |", "|---|---:|---:|---:|---:|"]
    for a in fix["anchors"]:
        pred = predict_partial_offload(fix, a)
        out.append(f"| {a['id']} | {a['ngl']} | {pred:.1f} | {a['tokens_per_s']} | {pred / a['tokens_per_s']:.3f} |")
    out += ["", "### Partial offload: prompt processing", "",
            "partial_offload.yaml prefill_points, held out. Predicted: speed.forecast's prefill rate for the row's "
            "prompt (StepParts.prefill_s): its compute on the GPU at the CUDA prefill fit (ggml runs every layer's "
            "matmuls there from 32 tokens up), plus the RAM side's bytes copied over the host link once per "
            f"micro-batch at {speed.HOST_LINK_EFFICIENCY} of its peak (the host's link, else "
            f"{speed.DEFAULT_HOST_LINK_GBS:g} GB/s). `compute only`: stackgen before this change.", "",
            "| point | ngl / layers | prompt / ubatch | RAM GB copied per ubatch | link GB/s | predicted | "
            "compute only | measured | ratio | ratio before |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pps = fix.get("prefill_points", [])
    for p in pps:
        i = partial_prefill_inputs(fix, p)
        pred, before, meas = predict_partial_prefill(fix, p), predict_partial_prefill(fix, p, False), p["tokens_per_s"]
        out.append(f"| {p['id']} | {p['ngl']} / {i['model'].layers} | {p['prompt']} / {p['ubatch']} | "
                   f"{i['ram_bytes'] / 1e9:.3f} | {i['link_gbs']:g} | {pred:.1f} | {before:.1f} | {meas} | "
                   f"{pred / meas:.2f} | {before / meas:.2f} |")
    if pps:
        rs = [predict_partial_prefill(fix, p) / p["tokens_per_s"] for p in pps]
        out.append(f"\nwithin 25%: {sum(abs(r - 1) <= 0.25 for r in rs)} of {len(pps)} (all known misses, "
                   f"over-predicted {min(rs):.1f}-{max(rs):.1f}x).")
        out += [f"- {h}: {v['why']}" for h, v in fix["prefill_hosts"].items() if v.get("why")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    text = "\n".join(["# Public-log corpus vs the planner", "",
                      "Generated by `python benchmarks/bench_public_logs.py --record` from tests/fixtures/public-logs/ "
                      "(every case cites its public thread and quotes its log lines). Memory: vLLM startup profiles "
                      "against stackgen's terms; Ollama's logged estimate against the port of its estimator "
                      "(stackgen/engines/ollama_estimate.py, v0.12.10); llama.cpp KV/compute against memory.py. "
                      "Speed: single-stream decode per backend (llama.cpp CUDA split by the GPU's tier and memory: "
                      "`cuda` for consumer and workstation GPUs and for GDDR datacenter GPUs, `cuda-datacenter` for HBM "
                      "ones, confirm-tier-candidates.md; a row's backend is its tier, \"(on cuda)\" where its memory "
                      "moves it); an Apple M1 Max or M1 Ultra decodes at 0.86 of its datasheet bandwidth, \"(at 344 GB/s)\", "
                      "confirm-m1-candidates.md, and an AMD gfx906 / gfx908 / gfx90a part at 0.55 of it on the ROCm and "
                      "Vulkan lines, confirm-gfx9-candidates.md; `fitted` points made the fit in "
                      "stackgen/plan/speed.py, `held out` points did not and check it; the service curve checks "
                      "aggregate decode at b tokens per step. Tests: tests/test_public_logs.py (issue 13's "
                      "tolerances).", "", "## vLLM memory profiles", *memory_rows(), "",
                      "## vLLM V1 KV capacity (per-token KV term, GiB)", *vllm_kv_rows(), "",
                      "## Ollama's estimate (port of v0.12.10) vs Ollama's logged estimate", *ollama_rows(), "",
                      "## llama.cpp KV cache and compute buffer", *llamacpp_rows(), "",
                      "## Single-stream decode speed", *speed_rows(), "",
                      "## Tensor parallel's all-reduces", "", *tp_rows(), "",
                      "## vLLM aggregate decode at concurrency > 1 (vllm_concurrency.yaml; tolerance 0.75..1.25)",
                      *concurrency_rows(), "",
                      "## Service curve (aggregate decode at b streams)", *service_curve_rows(), "",
                      "## Partial offload (single stream, layers split between GPU and system RAM)", "",
                      "tests/fixtures/public-logs/partial_offload.yaml; the candidates left out and why: "
                      "benchmarks/results/partial-offload-candidates.md.", "", *partial_offload_rows(), "",
                      *corpus_count(),
                      "## Prefill speed (TTFT)", "",
                      "tests/fixtures/public-logs/prefill_speed.yaml: llama-bench ppN rows and mlx-lm prompt rates at "
                      "batch 1, and vLLM's time to first token at one request as the rate prompt / (TTFT - one decode "
                      "step). Predicted = prefill_mfu x peak / (2 x active parameters); the peak is "
                      "capacity.GPU_TFLOPS' convention (GeForce: FP16 tensor with FP32 accumulate; CPU: 60 GFLOP/s "
                      "per thread), so the measured MFU of quantized CUDA kernels can pass 1.", "", *prefill_rows(), ""])
    print(text)
    if args.record:
        (ROOT / "benchmarks" / "results" / "public_logs.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
