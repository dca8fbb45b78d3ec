"""benchmarks/bench_repeat_noise.py: repeat groups of the public decode corpus and the leave-one-out ceiling.

Synthetic inputs with answers derived from the formulas, and one check that the figure recorded in
benchmarks/results/repeat_noise.md is what the script computes from the fixtures as they are."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from statistics import NormalDist

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_repeat_noise", ROOT / "benchmarks" / "bench_repeat_noise.py")
rn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rn)


def _p(pid, tps, post, *, gpu="RTX 3090", bw=936, mib=4000.0, backend="cuda", **kw):
    return {"id": pid, "backend": backend, "gpu": gpu, "bandwidth_gbs": bw, "bytes_mib": mib, "tokens_per_s": tps,
            "source": f"https://example.org/{post} (quoted)", **kw}


def _no_era(p):
    return False


def _ids(groups):
    return [[[q["id"] for q in m] for m in g] for g in groups]


def test_norm_gpu_drops_capacity_and_brackets_only():
    assert rn.norm_gpu("RTX 3060 12GB") == rn.norm_gpu("RTX 3060") == "rtx 3060"
    assert rn.norm_gpu("M1 Max (32-core GPU, 64 GB)") == rn.norm_gpu("M1 Max (32-core GPU)") == "m1 max 32-core gpu"
    # an unbalanced bracket (a YAML flow mapping cut at the comma) reads as the balanced one
    assert rn.norm_gpu("M3 Max (40-core GPU") == rn.norm_gpu("M3 Max (40-core GPU)")
    # what says another chip, or does not say which, stays apart
    assert rn.norm_gpu("M1 Max") != rn.norm_gpu("M1 Max (32-core GPU)")
    assert rn.norm_gpu("RTX 3090 Ti") != rn.norm_gpu("RTX 3090")


def test_post_of_source_url_handle_or_post_field():
    assert rn.post_of({"id": "a", "source": "https://x.org/issues/1 (user, 2024)"}) == "https://x.org/issues/1"
    assert rn.post_of({"id": "a", "source": "https://x.org/issues/1 (user)", "post": "c2"}) == "c2"
    # a community table's row credited to a contributor: the URL and the first @handle of the quote
    row = "https://x.org/README.md ('| RTX 3090 | 31.0 | [@ann-1](https://x.com/ann-1) |'; per @bob's note)"
    assert rn.post_of({"id": "a", "source": row}) == "https://x.org/README.md @ann-1"
    # not a handle: an e-mail address, a llama-bench depth ('tg128 @ d8192')
    assert rn.post_of({"id": "a", "source": "https://x.org/1 (me@host.org, 'tg128 @ d8192')"}) == "https://x.org/1"


def test_two_contributors_of_one_readme_are_two_members_and_a_quoted_copy_is_one():
    pts = [_p("a", 31.0, "readme ('| 3090 | 31.0 | @ann |')"), _p("b", 41.3, "readme ('| 3090 | 41.3 | @bob |')"),
           _p("c", 40.0, "readme ('| 3090 | 40.0 |')")]
    (g,) = rn.repeat_groups(pts, _no_era)
    assert sorted(m[0]["id"] for m in g) == ["a", "b", "c"]
    # the same rate in two posts (a README quoting its issue): one member, so no group is left
    copy = [_p("r", 56.29, "readme"), _p("i", 56.29, "issue-1")]
    assert rn.repeat_groups(copy, _no_era) == []
    assert len(rn.repeat_groups(copy + [_p("o", 50.0, "other")], _no_era)[0]) == 2


def test_grouping_keys_bytes_posts_and_outliers():
    pts = [_p("a", 100, "s1"), _p("b", 110, "s2", mib=4039.0),   # within 1% of 4000: one group
           _p("c", 120, "s3", mib=4041.0),                      # 1.025% over the cluster's first: a new cluster
           _p("d", 100, "s1", bw=1008), _p("e", 100, "s2", bw=1008, weights="legacy"),  # bandwidth / kind apart
           _p("f", 90, "s4", tensor_parallel=2), _p("g", 95, "s5", tensor_parallel=2, outlier="flagged"),
           _p("h", 80, "s6", gpu="RTX 4090"), _p("i", 82, "s6", gpu="RTX 4090")]    # one post: not repeats
    assert _ids(rn.repeat_groups(pts, _no_era)) == [[["a"], ["b"]]]
    # the era splits: a's older build no longer pairs with b, and b's cluster now starts at b (c within 1% of it)
    assert _ids(rn.repeat_groups(pts, lambda p: p["id"] == "a")) == [[["b"], ["c"]]]
    # a post field makes two rows of one URL two members
    pts[-1]["post"] = "comment-2"
    assert ["h"] in _ids(rn.repeat_groups(pts, _no_era))[1] and len(rn.repeat_groups(pts, _no_era)) == 2


def test_same_post_rows_collapse_to_their_geometric_mean():
    pts = [_p("a1", 100, "s1"), _p("a2", 121, "s1"), _p("b", 99, "s2"), _p("c", 130, "s3")]
    (g,) = rn.repeat_groups(pts, _no_era)
    assert [len(m) for m in g] == [2, 1, 1]
    assert math.exp(rn.log_rate(g[0])) == pytest.approx(110.0)
    r = rn.loo_ratios(g)
    assert r[0] == pytest.approx(110 / math.sqrt(99 * 130))
    assert r[1] == pytest.approx(99 / math.sqrt(110 * 130))
    assert r[2] == pytest.approx(130 / math.sqrt(110 * 99))


def test_pooled_sigma_and_shares_from_the_formulas():
    # group A: a pair at 100 and 150; group B: 50, 60, 90 (posts distinct)
    pts = [_p("a", 100, "s1"), _p("b", 150, "s2"),
           _p("c", 50, "s1", gpu="RTX 4090", bw=1008), _p("d", 60, "s2", gpu="RTX 4090", bw=1008),
           _p("e", 90, "s3", gpu="RTX 4090", bw=1008)]
    groups = rn.repeat_groups(pts, _no_era)
    ya, yb = [math.log(100), math.log(150)], [math.log(50), math.log(60), math.log(90)]
    ss = sum((y - sum(ya) / 2) ** 2 for y in ya) + sum((y - sum(yb) / 3) ** 2 for y in yb)
    s = math.sqrt(ss / (5 - 2))
    assert rn.pooled_sigma(groups) == pytest.approx(s)
    nd = NormalDist(0, s)
    assert rn.lognormal_share(s, 0.15) == pytest.approx(nd.cdf(math.log(1.15)) - nd.cdf(math.log(0.85)))
    # the oracle's own error: variance s^2 n / (n - 1): 2 s^2 for the pair's 2 members, 1.5 s^2 for the triple's 3
    pair, tri = NormalDist(0, s * math.sqrt(2)), NormalDist(0, s * math.sqrt(1.5))
    want = (2 * (pair.cdf(math.log(1.15)) - pair.cdf(math.log(0.85)))
            + 3 * (tri.cdf(math.log(1.15)) - tri.cdf(math.log(0.85)))) / 5
    assert rn.expected_loo_share(groups, s, 0.15) == pytest.approx(want)
    st = rn.stats(groups, predict=None)
    ratios = [150 / 100, 100 / 150, 50 / math.sqrt(60 * 90), 60 / math.sqrt(50 * 90), 90 / math.sqrt(50 * 60)]
    assert (st["groups"], st["members"]) == (2, 5)
    assert st["oracle_0.15"] == sum(abs(r - 1) <= 0.15 for r in ratios)
    assert st["oracle_0.25"] == sum(abs(r - 1) <= 0.25 for r in ratios)


def test_model_against_oracle_counts():
    pts = [_p("a", 100, "s1"), _p("b", 130, "s2")]  # oracle ratios 0.77 and 1.3: both miss 15%
    groups = rn.repeat_groups(pts, _no_era)
    st = rn.stats(groups, predict=lambda p: 115.0)  # 1.15 and 0.885: both within 15%
    assert st["model_0.15"] == 2 and st["oracle_0.15"] == 0
    assert st["model_miss_where_oracle_miss"] == (0, 2) and st["model_miss_where_oracle_hit"] == (0, 0)
    assert st["model_abs_log"] == pytest.approx((math.log(1.15) + abs(math.log(115 / 130))) / 2)


def test_lognormal_share_limits_and_wilson():
    assert rn.lognormal_share(0.0) == 1.0
    assert rn.lognormal_share(1e-3) == pytest.approx(1.0)
    assert rn.lognormal_share(10.0) < 0.02
    k, n, z = 8, 10, 1.96
    p = k / n
    c, h = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert rn.wilson(k, n) == pytest.approx((c - h, c + h))


def test_sigma_interval_from_chi_square_quantiles():
    # chi-square table values (df 10: 3.247 and 20.483 at 0.025 / 0.975; df 30: 16.791 and 46.979)
    for df, lo, hi in ((10, 3.247, 20.483), (30, 16.791, 46.979)):
        assert rn.chi2_quantile(0.025, df) == pytest.approx(lo, rel=0.01)
        assert rn.chi2_quantile(0.975, df) == pytest.approx(hi, rel=0.01)
    a, b = rn.sigma_interval(0.1, 10)
    assert (a, b) == pytest.approx((0.1 * math.sqrt(10 / rn.chi2_quantile(0.975, 10)),
                                    0.1 * math.sqrt(10 / rn.chi2_quantile(0.025, 10))))
    assert a < 0.1 < b
    assert all(math.isnan(x) for x in rn.sigma_interval(0.1, 2))


def test_recorded_ceiling_matches_the_fixtures():
    """benchmarks/results/repeat_noise.md's ceiling line is what the script computes now (re-record after a
    fixture changes: python benchmarks/bench_repeat_noise.py --record)."""
    text = (ROOT / "benchmarks" / "results" / "repeat_noise.md").read_text(encoding="utf-8")
    m = re.search(r"ceiling: (\d+) groups, (\d+) members \((\d+) rows\); oracle within 15%: (\d+) of \d+.*"
                  r"within 25%: (\d+) of", text)
    assert m, "no ceiling line in repeat_noise.md"
    sig = re.search(r"log-rate sigma \(pooled, n-1\): ([0-9.]+)", text)
    st = rn.stats(rn.repeat_groups(rn.load_points()), predict=None)
    assert tuple(int(x) for x in m.groups()) == (st["groups"], st["members"], st["rows"], st["oracle_0.15"],
                                                 st["oracle_0.25"])
    assert float(sig.group(1)) == pytest.approx(st["sigma"], abs=1e-4)


def test_bias_oracles_learn_only_what_other_points_say():
    # post s1 runs 20% slow on both of its GPUs; s2 and s3 agree with the model: the post's own other rows learn it
    pts = [_p("a", 100, "s1"), _p("b", 100, "s1", gpu="RTX 4090", bw=1008), _p("c", 120, "s2"),
           _p("d", 120, "s3", gpu="RTX 4090", bw=1008), _p("x", 1, "s9", outlier=True)]
    got = rn.bias_oracles(pts, predict=lambda p: 120.0)
    assert got["model"] == (2, 4)  # 1.2 misses on s1's two rows; the outlier is not counted
    assert got["post"] == (4, 4)  # s1's rows each corrected by the other's +0.18
    assert got["post and gpu"] == (2, 4)  # s1 has one row per GPU: nothing to learn
    # the same GPU in another post: a stays at 1.2 (c's residual is 0), c moves to 0.83 (a's +0.18): all four miss
    assert got["gpu"] == (0, 4)


def test_bias_oracles_gpu_correction_from_other_posts_only():
    # one GPU reads 25% over the model in every post: the cross-post GPU mean learns it, a lone post does not
    pts = [_p("a", 125, "s1"), _p("b", 125, "s2"), _p("c", 125, "s3")]
    got = rn.bias_oracles(pts, predict=lambda p: 100.0)
    assert got["model"] == (0, 3) and got["gpu"] == (3, 3) and got["post"] == (0, 3)


def test_within_post_size_slopes_recover_a_size_term():
    # residual ln(pred/meas) = 0.2 x ln(bytes) + a per-post offset: the within-post slope is 0.2, offsets drop out
    pts = []
    for post, off in (("s1", 0.3), ("s2", -0.4)):
        for mib in (1000.0, 4000.0, 16000.0):
            pts.append(_p(f"{post}-{mib}", 100 * math.exp(-(0.2 * math.log(mib) + off)), post, mib=mib))
    pts.append(_p("lone", 50, "s3", gpu="RTX 4090", bw=1008))  # a set of one: no slope from it
    slopes = rn.within_post_size_slopes(pts, predict=lambda p: 100.0)
    assert list(slopes) == ["cuda"]
    assert slopes["cuda"][0] == pytest.approx(0.2) and slopes["cuda"][1] == 6


def test_recorded_bias_oracles_match_the_fixtures():
    text = (ROOT / "benchmarks" / "results" / "repeat_noise.md").read_text(encoding="utf-8")
    m = re.search(r"within 15%: stackgen (\d+) of (\d+) .*?other posts .*? (\d+) of \d+ .*?other points .*? (\d+) of "
                  r"\d+ .*?same GPU (\d+) of", text)
    assert m, "no bias-oracle line in repeat_noise.md"
    got = rn.bias_oracles([p for p in rn.load_points() if p["_file"] == rn.FILES[0]])
    assert tuple(int(x) for x in m.groups()) == (got["model"][0], got["model"][1], got["gpu"][0], got["post"][0],
                                                 got["post and gpu"][0])
