"""Running a plan: `up` (start, wait until each model really answers, optionally verify), `down`, `status`, `logs`.

Native services run the same argv the `script` target execs, each in its own session/process group, with stdout and
stderr in `.stackgen/stacks/<stack file>/logs/<service>.log`. Containers go through the Docker Engine API
(stackgen.run.containers). What was started is recorded in that folder's `state.json` (stackgen.run.state) before waiting,
so `down` can stop it even after `up` itself crashed. A process is only ever signalled once it is identified as the
service's (exact start time, executable, and the STACKGEN_SERVICE_ID marker in its environment: `_foreign`).
Library code: raises LaunchError, reports progress through a callback, never prints.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from stackgen import engines
from stackgen.errors import LaunchError
from stackgen.plan.plan import Plan, ServicePlan
from stackgen.run.bench import drive, summarize
from stackgen.run.client import request
from stackgen.run import fleet
from stackgen.run.diagnose import _failure
from stackgen.run.native import _runner_for, budget_for, check_keys, endpoint_for, select_services
from stackgen.run.preflight import _wait_ports_free, check_memory, check_models, check_ports, check_url_pins
from stackgen.run.process import KILL_WAIT_S, POLL_S, supervisor_alive
from stackgen.run.readiness import DOWN, LOADING, READY, Endpoint, Probe, probe
from stackgen.run.results import (
    Interrupted,
    Progress,
    ProgressFn,
    Runner,
    ServiceOutcome,
    UpOptions,
    UpResult,
    VerifyResult,
)
from stackgen.run.signals import _deferred_interrupts, _interrupts, _no_interrupts
from stackgen.run.state import ServiceState, StackState, StateDir


def up(plan: Plan, opts: UpOptions = UpOptions(), progress: ProgressFn | None = None) -> UpResult:
    """Start every service of `plan` that is not already running unchanged; wait until each answers."""
    stack_file = Path(plan.stack_path)
    stack_dir = stack_file.resolve().parent
    sd = StateDir(stack_file)
    sd.acquire("up")
    try:
        with _interrupts():
            try:
                return _up_locked(plan, opts, progress, sd, stack_dir)
            except KeyboardInterrupt as exc:  # before anything started (later phases stop what they started)
                raise Interrupted(_interrupted_text(exc, [])) from None
    finally:
        sd.release()


def _interrupted_text(exc: KeyboardInterrupt, names: list[str]) -> str:
    """What `up` says when SIGINT/SIGTERM ends it: the signal and what this run had started and now stopped."""
    return (f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}): stopped "
            f"{', '.join(names) if names else 'nothing (nothing had started)'}")


def _up_locked(plan: Plan, opts: UpOptions, progress: ProgressFn | None, sd: StateDir, stack_dir: Path) -> UpResult:
    state = sd.load(plan.stack_name)
    state.stack = plan.stack_name
    kind = "container" if opts.containers else "process"
    runner = _runner_for(kind, sd.stack_file, plan.stack_name, opts.policy)
    runners = {kind: runner}

    def runner_of(st: ServiceState) -> Runner:
        if st.kind not in runners:
            runners[st.kind] = _runner_for(st.kind, sd.stack_file, plan.stack_name)
        return runners[st.kind]

    # `restart` also takes one process of a fleet (`chat-2`, an instance; the balancer is the service's own name):
    # that process restarts, the fleet's others are kept unless they changed.
    units = {u.name: fleet.service_of(u) for u in fleet.expand(plan.services)}
    select_services(sorted(units), opts.restart, str(sd.stack_file))
    chosen = select_services([sp.name for sp in plan.services], opts.services + tuple(units[r] for r in opts.restart),
                             str(sd.stack_file))
    services = [sp for sp in plan.services if sp.name in chosen]
    # What should run (resolving binaries/images first: a missing engine fails before anything changes).
    problems: list[str] = check_keys(services, containers=opts.containers)
    fleets = [f"services.{sp.name}.replicas: {sp.replicas} separate instances behind a load balancer are planned; "
              "`stackgen up --containers` runs one container per service: run them natively (`stackgen up` without "
              "--containers) or render the compose or kubernetes target, or remove `replicas:`"
              for sp in services if opts.containers and fleet.separate(sp)]
    if fleets:
        raise LaunchError("\n".join(problems + fleets))
    # A fleet (capacity.separate) runs as its instances and its balancer, each a service of the state (run/fleet.py).
    order = [u.name for u in fleet.expand(plan.services)]
    services_ = services
    services = fleet.expand(services)
    wanted: dict[str, str] = {}
    for sp in services:
        try:
            wanted[sp.name] = runner.desired_hash(sp)
            if sp.unit_role == fleet.BALANCER and not opts.containers:  # `haproxy -c` before anything starts
                fleet.write_config(sp, sd.dir, runner.command(sp).argv[0])
        except LaunchError as exc:
            if str(exc) not in problems:  # a key check_keys refused already (review L1: it was printed twice)
                problems.append(str(exc))
    if problems:
        raise LaunchError("\n".join(problems))

    keep, start, to_stop = [], [], []
    reasons: dict[str, str] = {}
    loaded: dict[str, float] = {}  # unchanged services that were still loading: seconds this up waited for them
    for sp in services:
        cur = state.services.get(sp.name)
        if cur is not None:
            if sp.name in opts.restart or fleet.service_of(sp) in opts.restart:  # the process, or its whole fleet
                reasons[sp.name] = "a restart was asked for"
            elif cur.kind != kind or cur.config_hash != wanted[sp.name]:
                reasons[sp.name] = "its configuration changed"
            else:
                if _loading(runner_of(cur), cur, sp):  # as compose: wait for it (up to --timeout), not start over
                    reasons[sp.name] = _await_load(runner_of(cur), cur, sp, opts, progress, loaded)
                    if not reasons[sp.name]:
                        sd.save(state)  # its ready_at (and a wrapper's exec'd executable) are recorded
                else:
                    reasons[sp.name] = _trouble(runner_of(cur), cur, sp)
                if not reasons[sp.name] and kind == "process" and cur.sup_id and cur.restart != _policy_mode(opts):
                    reasons[sp.name] = f"its restart policy changed ({cur.restart} -> {_policy_mode(opts)})"
                if (not reasons[sp.name] and kind == "process" and cur.sup_id and _policy_mode(opts) != "no"
                        and not supervisor_alive(cur)):  # the engine runs, but nothing would restart it
                    reasons[sp.name] = ("its supervisor is gone (killed?): nothing would restart it after a crash "
                                        "(restart policy on-failure)")
                if not reasons[sp.name]:
                    keep.append(sp)
                    continue
        start.append(sp)
        if cur is not None:
            to_stop.append(cur)
    planned = set(order)
    if not opts.services and not opts.restart:  # like compose, `up SERVICE` leaves the other services alone
        to_stop += [st for n, st in state.services.items() if n not in planned]
    else:  # but a named fleet's processes the plan no longer has (fewer replicas, or none) go
        to_stop += [st for n, st in state.services.items() if n not in planned and st.unit_of in chosen]

    # Preflight: everything that can be known before spawning.
    exempt_pids: set[int] = set()
    exempt_ports: set[int] = set()  # a container's published port may be held by the engine's proxy process
    freed = 0
    for st in to_stop:
        exempt_pids |= runner_of(st).owned_pids(st)
        if st.kind == "container":
            exempt_ports.add(st.port)
        freed += runner_of(st).rss(st) or 0
    # a URL model: the file the engine will download must still be the one the lock pinned (one range request)
    pin_problems, pin_notes = check_url_pins([sp for sp in start if sp.unit_role != fleet.BALANCER], sd.stack_file,
                                            os.environ, native=not opts.containers)
    problems = (check_models(start) + pin_problems
                + check_ports([sp for sp in start if sp.port not in exempt_ports], exempt_pids))
    if opts.memory_check:  # a balancer holds no model
        problems += check_memory([sp for sp in start if sp.unit_role != fleet.BALANCER], freed)
    if problems:
        raise LaunchError("\n".join(problems))

    stopped, notes = [], list(pin_notes)
    if sd.copied_from:  # the copied state is replaced by this stack file's own when it is saved below
        notes.append(sd.copy_note())
    balancers = {sp.name for sp in services if sp.unit_role == fleet.BALANCER}
    for st in to_stop:
        note = runner_of(st).stop(st, opts.grace_s)
        if note:
            notes.append(f"{note}; left it running and started a new one")
        state.services.pop(st.name, None)
        sd.save(state)
        if st.name not in reasons:  # removed from the stack (a restarted one is reported with its reason)
            stopped.append(st.name)
        if st.unit_role == fleet.BALANCER and st.name not in balancers:  # no longer a fleet: its config goes
            fleet.drop_config(sd.dir, st.name)
    if to_stop:  # what the old services held must be free now
        _wait_ports_free(start, KILL_WAIT_S)
        problems = check_ports(start, set())
        if problems:
            raise LaunchError("\n".join(problems))

    outcomes = [ServiceOutcome(sp.name, "unchanged", runner_of(state.services[sp.name]).where(state.services[sp.name]),
                               sp.port, loaded.get(sp.name)) for sp in keep]
    started: list[ServiceState] = []
    handles: dict[str, object] = {}
    ok = False
    try:
        for sp in start:
            budget = opts.timeout_s if opts.timeout_s is not None else budget_for(sp, kind == "container")
            if sp.unit_role == fleet.BALANCER:  # it is waited for once its instances answer
                budget += fleet.BALANCER_EXTRA_S
            with _deferred_interrupts():  # a Ctrl-C between spawn and record would leak the process
                st, handle = runner.start(sp, sd, budget)
                started.append(st)
                handles[sp.name] = handle
                state.services[sp.name] = st
                sd.save(state)  # before waiting: `down` can stop it even if this process dies now
        ready = _wait_ready(plan, start, state, handles, runner, progress, sd)
        _check_keys_enforced(start)
        restarted = {st.name for st in to_stop}
        for sp in start:
            st = state.services[sp.name]
            st.ready_at = time.time()
            on_ready = getattr(runner, "on_ready", None)
            if on_ready is not None:
                on_ready(st)
            outcomes.append(ServiceOutcome(sp.name, "restarted" if sp.name in restarted else "started",
                                           runner.where(st), sp.port, ready.get(sp.name),
                                           reasons.get(sp.name, "") if sp.name in restarted else ""))
        sd.save(state)
        ok = True
    except KeyboardInterrupt as exc:
        names = _cleanup(started, runner, state, sd, opts.grace_s)
        raise Interrupted(_interrupted_text(exc, names)) from None
    except LaunchError as exc:  # every up (not only a fleet's) says what it stopped: the services that did start too
        names = _cleanup(started, runner, state, sd, opts.grace_s)
        raise LaunchError(f"{exc}\nstopped what this `up` had started: {', '.join(names) or 'nothing'}") from None
    finally:
        if not ok:  # a failure (or an interrupt, already cleaned): stop what this run started
            _cleanup(started, runner, state, sd, opts.grace_s)

    result = UpResult(sorted(outcomes, key=lambda o: order.index(o.name)), stopped, notes=notes)
    if opts.verify:  # a fleet is verified through its balancer, as its users reach it
        try:
            result.verify = [verify_service(sp, opts.verify_max_tokens, hardware=plan.hardware) for sp in services_]
        except KeyboardInterrupt as exc:  # Ctrl-C during the health check: stop what this run started, as before
            names = _cleanup(started, runner, state, sd, opts.grace_s)
            raise Interrupted(_interrupted_text(exc, names)) from None
    return result


def _policy_mode(opts: UpOptions) -> str:
    from stackgen.run.supervise import RestartPolicy

    return (opts.policy or RestartPolicy()).mode


def _trouble(runner: Runner, st: ServiceState, sp: ServicePlan) -> str:
    """Why a running, unchanged service must be restarted ('' to keep it): its process is gone, is not the one
    `up` started, is stopped (SIGSTOP), or the model does not answer a health probe now."""
    trouble = getattr(runner, "trouble", None)
    why = trouble(st) if trouble is not None else ("" if runner.is_alive(st) else "it was not running")
    if why:
        return why
    slow = engines.get(st.engine).readiness.slow  # the probe is a 1-token completion
    res = probe(endpoint_for(sp), 30.0 if slow else 3.0)
    if res.state != READY:
        return f"it did not answer its health check ({res.detail or res.state})"
    return ""


def _loading(runner: Runner, st: ServiceState, sp: ServicePlan) -> bool:
    """The service is still loading, as `status` says `loading`: its process runs (and is the one `up` started),
    it has never answered, it is within its start-up budget, and its probe says loading or not listening yet.
    This happens after an `up` that ended while waiting (SIGHUP: a closed terminal) or during a supervisor's
    restart."""
    if st.ready_at is not None or time.time() - st.started_at >= st.budget_s:
        return False
    trouble = getattr(runner, "trouble", None)
    if (trouble(st) if trouble is not None else "") or not runner.is_alive(st):
        return False
    return probe(endpoint_for(sp), 3.0).state in (LOADING, DOWN)


def _await_load(runner: Runner, st: ServiceState, sp: ServicePlan, opts: UpOptions, progress: ProgressFn | None,
                loaded: dict[str, float]) -> str:
    """Wait for a loading service until it answers ('', its ready_at recorded) or `--timeout` (default: what is left
    of its own start-up budget) has passed or it ended: then why it is restarted."""
    t0 = time.monotonic()
    budget = opts.timeout_s if opts.timeout_s is not None else max(5.0, st.started_at + st.budget_s - time.time())
    prober = _Prober(endpoint_for(sp))
    last_report = 0.0
    while True:
        elapsed = time.monotonic() - t0
        if not runner.is_alive(st):
            trouble = getattr(runner, "trouble", None)
            why = trouble(st) if trouble is not None else ""
            return f"it ended while loading ({why or 'its process exited'})"
        res = prober.poll(budget - elapsed)
        if res is not None and res.state == READY:
            st.ready_at = time.time()
            on_ready = getattr(runner, "on_ready", None)
            if on_ready is not None:
                on_ready(st)
            loaded[sp.name] = round(elapsed, 2)
            return ""
        if elapsed > budget:
            return (f"it was still loading after this up waited {budget:.0f} s for it (last probe: "
                    f"{res.detail if res else 'no answer yet'}); raise --timeout to wait longer")
        if progress and elapsed - last_report >= 0.5:
            last_report = elapsed
            progress(Progress(sp.name, f"its load in progress to finish (started {time.time() - st.started_at:.0f} s "
                              "ago, by an earlier up or its supervisor)", elapsed, budget,
                              (runner.log_tail(st, 1) or [""])[-1]))
        time.sleep(POLL_S)


def _cleanup(started: list[ServiceState], runner: Runner, state: StackState, sd: StateDir, grace_s: float) -> list[str]:
    names = []
    with _no_interrupts():
        for st in reversed(started):
            try:
                runner.stop(st, grace_s)
            except LaunchError:
                continue  # left in the state file: `down` retries
            state.services.pop(st.name, None)
            names.append(f"{st.name} ({runner.where(st)})")
        sd.save(state)
    started.clear()
    return names


class _Prober:
    """Runs one probe at a time per service in a daemon thread, so a slow answer never blocks the wait loop."""

    def __init__(self, ep: Endpoint):
        self.ep = ep
        self.result: Probe | None = None
        self._thread: threading.Thread | None = None
        self._next = 0.0

    def poll(self, remaining_s: float) -> Probe | None:
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        now = time.monotonic()
        if self._thread is None and now >= self._next:
            slow = engines.get(self.ep.engine).readiness.slow  # the probe itself loads the model
            timeout = max(2.0, min(60.0 if slow else 3.0, remaining_s))
            self._thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
            self._next = now + 0.5
            self._thread.start()
        return self.result

    def _run(self, timeout: float) -> None:
        self.result = probe(self.ep, timeout)


def _wait_ready(plan: Plan, start: list[ServicePlan], state: StackState, handles: dict[str, object], runner: Runner,
                progress: ProgressFn | None, sd: StateDir) -> dict[str, float]:
    t0 = time.monotonic()
    pending = {sp.name: sp for sp in start}
    # A balancer is probed once its instances answer (a completion through it reaches one of them).
    after = {sp.name: fleet.members(start, sp) for sp in start if sp.unit_role == fleet.BALANCER}
    probers = {sp.name: _Prober(endpoint_for(sp)) for sp in start}
    prepared: set[str] = set()
    members_at: dict[str, float] = {}  # balancer -> when its last instance answered
    ready: dict[str, float] = {}
    longest = max((state.services[n].budget_s for n in pending), default=0.0)
    last_report = 0.0
    for _ in range(int((longest + 5) / POLL_S) + 10):
        if not pending:
            break
        now = time.monotonic()
        elapsed = now - t0
        for name, sp in list(pending.items()):
            st = state.services[name]
            code = runner.exited(st, handles.get(name))
            if code is not None:
                time.sleep(0.2)  # let the last log lines land
                raise _failure(_unit_label(sp), f"{_program(sp)} exited during start-up (exit status {code})",
                               runner.log_tail(st, 40), code, st.log)
            if any(m in pending for m in after.get(name, ())):
                continue
            if name in after:  # its instances answer: give HAProxy's checks time to mark them all up
                members_at.setdefault(name, now)
                if now - members_at[name] < fleet.BALANCER_SETTLE_S:
                    continue
            result = probers[name].poll(st.budget_s - elapsed)
            if result is not None and result.state == READY:
                ready[name] = round(elapsed, 2)
                del pending[name]
                continue
            if name not in prepared and result is not None and result.state != DOWN:
                prepared.add(name)
                _prepare_model(plan, sp, st, sd, st.budget_s - elapsed)
            if elapsed > st.budget_s:
                what = result.detail if result else "no answer yet"
                raise _failure(_unit_label(sp), f"not ready after {st.budget_s:.0f} s (last probe: {what}); raise the budget "
                               f"with --timeout if the machine is just slow", runner.log_tail(st, 40), None, st.log)
        if progress and pending and now - last_report >= 0.5:
            last_report = now
            name = next(iter(pending))
            st = state.services[name]
            res = probers[name].result
            progress(Progress(name, _waiting_for(pending[name].engine, res), elapsed, st.budget_s,
                              (runner.log_tail(st, 1) or [""])[-1]))
        if pending:
            time.sleep(POLL_S)
    if pending:
        names = ", ".join(pending)
        raise LaunchError(f"services {names}: not ready in time")
    return ready


def _check_keys_enforced(start: list[ServicePlan]) -> None:
    """A keyed service must refuse a request without its key before `up` calls it started: an engine that dropped
    the key it was handed (llama-server reads a key file's `#` lines as comments: an audit's keyless server answered
    everyone while `up` said started) is stopped, with the reason. Asked on /v1/models, which every keyed engine
    guards; a balancer passes it to an instance."""
    for sp in start:
        if not sp.api_key_env or engines.get(sp.engine).api_key is None:
            continue
        ep = replace(endpoint_for(sp), api_key=None)
        try:
            status, _ = request(ep, "GET", "/v1/models", timeout=10)
        except OSError:
            continue  # it answered the readiness probe a moment ago; the health check will tell
        if status == 200:
            comment = engines.get(sp.engine).api_key.file_comment
            raise LaunchError(f"service {sp.name}: answered /v1/models without its API key ({sp.api_key_env}), so "
                              "it was not started; check the key's value"
                              + (f" (the engine reads a key-file line starting with '{comment}' as a comment)"
                                 if comment else "") + " and the key options in its overrides")


def _unit_label(sp: ServicePlan) -> str:
    """How an error names a process: the service, or which process of a fleet it is."""
    if sp.unit_role == fleet.INSTANCE:
        return f"{sp.name} (instance {sp.name.rsplit('-', 1)[1]} of {sp.unit_of})"
    if sp.unit_role == fleet.BALANCER:
        return f"{sp.name} (the balancer of its {sp.replicas} instances)"
    return sp.name


def _program(sp: ServicePlan) -> str:
    return "haproxy" if sp.unit_role == fleet.BALANCER else sp.engine


def _waiting_for(engine: str, res: Probe | None) -> str:
    what = engines.get(engine).readiness.describe
    return f"{what} ({res.detail})" if res and res.detail else what


def _prepare_model(plan: Plan, sp: ServicePlan, st: ServiceState, sd: StateDir, budget_s: float) -> None:
    """The daemon is up: run the engine's model set-up steps (Ollama: pull, then create the tuned model
    `stackgen-<service>` from the Modelfile `render` writes too)."""
    if sp.unit_role == fleet.BALANCER:
        return
    engine = engines.get(sp.engine)
    binary = st.argv[0] if st.argv else engine.binary
    steps = engine.setup_steps(fleet.served(sp), binary, sd.root, Path(plan.stack_path))
    if not steps:
        return
    env = {**os.environ, **sp.env}
    deadline = max(5.0, budget_s)
    with open(st.log or os.devnull, "ab") as log:
        for argv in steps:
            _run_tool(argv, env, log, deadline, sp.name)


def _run_tool(argv: list[str], env: dict[str, str], log, timeout: float, name: str) -> None:
    try:
        r = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"service {name}: `{' '.join(argv[1:3])}` did not finish in {timeout:.0f} s") from None
    if r.returncode != 0:
        raise LaunchError(f"service {name}: `{' '.join(argv)}` failed (exit {r.returncode}); see the service log")


# ---------------------------------------------------------------------------------------------- verify


VERIFY_PROMPT = "The capital of France is"


def verify_service(sp: ServicePlan, max_tokens: int = 32, concurrency: int | None = None,
                   hardware=None) -> VerifyResult:
    """A small bench run (run/bench.py: the same client and measurement as `stackgen bench`): one streaming request
    per declared user, all at once; time to first token and decode speed vs the plan's speed forecast at that many
    users (plan/speed.forecast_at: the plan's own figure at the declared concurrency; `hardware`, the plan's, is
    needed only when verify runs another number of users)."""
    from stackgen.plan.speed import forecast_at

    ep = endpoint_for(sp)
    n = max(1, min(concurrency or sp.workload.concurrent_users, 64))
    fc = forecast_at(sp, hardware, n)
    results, wall, _ = drive(ep.connect_host, ep.port, ep.model, users=n, requests=n, max_tokens=max_tokens,
                             prompt=VERIFY_PROMPT, api_key=ep.api_key, tls=ep.tls, timeout=120.0)
    r = summarize(results, wall_s=wall, service=sp.name, engine=sp.engine, users=n, max_tokens=max_tokens)
    done = [x for x in results if x.ok]
    return VerifyResult(
        service=sp.name, concurrency=n, ok=len(done), failed=n - len(done),
        ttft_p50_s=r.ttft_p50_s if done else None, ttft_max_s=r.ttft_max_s if done else None,
        decode_tokens_per_s_p50=r.per_stream_decode_tokens_per_s or None,
        aggregate_tokens_per_s=r.output_tokens_per_s, predicted_tokens_per_s=sp.predicted_decode_tokens_per_s,
        sample=(done[0].text if done else "")[:200], errors=[e[:200] for e in r.error_samples[:3]],
        predicted_per_user_tokens_per_s=fc.per_user_tokens_per_s if fc else None,
        predicted_aggregate_tokens_per_s=fc.aggregate_tokens_per_s if fc else None,
        # streams decoding at once over the whole service: a fleet's Forecast.streams is one instance's
        predicted_streams=min(n, fc.streams * fc.instances_busy) if fc else None,
        predicted_error=fc.error if fc else None,
        decode_aggregate_tokens_per_s=r.decode_aggregate_tokens_per_s or None,
    )


# ---------------------------------------------------------------------------------------------- down / status / logs


