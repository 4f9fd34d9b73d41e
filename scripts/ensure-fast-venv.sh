#!/usr/bin/env bash
# Source this (after or instead of ensure-venv.sh): makes sure .venv-fast holds Concord built
# as a wheel whose hot modules are compiled by mypyc (pyproject.toml's mypyc hook; the list
# is concord.accel.COMPILABLE_MODULES), plus the dev tools, so the same tests and benchmarks
# run against it. Rebuilt when src/ or pyproject.toml changed. Leaves FAST_VENV set to it,
# or to .venv (pure Python) when it cannot be built (no C compiler or Python headers; the
# reason is printed and the log kept in .venv-fast/build.log); CONCORD_REQUIRE_COMPILED=1
# makes that an error instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/ensure-venv.sh  # PYTHON and VENV

FAST_VENV="$PWD/.venv-fast"
fast_log="$FAST_VENV/build.log"
fast_stamp="$FAST_VENV/.concord-built"
fast_digest="$( (cat pyproject.toml; find src -name '*.py' -print0 | sort -z | xargs -0 cat) \
  | sha256sum | cut -d' ' -f1)"

_fast_build() {
  "$PYTHON" -m venv "$FAST_VENV" &&
  "$FAST_VENV/bin/python" -m pip install --quiet --upgrade pip &&
  rm -rf "$FAST_VENV/wheels" "$FAST_VENV/source" && mkdir -p "$FAST_VENV/source" &&
  # from a copy: the mypyc hook leaves its extensions beside the sources it compiles, where
  # they would shadow src/ for .venv (tests/unit/test_accel.py checks src/ holds none)
  cp -R pyproject.toml README.md src "$FAST_VENV/source/" &&
  (cd "$FAST_VENV/source" && HATCH_BUILD_HOOK_ENABLE_MYPYC=true \
     "$FAST_VENV/bin/python" -m pip wheel --no-deps --wheel-dir "$FAST_VENV/wheels" .) &&
  rm -rf "$FAST_VENV/source" &&
  "$FAST_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps \
    "$FAST_VENV"/wheels/concord-*.whl &&
  "$FAST_VENV/bin/python" -m pip install --quiet "$(ls "$FAST_VENV"/wheels/concord-*.whl)[dev]" &&
  "$FAST_VENV/bin/python" -c 'import concord.accel as a, sys; sys.exit(a.compiled_modules() != a.COMPILABLE_MODULES)'
}

fast_failed="$FAST_VENV/.concord-failed"  # this source already failed to build: don't retry
if [ -f "$fast_failed" ] && [ "$(cat "$fast_failed")" = "$fast_digest" ] &&
   [ "${CONCORD_REQUIRE_COMPILED:-0}" != "1" ]; then
  echo "==> the compiled Concord could not be built (see $fast_log); using .venv (pure Python)" >&2
  FAST_VENV="$VENV"
elif [ ! -f "$fast_stamp" ] || [ "$(cat "$fast_stamp")" != "$fast_digest" ]; then
  echo "==> building .venv-fast: Concord with its hot modules compiled by mypyc (about a minute)" >&2
  mkdir -p "$FAST_VENV"
  if _fast_build >"$fast_log.new" 2>&1; then
    mv "$fast_log.new" "$fast_log"
    rm -f "$fast_failed"
    echo "$fast_digest" > "$fast_stamp"
  else
    mv "$fast_log.new" "$fast_log"
    rm -rf "$fast_stamp" "$FAST_VENV/source"
    echo "$fast_digest" > "$fast_failed"
    if [ "${CONCORD_REQUIRE_COMPILED:-0}" = "1" ]; then
      echo "error: could not build the compiled Concord; see $fast_log" >&2
      exit 1
    fi
    echo "==> could not build the compiled Concord (see $fast_log); using .venv (pure Python)" >&2
    FAST_VENV="$VENV"
  fi
fi
