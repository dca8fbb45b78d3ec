"""Extract llama-server's flag table from llama.cpp's common/arg.cpp (no build needed).

Used to write profiles/engines/llama.cpp.yaml for builds we cannot run here (the 0c1e57098 tree read for
engines.md, vendored in the llama_cpp_python 0.3.36 sdist); tests/integration checks the same extraction against the
installed build's `--help`, so the heuristic is verified on at least one real binary.

    python tests/tools/llama_flags.py path/to/common/arg.cpp   # prints YAML: flag -> number of values

Rules read from arg.cpp: an option is `add_opt(common_arg({"-x", "--xx"}, [{"-no-x", ...},] [VALUE_HINT,] HELP,
[](common_params & params[, TYPE value[, TYPE value2]]) {...}).set_examples({...})...)`. A `bool value` handler
takes no value (the flag or its negative form sets it). It applies to llama-server when its examples include
LLAMA_EXAMPLE_SERVER or LLAMA_EXAMPLE_COMMON (the default) and no set_excludes names the server.
"""

from __future__ import annotations

import re
import sys

OPT_START = "add_opt(common_arg("
ARGS_RE = re.compile(r'\{\s*("(?:-[^"]*)"(?:\s*,\s*"-[^"]*")*)\s*\}')
LAMBDA_RE = re.compile(r"\[[^\]\"]*\]\s*\(\s*(common_params[^)]*)\)")
EXAMPLES_RE = re.compile(r"set_examples\(\{([^}]*)\}\)")
EXCLUDES_RE = re.compile(r"set_excludes\(\{([^}]*)\}\)")


def blocks(source: str):
    """Each add_opt(...) call's text, by balancing parentheses outside string and char literals."""
    pos = source.find(OPT_START)
    while pos != -1:
        end = _call_end(source, pos + len("add_opt"))
        yield source[pos:end]
        pos = source.find(OPT_START, end)


def _call_end(source: str, i: int) -> int:
    depth = 0
    while True:
        ch = source[i]
        if ch in "\"'":
            i = _literal_end(source, i)
            continue
        depth += ch == "("
        depth -= ch == ")"
        i += 1
        if depth == 0:
            return i


def _literal_end(source: str, i: int) -> int:
    quote, i = source[i], i + 1
    while source[i] != quote:
        i += 2 if source[i] == "\\" else 1
    return i + 1


def for_server(block: str) -> bool:
    examples = EXAMPLES_RE.search(block)
    excluded = EXCLUDES_RE.search(block)
    if excluded and "LLAMA_EXAMPLE_SERVER" in excluded.group(1):
        return False
    return examples is None or any(e in examples.group(1) for e in ("LLAMA_EXAMPLE_SERVER", "LLAMA_EXAMPLE_COMMON"))


def parse_block(block: str) -> tuple[dict[str, int], bool]:
    """({flag: number of values}, removed?) for one option."""
    head = block[: block.find("[")] if "[" in block else block
    names = [n.strip().strip('"') for m in ARGS_RE.finditer(head) for n in m.group(1).split(",")]
    lam = LAMBDA_RE.search(block)
    params = [p for p in lam.group(1).split(",")[1:] if p.strip()] if lam else []
    nvalues = 0 if params and "bool" in params[0] else len(params)
    return {n: nvalues for n in names}, "arg_removed(" in block


def extract(source: str) -> tuple[dict[str, int], dict[str, str]]:
    flags: dict[str, int] = {}
    removed: dict[str, str] = {}
    for block in blocks(source):
        if not for_server(block):
            continue
        table, gone = parse_block(block)
        for name, n in table.items():
            if gone:
                hint = re.search(r'arg_removed\("([^"]*)"\)', block)
                removed[name] = "removed; " + (hint.group(1) if hint else "no replacement")
            else:
                flags[name] = n
    return flags, removed


def main(path: str) -> None:
    flags, removed = extract(open(path, encoding="utf-8").read())
    print("    flags:")
    for name in sorted(flags):
        print(f'      "{name}": {flags[name]}')
    print("    removed:")
    for name in sorted(removed):
        print(f'      "{name}": "{removed[name]}"')


if __name__ == "__main__":
    main(sys.argv[1])
