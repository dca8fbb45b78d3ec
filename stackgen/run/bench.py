"""Drive a running service with the workload's shape and compare what it does with what the plan predicted.

`concurrent_users` threads each keep one streaming request (`stream: true` on /v1/completions, SSE) in flight until a
fixed number of requests (or a duration) is done. Per request we record the time to the first token (TTFT), the gaps
between tokens (inter-token latency, ITL) and the tokens received; the engine's peak RSS is sampled in a thread when
its pid is known. No printing here: progress goes to a callback, problems raise `LaunchError`.
"""

from __future__ import annotations

import http.client
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from stackgen import datafile, engines
from stackgen.errors import LaunchError, StackgenError
from stackgen.run.client import RequestResult, connection, stream_completion
from stackgen.run.process import rss_tree

_WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing about rivers mountains "
          "and old cities under a pale morning sky").split()

Progress = Callable[[int, int, int], None]  # (requests done, requests planned or -1, errors)


class BenchError(LaunchError):
    """The benchmark could not run (service unreachable, bad arguments)."""


# ---------------------------------------------------------------------------------------------- statistics


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) like numpy's default; 0.0 for no values."""
    xs = sorted(values)
    if not xs:
        return 0.0
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * (q / 100.0)
    lo, hi = math.floor(k), math.ceil(k)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at one instant (closed intervals; an end and a start at the same time overlap)."""
    events: list[tuple[float, int]] = []
    for a, b in intervals:
        events.append((a, 0))  # starts sort before ends at equal times
        events.append((b, 1))
    best = cur = 0
    for _, kind in sorted(events):
        cur += 1 if kind == 0 else -1
        best = max(best, cur)
    return best


def decode_aggregate(results: Iterable[RequestResult]) -> float:
    """The aggregate decode rate of the streams decoding at once: at each instant the decode rates (each after its
    first token) of the requests decoding then, added up, averaged over the time the most streams decode together.
    One request per stream all at once (`up --verify`) gives every request's rate added up; a bench of many
    requests per stream gives about streams x per-stream rate, not every request's rate added up (which grows
    with the number of requests). `bench` and `up --verify` both take it through `summarize`."""
    events: list[tuple[float, int, float]] = []
    for r in results:
        d = r.decode_tokens_per_s() if r.ok else None
        if d is not None:
            events.append((r.token_times[0], 1, d))
            events.append((r.token_times[-1], -1, d))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at one instant: touching is not at once
    count, rate, prev = 0, 0.0, None
    best, time_at_best, area = 0, 0.0, 0.0
    for t, kind, d in events:
        if prev is not None and t > prev and count > 0:
            if count > best:
                best, time_at_best, area = count, 0.0, 0.0
            if count == best:
                time_at_best += t - prev
                area += (t - prev) * rate
        count += kind
        rate += kind * d
        prev = t
    return area / time_at_best if time_at_best > 0 else 0.0


# ---------------------------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """The fixed output shape of `stackgen bench` (JSON via `to_json`)."""

    service: str
    engine: str
    url: str
    model: str
    concurrent_users: int
    prompt_tokens: int
    max_tokens: int
    requests: int
    errors: int
    output_tokens: int
    wall_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_max_s: float
    itl_p50_s: float
    itl_p95_s: float
    per_stream_decode_tokens_per_s: float
    max_concurrent_streams: int
    peak_rss_bytes: int | None
    predicted_decode_tokens_per_s: float | None
    predicted_host_bytes: int | None
    error_samples: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    json_schema: bool = False  # every request carried the --json-schema schema
    invalid_json: int = 0  # constrained outputs that did not parse as JSON
    # The per-backend speed model (stackgen/plan/speed.py) at this run's concurrency, and its stated error.
    predicted_per_user_tokens_per_s: float | None = None
    predicted_aggregate_tokens_per_s: float | None = None
    predicted_ttft_s: float | None = None
    # The decode rates (each after its first token) of the streams decoding at once, added up (`decode_aggregate`):
    # the aggregate decode rate the forecast's aggregate predicts, while output_tokens_per_s also spends the wall
    # time on prefill, queueing and HTTP.
    decode_aggregate_tokens_per_s: float = 0.0
    predicted_error: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(results: list[RequestResult], *, wall_s: float, service: str = "", engine: str = "", url: str = "",
              model: str = "", users: int = 1, prompt_tokens: int = 0, max_tokens: int = 0,
              peak_rss: int | None = None, predicted_tps: float | None = None,
              predicted_host_bytes: int | None = None, json_schema: bool = False, forecast=None) -> BenchResult:
    ok = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    itls = [g for r in ok for g in r.itls()]
    decode = [d for d in (r.decode_tokens_per_s() for r in ok) if d is not None]
    tokens = sum(r.tokens for r in ok)
    res = BenchResult(
        service=service, engine=engine, url=url, model=model, concurrent_users=users, prompt_tokens=prompt_tokens,
        max_tokens=max_tokens, requests=len(results), errors=len(errors), output_tokens=tokens,
        wall_s=round(wall_s, 3), output_tokens_per_s=round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        ttft_p50_s=round(percentile(ttfts, 50), 4), ttft_p95_s=round(percentile(ttfts, 95), 4),
        ttft_max_s=round(max(ttfts), 4) if ttfts else 0.0,
        itl_p50_s=round(percentile(itls, 50), 4), itl_p95_s=round(percentile(itls, 95), 4),
        per_stream_decode_tokens_per_s=round(percentile(decode, 50), 2),
        decode_aggregate_tokens_per_s=round(decode_aggregate(ok), 2),
        max_concurrent_streams=max_overlap((r.ttft_s + r.start, r.end) for r in ok if r.ttft_s is not None),
        peak_rss_bytes=peak_rss, predicted_decode_tokens_per_s=predicted_tps,
        predicted_host_bytes=predicted_host_bytes,
        error_samples=sorted({r.error for r in errors})[:5],
        json_schema=json_schema, invalid_json=sum(1 for r in ok if r.json_ok is False),
    )
    if forecast is not None:
        res.predicted_per_user_tokens_per_s = forecast.per_user_tokens_per_s
        res.predicted_aggregate_tokens_per_s = forecast.aggregate_tokens_per_s
        res.predicted_ttft_s = forecast.ttft_all_s
        res.predicted_error = forecast.error
    res.findings = diagnose(res)
    return res


def diagnose(r: BenchResult) -> list[str]:
    """Where the measurement contradicts the plan, in words, with the knob to turn."""
    out: list[str] = []
    knob = _engine(r.engine).parallel_setting if _engine(r.engine) else "the engine's parallel-request setting"
    if r.errors:
        first = r.error_samples[0] if r.error_samples else "unknown error"
        out.append(f"{r.errors} of {r.requests} requests failed (first: {first}); check the engine log "
                   f"(`stackgen logs`) and that the service is up and healthy")
    ok_requests = r.requests - r.errors
    queued = False
    if r.ttft_p50_s > 0 and r.ttft_p95_s > 10 * r.ttft_p50_s:
        queued = True
        out.append(f"requests queue: TTFT p95 {r.ttft_p95_s:.3f} s is {r.ttft_p95_s / r.ttft_p50_s:.0f}x the p50 "
                   f"{r.ttft_p50_s:.3f} s; raise {knob} to concurrent_users ({r.concurrent_users})")
    if (not queued and r.concurrent_users > 1 and ok_requests >= 2 * r.concurrent_users
            and 0 < r.max_concurrent_streams < r.concurrent_users):
        out.append(f"requests queue: the service streamed at most {r.max_concurrent_streams} responses at once "
                   f"while {r.concurrent_users} users were waiting; raise {knob} to concurrent_users "
                   f"({r.concurrent_users})")
    out += memory_findings(r)
    if r.invalid_json:
        out.append(f"{r.invalid_json} of {ok_requests} schema-constrained outputs are not valid JSON: cut off at "
                   f"max_tokens ({r.max_tokens}) before the object closed, or the engine ignored the schema")
    out += speed_findings(r)
    # The same forecast the speed-model line prints: per user at the measured concurrency (the single-stream
    # roofline only for a service the planner has no forecast for, e.g. multi-node)
    users = f"{r.concurrent_users} user{'s' if r.concurrent_users != 1 else ''}"
    pred, what = ((r.predicted_per_user_tokens_per_s, f"predicted per user at {users}")
                  if r.predicted_per_user_tokens_per_s else (r.predicted_decode_tokens_per_s, "predicted"))
    if pred and r.per_stream_decode_tokens_per_s and r.per_stream_decode_tokens_per_s < 0.5 * pred:
        agg = f"; aggregate {r.output_tokens_per_s:.1f} tok/s over {r.concurrent_users} streams" \
            if r.concurrent_users > 1 else ""
        out.append(f"decode is slower than planned: {r.per_stream_decode_tokens_per_s:.1f} tok/s per stream vs "
                   f"{pred:.1f} {what} (< 50%){agg}. The plan assumes memory-bandwidth-bound decode: the engine "
                   f"is compute-bound (check CPU threads, -t, and other load on the machine) or "
                   f"hardware.memory_bandwidth_gbs is higher than this machine reaches")
    return out


def speed_findings(r: BenchResult) -> list[str]:
    """Measured decode per user against the speed model's prediction at this concurrency: a finding when they differ
    by more than the model's stated error for the backend (speed.Backend.error)."""
    pred, err, got = r.predicted_per_user_tokens_per_s, r.predicted_error, r.per_stream_decode_tokens_per_s
    if not pred or err is None or not got:
        return []
    ratio = got / pred
    if abs(ratio - 1) <= err:
        return []
    side = "slower" if ratio < 1 else "faster"
    return [f"decode per user is {side} than the speed model predicts: {got:.1f} tok/s measured vs {pred:.1f} "
            f"predicted at {r.concurrent_users} users ({(ratio - 1) * 100:+.0f}%, outside the model's stated "
            f"+-{err * 100:.0f}% for this backend); `stackgen plan` on this host is off by as much: check "
            f"hardware.memory_bandwidth_gbs and the CPU threads, or record this host's figure"]


