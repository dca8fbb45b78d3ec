"""stackgen.run.bench against a tiny fake OpenAI server on 127.0.0.1 (no engine needed)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from fakes.openai_server import FakeOpenAIServer
from stackgen.errors import LaunchError, StackgenError
from stackgen.run import bench
from stackgen.run.bench import BenchResult, RequestResult, max_overlap, percentile, summarize
from stackgen.run.client import iter_sse_data


def FakeServer(tokens: int = 5, delay: float = 0.01, serialize: bool = False, fail_every: int = 0,
               usage: bool = True, api_key: str | None = None) -> FakeOpenAIServer:
    """The shared fake (tests/fakes/openai_server.py) as bench meets it: streams `tokens` completion chunks per
    request, `delay` seconds apart, HTTP/1.1 chunked with a keep-alive comment first and the usage in the finish
    chunk. serialize=True: one request at a time (a server with one slot); fail_every=k: every k-th request answers
    HTTP 500."""
    return FakeOpenAIServer(tokens=tokens, delay=delay, serialize=serialize, fail_every=fail_every,
                            usage="last" if usage else None, api_key=api_key, chunked=True, keepalive=True)


def load(port, **kw):
    args = dict(users=4, prompt_tokens=32, max_tokens=6, requests=12, timeout=10, engine="llama.cpp")
    args.update(kw)
    return bench.run_load("127.0.0.1", port, "svc", **args)


# ---------------------------------------------------------------------------------------------- statistics


def test_percentile_matches_linear_interpolation():
    xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert percentile(xs, 50) == pytest.approx(5.5)
    assert percentile(xs, 95) == pytest.approx(9.55)
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 10
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 95) == 3.0
    assert percentile(reversed(xs), 50) == pytest.approx(5.5)


def test_max_overlap():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 2  # touching ends count as overlapping
    assert max_overlap([(0, 1), (1.5, 2)]) == 1
    assert max_overlap([(0, 10), (1, 2), (3, 4), (1.5, 3.5)]) == 3


def test_sse_parser():
    lines = [b": comment\n", b"data: {\"a\": 1}\n", b"\n", b"data: x\r\n", b"data: y\r\n", b"\r\n",
             b"event: foo\n", b"data:nospace\n", b"\n", b"data: [DONE]\n", b"\n", b"data: after\n", b"\n"]
    assert list(iter_sse_data(lines)) == ['{"a": 1}', "x\ny", "nospace"]
    assert list(iter_sse_data([b"data: tail"])) == ["tail"]  # no closing blank line


def test_summarize_and_diagnosis_text():
    def req(start, first, n, gap):
        return RequestResult(ok=True, start=start, ttft_s=first, tokens=n,
                             token_times=[start + first + i * gap for i in range(n)])

    rs = [req(0, 0.1, 5, 0.1), req(0, 0.1, 5, 0.1), req(0, 3.0, 5, 0.1), RequestResult(ok=False, error="HTTP 500: x")]
    r = summarize(rs, wall_s=2.0, engine="llama.cpp", users=2, predicted_tps=100.0)
    assert (r.requests, r.errors, r.output_tokens) == (4, 1, 15)
    assert r.output_tokens_per_s == 7.5
    assert r.ttft_p50_s == pytest.approx(0.1) and r.ttft_max_s == pytest.approx(3.0)
    assert r.itl_p50_s == pytest.approx(0.1)
    assert r.per_stream_decode_tokens_per_s == pytest.approx(10.0)
    # the decode rates of the streams decoding at once added up (10 tokens/s each after their first token: two
    # decode together, the third after them), not tokens / wall and not every request's rate added up
    assert r.decode_aggregate_tokens_per_s == pytest.approx(20.0)
    text = " ".join(r.findings)
    assert "1 of 4 requests failed (first: HTTP 500: x)" in text
    assert "requests queue" in text and "-np" in text
    assert "decode is slower than planned" in text
    doc = json.loads(json.dumps(r.to_json()))
    assert set(doc) == set(BenchResult.__dataclass_fields__)


def _stream_requests(stream_starts, n, gap, first=0.5):
    """One request per start: its first token `first` s after it, then n-1 more `gap` s apart."""
    return [RequestResult(ok=True, start=s, ttft_s=first, tokens=n,
                          token_times=[s + first + i * gap for i in range(n)]) for s in stream_starts]


def test_decode_aggregate_is_the_streams_at_once_not_every_request_added_up():
    # 4 streams, 4 requests each one after the other (bench -n 16 at 4 users), each decoding at 4 tokens/s: the
    # engine decodes 4 x 4 = 16 tokens/s; adding all 16 requests' rates said 64 (the audit's 106 at 4.55 per stream)
    rs = []
    for stream in range(4):
        rs += _stream_requests([stream * 0.2 + k * 10.0 for k in range(4)], n=33, gap=0.25)
    r = summarize(rs, wall_s=40.0, users=4)
    assert r.per_stream_decode_tokens_per_s == pytest.approx(4.0)
    assert r.max_concurrent_streams == 4
    assert r.decode_aggregate_tokens_per_s == pytest.approx(16.0)
    # the same 4 streams with one request each (up --verify's load) measure the same aggregate
    one_round = summarize(_stream_requests([s * 0.2 for s in range(4)], n=33, gap=0.25), wall_s=10.0, users=4)
    assert one_round.decode_aggregate_tokens_per_s == pytest.approx(16.0)
    # more requests per stream do not raise it
    rs32 = []
    for stream in range(4):
        rs32 += _stream_requests([stream * 0.2 + k * 10.0 for k in range(8)], n=33, gap=0.25)
    assert summarize(rs32, wall_s=80.0, users=4).decode_aggregate_tokens_per_s == pytest.approx(16.0)


def test_decode_aggregate_adds_the_rates_of_streams_at_once_as_verify_measures_them():
    # up --verify: one request per user, all at once, at different rates: every rate added up
    fast = _stream_requests([0.0, 0.0], n=21, gap=0.1)  # 10 tokens/s
    slow = _stream_requests([0.0, 0.0], n=11, gap=0.2)  # 5 tokens/s
    assert bench.decode_aggregate(fast + slow) == pytest.approx(30.0)
    # a server with 2 slots serving 4 requests decodes 2 at once: 2 x 10, not 4 x 10
    queued = _stream_requests([0.0, 0.0], n=21, gap=0.1) + _stream_requests([2.5, 2.5], n=21, gap=0.1)
    assert bench.decode_aggregate(queued) == pytest.approx(20.0)
    assert bench.decode_aggregate([]) == 0.0


# ---------------------------------------------------------------------------------------------- fake server


def test_counts_tokens_and_requests():
    with FakeServer(tokens=5, delay=0.005) as srv:
        progress = []
        r = load(srv.port, progress=lambda d, t, e: progress.append((d, t, e)))
    assert r.requests == 12 and r.errors == 0 and srv.count == 12
    assert r.output_tokens == 12 * 5
    assert progress[-1] == (12, 12, 0) and len(progress) == 12
    assert 0 < r.ttft_p50_s <= r.ttft_p95_s <= r.ttft_max_s
    assert r.itl_p50_s > 0
    assert r.output_tokens_per_s > 0
    # the request shape: streaming completions with the workload's lengths
    b = srv.bodies[0]
    assert b["stream"] is True and b["max_tokens"] == 6 and b["model"] == "svc"
    assert 20 <= len(b["prompt"].split()) <= 40


def test_counts_chunks_without_usage():
    with FakeServer(tokens=3, delay=0.001, usage=False) as srv:
        r = load(srv.port, users=2, requests=4)
    assert r.output_tokens == 12 and r.errors == 0


def test_parallel_server_has_no_queueing_finding():
    with FakeServer(tokens=5, delay=0.02) as srv:
        r = load(srv.port, users=4, requests=12)
    assert r.max_concurrent_streams == 4
    assert not any("queue" in f for f in r.findings)


def test_serialized_server_is_diagnosed_as_queueing():
    with FakeServer(tokens=5, delay=0.02, serialize=True) as srv:
        r = load(srv.port, users=4, requests=12)
    assert r.errors == 0 and r.requests == 12
    assert r.max_concurrent_streams == 1
    # waiting for other users' requests: the median TTFT is several whole responses long
    assert r.ttft_p50_s > 5 * 0.02
    assert r.ttft_max_s > r.ttft_p50_s
    assert any("requests queue" in f and "-np" in f and "(4)" in f for f in r.findings)


def test_errors_are_counted_and_reported():
    with FakeServer(tokens=2, delay=0.001, fail_every=3) as srv:
        r = load(srv.port, users=3, requests=9)
    assert r.requests == 9 and r.errors == 3
    assert r.error_samples and r.error_samples[0].startswith("HTTP 500")
    assert any("3 of 9 requests failed" in f for f in r.findings)


def test_bearer_key_is_sent():
    with FakeServer(tokens=2, delay=0.001, api_key="s3cret") as srv:
        ok = load(srv.port, users=1, requests=2, api_key="s3cret")
        bad = load(srv.port, users=1, requests=2)
    assert ok.errors == 0
    assert bad.errors == 2 and "401" in bad.error_samples[0]


def test_duration_mode_is_bounded():
    with FakeServer(tokens=2, delay=0.01) as srv:
        t0 = time.perf_counter()
        r = load(srv.port, users=2, requests=None, duration_s=0.3)
        assert time.perf_counter() - t0 < 5
    assert r.requests >= 2 and r.errors == 0


def test_unreachable_service_raises_launch_error():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LaunchError, match="stackgen up"):
        load(port)


def test_rss_sampler_reads_own_process():
    import os

    with bench.RssSampler(os.getpid(), interval=0.01) as s:
        time.sleep(0.05)
    assert s.peak and s.peak > 1_000_000
    with bench.RssSampler(None) as s:
        pass
    assert s.peak is None


# ---------------------------------------------------------------------------------------------- CLI


def _stack(write_stack, port, users=2):
    return write_stack(f"""version: 1
