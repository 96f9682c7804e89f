#!/usr/bin/env bash
# .ci/cross-checks.sh -- the C core (csrc/*.c, not csrc/python/) on every platform, on every CI run,
# warnings as errors (issue 14):
#   musl-dlopen         csrc/*.c built with musl-gcc as a shared library; tests/c/musl_dlopen.c
#                       (musl-gcc too) dlopen()s it and uses it from two threads.  A negative
#                       control builds the library again with initial-exec TLS forced
#                       (-DNM_TLS_FAST=...) and must see musl refuse it: the test still catches
#                       the bug it is there for.
#   x86_64-macos, aarch64-macos      zig cc: every file compiled, a .dylib linked
#   x86_64-windows-gnu               zig cc: every file compiled, a DLL linked
#   aarch64-linux-gnu                zig cc: every file compiled, a .so linked (-z defs)
#   x86_64-linux-musl                zig cc: every file compiled, a .so linked (-z defs); when
#                                    musl is installed, musl_dlopen loads that .so too
# zig comes from the ziglang wheel (ZIGLANG_SPEC, default pinned: a new clang brings new warnings,
# and this is -Werror), pip-installed into this script's own venv, $TMPDIR/nativemem-cross-zig,
# kept between runs (CROSS_ZIG_VENV moves it); skipped, with a message, when pip cannot reach it.
# CROSS_ZIG="path/to/python -m ziglang" uses a zig already installed.  zig's global cache
# (~/.cache/zig) keeps the C runtimes it builds per target: a first run on a machine builds them
# (the mingw-w64 CRT takes longest: about 2.5 minutes in all on 2 cores), later runs ~5-15 s.
# The MSVC-mode compile and the mingw-w64 + Wine run live in .ci/c-checks.sh (step 5 and 8).
# Installs nothing with apt: musl-gcc comes from musl-tools (.ci/run installs it).
# Prints one PASS/FAIL/SKIP line per target; exits non-zero when one failed (a SKIP fails too
# with CROSS_REQUIRE_ALL=1).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
PY=${PYTHON:-python3}
SRC=(csrc/*.c)
# build_ffi.py's flags (non-MSVC), warnings as errors; default visibility (the libraries built
# here export the public API, as a standalone libnativemem would: the extension hides it).
WFLAGS=(-std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-function -D_DEFAULT_SOURCE=1 -D_DARWIN_C_SOURCE=1
        -Icsrc -Icsrc/include)
RESULTS=()
FAILED=0
SKIPPED=0
have() { command -v "$1" >/dev/null 2>&1; }
result() {  # STATUS target message
  RESULTS+=("$(printf '%-4s %-20s %s' "$1" "$2" "$3")")
  case $1 in FAIL) FAILED=1 ;; SKIP) SKIPPED=1 ;; esac
}
show() { sed 's/^/    | /' "$1" | head -n "${2:-40}"; }

# ---- zig (in the background while musl-gcc works) ----------------------------------------------
# The venv lives at a fixed path under the temp dir and is reused: zig keys the C runtime it
# builds for a target (the mingw-w64 CRT: ~90 s of CPU) by the path of its own lib directory, so a
# fresh venv per run would rebuild it every time.  Recreated when broken; flock serializes setups.
ZIG_VENV=${CROSS_ZIG_VENV:-${TMPDIR:-/tmp}/nativemem-cross-zig}
ZIGLANG_SPEC=${ZIGLANG_SPEC:-ziglang==0.17.1}
zig_setup() {
  if [ -n "${CROSS_ZIG:-}" ]; then
    echo "$CROSS_ZIG" >"$OUT/zigcmd"
  else
    (
      if have flock; then exec 9>"$ZIG_VENV.lock" && flock -w 600 9; fi
      if ! "$ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
        rm -rf "$ZIG_VENV" && "$PY" -m venv "$ZIG_VENV" || exit 1
      fi
      # already satisfied: no network; else downloads (or fails offline)
      timeout 300 "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check "$ZIGLANG_SPEC"
    ) >"$OUT/zigpip.log" 2>&1 || return 1
    echo "$ZIG_VENV/bin/python -m ziglang" >"$OUT/zigcmd"
  fi
  # shellcheck disable=SC2046
  $(cat "$OUT/zigcmd") version >"$OUT/zigversion" 2>>"$OUT/zigpip.log"
}
zig_setup &
ZIG_SETUP_PID=$!

# ---- musl: the core as a shared library, dlopen'ed -----------------------------------------------
musl_lib() {  # output, extra flags...
  local out=$1; shift
  musl-gcc "${WFLAGS[@]}" "$@" -fPIC -shared "${SRC[@]}" -o "$out" -lpthread
}
if have musl-gcc; then
  T0=$(date +%s)
  if ! musl_lib "$OUT/libnm-musl.so" >"$OUT/musl-lib.log" 2>&1; then
    result FAIL musl-dlopen "musl-gcc shared library build:"; show "$OUT/musl-lib.log" >>"$OUT/details"
  elif ! musl-gcc "${WFLAGS[@]}" tests/c/musl_dlopen.c -o "$OUT/musl_dlopen" -ldl -lpthread >"$OUT/musl-exe.log" 2>&1; then
    result FAIL musl-dlopen "musl-gcc build of tests/c/musl_dlopen.c:"; show "$OUT/musl-exe.log" >>"$OUT/details"
  elif ! timeout 60 "$OUT/musl_dlopen" "$OUT/libnm-musl.so" >"$OUT/musl-run.log" 2>&1; then
    result FAIL musl-dlopen "dlopen smoke test:"; show "$OUT/musl-run.log" >>"$OUT/details"
  else
    # negative control: initial-exec forced, musl must refuse the library
    musl_lib "$OUT/libnm-musl-ie.so" '-DNM_TLS_FAST=__attribute__((tls_model("initial-exec")))' >"$OUT/musl-ie.log" 2>&1
    timeout 60 "$OUT/musl_dlopen" "$OUT/libnm-musl-ie.so" >>"$OUT/musl-ie.log" 2>&1
    if grep -q "initial-exec TLS" "$OUT/musl-ie.log"; then
      result PASS musl-dlopen "${#SRC[@]} files, shared library dlopen'ed, used from 2 threads; initial-exec control refused as it should be ($(( $(date +%s) - T0 ))s)"
    else
      result FAIL musl-dlopen "smoke test passed, but the initial-exec control was not refused (the test no longer catches issue 14):"
      show "$OUT/musl-ie.log" >>"$OUT/details"
    fi
  fi
else
  result SKIP musl-dlopen "musl-gcc missing (apt-get install musl-tools)"
fi

# ---- zig cc targets ----------------------------------------------------------------------------------
# target: compile every file (-c), then link a shared library; each target in the background.
zig_target() {  # target libname [extra flags...]
  local t=$1 lib=$2 d="$OUT/$1" f bad=() t0; shift 2
  local pic=(-fPIC) link=()
  case $t in
    *windows*) pic=() ;;
    *linux*) link=(-Wl,-z,defs -lpthread) ;;
  esac
  mkdir -p "$d"
  t0=$(date +%s)
  for f in "${SRC[@]}"; do
    # shellcheck disable=SC2086
    timeout 300 $ZIGCMD cc -target "$t" "${WFLAGS[@]}" "${pic[@]}" -c "$f" -o "$d/$(basename "$f" .c).o" >>"$d/compile.log" 2>&1 \
      || bad+=("$(basename "$f")")
  done
  if [ ${#bad[@]} -gt 0 ]; then
    echo "FAIL|compile: $(grep -c 'error:' "$d/compile.log") error(s) (warnings are errors) in ${bad[*]}" >"$d/status"
    return
  fi
  # shellcheck disable=SC2086
  if ! timeout 400 $ZIGCMD cc -target "$t" -shared "$d"/*.o "${link[@]}" -o "$d/$lib" >"$d/link.log" 2>&1; then
    echo "FAIL|${#SRC[@]} files compiled; linking $lib failed" >"$d/status"
    return
  fi
  echo "PASS|${#SRC[@]} files compiled, $lib linked ($(( $(date +%s) - t0 ))s)" >"$d/status"
}

ZIG_TARGETS=(x86_64-macos:libnativemem.dylib aarch64-macos:libnativemem.dylib x86_64-windows-gnu:nativemem.dll
             aarch64-linux-gnu:libnativemem.so x86_64-linux-musl:libnativemem.so)
if wait $ZIG_SETUP_PID && [ -s "$OUT/zigversion" ]; then
  ZIGCMD=$(cat "$OUT/zigcmd")
  ZIGV=$(cat "$OUT/zigversion")
  PIDS=()
  for tl in "${ZIG_TARGETS[@]}"; do
    zig_target "${tl%%:*}" "${tl#*:}" &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p"; done
  for tl in "${ZIG_TARGETS[@]}"; do
    t=${tl%%:*} d="$OUT/${tl%%:*}"
    st=$(cat "$d/status" 2>/dev/null || echo "FAIL|no status (killed?)")
    msg=${st#*|}
    # the musl .so loaded by the musl-gcc program: dlopen of a zig-built library too
    if [ "$t" = x86_64-linux-musl ] && [ "${st%%|*}" = PASS ] && [ -x "$OUT/musl_dlopen" ] && [ "$(uname -m)" = x86_64 ]; then
      if timeout 60 "$OUT/musl_dlopen" "$d/${tl#*:}" >"$d/run.log" 2>&1; then
        msg="$msg; dlopen'ed by musl_dlopen: OK"
      else
        st="FAIL|"; msg="$msg; but musl_dlopen failed on it:"; cp "$d/run.log" "$d/link.log"
      fi
    fi
    result "${st%%|*}" "$t" "zig $ZIGV: $msg"
    if [ "${st%%|*}" = FAIL ]; then
      { echo "  [$t]"; [ -s "$d/compile.log" ] && show "$d/compile.log" 60; [ -s "$d/link.log" ] && show "$d/link.log" 30; } >>"$OUT/details"
    fi
  done
else
  why=$(tail -n 1 "$OUT/zigpip.log" 2>/dev/null)
  for tl in "${ZIG_TARGETS[@]}"; do
    result SKIP "${tl%%:*}" "no zig: cannot pip install ziglang (offline?)${why:+: $why}"
  done
fi

# ---- report ------------------------------------------------------------------------------------------
echo "cross checks (C core: ${#SRC[@]} files; flags: ${WFLAGS[*]})"
printf '%s\n' "${RESULTS[@]}"
if [ -s "$OUT/details" ]; then echo "details:"; cat "$OUT/details"; fi
if [ $SKIPPED = 1 ] && [ "${CROSS_REQUIRE_ALL:-0}" = 1 ]; then
  echo "CROSS_REQUIRE_ALL=1 and a target was skipped"; FAILED=1
fi
echo "cross checks: $([ $FAILED = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - START ))s"
exit $FAILED