RSS_TOLERANCE = 0.05  # RSS a little above the plan is measurement noise (shared pages, allocator slack)


def memory_findings(r: BenchResult) -> list[str]:
    """A measured peak RSS above the plan's system-RAM figure: the plan did not hold under this load."""
    plan, peak = r.predicted_host_bytes, r.peak_rss_bytes
    if not plan or not peak or peak <= plan * (1 + RSS_TOLERANCE):
        return []
    mib = 1024 * 1024
    return [f"peak RSS {peak / mib:.0f} MiB is {(peak - plan) / plan * 100:.0f}% above the plan's {plan / mib:.0f} MiB "
            f"in system RAM: something the plan does not bound grows under load (an override that raises a cache "
            f"bound, another model loaded, or allocator fragmentation); on a machine sized by the plan this ends in "
            f"swapping or the OOM killer. Check `stackgen plan` against the running command and re-run with a "
            f"longer --duration to see whether it keeps growing"]


# ---------------------------------------------------------------------------------------------- driver


def make_prompt(tokens: int, index: int = 0) -> str:
    """About `tokens` tokens of plain English (one common word is about one token); varied per request so no two
    requests share a cached prefix beyond the first word."""
    words = [f"Request {index}:"]
    n = max(1, tokens - 3)
    for i in range(n):
        words.append(_WORDS[(i + index) % len(_WORDS)])
    return " ".join(words)