name: t
hardware:
  memory_gib: 24
  memory_bandwidth_gbs: 40
  cpu: {{cores: 2, threads: 2}}
workload:
  concurrent_users: {users}
  context_tokens: 2048
  prompt_tokens: 16
  output_tokens: 4
services:
  gemma:
    model: gemma-3-270m
    engine: llama.cpp
    port: {port}
""")


def test_cli_bench_json(write_stack, cli):
    with FakeServer(tokens=4, delay=0.002) as srv:
        path = _stack(write_stack, srv.port)
        res = cli("bench", path, "--requests", "4", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["service"] == "gemma" and doc["engine"] == "llama.cpp" and len(doc["results"]) == 1
    doc = doc["results"][0]
    assert doc["requests"] == 4 and doc["errors"] == 0 and doc["output_tokens"] == 16
    assert doc["model"] == "gemma" and doc["concurrent_users"] == 2
    assert doc["predicted_decode_tokens_per_s"] > 0
    assert srv.bodies[0]["model"] == "gemma"


def test_cli_bench_sweep_text(write_stack, cli):
    with FakeServer(tokens=2, delay=0.001) as srv:
        path = _stack(write_stack, srv.port)
        res = cli("bench", path, "--sweep", "1,2", "--requests", "2")
    assert res.exit_code == 0, res.output
    assert res.stdout.count("requests       2 (0 errors)") == 2


def test_cli_bench_json_has_one_shape_with_and_without_sweep(write_stack, cli):
    with FakeServer(tokens=2, delay=0.001) as srv:
        path = _stack(write_stack, srv.port)
        one = json.loads(cli("bench", path, "--requests", "2", "--json").stdout)
        many = json.loads(cli("bench", path, "--sweep", "1,3", "--requests", "3", "--json").stdout)
    assert set(one) == set(many) == {"file", "service", "engine", "results"}
    assert [r["concurrent_users"] for r in one["results"]] == [2]
    assert [r["concurrent_users"] for r in many["results"]] == [1, 3]
    assert set(one["results"][0]) == set(many["results"][1])


def _result(users: int, tps: float, rss: int | None):
    r = summarize([], wall_s=1.0, service="chat", engine="llama.cpp", users=users, prompt_tokens=64, max_tokens=32,
                  peak_rss=rss, predicted_tps=40.0, predicted_host_bytes=900 * 2**20)
    return dataclasses.replace(r, output_tokens_per_s=tps, per_stream_decode_tokens_per_s=tps / users,
                               ttft_p50_s=0.05 * users, ttft_p95_s=0.08 * users)


def test_plot_axes_integer_users_from_zero_with_the_plan_beside(tmp_path, monkeypatch):
    """The PNG's axes, read back from the figure matplotlib drew (Agg): whole-number user ticks, y from 0, units,
    and the plan's per-stream speed and host memory drawn as lines beside the measurements."""
    import matplotlib.pyplot as plt  # the test extra installs matplotlib

    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    out = bench.plot([_result(4, 96.0, 700 * 2**20), _result(1, 35.0, 650 * 2**20), _result(2, 60.0, 680 * 2**20)],
                     tmp_path / "bench.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figs[0]
    tput, ttft, mem = fig.axes
    for ax in fig.axes:
        assert [t for t in ax.get_xticks()] == [1, 2, 4] and ax.get_xlabel() == "concurrent users"
        assert ax.get_ylim()[0] == 0
    assert tput.get_ylabel() == "output tokens/s" and ttft.get_ylabel() == "seconds" and mem.get_ylabel() == "MiB"
    labels = {ln.get_label(): ln for ln in tput.get_lines()}
    assert list(labels["measured: all streams"].get_ydata()) == [35.0, 60.0, 96.0]
    assert set(labels["plan: 40 tok/s per stream"].get_ydata()) == {40.0}
    mem_lines = {ln.get_label(): ln for ln in mem.get_lines()}
    assert set(mem_lines["plan: 900 MiB host"].get_ydata()) == {900.0}
    assert [p.get_height() for p in mem.patches] == [650.0, 680.0, 700.0]
    real_close(fig)


def test_cli_bench_unreachable_is_one_line(write_stack, cli):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = cli("bench", _stack(write_stack, port))
    assert res.exit_code == 1
    assert "Traceback" not in res.output and "stackgen up" in res.output


def test_plot_without_matplotlib_names_pip(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    r = summarize([], wall_s=1.0)
    with pytest.raises(StackgenError, match="pip install matplotlib"):
        bench.plot([r], tmp_path / "x.png")


def test_slower_than_planned_compares_with_the_forecast_at_the_measured_users():
    """`bench` at several users printed the speed model's per-user forecast (measured within its error) AND a
    "< 50%" warning against the single-stream roofline; the warning now uses the same forecast as that line."""
    from types import SimpleNamespace

    def req(start):
        return RequestResult(ok=True, start=start, ttft_s=0.1, tokens=5,
                             token_times=[start + 0.1 + i * 0.1 for i in range(5)])  # 10 tok/s per stream

    rs = [req(0), req(0)]

    def forecast(per_user):
        return SimpleNamespace(per_user_tokens_per_s=per_user, aggregate_tokens_per_s=2 * per_user, ttft_all_s=0.1,
                               error=0.15)

    r = summarize(rs, wall_s=1.0, engine="llama.cpp", users=2, predicted_tps=138.6, forecast=forecast(11.0))
    assert r.per_stream_decode_tokens_per_s == pytest.approx(10.0)
    assert not any("slower" in f for f in r.findings), r.findings  # within the forecast's error: no warning
    r = summarize(rs, wall_s=1.0, engine="llama.cpp", users=2, predicted_tps=138.6, forecast=forecast(30.0))
    slow = [f for f in r.findings if f.startswith("decode is slower than planned")]
    assert slow and "10.0 tok/s per stream vs 30.0 predicted per user at 2 users (< 50%)" in slow[0], slow
    assert "138.6" not in " ".join(r.findings)
    # no forecast (a multi-node service): the single-stream figure, as before
    r = summarize(rs, wall_s=1.0, engine="llama.cpp", users=2, predicted_tps=138.6)
    assert any("vs 138.6 predicted (< 50%)" in f for f in r.findings), r.findings
