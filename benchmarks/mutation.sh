#!/usr/bin/env bash
# Mutation testing of the planner (issue 19): mutmut (pinned in benchmarks/requirements-mutation.txt) mutates each
# planner module and runs only the planner's unit tests against every mutant; the score per module (killed / total,
# message-only mutants apart) and every survivor with its reason go to benchmarks/results/mutation.md.
# Not in CI: a full run takes tens of minutes on 2 cores. Run it before resolving planner work.
#
#   bash benchmarks/mutation.sh                         # both modules, one after the other
#   MUTATION_MODULES="stackgen/plan/memory.py stackgen/plan/resolve.py" bash benchmarks/mutation.sh   # after a move: the paths are settings
#
# Settings (environment):
#   MUTATION_MODULES       files to mutate, space-separated (default: stackgen/plan/memory.py stackgen/plan/resolve.py)
#   MUTATION_TESTS         pytest selection run against each mutant (default: the planner's unit tests below)
#   MUTATION_MAX_CHILDREN  mutmut --max-children (default 2: the CI host has 2 cores)
#   MUTATION_VENV          venv that has stackgen and its test extras (default .venv); mutmut is installed into it
#   MUTATION_OUT           report path (default benchmarks/results/mutation.md)
#   MUTATION_WORK          scratch folder for the copies mutmut works in (default: a new temporary folder)
#   MUTATION_ONLY          mutant name globs passed to `mutmut run` (e.g. 'stackgen.plan.resolve.x__share_machine__mutmut_*'):
#                          run only those mutants (the others stay "not checked" and are counted as not run)
#   MUTATION_RERUN=1       reuse MUTATION_WORK from an earlier run: copy the current tests into it and run again
#                          only the mutants it ran that survived and change more than message text (after adding
#                          tests for them; mutants it never ran are left for a full run)
#   MUTATION_RERUN=all     the same, and also every mutant the earlier run did not reach (a run stopped part-way,
#                          finished with the tests as they are now)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODULES=${MUTATION_MODULES:-"stackgen/plan/memory.py stackgen/plan/resolve.py"}
# tests/plan holds what were tests/test_memory.py, test_resolve.py, ... before the package move (deb63de);
# tests/render/test_multinode.py plans multi-node stacks; tests/engines/test_knobs.py plans YaRN and structured output
TESTS=${MUTATION_TESTS:-"tests/plan tests/render/test_multinode.py tests/engines/test_knobs.py"}
for t in $TESTS; do [ -e "$t" ] || { echo "MUTATION_TESTS: $t: no such file or folder" >&2; exit 1; }; done
CHILDREN=${MUTATION_MAX_CHILDREN:-2}
VENV=${MUTATION_VENV:-.venv}
OUT=${MUTATION_OUT:-benchmarks/results/mutation.md}
WORK=${MUTATION_WORK:-$(mktemp -d -t stackgen-mutation.XXXXXX)}
PY="$ROOT/$VENV/bin/python"
[ -x "$PY" ] || { echo "no venv at $VENV: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2; exit 1; }
"$PY" -m pip install -q -r benchmarks/requirements-mutation.txt

results=()
for module in $MODULES; do
  [ -f "$module" ] || { echo "$module: no such file (set MUTATION_MODULES)" >&2; exit 1; }
  name=$(basename "$module" .py)
  dir="$WORK/$name"
  if [ -n "${MUTATION_RERUN:-}" ]; then
    [ -d "$dir/mutants" ] || { echo "MUTATION_RERUN: no earlier run in $dir" >&2; exit 1; }
    for t in $TESTS; do  # the tests as they are now, where mutmut runs them
      rm -rf "$dir/$t" "$dir/mutants/$t"
      mkdir -p "$(dirname "$dir/$t")" "$(dirname "$dir/mutants/$t")"
      cp -r "$t" "$dir/$t" && cp -r "$t" "$dir/mutants/$t"
    done
    # the package's other modules as they are now too: tests added since may need a fix made beside them (only
    # the mutated module stays as mutmut wrote it)
    while IFS= read -r -d '' f; do
      [ "$f" = "$module" ] && continue
      mkdir -p "$(dirname "$dir/$f")" "$(dirname "$dir/mutants/$f")"
      cp "$f" "$dir/$f" && cp "$f" "$dir/mutants/$f"
    done < <(git ls-files -co --exclude-standard -z -- "${module%%/*}")
    mapfile -t again < <(cd "$dir" && "$PY" "$ROOT/benchmarks/mutation_report.py" left "$module" \
                         $([ "$MUTATION_RERUN" = all ] && echo --unchecked))
    echo "== $module: rerunning ${#again[@]} mutants that were not killed"
    start=$(date +%s)
    if [ ${#again[@]} -gt 0 ]; then
      (cd "$dir" && "$ROOT/$VENV/bin/mutmut" run --max-children "$CHILDREN" "${again[@]}" > "$dir/rerun.log" 2>&1) || {
        echo "mutmut failed on $module; see $dir/rerun.log" >&2; tail -20 "$dir/rerun.log" >&2; exit 1; }
    fi
    end=$(date +%s)
    (cd "$dir" && "$PY" "$ROOT/benchmarks/mutation_report.py" collect "$module" \
       $(( $(cat "$dir/seconds" 2>/dev/null || echo 0) + end - start )) > "$dir/summary.json")
    results+=("$dir/summary.json")
    continue
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  # A copy of the tree as git sees it (tracked and new files, nothing ignored): mutmut writes mutants/ beside it.
  git ls-files -co --exclude-standard -z | (cd "$ROOT" && xargs -0 cp --parents -t "$dir" 2>/dev/null || true)
  pkg=${module%%/*}
  {
    echo "[mutmut]"
    echo "source_paths=$pkg"
    echo "only_mutate=$module"
    # benchmarks: tests/plan/test_repeat_noise.py loads bench_repeat_noise.py to check its recorded figures
    printf 'also_copy=\n    profiles\n    templates\n    schema\n    examples\n    benchmarks\n'
    printf 'pytest_add_cli_args=\n    -p\n    no:cacheprovider\n    -q\n'
    echo "pytest_add_cli_args_test_selection="
    for t in $TESTS; do echo "    $t"; done
  } > "$dir/setup.cfg"
  echo "== $module: mutmut in $dir (tests: $TESTS; --max-children $CHILDREN)"
  start=$(date +%s)
  read -r -a only <<< "${MUTATION_ONLY:-}"
  (cd "$dir" && "$ROOT/$VENV/bin/mutmut" run --max-children "$CHILDREN" ${only[@]+"${only[@]}"} > "$dir/run.log" 2>&1) || {
    echo "mutmut failed on $module; see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; exit 1; }
  end=$(date +%s)
  echo $((end - start)) > "$dir/seconds"
  (cd "$dir" && "$PY" "$ROOT/benchmarks/mutation_report.py" collect "$module" $((end - start)) \
     > "$dir/summary.json")
  results+=("$dir/summary.json")
done
"$PY" benchmarks/mutation_report.py write "$OUT" benchmarks/mutation-survivors.tsv "${results[@]}"
echo "wrote $OUT"
