"""The repeat-measurement ceiling of the public decode corpus (issue 13's "within 15% for 90% of public points").

Public decode points are measured by different people on different hosts, drivers, builds and thermal states. If
independent measurements of the SAME configuration agree within 15% only X% of the time, no forecast can be expected
to beat about X% on such data. This script measures X from the corpus itself: it forms repeat groups in
tests/fixtures/public-logs/decode_speed.yaml (and repeats.yaml, public repeat pairs the corpus lacks) and, for every
member of a group, compares its rate with the geometric mean of the OTHER members (a leave-one-out "oracle" that
predicts from repeats alone, with no model at all).

A repeat group (group_key, repeat_groups): the same `backend`; the same GPU (norm_gpu: the `gpu` string lower-cased,
brackets and commas dropped, memory-capacity tokens such as "12GB" / "64 GB" dropped, whitespace collapsed; nothing
else is merged, so "M1 Max" and "M1 Max (32-core GPU)" stay apart) AND the same `bandwidth_gbs` (which keeps apart
cards that share a name and differ in memory bus, e.g. an RTX 3080 10GB and 12GB); `bytes_mib` within 1% (of the
smallest in the cluster); the same weight kind (`weights`, default quantized); the same era of speed's build term
(tests/public_logs.older_build: the point's build or vLLM version against speed.Backend.build_before; backends
without a build term are one era); the same `tensor_parallel`.

Independence (post_of): rows of one post (the same source URL, the first token of `source`, with the first @handle
the quote carries where a community table credits rows to contributors; or the point's `post:` field where a fixture
gives one) are one run's rows, not repeats: within a group they are collapsed to one member, their geometric-mean
rate. Posts with the same rate to 0.01 t/s are taken for one run quoted twice (a README summarising its issue) and
collapsed too. A group needs 2+ members.

Statistics, over members (one per post): the leave-one-out ratio rate / geomean(others); the share within 15% and 25%
(the empirical ceiling); the pooled log-rate sigma s^2 = sum over groups of sum (y - group mean)^2 / (N - G) (the n-1
correction per group); the share a PERFECT model (one that predicts the configuration's true typical rate) would reach
if every measurement carried log-normal noise of that sigma, P(|exp(N(0, s)) - 1| <= 0.15); and, as a consistency
check, the share the leave-one-out oracle itself should show under that noise (its log error has variance
s^2 x n / (n - 1) in a group of n, larger than a perfect model's). Also stackgen's own prediction
(tests/public_logs.predict_decode) on the same members, against the oracle's, per backend.

    python benchmarks/bench_repeat_noise.py [--record]   # --record writes benchmarks/results/repeat_noise.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from public_logs import older_build, predict_decode  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "public-logs"
FILES = ("decode_speed.yaml", "repeats.yaml")  # repeats.yaml: this task's public repeat pairs (optional)
BYTES_TOL = 0.01
TOLS = (0.15, 0.25)


def load_points(files: Iterable[str] = FILES, fix: Path = FIX) -> list[dict]:
    """Every decode point of the files that exist, each tagged with the file it came from (`_file`)."""
    out = []
    for name in files:
        path = fix / name
        if path.exists():
            for p in yaml.safe_load(path.read_text(encoding="utf-8")).get("points") or []:
                out.append({**p, "_file": name})
    return out


def norm_gpu(gpu: str) -> str:
    """A conservative GPU key: lower case, memory-capacity tokens ("12GB", "64 GB", "96 GB") dropped, brackets and
    commas dropped, whitespace collapsed. Core counts, form factors, vendor words stay, so strings that do not say the
    same chip are not merged (group_key also requires the same bandwidth_gbs)."""
    g = str(gpu).lower()
    g = re.sub(r"\b\d+\s*gb\b", " ", g)
    g = re.sub(r"[(),]", " ", g)
    return " ".join(g.split())


HANDLE = re.compile(r"(?<![\w.])@([A-Za-z0-9][A-Za-z0-9_-]*)")


def post_of(p: dict) -> str:
    """The run a point comes from: its `post:` where given, else its source's URL (the first token) plus the first
    @handle its quote carries (a community README table credits each row to its contributor: two handles, two
    posts; sudoingX/qwen38-mtp's table, tests/fixtures/public-logs/repeats.yaml)."""
    if p.get("post"):
        return str(p["post"])
    src = str(p.get("source", ""))
    if not src.split():
        return p["id"]
    handle = HANDLE.search(src)
    return src.split()[0] + (f" @{handle.group(1)}" if handle else "")


def group_key(p: dict, era: Callable[[dict], bool] = older_build) -> tuple:
    """Everything but bytes_mib that two points must share to be repeats of one configuration."""
    return (p["backend"], norm_gpu(p["gpu"]), float(p["bandwidth_gbs"]), p.get("weights", "quantized"), bool(era(p)),
            int(p.get("tensor_parallel", 1)))


def repeat_groups(points: list[dict], era: Callable[[dict], bool] = older_build) -> list[list[list[dict]]]:
    """Repeat groups: each a list of members (one per post, 2+ posts), each member the list of its post's rows.
    Points `outlier:`-marked by their fixture are left out (their own source flags the run as unreliable)."""
    by_key: dict[tuple, list[dict]] = {}
    for p in points:
        if not p.get("outlier"):
            by_key.setdefault(group_key(p, era), []).append(p)
    groups = []
    for key in sorted(by_key, key=str):
        cluster: list[dict] = []
        for p in sorted(by_key[key], key=lambda q: (q["bytes_mib"], q["id"])) + [None]:
            if p is not None and cluster and p["bytes_mib"] <= cluster[0]["bytes_mib"] * (1 + BYTES_TOL):
                cluster.append(p)
                continue
            posts: dict[str, list[dict]] = {}
            for q in cluster:
                posts.setdefault(post_of(q), []).append(q)
            # a rate quoted twice (a README summarising its own issue) is one run: posts whose rates are equal to
            # 0.01 t/s are one member
            members: dict[float, list[dict]] = {}
            for k in sorted(posts):
                members.setdefault(round(math.exp(log_rate(posts[k])), 2), []).extend(posts[k])
            if len(members) >= 2:
                groups.append(list(members.values()))
            cluster = [p] if p is not None else []
    return groups


def log_rate(member: list[dict]) -> float:
    """A member's log rate: the mean log of its post's rows (their geometric mean)."""
    return sum(math.log(q["tokens_per_s"]) for q in member) / len(member)


def loo_ratios(group: list[list[dict]]) -> list[float]:
    """Each member's rate over the geometric mean of the other members' rates."""
    ys = [log_rate(m) for m in group]
    n = len(ys)
    return [math.exp(y - (sum(ys) - y) / (n - 1)) for y in ys]


def pooled_sigma(groups: list[list[list[dict]]]) -> float:
    """The pooled standard deviation of log rates within groups, with the n-1 correction: sqrt(SS / (N - G))."""
    ss, n, g = 0.0, 0, 0
    for group in groups:
        ys = [log_rate(m) for m in group]
        mean = sum(ys) / len(ys)
        ss += sum((y - mean) ** 2 for y in ys)
        n, g = n + len(ys), g + 1
    return math.sqrt(ss / (n - g)) if n > g else float("nan")


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def lognormal_share(sigma: float, tol: float = 0.15) -> float:
    """P(|exp(N(0, sigma)) - 1| <= tol): the share a perfect model reaches under log-normal noise of that sigma."""
    if sigma == 0:
        return 1.0
    return _phi(math.log(1 + tol) / sigma) - _phi(math.log(1 - tol) / sigma)


def expected_loo_share(groups: list[list[list[dict]]], sigma: float, tol: float = 0.15) -> float:
    """The share the leave-one-out oracle should show under log-normal noise of `sigma`: a member of a group of n has
    log error y - mean(others), of variance sigma^2 x n / (n - 1)."""
    shares = [lognormal_share(sigma * math.sqrt(len(g) / (len(g) - 1)), tol) for g in groups for _ in g]
    return sum(shares) / len(shares) if shares else float("nan")


def chi2_quantile(p: float, df: int) -> float:
    """The chi-square quantile by the Wilson-Hilferty cube approximation (within ~1% for df >= 3; no scipy here)."""
    z = NormalDist().inv_cdf(p)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def sigma_interval(sigma: float, df: int) -> tuple[float, float]:
    """The 95% interval of a pooled sigma on df = N - G degrees of freedom: sigma x sqrt(df / chi2(0.975 / 0.025));
    none below 3 degrees of freedom (the approximation's range)."""
    if df < 3:
        return float("nan"), float("nan")
    return sigma * math.sqrt(df / chi2_quantile(0.975, df)), sigma * math.sqrt(df / chi2_quantile(0.025, df))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a share k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, c - h), min(1.0, c + h)


