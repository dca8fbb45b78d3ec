"""Built-in and user profiles: hardware machines, workloads and the model catalog.

Built-ins come from profiles/*.yaml (each figure with its source in a comment); a `profiles/` folder next to a
stack.yaml adds entries or overrides built-ins with the same schema. Profile files are trusted less than code:
every entry is validated and a bad one is reported with file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stackgen import datafile
from stackgen.spec import yaml_nodes as _yaml
from stackgen._resources import data_dir
from stackgen.errors import ProfileError, SpecError
from stackgen.spec.stack import HardwareSpec, WorkloadSpec, _control_chars, hardware_problems

_FILES = ("hardware.yaml", "workloads.yaml", "models.yaml")


@dataclass(frozen=True)
class Profiles:
    hardware: dict[str, HardwareSpec]
    workloads: dict[str, WorkloadSpec]
    models: dict[str, Any]  # name -> stackgen.models.facts.ModelFacts
    dirs: tuple[Path, ...] = field(default=())


def load_profiles(stack_dir: Path | None = None) -> Profiles:
    """Built-ins, overlaid with `<stack_dir>/profiles/*.yaml` when that folder exists."""
    builtin = _load_dir(data_dir("profiles"))
    user_dir = stack_dir / "profiles" if stack_dir is not None else None
    if user_dir is None or not user_dir.is_dir():
        return builtin
    user = _load_dir_uncached(user_dir)
    return Profiles(
        hardware={**builtin.hardware, **user.hardware},
        workloads={**builtin.workloads, **user.workloads},
        models={**builtin.models, **user.models},
        dirs=builtin.dirs + user.dirs,
    )


@lru_cache(maxsize=4)
def _load_dir(folder: Path) -> Profiles:
    return _load_dir_uncached(folder)


def _load_dir_uncached(folder: Path) -> Profiles:
    from stackgen.models.facts import ModelFacts

    hardware = _load_file(folder / "hardware.yaml", lambda name, data: HardwareSpec.model_validate(data),
                          check=hardware_problems)
    workloads = _load_file(folder / "workloads.yaml", lambda name, data: WorkloadSpec.model_validate(data))
    models = _load_file(folder / "models.yaml", ModelFacts.from_catalog)
    return Profiles(hardware, workloads, models, (folder,))


def _load_file(path: Path, build, check=None) -> dict[str, Any]:
    """name -> built entry; `check(entry)` lists what an entry contradicts itself in ((location, message, fix))."""
    if not path.is_file():
        return {}
    display = str(path)
    try:
        doc = datafile.load_yaml(path, "a profile file", "keep in it the entries your stacks name")
    except _yaml.YamlError as exc:
        raise ProfileError(f"{display}:{exc.mark.line}:{exc.mark.col}: {exc.message}") from None
    except datafile.DataFileError as exc:
        raise ProfileError(f"{display}:1:1: {exc.message} ({exc.fix})") from None
    except UnicodeDecodeError as exc:  # was an internal error (review L6); every other datafile reader says so too
        raise ProfileError(f"{display}:1:1: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        raise ProfileError(f"{display}:1:1: a profile file is a mapping of name -> entry")
    # The same door as stack.yaml's values: a newline in a catalog `ollama:` name wrote `[Service]` and
    # `ExecStartPre=+...` into the systemd unit (audit a2 #5).
    bad = next(_control_chars(doc.data, (), doc, display), None)
    if bad is not None:
        raise ProfileError(str(bad))
    out: dict[str, Any] = {}
    for name, entry in doc.data.items():
        try:
            out[name] = build(name, entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = (name,) + tuple(err["loc"])
            m = doc.mark_for(loc)
            field_path = ".".join(str(p) for p in loc)
            raise ProfileError(f"{display}:{m.line}:{m.col}: {field_path}: {err['msg']}") from None
        except (ValueError, TypeError, KeyError) as exc:
            m = doc.mark_for((name,))
            raise ProfileError(f"{display}:{m.line}:{m.col}: {name}: {exc}") from None
        for tail, message, hint in check(out[name]) if check else ():
            m = doc.mark_for((name,) + tail)
            field_path = ".".join(str(p) for p in (name,) + tail)
            raise ProfileError(f"{display}:{m.line}:{m.col}: {field_path}: {message} ({hint})")
    return out


__all__ = ["Profiles", "load_profiles", "ProfileError", "SpecError"]