def _engine(name: str):
    return engines.ENGINES.get(name)


def schema_fields(engine: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The /v1/completions fields that constrain a request to `schema`, as the engine takes them
    (`Engine.schema_fields`: vLLM OpenAI's response_format, llama-server its own `json_schema`)."""
    e = _engine(engine)
    fields = e.schema_fields(schema) if e is not None else None
    if fields is None:
        takes = " and ".join(x.short for x in _all_engines() if x.schema_fields({}) is not None)
        raise BenchError(f"{engine}'s /v1/completions takes no JSON schema: --json-schema works with {takes}")
    return fields


def _all_engines():
    return list(engines.ENGINES.values())


def request_fields(model: str, prompt: str, max_tokens: int,
                   constrain: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of bench's streaming /v1/completions request (no `model` when it is "": the server's one model)."""
    fields: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                              "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    if not model:
        fields.pop("model")
    if constrain:  # a grammar ends the output when the object closes: ignoring EOS would leave no legal token
        fields.update(constrain)
        fields.pop("ignore_eos")
    return fields


def one_request(host: str, port: int, model: str, prompt: str, max_tokens: int, *, api_key: str | None = None,
                timeout: float = 120.0, tls: bool = False, constrain: dict[str, Any] | None = None) -> RequestResult:
    return stream_completion(host, port, request_fields(model, prompt, max_tokens, constrain), api_key=api_key,
                             timeout=timeout, tls=tls, check_json=bool(constrain))


class RssSampler:
    """Peak RSS of a process and its children, sampled every `interval` seconds in a thread."""

    def __init__(self, pid: int | None, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        import psutil

        try:
            total = rss_tree(self.pid)
        except psutil.Error:
            return
        self.peak = max(self.peak or 0, total)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self.sample()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self.pid:
            self.sample()


def check_reachable(host: str, port: int, timeout: float = 5.0, tls: bool = False) -> None:
    try:
        conn = connection(host, port, timeout, tls)
        conn.request("GET", "/health")
        conn.getresponse().read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"nothing answers at http://{host}:{port} ({exc.__class__.__name__}: {exc}); "
                         f"start the service first (`stackgen up FILE`)") from None


def drive(host: str, port: int, model: str, *, users: int, max_tokens: int, prompt_tokens: int = 0,
          prompt: str | None = None, requests: int | None = None, duration_s: float | None = None,
          api_key: str | None = None, pid: int | None = None, timeout: float = 120.0,
          progress: Progress | None = None, tls: bool = False, constrain: dict[str, Any] | None = None
          ) -> tuple[list[RequestResult], float, int | None]:
    """The load itself: `users` threads, each with one streaming request in flight, until `requests` are done (or
    `duration_s` has passed). `prompt` (the same for every request) or about `prompt_tokens` of varied text.
    Returns the requests, the wall time and the peak RSS of `pid`'s tree. `bench` and `up --verify` both run it."""
    if requests is None and duration_s is None:
        requests = users * 4
    lock = threading.Lock()
    results: list[RequestResult] = []
    issued = [0]
    planned = requests if requests is not None else -1
    deadline = time.perf_counter() + duration_s if duration_s is not None else None
    # Bound every loop: even in duration mode, at most this many requests.
    cap = requests if requests is not None else max(users, 1) * 100_000

    def worker() -> None:
        while True:
            with lock:
                if issued[0] >= cap or (deadline is not None and time.perf_counter() >= deadline):
                    return
                index = issued[0]
                issued[0] += 1
            text = make_prompt(prompt_tokens, index) if prompt is None else prompt
            r = one_request(host, port, model, text, max_tokens, api_key=api_key,
                            timeout=timeout, tls=tls, constrain=constrain)
            with lock:
                results.append(r)
                done, errs = len(results), sum(1 for x in results if not x.ok)
            if progress:
                progress(done, planned, errs)

    with RssSampler(pid) as rss:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, daemon=True, name=f"bench-user-{i}") for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    return results, wall, rss.peak


def run_load(host: str, port: int, model: str, *, users: int, prompt_tokens: int, max_tokens: int,
             requests: int | None = None, duration_s: float | None = None, api_key: str | None = None,
             pid: int | None = None, timeout: float = 120.0, progress: Progress | None = None,
             service: str = "", engine: str = "", predicted_tps: float | None = None,
             predicted_host_bytes: int | None = None, tls: bool = False,
             json_schema: dict[str, Any] | None = None, forecast=None) -> BenchResult:
    """`users` threads, each with one streaming request in flight, until `requests` are done (or `duration_s` has
    passed: no new request starts after it). Returns the summary."""
    if users < 1:
        raise BenchError("users must be at least 1")
    if requests is None and duration_s is None:
        requests = users * 4
    if requests is not None and requests < 1:
        raise BenchError("--requests must be at least 1")
    if duration_s is not None and duration_s <= 0:
        raise BenchError("--duration must be positive")
    constrain = schema_fields(engine, json_schema) if json_schema is not None else None
    check_reachable(host, port, tls=tls)
    results, wall, peak = drive(host, port, model, users=users, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                                requests=requests, duration_s=duration_s, api_key=api_key, pid=pid, timeout=timeout,
                                progress=progress, tls=tls, constrain=constrain)
    return summarize(results, wall_s=wall, service=service, engine=engine, url=f"http://{host}:{port}/v1/completions",
                     model=model, users=users, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                     peak_rss=peak, predicted_tps=predicted_tps, predicted_host_bytes=predicted_host_bytes,
                     json_schema=constrain is not None, forecast=forecast)


# ---------------------------------------------------------------------------------------------- from a plan


def running_service(stack_file: str | Path, service: str):
    """The ServiceState `up` recorded for `service` when it runs and is the process (or labelled container) `up`
    started: the identity `down` checks before signalling (start time, executable, STACKGEN_SERVICE_ID; a
    container's dev.stackgen labels). None otherwise, a damaged state included."""
    from stackgen.errors import StackgenError
    from stackgen.run.native import _runner_for
    from stackgen.run.state import StateDir

    try:
        sd = StateDir(stack_file)
        if not sd.has_state():
            return None
        state = sd.load()
        st = state.services.get(service)
        if st is None:
            return None
        return st if _runner_for(st.kind, sd.stack_file, state.stack).is_alive(st) else None
    except StackgenError:
        return None


def pick_service(plan, name: str | None):
    if name is None:
        if len(plan.services) != 1:
            names = ", ".join(s.name for s in plan.services)
            raise BenchError(f"the stack has {len(plan.services)} services ({names}): pick one with --service")
        return plan.services[0]
    try:
        return plan.service(name)
    except KeyError:
        names = ", ".join(s.name for s in plan.services)
        raise BenchError(f"no service {name!r} in the stack (services: {names})") from None


def bench_plan(plan, stack_file: str | Path, service: str | None = None, *, users: int | None = None,
               requests: int | None = None, duration_s: float | None = None, progress: Progress | None = None,
               timeout: float = 120.0, json_schema: dict[str, Any] | None = None) -> BenchResult:
    """Bench one service of a resolved plan with its workload shape (users overridable for sweeps)."""
    sp = pick_service(plan, service)
    # Where to send requests is the plan's: the state folder is trusted only to remember what `up` started, not to
    # name a host and port (a planted state.json sent the key to its own listener: audit a2 #10).
    host = sp.host if sp.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    port = sp.port
    st = running_service(stack_file, sp.name)
    if st is not None and st.port != port:
        st = None  # a record of an older plan of this service
    api_key = os.environ.get(sp.api_key_env) if sp.api_key_env else None
    if api_key and st is None:
        raise BenchError(f"service {sp.name}: bench sends the API key (${sp.api_key_env}) only to the engine "
                         f"`stackgen up` started, and none it started runs on port {port} (start it with `stackgen "
                         f"up {stack_file}`; whatever else listens there is not sent the key)")
    model = (st.model_name if st is not None else "") or sp.name
    pid = st.pid if st is not None and st.kind == "process" else None
    wl = sp.workload
    n_users = users or wl.concurrent_users
    from stackgen.plan.speed import forecast_at
    forecast = forecast_at(sp, plan.hardware, n_users)
    return run_load(host, port, model, users=n_users, prompt_tokens=wl.prompt_tokens, max_tokens=wl.output_tokens,
                    requests=requests, duration_s=duration_s, api_key=api_key, pid=pid, timeout=timeout,
                    progress=progress, service=sp.name, engine=sp.engine,
                    predicted_tps=sp.predicted_decode_tokens_per_s, predicted_host_bytes=sp.memory.host_bytes,
                    tls=sp.tls is not None, json_schema=json_schema, forecast=forecast)


def load_schema(path: str | Path) -> dict[str, Any]:
    """A JSON schema file for --json-schema (a JSON object)."""
    try:
        doc = datafile.load_json(path, "a JSON schema", "give a schema of the shape the answers should have")
    except OSError as exc:
        raise BenchError(f"--json-schema {path}: cannot read it ({exc.strerror or exc})") from None
    except datafile.DataFileError as exc:
        raise BenchError(f"--json-schema {exc}") from None
    except ValueError as exc:
        raise BenchError(f"--json-schema {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BenchError(f"--json-schema {path}: a JSON schema is an object, e.g. {{\"type\": \"object\"}}")
    return doc


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a one-line error naming the pip command."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise StackgenError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def plot(results: list[BenchResult], out: str | Path) -> Path:
    """Three panels against concurrent users (whole numbers), every y axis from 0, units on the axes, and the
    plan's prediction drawn beside each measurement it predicts: decode tokens/s (the plan's single-stream
    bandwidth-bound speed) and memory (the plan's host bytes). TTFT has no prediction in the plan."""
    plt = require_matplotlib()
    from matplotlib.ticker import FixedLocator

    results = sorted(results, key=lambda r: r.concurrent_users)
    users = [r.concurrent_users for r in results]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 5.2))
    a.plot(users, [r.output_tokens_per_s for r in results], marker="o", label="measured: all streams")
    a.plot(users, [r.per_stream_decode_tokens_per_s for r in results], marker="s", label="measured: per stream (p50)")
    pred = next((r.predicted_decode_tokens_per_s for r in results if r.predicted_decode_tokens_per_s), None)
    if pred:
        a.axhline(pred, color="tab:gray", linestyle="--", label=f"plan: {pred:g} tok/s per stream")
    a.set_title("decode throughput")
    a.set_ylabel("output tokens/s")
    b.plot(users, [r.ttft_p50_s for r in results], marker="o", label="measured: p50")
    b.plot(users, [r.ttft_p95_s for r in results], marker="o", label="measured: p95")
    b.set_title("time to first token")
    b.set_ylabel("seconds")
    mib = [(r.peak_rss_bytes or 0) / 2**20 for r in results]
    c.bar(users, mib, width=0.5 if len(users) == 1 else 0.5 * min(y - x for x, y in zip(users, users[1:])),
          color="tab:blue", label="measured: peak RSS")
    host = next((r.predicted_host_bytes for r in results if r.predicted_host_bytes), None)
    if host:
        c.axhline(host / 2**20, color="tab:gray", linestyle="--", label=f"plan: {host / 2**20:.0f} MiB host")
    c.set_title("memory (engine processes)")
    c.set_ylabel("MiB")
    for ax in (a, b, c):
        ax.xaxis.set_major_locator(FixedLocator(users))  # user counts are whole numbers: no 1.5 users
        ax.set_xlabel("concurrent users")
        ax.set_xlim(min(users) - 0.6, max(users) + 0.6)
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
        # below the axes: a legend inside would hide points or bars
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False)
    if results:
        r0 = results[0]
        fig.suptitle(f"stackgen bench: {r0.service} ({r0.engine}), ~{r0.prompt_tokens} prompt + {r0.max_tokens} "
                     f"output tokens per request")
    fig.tight_layout()
    out = Path(out)
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise StackgenError(f"{out}: cannot write the plot: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