def model_ratio(member: list[dict], predict: Callable[[dict], float] = predict_decode) -> float:
    """stackgen's predicted / measured for a member: the geometric mean over its post's rows."""
    return math.exp(sum(math.log(predict(q) / q["tokens_per_s"]) for q in member) / len(member))


def stats(groups: list[list[list[dict]]], predict: Callable[[dict], float] | None = predict_decode) -> dict:
    """The figures the report prints, for a list of groups (all of them, or one backend's)."""
    ratios = [r for g in groups for r in loo_ratios(g)]
    n = len(ratios)
    s = pooled_sigma(groups) if groups else float("nan")
    out = {"groups": len(groups), "members": n, "rows": sum(len(m) for g in groups for m in g), "sigma": s,
           "sigma_interval": sigma_interval(s, n - len(groups)) if n else (float("nan"), float("nan"))}
    for tol in TOLS:
        k = sum(abs(r - 1) <= tol for r in ratios)
        out[f"oracle_{tol}"] = k
        out[f"perfect_{tol}"] = lognormal_share(s, tol) if n else float("nan")
        out[f"expected_loo_{tol}"] = expected_loo_share(groups, s, tol) if n else float("nan")
    out["oracle_abs_log"] = sum(abs(math.log(r)) for r in ratios) / n if n else float("nan")
    if predict is not None:
        mr = [model_ratio(m, predict) for g in groups for m in g]
        for tol in TOLS:
            out[f"model_{tol}"] = sum(abs(r - 1) <= tol for r in mr)
        out["model_abs_log"] = sum(abs(math.log(r)) for r in mr) / n if n else float("nan")
        hit = [abs(r - 1) <= 0.15 for r in ratios]
        mhit = [abs(r - 1) <= 0.15 for r in mr]
        out["model_miss_where_oracle_miss"] = (sum(not a and not b for a, b in zip(hit, mhit)), hit.count(False))
        out["model_miss_where_oracle_hit"] = (sum(a and not b for a, b in zip(hit, mhit)), hit.count(True))
    return out


