"""The `systemd` target: one hardened system unit per service under systemd/.

Each unit runs the engine as a DynamicUser with the file system read-only, no capabilities and a system-call
allow-list; GPU units keep exactly their device classes. The command line comes from the engine module (Python)
and is quoted by systemd's own rules (stackgen.render.quoting); the unit file format lives in
templates/systemd/service.j2. Checked in tests with `systemd-analyze verify` (empty stderr) and
`systemd-analyze security --offline=yes` (exposure at most 2.0).

Start timeout: TimeoutStartSec = the plan's one start-up budget (`ServicePlan.startup_budget_s`: 60 s + weights / 100 MB/s, + weights / 25 MB/s
when the engine downloads them at start, + the engine's own start-up such as vLLM's 120 s compile; rounded up to 10 s).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path

from stackgen import engines
from stackgen.render.paths import installed_path, local_weights, weight_files
from stackgen.errors import RenderError
from stackgen.plan.plan import RAY_PORT, RPC_PORT, Plan, ServicePlan
from stackgen.render.artifact import Artifact, RenderContext, render_template
from stackgen.spec.stack import LOOPBACK_HOSTS
from stackgen.render.quoting import Expand, check_value, escape_text, quote_value, systemd_quote
from stackgen.render.targets import fleet, installed_binary, register
from stackgen.render.targets.script import RAY_UNAUTHENTICATED, ray_binary

CREDENTIAL = Expand("${CREDENTIALS_DIRECTORY}/api-key")
TLS_KEY = Expand("${CREDENTIALS_DIRECTORY}/tls-key")
TLS_CERT = Expand("${CREDENTIALS_DIRECTORY}/tls-cert")
RESTART_SEC, START_LIMIT_BURST, START_LIMIT_INTERVAL = 10, 5, 300
NVIDIA_DEVICES = ("char-nvidiactl rw", "char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-nvidia-caps rw")
AMD_DEVICES = ("/dev/kfd rw", "char-drm rw")
INTEL_DEVICES = ("char-drm rw",)


@register("systemd")
def systemd_target(plan: Plan, ctx: RenderContext) -> list[Artifact]:
    return render_units(plan, ctx)


def render_units(plan: Plan, ctx: RenderContext, binary: str | None = None) -> list[Artifact]:
    """`binary` replaces every engine binary (tests point it at a stub so `systemd-analyze verify` finds it)."""
    if plan.hardware.os != "linux":
        raise RenderError(f"the systemd target needs a Linux machine; this stack's hardware runs {plan.hardware.os}")
    out: list[Artifact] = []
    for sp in plan.services:
        if binary is None:
            installed_binary(sp, "systemd", engines.get(sp.engine).binary)
        if fleet.separate(sp):  # fleet hook: a template unit per instance + the balancer (targets/fleet.py)
            out += fleet.systemd(plan, sp, ctx, binary)
            continue
        out.append(Artifact(f"systemd/{unit_name(plan, sp)}", _main_unit(plan, sp, ctx, binary)))
        if engines.get(sp.engine).model_tag(sp) is not None:
            out.append(Artifact(f"systemd/{unit_name(plan, sp, '-create')}", _create_unit(plan, sp, ctx, binary)))
            out.append(Artifact(f"systemd/{sp.name}.Modelfile", _modelfile(plan, sp, ctx)))
        out += _node_units(plan, sp, ctx, binary)
    for art in out:
        _check_line_lengths(art)
    return out


LONG_LINE_MAX = 1024 * 1024  # systemd src/basic/fileio.h: longer unit lines are refused ("Line too long")


def _check_line_lengths(art: Artifact) -> None:
    """load_stack limits argument lengths; this is the last guard before systemd would refuse the unit."""
    for number, line in enumerate(art.content.split("\n"), 1):
        if len(line.encode("utf-8")) >= LONG_LINE_MAX:
            raise RenderError(f"{art.path}:{number}: a {len(line)}-character line is longer than systemd reads "
                              f"({LONG_LINE_MAX} bytes); shorten the service's overrides or paths")


def unit_name(plan: Plan, sp: ServicePlan, suffix: str = "") -> str:
    return f"stackgen-{plan.stack_name}-{sp.name}{suffix}.service"


# ---------------------------------------------------------------------------------------------- the main unit


@dataclass(frozen=True)
class _Where:
    """Paths of one unit as the service sees them."""

    name: str  # the unit name without .service: also its state/cache directory name
    model_ref: str
    local_model: str | None  # an absolute path to weights on the target host, or None when fetched
    copy_from: str | None = None  # the stack-relative weights to install at local_model
    # Every file of the weights on the target host (a split GGUF's parts after local_model, which llama.cpp opens
    # beside it), and what to install at each (empty when copy_from is None)
    local_files: tuple[str, ...] = ()
    copy_files: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        return f"/var/lib/{self.name}"

    @property
    def cache(self) -> str:
        return f"/var/cache/{self.name}"


def _where(plan: Plan, sp: ServicePlan, model_dir: str) -> _Where:
    """A unit has no checkout: weights the stack names relative to its folder are installed under model_dir."""
    name = unit_name(plan, sp).removesuffix(".service")
    local = local_weights(sp)
    if local is None:
        return _Where(name, sp.model_ref, None)
    path = installed_path(local, model_dir)
    files = weight_files(local)
    installed = tuple(installed_path(f, model_dir) for f in files)
    copied = path != local
    return _Where(name, path, path, local if copied else None, installed, tuple(files) if copied else ())


def _main_unit(plan: Plan, sp: ServicePlan, ctx: RenderContext, binary: str | None) -> str:
    engine = engines.get(sp.engine)
    where = _where(plan, sp, ctx.model_dir)
    cmd = engines.command(engine, sp, binary=binary or sp.spec.binary or engine.binary, model_ref=where.model_ref,
                          host=sp.host, port=sp.port, key_file=CREDENTIAL, chat_template=chat_template_path(plan, sp))
    key = _key_mode(sp, cmd)
    argv, tls = tls_key_credential(sp, [CREDENTIAL if a == CREDENTIAL else a for a in cmd.argv])
    values = _common(plan, sp, ctx, where)
    values.update(
        description=escape_text(f"stackgen {plan.stack_name}/{sp.name}: {engine.display} serving {sp.model.name}"),
        exec_start=systemd_quote(argv),
        environment=_environment(sp, where),
        credential=f"api-key:/etc/stackgen/{plan.stack_name}/api-key" if key == "credential" else None,
        tls_credentials=tls,
        env_file=f"/etc/stackgen/{plan.stack_name}/{sp.name}.env" if key == "env_file" else None,
        env_files=hf_token_env_files(plan, sp),
        comments=values["comments"] + _key_comments(plan, sp, key, cmd.key_env) + tls_comments(sp)
        + chat_template_comments(plan, sp) + hf_token_comments(plan, sp),
    )
    if sp.topology is not None and sp.topology.kind == "vllm-ray":
        values.update(_ray_head_sharing(plan, sp))
    return unit_text(values)


# `ray start --block` drains for up to 30 s after SIGTERM before it stops gcs_server, raylet and the workers (seen
# with Ray 2.60): give it room before systemd's SIGKILL.
RAY_STOP_S = "45"


def _ray_head_sharing(plan: Plan, sp: ServicePlan) -> dict:
    """vLLM on the head attaches to the Ray head's node through the unix sockets in the head's session dir
    (/tmp/ray/session_*/sockets: raylet, plasma_store; their paths come from the GCS). Separate PrivateTmp= would
    hide them, and two DynamicUser= units get two UIDs while UMask=0077 keeps the session dir private. So the vLLM
    unit joins the head unit's namespaces (one private /tmp for both) and both run as one dynamic user; it also
    starts after the head and stops with it (its Ray cluster is gone then)."""
    head = unit_name(plan, sp, "-ray-head")
    return dict(after=[head], requires=[head], joins_namespace_of=head, user=_ray_user(plan, sp))


def _ray_user(plan: Plan, sp: ServicePlan) -> str:
    """The one dynamic user of the vLLM unit and the Ray head unit on the head machine (units naming the same
    User= with DynamicUser=yes share its UID)."""
    return unit_name(plan, sp).removesuffix(".service")


def _common(plan: Plan, sp: ServicePlan, ctx: RenderContext, where: _Where) -> dict:
    """What every unit of a service shares: identity, timeouts, sandbox, devices and network."""
    gpu = _gpu_devices(sp)
    fetched = where.local_model is None
    # ProtectHome=yes hides /home; weights kept there are bound in read-only on an otherwise empty tmpfs.
    in_home = where.local_model is not None and where.local_model.startswith(("/home/", "/root/", "/run/user/"))
    paths = [quote_value(f, "model path") for f in where.local_files or (where.local_model,)] if where.local_model else []
    engine = engines.get(sp.engine)  # a JIT engine (torch/triton, mlx kernels): W^X would kill it
    mdwe_reason = ("the engine is Python and JIT-compiles kernels" if engine.jit
                   else "GPU drivers map writable executable memory for their kernels")
    return dict(
        # ProcSubset=pid hides /proc/meminfo and /proc/cpuinfo: llama-server runs without them, vLLM's API server
        # dies at start (psutil.virtual_memory, FileNotFoundError: /proc/meminfo; reproduced under a subset=pid proc
        # mount) and Ollama and SGLang read them to size memory. Only an engine that does without them gets it.
        proc_subset_pid=engine.proc_subset_pid,
        ip_allow=[], ip_allow_reason="",  # addresses a networked unit may talk to (an RPC worker: its head)
        # Python engines and Ollama write under HOME (HF hub, torch/triton caches, the model store); llama.cpp
        # writes only when it downloads with -hf.
        header=ctx.header(),
        comments=_weights_comments(where, fetched, folder=sp.model.source == "hf",
                                   into=engine.fetch_dir(where.state, where.cache)),
        after=[],
        requires=[], user=None, joins_namespace_of=None,
        type="exec", remain_after_exit=False, restart_sec=f"{RESTART_SEC}s",
        start_limit_interval=f"{START_LIMIT_INTERVAL}s", start_limit_burst=START_LIMIT_BURST,
        timeout_start=f"{sp.startup_budget_s}s",
        state_dir=where.name if engine.writes_home else None,
        cache_dir=where.name if engine.writes_home or fetched else None,
        protect_home="tmpfs" if in_home else "yes",
        read_only_paths=[] if in_home else paths, bind_read_only_paths=paths if in_home else [],
        memory_deny_write_execute=not gpu and not engine.jit, mdwe_reason=mdwe_reason,
        gpu_devices=gpu,
        ip_localhost_only=sp.host in LOOPBACK_HOSTS and not fetched,
        ip_reason=("the weights are downloaded at start; fetch them first and point `model:` at the local copy "
                   "to allow localhost only") if fetched else f"the service binds {sp.host}",
    )


def _environment(sp: ServicePlan, where: _Where) -> list[str]:
    env = dict(sp.env)
    fetched = where.local_model is None
    env.update(engines.get(sp.engine).host_env(sp, where.state, where.cache, fetched))
    if sp.topology is not None and sp.topology.kind == "vllm-ray":
        # Each unit has its own PrivateTmp, so vLLM cannot find the head's session in /tmp/ray: name the GCS.
        env["RAY_ADDRESS"] = f"{sp.topology.head.address}:{RAY_PORT}"
    return [quote_value(f"{k}={v}", "environment value") for k, v in sorted(env.items())]


def _gpu_devices(sp: ServicePlan) -> tuple[str, ...]:
    if sp.memory.gpu_bytes <= 0:
        return ()
    vendors = {g.vendor for g in sp.gpus if not g.unified}
    devices: list[str] = []
    for vendor, classes in (("nvidia", NVIDIA_DEVICES), ("amd", AMD_DEVICES), ("intel", INTEL_DEVICES)):
        if vendor in vendors:
            devices += [d for d in classes if d not in devices]
    return tuple(devices)


# ---------------------------------------------------------------------------------------------- multi-node


def _ip_literal(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _node_units(plan: Plan, sp: ServicePlan, ctx: RenderContext, binary: str | None) -> list[Artifact]:
    """Multi-node pieces: `-ray-head` (on the head, before the main unit) and `-ray-worker-<i>` units for vLLM, or
    `-rpc-<i>` units running ggml-rpc-server for llama.cpp; each is installed on the machine it names."""
    topo = sp.topology
    if topo is None:
        return []
    out = []
    main = unit_name(plan, sp)
    if topo.kind == "vllm-ray":
        head = topo.head.address
        ray = ray_binary(sp)
        roles = [(topo.head, "-ray-head", [ray, "start", "--head", f"--port={RAY_PORT}",
                                           f"--node-ip-address={head}", "--block"])]
        roles += [(w, f"-ray-worker-{w.index}", [ray, "start", f"--address={head}:{RAY_PORT}",
                                                 f"--node-ip-address={w.address}", "--block"]) for w in topo.workers]
    else:
        from stackgen.engines.llamacpp import rpc_server_argv
        roles = [(w, f"-rpc-{w.index}", rpc_server_argv("ggml-rpc-server", w.address, RPC_PORT)) for w in topo.workers]
    for node, suffix, argv in roles:
        name = unit_name(plan, sp, suffix)
        where = _Where(name.removesuffix(".service"), "", None)
        values = _common(plan, sp, ctx, where)
        if binary:
            argv = [binary] + argv[1:]
        if topo.kind == "vllm-ray":
            what = "the Ray head" if node.role == "head" else f"Ray worker {node.index}"
            env = {"HOME": where.state, "HF_HOME": f"{where.cache}/huggingface", "VLLM_HOST_IP": node.address,
                   "VLLM_CACHE_ROOT": f"{where.cache}/vllm"}
            comments = [f"Install on {node.address} ({node.label}): {what} of {sp.name}, pipeline stage {node.index} "
                        f"({node.layers} layers over {node.gpus} GPUs)."]
            if node.role == "head":
                comments.append(f"Start it before {main}; the workers join it at {head}:{RAY_PORT}. {main} joins this "
                                "unit's /tmp and user: vLLM attaches to this node through the sockets in Ray's "
                                "session dir there.")
            comments.append(RAY_UNAUTHENTICATED)
            gpu = _node_gpu_devices(node)
            mdwe = False
        else:
            what = f"llama.cpp RPC worker {node.index}"
            env = {"LLAMA_CACHE": where.cache}
            comments = [f"Install on {node.address} ({node.label}): {what} of {sp.name}, planned {node.layers} layers.",
                        f"Start every worker before {main} on the head; the head ships the weights at start and "
                        "-c caches them here.",
                        "ggml-rpc-server is unauthenticated: allow its port only from the head (this unit does "
                        "when the head is named by its IP address; a firewall should too)."]
            gpu = _node_gpu_devices(node)
            mdwe = not gpu
            if _ip_literal(topo.head.address):  # IPAddressAllow= takes addresses, not host names
                values.update(ip_allow=[topo.head.address],
                              ip_allow_reason=f"the head, {topo.head.address}, may reach this unauthenticated RPC "
                                              "server")
        values.update(
            description=escape_text(f"stackgen {plan.stack_name}/{sp.name}: {what} on {node.address}"),
            exec_start=systemd_quote(argv), comments=comments, gpu_devices=gpu, memory_deny_write_execute=mdwe,
            environment=[quote_value(f"{k}={v}", "environment value") for k, v in sorted(env.items())],
            state_dir=where.name, cache_dir=where.name, read_only_paths=[], bind_read_only_paths=[],
            protect_home="yes", timeout_start="90s", env_file=None, credential=None, ip_localhost_only=False,
            ip_reason=f"the node talks to the other nodes of {sp.name}",
            user=_ray_user(plan, sp) if topo.kind == "vllm-ray" and node.role == "head" else None,
            timeout_stop=RAY_STOP_S if topo.kind == "vllm-ray" else "30",
        )
        out.append(Artifact(f"systemd/{name}", unit_text(values)))
    return out


def _node_gpu_devices(node) -> tuple[str, ...]:
    devices: list[str] = []
    for vendor, classes in (("nvidia", NVIDIA_DEVICES), ("amd", AMD_DEVICES), ("intel", INTEL_DEVICES)):
        if vendor in node.vendors:
            devices += [d for d in classes if d not in devices]
    return tuple(devices)


# ---------------------------------------------------------------------------------------------- API key


def _key_mode(sp: ServicePlan, cmd: engines.Command) -> str:
    """How the key reaches the engine: a credential file (the engine reads a file), an env file (the engine reads
    its own variable), not at all, or unsupported (a key is set but the engine has no key option)."""
    if not sp.api_key_env:
        return "none"
    return {"file": "credential", "env": "env_file"}.get(cmd.key_mode or "", "unsupported")


def tls_key_credential(sp: ServicePlan, argv: list) -> tuple[list, list[str]]:
    """The engine's TLS certificate and private key as systemd credentials: (argv naming
    ${CREDENTIALS_DIRECTORY}/tls-cert and /tls-key, the LoadCredential= values), or (argv, []) without serve.tls.
    DynamicUser= runs the service as a UID allocated at start, which no file can be owned by (nor grouped to) ahead
    of time, so a key with the usual permissions (0600 root, 0640 root:ssl-cert) was unreadable and the unit started
    only with a world-readable key (audit a2 #11). The certificate too: read from inside the sandbox, one under
    /home, /root or /run/user (ProtectHome=yes), /tmp (PrivateTmp=yes) or a root-only folder (certbot's 0700
    /etc/letsencrypt/live) made the unit fail at start (audit auda F2). systemd reads a LoadCredential= file as root
    before the service starts, outside its sandbox, and hands it over in a private, read-only folder only that
    service can read (systemd.exec(5), "Credentials"), as it does the API key."""
    engine = engines.get(sp.engine)
    if sp.tls is None or engine.tls_flags is None:
        return argv, []
    out = list(argv)
    loads = []
    for flag, path, cred, name, field in ((engine.tls_flags[0], sp.tls.cert_file, TLS_CERT, "tls-cert", "cert_file"),
                                          (engine.tls_flags[1], sp.tls.key_file, TLS_KEY, "tls-key", "key_file")):
        out = [cred if i and out[i - 1] == flag and a == path else a for i, a in enumerate(out)]
        if cred not in out:
            raise RenderError(f"services.{sp.name}: the engine's command does not name serve.tls.{field} after {flag}")
        # systemd expands specifiers in the path (systemd.exec(5): LoadCredential= "supports specifiers"): % doubled
        loads.append(f"{name}:" + check_value(path, f"serve.tls.{field}").replace("%", "%%"))
    return out, loads


def _hf_token_file(plan: Plan) -> str:
    return f"/etc/stackgen/{plan.stack_name}/hf-token.env"


def hf_token_env_files(plan: Plan, sp: ServicePlan) -> list[str]:
    """EnvironmentFile= lines for HF_TOKEN: optional ('-': the unit starts without it, a public repo needs none),
    read by systemd as root (so the file stays 0600), for a service that fetches from the Hub at start. The unit's
    HOME is its own state folder, so the admin's ~/.cache/huggingface/token is not seen (audit auda F8)."""
    from stackgen.render.container_spec import hub_fetched

    return [f"-{_hf_token_file(plan)}"] if hub_fetched(sp) else []


def hf_token_comments(plan: Plan, sp: ServicePlan) -> list[str]:
    from stackgen.render.container_spec import hub_fetched, hub_token_note

    if not hub_fetched(sp):
        return []
    return [f"{hub_token_note(sp)}:",
            f"put `HF_TOKEN=<token>` in {_hf_token_file(plan)} (mode 0600, root; optional: the unit starts without",
            "it). Its value is never written here."]


def chat_template_path(plan: Plan, sp: ServicePlan) -> str | None:
    """Where a unit's engine reads the service's chat template file on the host it is installed on (a unit has no
    checkout): /etc/stackgen/<stack>/<service>.<file name>; None without one, or for an engine that takes none."""
    from stackgen.render.container_spec import chat_template_file

    if not chat_template_file(sp):
        return None
    return check_value(f"/etc/stackgen/{plan.stack_name}/{sp.name}.{posixpath.basename(sp.spec.chat_template)}",
                       "services.<name>.chat_template")


def chat_template_comments(plan: Plan, sp: ServicePlan) -> list[str]:
    dest = chat_template_path(plan, sp)
    if dest is None:
        return []
    return [f"Chat template: install {sp.spec.chat_template} (relative to the stack file's folder) at {dest},",
            "world-readable (the service runs as a dynamic user). From the stack's folder:",
            f"  sudo install -D -m 0644 {shlex.quote(sp.spec.chat_template)} {shlex.quote(dest)}"]


def tls_comments(sp: ServicePlan) -> list[str]:
    if sp.tls is None or engines.get(sp.engine).tls_flags is None:
        return []
    return [f"TLS: systemd reads {sp.tls.cert_file} and {sp.tls.key_file} as root at start, outside the sandbox,",
            "and hands them to the service as the credentials tls-cert and tls-key (LoadCredential=): they may stay",
            "where they are (/home, /root, /etc/letsencrypt/live); keep the key private (e.g. mode 0600, root).",
            "The copies are taken at each start: restart the unit after renewing them."]


def _key_comments(plan: Plan, sp: ServicePlan, mode: str, key_env: str | None) -> list[str]:
    folder = f"/etc/stackgen/{plan.stack_name}"
    if mode == "credential":
        lines = [f"API key: put it in {folder}/api-key (mode 0600, root); systemd hands it to the service as a",
                 "credential, so the key never appears in the unit, the environment or the process list."]
        comment = engines.get(sp.engine).api_key.file_comment
        if comment:
            lines.append(f"One line; a key starting with '{comment}' is read as a comment, and the engine would run "
                         "without a key.")
        return lines
    if mode == "env_file":
        return [f"API key: put `{key_env}=<key>` in {folder}/{sp.name}.env (mode 0600, root). "
                f"{engines.get(sp.engine).display} reads the",
                f"key only from its command line or {key_env}; the unit fails to start without the file."]
    if mode == "unsupported":
        return [f"{engines.get(sp.engine).display} has no API key option: keep it on loopback behind a proxy."]
    return []


def unit_text(values: dict) -> str:
    """The unit from its values. Its header comment lines carry model names and paths, from stack.yaml and also from
    profiles and stack.lock: a newline in one would start a directive of its own (audit a2 #5), so each line goes
    through the same check as ExecStart='s values."""
    for line in [values["header"].rstrip("\n"), *values["comments"]]:
        check_value(line, "a unit file comment line")
    return render_template("systemd/service.j2", **values)


def _weights_comments(where: _Where, fetched: bool, folder: bool, into: str = "") -> list[str]:
    if fetched:
        return [f"Weights: {where.model_ref} is fetched at start into {into or where.cache}."]
    parts = len(where.local_files)
    split = f" and the {parts - 1} other parts of the split file beside it" if parts > 1 else ""
    if where.copy_from is None:
        return [f"Weights: read-only from {where.local_model}{split}."]
    src, dest = shlex.quote(where.copy_from), shlex.quote(where.local_model or "")
    lines = [f"Weights: install {where.copy_from} (relative to the stack file's folder) at {where.local_model}"
             + (f",{split}" if split else ""),
             "(serve.model_dir; world-readable: the service runs as a dynamic user). From the stack's folder:"]
    if folder:  # an HF model folder
        parent = shlex.quote(posixpath.dirname(where.local_model or ""))
        return lines + [f"  sudo mkdir -p {parent} && sudo cp -r {src} {dest} && sudo chmod -R a+rX {dest}"]
    return lines + [f"  sudo install -D -m 0644 {shlex.quote(s)} {shlex.quote(d)}"
                    for s, d in zip(where.copy_files or (where.copy_from,), where.local_files or (where.local_model,))]


# ---------------------------------------------------------------------------------------------- Ollama


def _modelfile_path(plan: Plan, sp: ServicePlan) -> str:
    return f"/etc/stackgen/{plan.stack_name}/{sp.name}.Modelfile"


def _modelfile(plan: Plan, sp: ServicePlan, ctx: RenderContext) -> str:
    """The Modelfile the create unit reads, FROM the weights where the units read them: the installed path under
    serve.model_dir (the script target's Modelfile names them relative to its own folder, which pointed elsewhere
    once installed in /etc/stackgen: audit auda F7), or the registry model."""
    from stackgen.render.engine_files import render_modelfile

    where = _where(plan, sp, ctx.model_dir)
    return render_modelfile(sp, ctx, where.model_ref, Path(plan.stack_path).parent)


def _create_unit(plan: Plan, sp: ServicePlan, ctx: RenderContext, binary: str | None) -> str:
    """`ollama create` from the Modelfile once the daemon runs: it pins num_ctx/num_gpu the daemon would guess."""
    engine = engines.get(sp.engine)
    where = _where(plan, sp, ctx.model_dir)
    modelfile = _modelfile_path(plan, sp)
    argv = [binary or sp.spec.binary or engine.binary, "create", engine.model_tag(sp), "-f", modelfile]
    values = _common(plan, sp, ctx, where)
    main = unit_name(plan, sp)
    values.update(
        description=escape_text(f"stackgen {plan.stack_name}/{sp.name}: create the {engine.short} model {engine.model_tag(sp)}"),
        comments=[f"Install {sp.name}.Modelfile (rendered beside this unit) at {modelfile},",
                  "world-readable (the unit runs as a dynamic user). From the rendered folder (holding systemd/):",
                  f"  sudo install -D -m 0644 {shlex.quote(f'systemd/{sp.name}.Modelfile')} {shlex.quote(modelfile)}",
                  *([f"Its FROM reads the weights at {where.local_model} (install them as the daemon unit says)."]
                    if where.local_model else []),
                  "Retries until the daemon listens; the daemon itself "
                  + ("stores the weights." if where.local_model else "fetches and stores the weights.")],
        after=[main], requires=[main], type="oneshot", remain_after_exit=True,
        exec_start=systemd_quote(argv), state_dir=None, cache_dir=None, gpu_devices=(),
        memory_deny_write_execute=True, environment=[quote_value(f"OLLAMA_HOST={sp.host}:{sp.port}"),
                                                     quote_value("HOME=/tmp")],
        env_file=None, credential=None, ip_localhost_only=True,
    )
    return unit_text(values)
