"""Summarize a mutmut run for benchmarks/results/mutation.md (used by benchmarks/mutation.sh).

`collect MODULE SECONDS` (run inside the folder mutmut ran in): JSON with every mutant's status and, for each one
that was not killed, its diff and whether it only changes message text. `write OUT REASONS SUMMARY...`: the report.

A mutant is message-only when every token it changes is a string literal holding prose (a space in it): the text
of a reason, a lever or an error. A changed identifier-like string ("fp8", "f16", "apple") is logic: code compares
it or looks it up.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


LITERAL = re.compile(r"""([rRbBuUfF]{0,2})("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
FIELD = re.compile(r"\{[^{}]*\}")


def _split(line: str) -> tuple[str, list[tuple[str, tuple[str, ...]]]]:
    """The line with its string literals replaced by a marker, and each literal as (its text, the {fields} of an
    f-string): a changed field is a changed figure, not prose."""
    parts = []
    for m in LITERAL.finditer(line.strip()):
        body = m.group(2)
        if "f" in m.group(1).lower():
            parts.append((FIELD.sub("{}", body), tuple(FIELD.findall(body))))
        else:
            parts.append((body, ()))
    return LITERAL.sub("S", line.strip()), parts


def message_only(diff: str) -> bool:
    old = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    new = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    if not old or len(old) != len(new):
        return False
    for a, b in zip(old, new):
        (sa, la), (sb, lb) = _split(a), _split(b)
        if sa != sb or len(la) != len(lb):
            return False
        changed = [(x, y) for x, y in zip(la, lb) if x != y]
        if not changed or any(x[1] != y[1] or " " not in x[0] for x, y in changed):
            return False
    return True


def collect(module: str, seconds: int) -> dict:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    data = SourceFileMutationData(path=Path(module))
    data.load()
    mutants = []
    for key, code in sorted(data.exit_code_by_key.items()):
        status = status_by_exit_code[code]
        diff = get_diff_for_mutant(key, path=Path(module))
        entry = {"name": key, "status": status, "message": message_only(diff)}
        if status not in ("killed", "not checked"):
            entry["diff"] = diff
        mutants.append(entry)
    return {"module": module, "seconds": seconds, "mutants": mutants}


def _first_change(diff: str) -> str:
    old = next((ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")), "")
    new = next((ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")), "")
    cut = lambda s: s if len(s) <= 110 else s[:107] + "..."  # noqa: E731
    return f"`{cut(old)}` -> `{cut(new)}`"


DETECTED = ("killed", "timeout")  # a timeout: the tests hang on the mutant, so CI would not pass it either


def write(out: str, reasons_path: str, summaries: list[str]) -> None:
    reasons: dict[str, str] = {}
    if Path(reasons_path).exists():
        for line in Path(reasons_path).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, why = line.partition("\t")
                reasons[name.strip()] = why.strip()
    lines = ["# Mutation score of the planner (issue 19)", "",
             "Written by `bash benchmarks/mutation.sh` (mutmut, pinned in benchmarks/requirements-mutation.txt); "
             "each mutant is run against the planner's unit tests only (the selection is in the script). "
             "Message-only mutants change nothing but the prose of a reason, lever or error "
             "(benchmarks/mutation_report.py says how they are told apart); the goal is >= 90% of the other "
             "mutants detected (killed, or hanging the tests: timeout) in each module. Mutants a run did not reach "
             "are counted apart, never as killed. A survivor's reason comes from "
             "benchmarks/mutation-survivors.tsv (`UNEXPLAINED` when it has none).", "",
             "| module | mutants | run | non-message: detected / run | score | message-only: detected / run "
             "| not run | run time |",
             "|---|---|---|---|---|---|---|---|"]
    body: list[str] = []
    for path in summaries:
        s = json.loads(Path(path).read_text())
        ms = s["mutants"]
        run = [m for m in ms if m["status"] != "not checked"]
        logic = [m for m in run if not m["message"]]
        msg = [m for m in run if m["message"]]
        k = lambda xs: sum(m["status"] in DETECTED for m in xs)  # noqa: E731
        score = 100 * k(logic) / len(logic) if logic else 100.0
        lines.append(f"| {s['module']} | {len(ms)} | {len(run)} | {k(logic)} / {len(logic)} | {score:.1f}% | "
                     f"{k(msg)} / {len(msg)} | {len(ms) - len(run)} | {s['seconds'] // 60} min {s['seconds'] % 60} s |")
        left = [m for m in logic if m["status"] not in DETECTED]
        body += ["", f"## {s['module']}: {len(left)} non-message mutants not detected", ""]
        for m in left:
            body.append(f"- `{m['name']}` ({m['status']}): {_first_change(m['diff'])}: "
                        f"{reasons.get(m['name'], 'UNEXPLAINED')}")
        msg_left = [m for m in msg if m["status"] not in DETECTED]
        body += ["", f"{len(msg_left)} message-only mutants not detected in {s['module']} (the prose of reasons "
                 "and errors; not listed one by one)."]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines + body) + "\n")


def left(module: str, unchecked: bool = False) -> list[str]:
    """Names of the mutants of `module` that were run and not killed and change more than message text (for a
    rerun after adding tests; mutants never run stay for a full run, unless `unchecked`: then they are named too,
    so a run stopped part-way finishes with the new tests)."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    data = SourceFileMutationData(path=Path(module))
    data.load()
    return [k for k, code in sorted(data.exit_code_by_key.items())
            if (unchecked and status_by_exit_code[code] == "not checked")
            or (status_by_exit_code[code] not in ("killed", "not checked", "timeout")
                and not message_only(get_diff_for_mutant(k, path=Path(module))))]


if __name__ == "__main__":
    if sys.argv[1] == "left":
        print("\n".join(left(sys.argv[2], unchecked="--unchecked" in sys.argv[3:])))
    elif sys.argv[1] == "collect":
        print(json.dumps(collect(sys.argv[2], int(sys.argv[3])), indent=1))
    else:
        write(sys.argv[2], sys.argv[3], sys.argv[4:])