def bias_keys(p: dict) -> dict[str, tuple]:
    """What each bias oracle (bias_oracles) pools a point's residual by: its GPU (the repeat key's GPU part: backend,
    norm_gpu, bandwidth_gbs), its post, and the pair."""
    gpu = (p["backend"], norm_gpu(p["gpu"]), float(p["bandwidth_gbs"]))
    return {"gpu": gpu, "post": (post_of(p),), "post and gpu": (post_of(p),) + gpu}


def bias_oracles(points: list[dict], predict: Callable[[dict], float] = predict_decode,
                 tol: float = 0.15) -> dict[str, tuple[int, int]]:
    """Which remaining error a plan's inputs could still learn. For every non-outlier point: stackgen's log residual
    r = ln(predicted / measured); then r less a bias learned from OTHER points only:
    - "gpu": the mean residual of the same GPU's points in OTHER posts (what a per-GPU factor, e.g. a measured
      bandwidth table, could learn from public data; nothing to learn: no correction);
    - "post": the mean residual of the same post's other points (the source's host, driver, build flags: what no
      stack.yaml says; an upper bound on a per-source term);
    - "post and gpu": the same post's other points on the same GPU.
    Returns {name: (points within tol, points)}, "model" the residual as is."""
    pts = [p for p in points if not p.get("outlier")]
    res = [math.log(predict(p) / p["tokens_per_s"]) for p in pts]
    keys = [bias_keys(p) for p in pts]
    post = [post_of(p) for p in pts]
    def close(r: float) -> bool:  # predicted / measured within tol, as the corpus counts it
        return abs(math.exp(r) - 1) <= tol

    hits = {"model": sum(close(r) for r in res)}
    for name in ("gpu", "post", "post and gpu"):
        k = 0
        for i, r in enumerate(res):
            if name == "gpu":
                others = [res[j] for j in range(len(pts)) if keys[j]["gpu"] == keys[i]["gpu"] and post[j] != post[i]]
            else:
                others = [res[j] for j in range(len(pts)) if j != i and keys[j][name] == keys[i][name]]
            k += close(r - (sum(others) / len(others) if others else 0.0))
        hits[name] = k
    return {name: (k, len(pts)) for name, k in hits.items()}


