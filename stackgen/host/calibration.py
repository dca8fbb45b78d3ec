"""A per-user calibration of this host (issue 13): what `stackgen calibrate` measured, kept for later plans.

`plan` with `hardware: detect` uses a stored calibration of the same machine (its detected hardware label) in place
of the detected system-RAM bandwidth and says so in every service's reasons ("speed: calibrated on this host on
DATE"); `--no-calibration` ignores the file. The bandwidth is what decode speed reads for a CPU plan and for the
layers a partial offload leaves in system RAM. Plans of a recorded host (`--host-facts`) or of a named hardware
profile never read it, so goldens do not depend on it.

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

from stackgen.errors import StackgenError

FORMAT = 1


def calibration_path() -> Path:
    """$STACKGEN_CONFIG_HOME/calibration.json, else $XDG_CONFIG_HOME/stackgen/, else ~/.config/stackgen/."""
    base = os.environ.get("STACKGEN_CONFIG_HOME")
    if not base:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        base = str(Path(xdg) / "stackgen")
    return Path(base) / "calibration.json"


@dataclass(frozen=True)
class Calibration:
    machine: str  # machine_key() of the detected host the measurement belongs to
    date: str  # ISO date of the measurement (UTC)
    memory_bandwidth_gbs: float  # system RAM bandwidth measured by the probe
    probe: str  # how it was measured, in words

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        bw = float(data["memory_bandwidth_gbs"])
        if not 0 < bw <= 100000:
            raise ValueError(f"memory_bandwidth_gbs {bw} is not a bandwidth in GB/s")
        return cls(machine=str(data["machine"]), date=str(data["date"]), memory_bandwidth_gbs=bw,
                   probe=str(data.get("probe", "")))

    def reason(self) -> str:
        return (f"speed: calibrated on this host on {self.date} (system RAM bandwidth {self.memory_bandwidth_gbs:g} "
                f"GB/s measured by `stackgen calibrate`; `plan --no-calibration` ignores it)")


def machine_key(hw) -> str:
    """The machine a calibration belongs to: the detected hardware label, CPU cores and RAM size."""
    return f"{hw.label()} | {hw.cpu.cores} cores | {hw.memory_gib:g} GiB RAM"


def measure(machine: str, probe: Callable[[], float] | None = None, today: _dt.date | None = None) -> Calibration:
    """Measure this host: `probe` returns the system-RAM bandwidth in GB/s (default: detect's numpy copy probe)."""
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
    return Calibration(machine=machine, date=day, memory_bandwidth_gbs=round(gbs, 1), probe=how.strip())


def save(cal: Calibration, path: Path | None = None) -> Path:
    path = path or calibration_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cal.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise StackgenError(f"{path}: cannot write the calibration ({exc.strerror or exc}); set "
                            "STACKGEN_CONFIG_HOME to a writable directory") from None
    return path


def load(path: Path | None = None) -> Calibration | None:
    """The stored calibration, or None when there is none. A file that is not one is an error naming the fix."""
    path = path or calibration_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackgenError(f"{path}: cannot read the calibration ({exc.strerror or exc}); fix its permissions, "
                            "or plan with --no-calibration") from None
    try:
        return Calibration.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise StackgenError(f"{path}: not a stackgen calibration ({exc}); run `stackgen calibrate` again to "
                            "rewrite it, or plan with --no-calibration") from None


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
    return dataclasses.replace(host, hardware=hw), cal.reason()
