"""The run stage: a plan becomes running services and back (`up`, `down`, `status`, `logs`, `bench`).

results (types), native (binaries, argv, the native runner), process (process groups, identity, the process tree),
preflight, diagnose (engine logs), signals, readiness (the engine's `Readiness` interpreted), up (orchestration),
lifecycle (down/status/ps/logs), supervise (the supervisor of one native service), state (`.stackgen/` + registry),
containers (the Docker Engine API), bench.
"""
