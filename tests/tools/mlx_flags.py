"""Extract mlx_lm.server's flag table from mlx_lm/server.py (argparse add_argument calls, read with ast).

    python tests/tools/mlx_flags.py path/to/mlx_lm/server.py   # prints YAML: flag -> number of values

Used to write profiles/engines/mlx.yaml for mlx-lm versions read from their PyPI sdists; the integration tests
check the installed mlx_lm.server's real `--help` against the emitted flags.
"""

from __future__ import annotations

import ast
import sys

NO_VALUE_ACTIONS = {"store_true", "store_false", "store_const", "count", "help", "version"}


def extract(source: str) -> dict[str, object]:
    flags: dict[str, object] = {"-h": 0, "--help": 0}  # argparse adds them to every parser
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
            for name in names:
                flags[name] = _arity(node)
    return flags


def _arity(call: ast.Call) -> object:
    kw = {k.arg: k.value for k in call.keywords}
    action = kw.get("action")
    if isinstance(action, ast.Constant) and action.value in NO_VALUE_ACTIONS:
        return 0
    nargs = kw.get("nargs")
    if isinstance(nargs, ast.Constant):
        return nargs.value
    return 1


def main(path: str) -> None:
    flags = extract(open(path, encoding="utf-8").read())
    print("    flags:")
    for name in sorted(flags):
        value = flags[name]
        print(f'      "{name}": {value!r}' if isinstance(value, int) else f'      "{name}": "{value}"')


if __name__ == "__main__":
    main(sys.argv[1])