def within_post_size_slopes(points: list[dict], predict: Callable[[dict], float] = predict_decode
                            ) -> dict[str, tuple[float, int]]:
    """Per backend, the pooled least-squares slope of the residual ln(predicted / measured) on ln(bytes_mib) WITHIN
    each (post, GPU) set of 2+ non-outlier points (each set centred on its own means, so a post's host and GPU drop
    out): a model-size term the lines lack would show here. Returns {backend: (slope, points in such sets)}."""
    sets: dict[tuple, list[tuple[float, float]]] = {}
    for p in points:
        if not p.get("outlier"):
            key = (p["backend"], post_of(p), norm_gpu(p["gpu"]))
            sets.setdefault(key, []).append((math.log(p["bytes_mib"]), math.log(predict(p) / p["tokens_per_s"])))
    acc: dict[str, list[float]] = {}
    for (backend, *_), xs in sets.items():
        if len(xs) < 2:
            continue
        mx, my = sum(x for x, _ in xs) / len(xs), sum(y for _, y in xs) / len(xs)
        a = acc.setdefault(backend, [0.0, 0.0, 0])
        for x, y in xs:
            a[0] += (x - mx) * (y - my)
            a[1] += (x - mx) ** 2
            a[2] += 1
    return {b: (a[0] / a[1], int(a[2])) for b, a in sorted(acc.items()) if a[1] > 0}


def _pct(k: int, n: int) -> str:
    return f"{k} of {n} ({100 * k / n:.0f}%)" if n else "0 of 0"


