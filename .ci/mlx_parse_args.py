#!/usr/bin/env python3
"""Check that an argv is accepted by `mlx_lm.server` (mlx-lm 0.32.2) without starting anything.

Usage: $STACKGEN_MLX_PY .ci/mlx_parse_args.py [--json] --model DIR [--flag value ...]

mlx_lm.server builds its argparse parser inside main() and starts serving right after
parse_args(); this runs that main() with parse_args wrapped to stop just after parsing.
Exit 0 and "ok" when the argv parses (--json: the parsed namespace as JSON); exit 2 with
argparse's message on stderr otherwise. No model is loaded, no port opened.
(`mlx_lm.server ARGV --help` is not a substitute: argparse prints help and exits 0 before it
reports unknown arguments.)
"""
import argparse
import json
import sys


class _Parsed(Exception):
    def __init__(self, ns):
        super().__init__()
        self.ns = ns


def main(argv: list[str]) -> int:
    as_json = argv[:1] == ["--json"]
    if as_json:
        argv = argv[1:]
    import mlx_lm.server as server

    orig = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(orig(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    sys.argv = ["mlx_lm.server", *argv]
    try:
        server.main()
    except _Parsed as p:
        print(json.dumps(vars(p.ns), default=str, sort_keys=True) if as_json else "ok")
        return 0
    finally:
        argparse.ArgumentParser.parse_args = orig
    print("mlx_lm.server: main() returned without parsing arguments", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
