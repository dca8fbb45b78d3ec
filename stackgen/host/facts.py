"""Facts about the machine stackgen runs on. This is the only module that probes the host; everything downstream
takes a :class:`HostFacts` as an argument, so plans and renders are reproducible from a recorded host."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping
from pathlib import Path

from stackgen import datafile
from stackgen.spec.stack import CPUSpec, HardwareSpec

# Typical dual-channel DDR4/DDR5 desktop figure, used when nothing better is known (say so in output).
DEFAULT_MEMORY_BANDWIDTH_GBS = 50.0


@dataclass(frozen=True)
class HostFacts:
    """A machine as detected (or recorded): the hardware plus what is free right now."""

    hardware: HardwareSpec
    available_memory_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())
    # Engine builds found on this host (stackgen.host.binaries.engine_build): engine -> build number, 0 when a binary
    # was found but says no build. Probed for `hardware: detect` plans only; a recorded host may carry them.
    engine_builds: Mapping[str, int] = field(default_factory=dict)
    # A real engine's decode/prefill point on this machine (stackgen.host.calibration.EnginePoint), when
    # `stackgen calibrate --model FILE` measured one: CPU plans of this host decode and prefill by it. In memory only.
    calibration: Any = None

    def to_json(self) -> str:
        return json.dumps(
            {"hardware": self.hardware.model_dump(mode="json", exclude_none=True),
             "available_memory_bytes": self.available_memory_bytes, "notes": list(self.notes),
             **({"engine_builds": dict(self.engine_builds)} if self.engine_builds else {})},
            indent=2, sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "HostFacts":
        data = json.loads(text)
        return cls(HardwareSpec.model_validate(data["hardware"], strict=False),
                   data.get("available_memory_bytes"), tuple(data.get("notes", ())),
                   {str(k): int(v) for k, v in (data.get("engine_builds") or {}).items()})

    @classmethod
    def load(cls, path: str | Path) -> "HostFacts":
        """A recorded host file; a hardware description that does not validate is a SpecError naming file:line:col,
        the field and the fix, as in a stack file (the rest of the file is read as from_json reads it)."""
        from stackgen.errors import Problem, SpecError
        from stackgen.spec import yaml_nodes
        from stackgen.spec.stack import validate_hardware

        fix = "write the file with `stackgen detect --json > FILE`"
        try:  # bounded: the file is parsed twice, as JSON and as YAML
            text = datafile.read_text(path, "a recorded host", fix)
            datafile.check_lines(path, text, "a recorded host", fix)
            data = datafile.parse_json(text, path, "a recorded host", fix)
        except datafile.DataFileError as exc:
            raise SpecError([Problem(str(path), 1, 1, "", exc.message, exc.fix)]) from None
        except json.JSONDecodeError as exc:
            raise SpecError([Problem(str(path), exc.lineno, exc.colno, "", f"invalid JSON: {exc.msg}", fix)]) from None
        try:  # JSON is YAML: its parser gives every value's line:col
            marked = yaml_nodes.load_document(text)
            doc = yaml_nodes.Document(data, marked.marks, marked.key_marks)
        except yaml_nodes.YamlError:
            doc = yaml_nodes.Document(data, {})
        hardware = validate_hardware(doc, str(path))
        return cls(hardware, data.get("available_memory_bytes"), tuple(data.get("notes", ())),
                   {str(k): int(v) for k, v in (data.get("engine_builds") or {}).items()})


def detect() -> HostFacts:
    """Probe this machine. Kept cheap: psutil for CPU and RAM; GPU probes live in stackgen.host.detect."""
    try:
        from stackgen.host.detect import detect_host  # the full probe set, when present
    except ImportError:
        return _detect_cpu_ram()
    return detect_host()


def _detect_cpu_ram() -> HostFacts:
    import psutil

    vm = psutil.virtual_memory()
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    threads = psutil.cpu_count(logical=True) or cores
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
    os_name = {"Darwin": "macos", "Windows": "windows"}.get(platform.system(), "linux")
    hw = HardwareSpec(
        description=f"this machine ({platform.node() or 'host'})",
        gpus=(),
        memory_gib=round(vm.total / 2**30, 2),
        memory_bandwidth_gbs=DEFAULT_MEMORY_BANDWIDTH_GBS,
        cpu=CPUSpec(cores=cores, threads=threads, arch=arch),
        os=os_name,
    )
    note = f"memory bandwidth {DEFAULT_MEMORY_BANDWIDTH_GBS:g} GB/s is a table value, not measured"
    return HostFacts(hw, int(vm.available), (note,))