def report(points: list[dict] | None = None) -> str:
    points = load_points() if points is None else points
    groups = repeat_groups(points)
    total = stats(groups)
    n = total["members"]
    files = ", ".join(f"{f}: {sum(p['_file'] == f for p in points)}" for f in FILES)
    lo, hi = wilson(total["oracle_0.15"], n)
    lines = [
        "# Repeat-measurement ceiling of the public decode corpus", "",
        "Generated by `python benchmarks/bench_repeat_noise.py --record` (the method: that script's docstring). Points "
        f"read: {len(points)} ({files}). A repeat group: the same backend, GPU (normalised conservatively, and the "
        "same bandwidth_gbs), bytes_mib within 1%, weight kind, build era of speed's build term (older_build) and "
        "tensor_parallel, from 2+ different posts (rows of one post collapsed to their geometric mean: one member). "
        "The oracle: each member's rate against the geometric mean of the other members of its group.", "",
        f"ceiling: {total['groups']} groups, {n} members ({total['rows']} rows); oracle within 15%: "
        f"{_pct(total['oracle_0.15'], n)}, Wilson 95% {100 * lo:.0f}-{100 * hi:.0f}%; within 25%: "
        f"{_pct(total['oracle_0.25'], n)}",
        f"log-rate sigma (pooled, n-1): {total['sigma']:.4f}; a perfect model under log-normal noise of that sigma: "
        f"{100 * total['perfect_0.15']:.1f}% within 15%, {100 * total['perfect_0.25']:.1f}% within 25%; the oracle "
        f"should show {100 * total['expected_loo_0.15']:.1f}% within 15% at that sigma (its own mean is noisy too)",
        f"sigma's 95% interval (chi-square, {n - total['groups']} degrees of freedom): "
        f"{total['sigma_interval'][0]:.4f}-{total['sigma_interval'][1]:.4f}: a perfect model within 15% "
        f"{100 * lognormal_share(total['sigma_interval'][1]):.0f}-{100 * lognormal_share(total['sigma_interval'][0]):.0f}%",
        f"stackgen on the same members: within 15% {_pct(total['model_0.15'], n)}, within 25% "
        f"{_pct(total['model_0.25'], n)}; mean |log ratio| model {total['model_abs_log']:.3f} vs oracle "
        f"{total['oracle_abs_log']:.3f}",
    ]
    only = [p for p in points if p["_file"] == FILES[0]]
    if len(only) < len(points):
        c = stats(repeat_groups(only), predict=None)
        lines.append(f"{FILES[0]} alone: {c['groups']} groups, {c['members']} members; oracle within 15% "
                     f"{_pct(c['oracle_0.15'], c['members'])}, within 25% {_pct(c['oracle_0.25'], c['members'])}; "
                     f"sigma {c['sigma']:.4f}")
    only_out = [p for p in only if not p.get("outlier")]
    bo = bias_oracles(only)
    lines += [
        "", "## What is left to learn (bias_oracles)", "",
        f"Over {FILES[0]}'s {len(only_out)} non-outlier points, within 15%: stackgen {_pct(*bo['model'])}; "
        f"corrected by the mean residual of the same GPU in other posts (what a per-GPU factor learnt from public "
        f"data could do) {_pct(*bo['gpu'])}; by the mean residual of the same post's other points (the source's own "
        f"host, driver and flags, which no stack.yaml says) {_pct(*bo['post'])}; by the same post's other points on "
        f"the same GPU {_pct(*bo['post and gpu'])}. A per-GPU correction that does not raise the count has nothing "
        "to learn across sources; what a per-post one adds is bounded by what the post itself knows.", "",
        "Model size within a post (within_post_size_slopes: the residual's slope on ln(bytes) inside each post's "
        "points on one GPU; 0: no size term missing): " + "; ".join(
            f"{b} {sl:+.3f} ({n} points)" for b, (sl, n) in within_post_size_slopes(only).items()) + "."]
    lines += [
        "",
        "## By backend", "",
        "| backend | groups | members | oracle within 15% | within 25% | sigma | perfect model 15% | "
        "stackgen within 15% | within 25% | mean abs log: stackgen / oracle | stackgen misses where the oracle "
        "misses / hits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for backend in sorted({g[0][0]["backend"] for g in groups}):
        b = stats([g for g in groups if g[0][0]["backend"] == backend])
        m = b["members"]
        mm, mh = b["model_miss_where_oracle_miss"], b["model_miss_where_oracle_hit"]
        lines.append(f"| {backend} | {b['groups']} | {m} | {_pct(b['oracle_0.15'], m)} | {_pct(b['oracle_0.25'], m)} | "
                     f"{b['sigma']:.3f} | {100 * b['perfect_0.15']:.0f}% | {_pct(b['model_0.15'], m)} | "
                     f"{_pct(b['model_0.25'], m)} | {b['model_abs_log']:.3f} / {b['oracle_abs_log']:.3f} | "
                     f"{mm[0]} of {mm[1]} / {mh[0]} of {mh[1]} |")
    lines += ["", "## Groups", "",
              "| group (backend, GPU, GB/s, weights, older era, TP) | member (post) | rows | tok/s (geomean) | "
              "/ others' geomean | stackgen / measured |", "|---|---|---:|---:|---:|---:|"]
    for g in groups:
        key = group_key(g[0][0])
        for m, r in zip(g, loo_ratios(g)):
            ids = ", ".join(q["id"] for q in m)
            lines.append(f"| {' / '.join(str(k) for k in key)} ({g[0][0]['bytes_mib']:.0f} MiB) | {ids} "
                         f"({post_of(m[0])}) | {len(m)} | {math.exp(log_rate(m)):.2f} | {r:.3f} | "
                         f"{model_ratio(m):.3f} |")
    lines += ["", "Caveats: groups form only where two public sources happen to run the same file on the same GPU; "
              "a within-15% share on few groups has a wide interval (the Wilson one above); same-post rows are "
              "collapsed, so a thread that repeats one run counts once."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    text = report()
    print(text)
    if args.record:
        (ROOT / "benchmarks" / "results" / "repeat_noise.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
