"""A per-user calibration of this host (issue 13): what `stackgen calibrate` measured, kept for later plans.

`plan` with `hardware: detect` uses a stored calibration of the same machine (its detected hardware label) in place
of the detected system-RAM bandwidth and says so in every service's reasons ("speed: calibrated on this host on
DATE"); `--no-calibration` ignores the file. The bandwidth is what decode speed reads for a CPU plan and for the
layers a partial offload leaves in system RAM. Plans of a recorded host (`--host-facts`) or of a named hardware
profile never read it, so goldens do not depend on it.

With a small GGUF (`stackgen calibrate --model FILE`) it also runs the engine that can calibrate (llama-server, CPU
only, one slot) for a few seconds and keeps: a decode point (tokens/s on that model, and the per-token overhead t0 or
the efficiency it implies against the measured bandwidth), the prefill rate (as FLOP/s per thread, so it transfers to
other models) and the RSS the server reached above what the planner planned for that same configuration; then a
second short server with BATCH_STREAMS slots decodes that many requests at once and keeps their aggregate tokens/s
(the server's own timings) as the batched-decode FLOP/s per thread (2 x params per token, like the prefill: the form
the plan already moves to other models by their active parameters and this host's threads). CPU plans of the same
machine then decode at t = bytes / (efficiency x bandwidth) + t0, turn compute-bound past the measured batched rate
(speed.service_forecast) and prefill at the measured FLOP/s; the RSS figure is said in their reasons. Files written
before the batched point load as before (the field is optional): their plans take the uncalibrated CPU knee.

The file: $STACKGEN_CONFIG_HOME/calibration.json, else $XDG_CONFIG_HOME/stackgen/calibration.json, else
~/.config/stackgen/calibration.json. Nothing here prints; errors are StackgenError naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from stackgen import datafile
from stackgen.errors import StackgenError

FORMAT = 1
BATCH_STREAMS = 4  # concurrent decodes of the batched point: the quickstart's users, one 4-column ggml CPU tile


def calibration_path() -> Path:
    """$STACKGEN_CONFIG_HOME/calibration.json, else $XDG_CONFIG_HOME/stackgen/, else ~/.config/stackgen/."""
    base = os.environ.get("STACKGEN_CONFIG_HOME")
    if not base:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        base = str(Path(xdg) / "stackgen")
    return Path(base) / "calibration.json"


@dataclass(frozen=True)
class EnginePoint:
    """What one short run of a real engine on a small model measured (measure_engine), and what it implies."""

    engine: str  # the engine that ran
    build: int  # its build number (0: unknown)
    model: str  # the GGUF's file name
    model_bytes: int  # its tensor bytes: what a decode step reads
    model_params: int  # its parameters: 2 x params FLOPs per prefill token
    threads: int
    decode_tokens_per_s: float  # one stream, timings of the server itself
    prefill_tokens_per_s: float  # one prompt, no cache
    rss_bytes: int  # the server's VmRSS after the runs
    planned_bytes: int  # what the planner plans in RAM for the same configuration (weights, KV, compute, overhead)
    efficiency: float  # share of the measured bandwidth a decode step reached (after t0)
    t0_ms: float  # per-token overhead beyond streaming the model at that efficiency
    # `batch_streams` requests decoding at once on a server with that many slots: their summed tokens/s (server
    # timings). 0 / 0.0: not measured (a file of an earlier stackgen).
    batch_streams: int = 0
    batch_decode_tokens_per_s: float = 0.0

    @property
    def rss_above_plan_bytes(self) -> int:
        return self.rss_bytes - self.planned_bytes

    @property
    def prefill_flops_per_thread(self) -> float:
        return self.prefill_tokens_per_s * 2 * self.model_params / max(1, self.threads)

    @property
    def batch_flops_per_thread(self) -> float:
        """FLOP/s per thread the batched decode reached (0.0: not measured): where a CPU plan turns compute-bound."""
        return self.batch_decode_tokens_per_s * 2 * self.model_params / max(1, self.threads)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rss_above_plan_bytes": self.rss_above_plan_bytes,
                "prefill_flops_per_thread": round(self.prefill_flops_per_thread, 1),
                "batch_flops_per_thread": round(self.batch_flops_per_thread, 1)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EnginePoint":
        # the fields with a default came later: an earlier file without them loads with the default
        p = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)
                   if f.name in d or f.default is dataclasses.MISSING})
        if not (p.decode_tokens_per_s > 0 and p.prefill_tokens_per_s > 0 and p.efficiency > 0 and p.t0_ms >= 0):
            raise ValueError("engine figures must be positive")
        if p.batch_streams < 0 or p.batch_decode_tokens_per_s < 0 or (p.batch_streams > 0) != (
                p.batch_decode_tokens_per_s > 0):
            raise ValueError("batch_streams and batch_decode_tokens_per_s must be both positive or both 0")
        return p

    def text(self) -> str:
        batch = (f"batched decode {self.batch_decode_tokens_per_s:.1f} tokens/s at {self.batch_streams} streams "
                 f"({self.batch_flops_per_thread / 1e9:.1f} GFLOP/s per thread), " if self.batch_streams else "")
        return (f"{self.engine} build {self.build or 'unknown'} on {self.model} ({self.threads} threads): decode "
                f"{self.decode_tokens_per_s:.1f} tokens/s (efficiency {self.efficiency:.2f}, t0 {self.t0_ms:.1f} ms), "
                f"prefill {self.prefill_tokens_per_s:.1f} tokens/s ({self.prefill_flops_per_thread / 1e9:.1f} GFLOP/s "
                f"per thread), {batch}RSS {self.rss_bytes / 2**20:.0f} MiB = plan {self.planned_bytes / 2**20:.0f} "
                f"MiB {self.rss_above_plan_bytes / 2**20:+.0f} MiB")


@dataclass(frozen=True)
class Calibration:
    machine: str  # machine_key() of the detected host the measurement belongs to
    date: str  # ISO date of the measurement (UTC)
    memory_bandwidth_gbs: float  # system RAM bandwidth measured by the probe
    probe: str  # how it was measured, in words
    engine: EnginePoint | None = None  # a real engine's decode/prefill/RSS point (`calibrate --model FILE`)
    # The share of the host's CPU time other work used in the second before the measurement (busy_share; None: not
    # measured), so a calibration taken on a busy machine says so (busy_note) wherever it is shown.
    cpu_busy: float | None = None
    cores: int = 0  # the host's CPU cores (0: unknown)

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT, **dataclasses.asdict(self)}
        out["engine"] = self.engine.to_json() if self.engine else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        bw = float(data["memory_bandwidth_gbs"])
        if not 0 < bw <= 100000:
            raise ValueError(f"memory_bandwidth_gbs {bw} is not a bandwidth in GB/s")
        engine = EnginePoint.from_json(data["engine"]) if data.get("engine") else None
        busy = data.get("cpu_busy")
        return cls(machine=str(data["machine"]), date=str(data["date"]), memory_bandwidth_gbs=bw,
                   probe=str(data.get("probe", "")), engine=engine,
                   cpu_busy=float(busy) if busy is not None else None, cores=int(data.get("cores") or 0))

    def busy(self) -> str | None:
        """busy_note for the CPU use this calibration was measured beside; None when the machine was quiet or it is
        unknown."""
        return busy_note(self.cpu_busy, self.cores)

    def reason(self) -> str:
        text = (f"speed: calibrated on this host on {self.date} (system RAM bandwidth {self.memory_bandwidth_gbs:g} "
                f"GB/s measured by `stackgen calibrate`; `plan --no-calibration` ignores it)")
        if self.engine:
            text += f"; CPU decode and prefill from a real run: {self.engine.text()}"
        if busy := self.busy():
            text += f"; {busy}"
        return text


# A calibration measures what the engine gets while it runs: other work on the machine slows it and every later
# `hardware: detect` plan with it (a 2-core host calibrated beside a test suite and a mutation run measured decode
# 2x under what it then measured; with two busy loops on its 2 cores, decode 15.6 against 78.5). Other work is
# measured twice: in the second before (busy_share) and over the whole measurement (other_work_meter: the host's
# busy CPU time less stackgen's own and its engine's), the larger kept. Not the load average: it trails by a minute
# (1.2 on 2 cores a minute after the loops stopped, while the run then measured the quiet figures). A quarter of the
# CPU is "busy": ggml's threads wait for the slowest at every step, so one core's worth of other work on 2 cores
# costs more than its share (the quickstart calibrated beside a `pip install` saw 49.7% busy in the second before and
# measured 25 decode tokens/s against 64 quiet; the half-the-CPU rule it had did not warn).
BUSY_SHARE = 0.25


def busy_note(cpu_busy: float | None, cores: int) -> str | None:
    """A warning when other work used more than BUSY_SHARE of the host's CPU time while it was measured; None
    otherwise (or when it was not measured)."""
    if cpu_busy is None or cpu_busy <= BUSY_SHARE:
        return None
    on = f" of {cores} cores" if cores > 0 else ""
    return (f"the machine was busy when it was measured ({cpu_busy:.0%}{on} in use by other work): that slows what "
            "the engine gets, and plans that use this calibration forecast the slowdown; run `stackgen calibrate` "
            "again when the machine is quiet")


def busy_share(seconds: float = 1.0) -> float | None:
    """The share of the host's CPU time in use over the next `seconds` (psutil.cpu_percent, every core), before
    anything of the calibration runs; None where psutil cannot tell."""
    import psutil
    try:
        return round(psutil.cpu_percent(interval=seconds) / 100, 3)
    except (OSError, RuntimeError):
        return None


def _host_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of every core since boot (psutil.cpu_times; guest time is already in user on Linux,
    so it is not counted twice); None where psutil cannot tell."""
    import psutil
    try:
        t = psutil.cpu_times()
    except (OSError, RuntimeError):
        return None
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (the engine runs it started and stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def other_work_meter(host: Callable[[], tuple[float, float] | None] = _host_cpu_seconds,
                     own: Callable[[], float] = _own_cpu_seconds) -> Callable[[], float | None]:
    """Start measuring the share of the host's CPU time that work other than stackgen and its engine uses; the
    returned function stops it and answers that share (0..1), None where it cannot be told."""
    h0, o0 = host(), own()

    def stop() -> float | None:
        h1, o1 = host(), own()
        if h0 is None or h1 is None or h1[1] <= h0[1]:
            return None
        others = (h1[0] - h0[0]) - (o1 - o0)
        return round(min(1.0, max(0.0, others / (h1[1] - h0[1]))), 3)
    return stop


def derive_decode(model_bytes: float, tokens_per_s: float, bandwidth_gbs: float,
                  efficiency: float) -> tuple[float, float]:
    """(efficiency, t0 ms) of one measured decode point: with the fitted CPU efficiency, t0 is what the step takes
    beyond streaming the model (t = bytes / (e x BW) + t0); a step faster than that fit allows has no t0 and a
    higher efficiency, bytes / (BW x t)."""
    t = 1 / tokens_per_s
    stream = model_bytes / (efficiency * bandwidth_gbs * 1e9)
    if t >= stream:
        return efficiency, (t - stream) * 1000
    return model_bytes / (bandwidth_gbs * 1e9 * t), 0.0


def measure_engine(engine_name: str, binary: str, model_path: str, *, bandwidth_gbs: float, threads: int,
                   build: int = 0, ctx: int = 2048, prompt_tokens: int = 64, decode_tokens: int = 16,
                   batch_streams: int = BATCH_STREAMS, batch_tokens: int = 64, batch_rounds: int = 2,
                   rounds: int = 3, timeout: float = 120.0) -> EnginePoint:
    """Run `engine_name` (an engine with `calibrates`) on `model_path` for a few seconds: one warm-up, then `rounds`
    prefills of ~prompt_tokens and `rounds` decodes of decode_tokens, the fastest of each kept (a shared machine's
    load only slows a run); its own timings give the rates, /proc its RSS. The planned bytes are
    the planner's for the same configuration (CPU, one slot of ctx tokens, no prompt cache). Then (batch_streams > 1)
    a second server with batch_streams slots: one warm-up, then batch_rounds times batch_streams decodes of
    batch_tokens at once, their tokens/s summed (the server's timings of each), the best round kept (a shared
    machine's load only slows a round). 64 tokens: the requests' staggered start weighs less than at 32 (Gemma 3 270M
    on 2 EPYC threads: 101-106 tokens/s at 32, 111-114 at 64, 116-117 at 128)."""
    import threading

    from stackgen import engines
    from stackgen.models.facts import resolve_model
    from stackgen.plan import speed
    from stackgen.run.preflight import free_port

    eng = engines.get(engine_name)
    model = resolve_model(model_path, None, Path("."), {})
    weights = eng.weights(model)
    planned = _planned_bytes(eng, model, weights, ctx, build)

    def single(post, pid: int):
        post("Hello", 4)  # warm-up: first-touch of the weights, graph allocation
        words = " ".join(["the quick brown fox jumps over the lazy dog"] * max(1, prompt_tokens // 9))
        # each prefill its own prompt (a repeated one would be served from the slot's cache)
        pre = [post(f"{i}: {words}", 1) for i in range(max(1, rounds))]
        dec = [post(f"Once upon a time, tale {i}", decode_tokens) for i in range(max(1, rounds))]
        fastest = [max(pre, key=lambda r: _rate(r, "prompt")), max(dec, key=lambda r: _rate(r, "predicted"))]
        return (*fastest, _rss_bytes(pid))

    def batched(post, pid: int) -> list[list[dict[str, float]]]:
        post("Hello", 4)
        return [one_round(post) for _ in range(max(1, batch_rounds))]

    def one_round(post) -> list[dict[str, float]]:
        out: list = [None] * batch_streams

        def one(i: int) -> None:
            try:
                out[i] = post(f"Once upon a time, story {i}:", batch_tokens)
            except Exception as exc:  # noqa: BLE001 - reported below as a failed run
                out[i] = exc
        workers = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(batch_streams)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout)
        bad = [o for o in out if not isinstance(o, dict)]
        if bad:
            raise ValueError(f"a batched decode failed: {bad[0]!r}")
        return out

    pre, dec, rss = _with_server(eng, eng.calibration_argv(binary, model_path, free_port(), threads, ctx), binary,
                                 timeout, single)
    if not (pre["prompt_ms"] > 0 and dec["predicted_ms"] > 0 and dec["predicted_n"] > 0):
        raise StackgenError(f"calibrate: the engine reported no timings ({pre}, {dec}); nothing was written")
    batch = 0.0
    if batch_streams > 1:
        rounds = _with_server(eng, eng.calibration_argv(binary, model_path, free_port(), threads, ctx,
                                                        parallel=batch_streams), binary, timeout, batched)
        if not all(r["predicted_ms"] > 0 and r["predicted_n"] > 0 for runs in rounds for r in runs):
            raise StackgenError(f"calibrate: the engine reported no batched timings ({rounds}); nothing was written")
        batch = max(sum(_rate(r, "predicted") for r in runs) for runs in rounds)
    prefill = pre["prompt_n"] / (pre["prompt_ms"] / 1000)
    decode = dec["predicted_n"] / (dec["predicted_ms"] / 1000)
    eff, t0 = derive_decode(weights.bytes, decode, bandwidth_gbs, speed.backend_params("cpu").efficiency)
    return EnginePoint(engine=engine_name, build=build, model=Path(model_path).name, model_bytes=weights.bytes,
                       model_params=model.params, threads=threads, decode_tokens_per_s=round(decode, 2),
                       prefill_tokens_per_s=round(prefill, 2), rss_bytes=rss, planned_bytes=planned,
                       efficiency=round(eff, 4), t0_ms=round(t0, 3),
                       batch_streams=batch_streams if batch else 0, batch_decode_tokens_per_s=round(batch, 2))


def _rate(timings: dict[str, float], kind: str) -> float:
    """tokens/s of one run's `kind` ("prompt" or "predicted") by the engine's own timings (0 where it gave none)."""
    ms = timings.get(f"{kind}_ms", 0.0)
    return timings.get(f"{kind}_n", 0.0) / (ms / 1000) if ms > 0 else 0.0


def _with_server(eng, argv: list[str], binary: str, timeout: float, body):
    """Start `argv` (a server on 127.0.0.1 at argv's --port), wait until ready, return body(post, pid), stop it.
    post(prompt, n) answers the engine's calibration_timings of one calibration_request."""
    import json as _json
    import subprocess
    import tempfile
    import time
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    log = tempfile.TemporaryFile("w+")  # not a pipe: a server that logs more than a pipe holds would block on it
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, text=True)

    def post(prompt: str, n: int) -> dict[str, float]:
        path, req_body = eng.calibration_request(prompt, n)
        req = urllib.request.Request(base + path, data=_json.dumps(req_body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return eng.calibration_timings(_json.load(r))

    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read()[-2000:]
                raise StackgenError(f"calibrate: {binary} exited with {proc.returncode} before it was ready: {err}")
            try:
                with urllib.request.urlopen(base + (eng.readiness.path or "/"), timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackgenError(f"calibrate: {binary} was not ready within {timeout:.0f} s")
            time.sleep(0.2)
        return body(post, proc.pid)
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise StackgenError(f"calibrate: the engine run failed ({exc}); nothing was written") from None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _planned_bytes(eng, model, weights, ctx: int, build: int) -> int:
    """The planner's RAM for the calibration run: the engine's plan of the model, CPU only, one user of ctx tokens,
    less the prompt cache the run turns off."""
    from stackgen.plan.memory import NO_PINS, Budget
    from stackgen.spec.stack import CPUSpec, HardwareSpec, WorkloadSpec

    hw = HardwareSpec(gpus=(), memory_gib=1024, memory_bandwidth_gbs=50, cpu=CPUSpec(cores=1))
    pins = dataclasses.replace(NO_PINS, engine_build=build or None) if eng.plans_by_build else NO_PINS
    plan = eng.plan_memory(model, WorkloadSpec(concurrent_users=1, context_tokens=ctx), hw,
                           Budget(0, 1024 * 2**30), weights, pins)
    return plan.host_bytes - plan.prompt_cache.bytes


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_key(hw) -> str:
    """The machine a calibration belongs to: the detected hardware label, CPU cores and RAM size."""
    return f"{hw.label()} | {hw.cpu.cores} cores | {hw.memory_gib:g} GiB RAM"


def measure(machine: str, probe: Callable[[], float] | None = None, today: _dt.date | None = None,
            engine: Callable[[float], EnginePoint] | None = None, cores: int = 0,
            busy: Callable[[], float | None] | None = None,
            meter: Callable[[], Callable[[], float | None]] | None = None) -> Calibration:
    """Measure this host: `probe` returns the system-RAM bandwidth in GB/s (default: detect's numpy copy probe);
    `busy` the share of CPU time other work uses just before (default: busy_share), `meter` starts measuring the
    share other work uses while it runs (default: other_work_meter); the larger is kept, with the host's `cores`."""
    before = (busy or busy_share)()
    stop = (meter or other_work_meter)()
    if probe is None:
        from stackgen.host.detect import measure_memory_bandwidth

        probe, how = measure_memory_bandwidth, "numpy copy of 256 MiB, best of 5"
    else:
        how = getattr(probe, "__doc__", None) or "injected probe"
    gbs = float(probe())
    if not gbs > 0:
        raise StackgenError(f"calibrate: the bandwidth probe returned {gbs!r} GB/s; nothing was written "
                            "(run `stackgen detect --measure` to see the probe's notes)")
    day = (today or _dt.datetime.now(_dt.timezone.utc).date()).isoformat()
    point = engine(round(gbs, 1)) if engine else None  # given the measured bandwidth, it derives e and t0
    shares = [x for x in (before, stop()) if x is not None]
    cpu_busy = max(shares) if shares else None
    return Calibration(machine=machine, date=day, memory_bandwidth_gbs=round(gbs, 1), probe=how.strip(),
                       engine=point, cpu_busy=cpu_busy, cores=cores)


def save(cal: Calibration, path: Path | None = None) -> Path:
    path = path or calibration_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from stackgen.run.state import write_new

        write_new(path, json.dumps(cal.to_json(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise StackgenError(f"{path}: cannot write the calibration ({exc.strerror or exc}); set "
                            "STACKGEN_CONFIG_HOME to a writable directory") from None
    return path


def load(path: Path | None = None) -> Calibration | None:
    """The stored calibration, or None when there is none. A file that is not one is an error naming the fix."""
    path = path or calibration_path()
    # the fixes every command that plans a `hardware: detect` stack can use (only `plan` has --no-calibration)
    fix = (f"run `stackgen calibrate` again to rewrite it, or remove it (`rm {path}`: plans then use the detected "
           "figures; `plan --no-calibration` ignores it)")
    try:
        data = datafile.load_json(path, "the calibration", fix)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackgenError(f"{path}: cannot read the calibration ({exc.strerror or exc}); make it readable, or set "
                            "STACKGEN_CONFIG_HOME to a directory of your own (`plan --no-calibration` ignores "
                            "it)") from None
    except datafile.DataFileError as exc:
        raise StackgenError(str(exc)) from None
    except ValueError as exc:  # not UTF-8, not JSON
        raise StackgenError(f"{path}: not a stackgen calibration ({exc}); {fix}") from None
    try:
        return Calibration.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StackgenError(f"{path}: not a stackgen calibration ({exc}); {fix}") from None


def apply(host, cal: Calibration | None):
    """(host, reason or None): a detected host with the calibrated bandwidth, when the calibration is of this
    machine; otherwise the host unchanged plus a note saying why the file was not used."""
    if cal is None or host.hardware is None:
        return host, None
    label = machine_key(host.hardware)
    if cal.machine != label:
        note = (f"calibration of {cal.machine!r} ({cal.date}) not used: this host is {label!r}; "
                "run `stackgen calibrate` here")
        return dataclasses.replace(host, notes=host.notes + (note,)), None
    hw = host.hardware.model_copy(update={"memory_bandwidth_gbs": cal.memory_bandwidth_gbs})
    return dataclasses.replace(host, hardware=hw, calibration=cal.engine), cal.reason()
