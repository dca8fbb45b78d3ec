"""Run a service's planned separate instances and the rendered HAProxy balancer on 127.0.0.1 (bounded, stopped on
exit): shared by tests/integration/test_scale_real.py and benchmarks/bench_scale.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from stackgen import engines
from stackgen.render.balancer import haproxy_config
from stackgen.host.facts import detect
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack


def plan_for(stack_file: Path):
    stack = load_stack(stack_file)
    return resolve(stack, detect() if stack.hardware is None else None)


class Fleet:
    def __init__(self, sp, workdir: Path, haproxy: str = "haproxy") -> None:
        self.sp, self.workdir, self.haproxy = sp, workdir, haproxy
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Fleet":
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> "Fleet":
        sp = self.sp
        engine = engines.get(sp.engine)
        for i, port in enumerate(sp.capacity.ports):
            cmd = engines.command(engine, sp, binary=sp.spec.binary or engine.binary, model_ref=sp.model_ref,
                                  host="127.0.0.1", port=port)
            log = open(self.workdir / f"instance-{i + 1}.log", "w")
            self.procs.append(subprocess.Popen(list(cmd.argv), stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, env={**os.environ, **cmd.env}))
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(sp))
        subprocess.run([self.haproxy, "-c", "-q", "-f", str(cfg)], check=True)
        log = open(self.workdir / "haproxy.log", "w")
        self.procs.append(subprocess.Popen([self.haproxy, "-db", "-f", str(cfg)], stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Every instance answers /health 200 (directly), and the balancer forwards."""
        deadline = time.monotonic() + timeout_s
        urls = [f"http://127.0.0.1:{p}/health" for p in self.sp.capacity.ports] + \
               [f"http://127.0.0.1:{self.sp.port}/health"]
        for url in urls:
            while True:
                try:
                    if urllib.request.urlopen(url, timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"{url} not ready; logs in {self.workdir}")
                time.sleep(0.5)
        time.sleep(4)  # HAProxy marks servers up after `rise 2` checks at `inter 2s`

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
