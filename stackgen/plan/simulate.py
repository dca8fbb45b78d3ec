"""A discrete-event simulation of users against a fleet of engine instances: `stackgen simulate`.

Model (docs in each class):
- Users are a closed loop: each of `users` sends a request, reads the stream to its end, pauses `think_time_s`
  (exponential, mean from the workload; 0 = always one request in flight) and sends the next one. A request reaches
  its instance half the curve's overhead later and joins the engine then: an engine that has started a step on the
  first of two simultaneous arrivals takes the second at its next step (as llama-server's loop does), so users whose
  requests end together do not stay in lockstep forever.
- A router sends each request to the instance with the fewest requests in flight (HAProxy `balance leastconn`;
  vLLM's internal data-parallel balancer also routes by load); ties go to the lowest index.
- Each instance is an iteration-level batching engine (llama-server slots, vLLM continuous batching): up to
  `max_batch` requests are admitted, others wait FIFO; every step decodes one token for each admitted request past
  its prompt and packs waiting prompt tokens up to the step's token budget (llama.cpp -b, vLLM
  max_num_batched_tokens). A request's first token comes at the end of the step that finishes its prompt.
  The step's duration comes from the instance's ServiceCurve (stackgen.plan.capacity.service_curve).
- Steps with no prompt work are fast-forwarded to the next completion or arrival, so the cost is a few events per
  request, not one per token.
- Variability (`Variability`, all off by default, so the plan's prediction is deterministic): request lengths drawn
  around the workload's prompt_tokens / output_tokens, and service-time jitter: every step that processes prompt
  tokens, and every run of decode steps between two events, takes the curve's time times a factor of mean 1 (a
  lognormal). On a shared host that factor is the other processes' load, which changes over seconds, so one draw
  holds for a whole run of decode steps. Without it every request of a closed loop that does not queue sees the
  same time to first token, and p95 = p50.
Pure: no clock, no threads; seeded random generators for think times and for variability.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from stackgen.run.bench import percentile


class Curve(Protocol):
    max_batch: int
    step_tokens: int
    overhead_s: float

    def step_s(self, decoding: int, prompt_tokens: int) -> float: ...


@dataclass(frozen=True)
class Variability:
    """Coefficients of variation (standard deviation / mean) of what makes one request differ from the next.
    `prompt_cv`, `output_cv`: request lengths around the workload's means (a gamma distribution, at least 1 token);
    `prefill_cv`: the duration of a step that processes prompt tokens; `decode_cv`: the duration of a run of decode
    steps. Measured, e.g. by benchmarks/bench_scale.py from single-stream requests on the real instances."""

    prompt_cv: float = 0.0
    output_cv: float = 0.0
    prefill_cv: float = 0.0
    decode_cv: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prompt_cv", "output_cv", "prefill_cv", "decode_cv"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise ValueError(f"Variability.{name} must be between 0 and 10")

    @property
    def any(self) -> bool:
        return any((self.prompt_cv, self.output_cv, self.prefill_cv, self.decode_cv))


NONE = Variability()


class _Draw:
    """Seeded draws of lengths and jitter factors (none at all when a coefficient is 0, so a run without
    variability is the deterministic one)."""

    def __init__(self, v: Variability, seed: int):
        self.v = v
        self.rng = random.Random(f"variability-{seed}")

    def length(self, mean: int, cv: float) -> int:
        if cv <= 0:
            return max(1, mean)
        k = 1 / (cv * cv)  # gamma with shape k and scale mean/k: mean `mean`, cv `cv`
        return max(1, round(self.rng.gammavariate(k, mean / k)))

    def factor(self, cv: float) -> float:
        if cv <= 0:
            return 1.0
        sigma2 = math.log1p(cv * cv)  # lognormal with mean 1 and this cv
        return self.rng.lognormvariate(-sigma2 / 2, math.sqrt(sigma2))


@dataclass
class _Request:
    user: int
    sent: float
    prompt_left: int
    output: int
    first: float | None = None
    done_at: float | None = None
    finish_d: int = 0  # the instance's decode counter at which this request has all its tokens


@dataclass
class _Instance:
    """One engine instance: the admitted requests (prompt phase FIFO, decode phase by finish counter), a queue."""

    curve: Curve
    transit: deque = field(default_factory=deque)  # sent, not arrived yet (the balancer hop, HTTP)
    queue: deque = field(default_factory=deque)  # arrived, not yet admitted
    prompting: deque = field(default_factory=deque)  # admitted, prompt tokens left
    decoding: list = field(default_factory=list)  # heap of (finish_d, seq, request)
    decoded: int = 0  # steps that decoded (one token for every request in `decoding`)
    busy_until: float = 0.0
    step_started: float = 0.0
    fast: tuple[float, float, int] | None = None  # fast-forward: (start, step seconds, steps planned)
    version: int = 0
    busy_s: float = 0.0

    @property
    def in_flight(self) -> int:
        return len(self.transit) + len(self.queue) + len(self.prompting) + len(self.decoding)

    def admit(self) -> None:
        while self.queue and len(self.prompting) + len(self.decoding) < self.curve.max_batch:
            self.prompting.append(self.queue.popleft())


@dataclass(frozen=True)
class LoadResult:
    users: int
    instances: int
    requests: int
    ttft_p50_s: float
    ttft_p95_s: float
    tokens_per_s_per_user: float  # median over requests of decode tokens/s after the first token
    throughput_tokens_per_s: float  # output tokens/s of the fleet
    utilization: float  # share of time instances were computing (mean over instances)
    queued_share: float  # share of requests that waited for a free slot

    def to_json(self) -> dict:
        return {"users": self.users, "instances": self.instances, "requests": self.requests,
                "ttft_p50_s": round(self.ttft_p50_s, 4), "ttft_p95_s": round(self.ttft_p95_s, 4),
                "tokens_per_s_per_user": round(self.tokens_per_s_per_user, 2),
                "throughput_tokens_per_s": round(self.throughput_tokens_per_s, 2),
                "utilization": round(self.utilization, 3), "queued_share": round(self.queued_share, 3)}


def simulate(curves: list[Curve], *, users: int, prompt_tokens: int, output_tokens: int, think_time_s: float = 0.0,
             rounds: int = 4, seed: int = 0, variability: Variability = NONE) -> LoadResult:
    """Run `users` closed-loop users for about `rounds` requests each (the first round is a warm-up and is not
    counted when there are more) against instances with these curves. With `variability`, lengths and step times
    vary (see Variability); use more rounds then, so the p95 rests on enough requests."""
    if users < 1 or not curves:
        raise ValueError("simulate needs at least one user and one instance")
    rng = random.Random(seed)
    draw = _Draw(variability, seed)
    fleet = [_Instance(c) for c in curves]
    events: list[tuple[float, int, int, str, int, int]] = []  # (time, order, seq, kind, target, version)
    order = [0]

    def push(t: float, kind: str, target: int, version: int = 0) -> None:
        order[0] += 1
        heapq.heappush(events, (t, order[0], order[0], kind, target, version))

    for u in range(users):
        push(0.0, "send", u)
    total = users * rounds
    sent, done = [0], []
    queued = [0]
    seq = [0]

    def schedule(i: int, now: float) -> None:
        inst = fleet[i]
        if inst.busy_until > now + 1e-12:
            return  # a step is in progress; it reschedules when it ends
        inst.admit()
        inst.version += 1
        inst.fast = None
        if not inst.prompting and not inst.decoding:
            return
        if inst.prompting:
            budget = max(1, inst.curve.step_tokens - len(inst.decoding))
            pt = min(budget, sum(r.prompt_left for r in inst.prompting))
            dt = inst.curve.step_s(len(inst.decoding), pt) * draw.factor(variability.prefill_cv)
            inst.step_started, inst.busy_until = now, now + dt
            push(now + dt, "step", i, inst.version)
            return
        steps = max(1, inst.decoding[0][0] - inst.decoded)
        dt = inst.curve.step_s(len(inst.decoding), 0) * draw.factor(variability.decode_cv)
        inst.fast = (now, dt, steps)
        inst.step_started, inst.busy_until = now, now + dt * steps
        push(now + dt * steps, "step", i, inst.version)

    def interrupt(i: int, now: float) -> None:
        """An arrival during a fast-forward: stop at the next step boundary so the new prompt joins."""
        inst = fleet[i]
        if inst.fast is None or inst.busy_until <= now:
            return
        start, dt, steps = inst.fast
        k = min(steps, int((now - start) / dt) + 1)
        if k >= steps:
            return
        inst.version += 1
        inst.fast = (start, dt, k)
        inst.busy_until = start + dt * k
        push(inst.busy_until, "step", i, inst.version)

    def finish_step(i: int, now: float) -> None:
        inst = fleet[i]
        inst.busy_s += now - inst.step_started
        if inst.fast is not None:
            inst.decoded += inst.fast[2]
        else:
            if inst.decoding:
                inst.decoded += 1
            budget = max(1, inst.curve.step_tokens - len(inst.decoding))
            while inst.prompting and budget > 0:
                r = inst.prompting[0]
                take = min(budget, r.prompt_left)
                r.prompt_left -= take
                budget -= take
                if r.prompt_left:
                    break
                inst.prompting.popleft()
                r.first = now
                seq[0] += 1
                heapq.heappush(inst.decoding, (inst.decoded + r.output - 1, seq[0], r))
        inst.fast = None
        inst.busy_until = now
        while inst.decoding and inst.decoding[0][0] <= inst.decoded:
            _, _, r = heapq.heappop(inst.decoding)
            r.done_at = now
            done.append(r)
            pause = rng.expovariate(1 / think_time_s) if think_time_s > 0 else 0.0
            push(now + inst.curve.overhead_s / 2 + pause, "send", r.user)

    while events and len(done) < total:
        now, _, _, kind, target, version = heapq.heappop(events)
        if kind == "send":
            if sent[0] >= total:
                continue
            sent[0] += 1
            i = min(range(len(fleet)), key=lambda k: (fleet[k].in_flight, k))
            inst = fleet[i]
            arrive = now + inst.curve.overhead_s / 2
            r = _Request(target, now, draw.length(prompt_tokens, variability.prompt_cv),
                         draw.length(output_tokens, variability.output_cv))
            if len(inst.prompting) + len(inst.decoding) >= inst.curve.max_batch:
                queued[0] += 1
            inst.transit.append(r)
            push(arrive, "arrive", i)
        elif kind == "arrive":
            # A request joins the engine when it arrives, one at a time: two sent at the same instant do not share
            # a prompt step that has already started (the engine begins a step as soon as the first one is in).
            fleet[target].queue.append(fleet[target].transit.popleft())
            interrupt(target, now)
            schedule(target, now)
        elif version == fleet[target].version:
            finish_step(target, now)
            schedule(target, now)
    return _summarize(done, fleet, users, rounds, queued[0] / max(1, sent[0]))


def _summarize(done: list[_Request], fleet: list[_Instance], users: int, rounds: int, queued: float) -> LoadResult:
    measured = done[users:] if rounds > 1 and len(done) > users else done
    ttfts = [r.first - r.sent for r in measured if r.first is not None]
    rates = [(r.output - 1) / (r.done_at - r.first) for r in measured
             if r.first is not None and r.done_at is not None and r.output > 1 and r.done_at > r.first]
    t0 = min(r.sent for r in measured)
    t1 = max(r.done_at for r in measured if r.done_at is not None)
    span = max(t1 - t0, 1e-9)
    end = max(r.done_at for r in done if r.done_at is not None)
    return LoadResult(
        users=users, instances=len(fleet), requests=len(measured),
        ttft_p50_s=percentile(ttfts, 50), ttft_p95_s=percentile(ttfts, 95),
        tokens_per_s_per_user=percentile(rates, 50) if rates else math.inf,
        throughput_tokens_per_s=sum(r.output for r in measured) / span,
        utilization=sum(i.busy_s for i in fleet) / (len(fleet) * max(end, 1e-9)),
        queued_share=queued,
    )
