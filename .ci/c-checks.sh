#!/usr/bin/env bash
# .ci/c-checks.sh -- the C core under the tools: the plain-C harness built normally, with
# AddressSanitizer + UBSan (leak checker on), under Valgrind memcheck, with ThreadSanitizer,
# cross-compiled with mingw-w64 and run under Wine (Windows heaps wired through GetProcAddress),
# and with zig for 32-bit x86 and aarch64 (qemu-user), plus an MSVC-mode compile for Windows;
# seeded-bug programs must be caught under each tool; and a subset of the Python suite under
# Valgrind with no error whose stack passes through nativemem.  Each step is skipped, with a
# message, when its tool is missing.  Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FAIL=0
PY=${PYTHON:-python3}
SRC=(csrc/*.c)
CFLAGS=(-std=c11 -O1 -g -D_DEFAULT_SOURCE -Icsrc/include -Icsrc)
T0=$(date +%s)
note() { printf -- '--- [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
bad() { printf -- '*** FAILED: %s\n' "$*"; FAIL=1; }
have() { command -v "$1" >/dev/null 2>&1; }

run_harness() {  # label, binary, [runner...]
  local label=$1 bin=$2; shift 2
  if "$@" "$bin" >"$OUT/$label.out" 2>"$OUT/$label.err"; then
    note "harness [$label]: $(tail -n 1 "$OUT/$label.out")"
  else
    bad "harness [$label]"; tail -n 40 "$OUT/$label.err"
  fi
}

# seeded MODE EXPECT-REGEX label runner...: the program must exit non-zero with a matching report
seeded() {
  local mode=$1 pat=$2 label=$3 bin=$4; shift 4
  "$@" "$bin" "$mode" >"$OUT/s.out" 2>"$OUT/s.err"
  local rc=$?
  if [ $rc -ne 0 ] && grep -Eq "$pat" "$OUT/s.err"; then
    note "seeded $mode [$label]: caught (exit $rc, /$pat/)"
  else
    bad "seeded $mode [$label]: exit $rc, expected a report matching /$pat/"; tail -n 20 "$OUT/s.err"
  fi
}

# 1. normal build
gcc "${CFLAGS[@]}" "${SRC[@]}" tests/c/harness.c -lpthread -o "$OUT/harness" || bad "build harness"
gcc "${CFLAGS[@]}" "${SRC[@]}" tests/c/seeded.c -lpthread -o "$OUT/seeded" || bad "build seeded"
run_harness normal "$OUT/harness"
seeded pool-double-free "nativemem: double free" normal "$OUT/seeded"
seeded pool-checked-write-after-free "nativemem: write after free" normal "$OUT/seeded"
seeded debug-overflow "nativemem: buffer overflow.*offset 10" normal "$OUT/seeded"
seeded debug-use-after-free "nativemem: write after free" normal "$OUT/seeded"
seeded debug-double-free "nativemem: double free" normal "$OUT/seeded"

# 2. AddressSanitizer + UndefinedBehaviorSanitizer, leak checker on
if echo 'int main(void){return 0;}' | gcc -fsanitize=address,undefined -x c - -o "$OUT/t" 2>/dev/null; then
  SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  gcc "${CFLAGS[@]}" "${SAN[@]}" "${SRC[@]}" tests/c/harness.c -lpthread -o "$OUT/harness-asan" || bad "build asan"
  gcc "${CFLAGS[@]}" "${SAN[@]}" "${SRC[@]}" tests/c/seeded.c -lpthread -o "$OUT/seeded-asan" || bad "build seeded asan"
  export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1
  run_harness asan "$OUT/harness-asan"
  seeded pool-use-after-free "AddressSanitizer: use-after-poison" asan "$OUT/seeded-asan"
  seeded pool-double-free "nativemem: double free" asan "$OUT/seeded-asan"
  seeded pool-checked-write-after-free "AddressSanitizer: use-after-poison" asan "$OUT/seeded-asan"
  seeded debug-overflow "AddressSanitizer: use-after-poison" asan "$OUT/seeded-asan"
  seeded debug-use-after-free "AddressSanitizer: use-after-poison" asan "$OUT/seeded-asan"
  seeded debug-double-free "nativemem: double free" asan "$OUT/seeded-asan"
  unset ASAN_OPTIONS UBSAN_OPTIONS
else
  note "SKIP ASan/UBSan: compiler has no -fsanitize=address,undefined"
fi

# 3. Valgrind memcheck (client requests compiled in)
if have valgrind && [ -f /usr/include/valgrind/memcheck.h ]; then
  gcc "${CFLAGS[@]}" -DNM_HAVE_VALGRIND "${SRC[@]}" tests/c/harness.c -lpthread -o "$OUT/harness-vg" || bad "build vg"
  gcc "${CFLAGS[@]}" -DNM_HAVE_VALGRIND "${SRC[@]}" tests/c/seeded.c -lpthread -o "$OUT/seeded-vg" || bad "build seeded vg"
  VG=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite)
  run_harness valgrind "$OUT/harness-vg" "${VG[@]}"
  VGS=(valgrind --error-exitcode=1 --leak-check=no)
  seeded pool-use-after-free "Invalid write of size 1" valgrind "$OUT/seeded-vg" "${VGS[@]}"
  seeded pool-double-free "nativemem: double free" valgrind "$OUT/seeded-vg" "${VGS[@]}"
  seeded pool-checked-write-after-free "Invalid write of size 1" valgrind "$OUT/seeded-vg" "${VGS[@]}"
  seeded debug-overflow "Invalid write of size 1" valgrind "$OUT/seeded-vg" "${VGS[@]}"
  seeded debug-use-after-free "Invalid write of size 1" valgrind "$OUT/seeded-vg" "${VGS[@]}"
  seeded debug-double-free "nativemem: double free" valgrind "$OUT/seeded-vg" "${VGS[@]}"
else
  note "SKIP Valgrind: valgrind or valgrind/memcheck.h missing (apt-get install valgrind)"
fi

# 4. ThreadSanitizer (the harness's threaded parts run in every mode; here data races fail it)
TSCC=""
for cc in clang gcc; do
  if have $cc && echo 'int main(void){return 0;}' | $cc -fsanitize=thread -x c - -o "$OUT/t" 2>/dev/null && "$OUT/t"; then TSCC=$cc; break; fi
done
if [ -n "$TSCC" ]; then
  $TSCC "${CFLAGS[@]}" -fsanitize=thread "${SRC[@]}" tests/c/harness.c -lpthread -o "$OUT/harness-tsan" || bad "build tsan"
  TSAN_OPTIONS=halt_on_error=1 run_harness tsan "$OUT/harness-tsan"
else
  note "SKIP TSan: no compiler with a working -fsanitize=thread"
fi

# 5. Windows: mingw-w64 cross build, run under Wine
if have x86_64-w64-mingw32-gcc && have wine; then
  x86_64-w64-mingw32-gcc -std=c11 -O2 -Icsrc/include -Icsrc "${SRC[@]}" tests/c/harness.c -o "$OUT/harness.exe" || bad "build mingw"
  export WINEDEBUG=-all WINEPREFIX="$OUT/wineprefix"
  if timeout 600 wine "$OUT/harness.exe" >"$OUT/wine.out" 2>"$OUT/wine.err"; then
    note "harness [mingw-w64 + Wine]: $(tail -n 1 "$OUT/wine.out"); $(grep -h 'windows private heap' "$OUT/wine.err")"
  else
    bad "harness [mingw-w64 + Wine]"; tail -n 30 "$OUT/wine.err"
  fi
else
  note "SKIP Windows path: x86_64-w64-mingw32-gcc or wine missing (apt-get install gcc-mingw-w64-x86-64 wine64)"
fi

# 6. A subset of the Python suite under Valgrind: no error whose stack passes through nativemem
if have valgrind && "$PY" -c "import nativemem" 2>/dev/null; then
  REAL_PY=$("$PY" -c 'import sys; print(sys.executable)')
  SUPP=$("$PY" -c 'import nativemem.debug as d; print(d.suppressions_path())')
  PYTHONMALLOC=malloc timeout 900 valgrind --suppressions="$SUPP" --num-callers=30 --log-file="$OUT/vgpy.log" \
    "$REAL_PY" -m pytest -q -p no:cacheprovider -x "$ROOT/tests/test_arena.py" "$ROOT/tests/test_debug.py" \
    "$ROOT/tests/test_strtab.py" "$ROOT/tests/test_cow.py" "$ROOT/tests/test_prop.py" \
    -k "not guard_pages_fault and not state_machine and not races and not threads and not write_after_free and not overflow and not underflow and not base_allocator" \
    >"$OUT/vgpy.out" 2>&1 || { bad "Python suite under Valgrind"; tail -n 20 "$OUT/vgpy.out"; }
  N=$("$PY" - "$OUT/vgpy.log" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"==\d+== \n", text)
# an error is nativemem's when its own stack (before any "Address ... block allocated at" part)
# passes through the compiled module; deliberate corruption by tests (ctypes.memset) is not
ours = [b for b in blocks if re.search(r"(Invalid|uninitialised|Conditional|Mismatched)", b)
        and "_native" in re.split(r"Address 0x|Block was alloc|Uninitialised value was created", b)[0]]
for b in ours[:3]:
    print(b, file=sys.stderr)
print(len(ours))
PYEOF
)
  if [ "$N" = "0" ]; then
    note "Python subset under Valgrind: $(tail -n 1 "$OUT/vgpy.out"); 0 errors through nativemem"
  else
    bad "Python subset under Valgrind: $N error(s) through nativemem's _native module"
  fi
else
  note "SKIP Python suite under Valgrind: valgrind or an importable nativemem missing"
fi

# 7. The Python layer and the regression tests of the Python face under AddressSanitizer: the
# extension built with -fsanitize=address in its own venv, libasan preloaded, CPython on malloc.
# Tests that corrupt memory on purpose (to see nativemem catch it) are deselected: ASan stops
# them first, which is right; so are the memory-bound tests (ASan's own quarantine holds freed
# memory, so RSS says nothing there).  tests/test_fork.py is left to the normal runs and the C
# harness's ASan build: once, 1 child in 300 passed its deadline here (ASan's runtime takes its own
# locks around fork, on a loaded machine), not reproduced elsewhere.
ASAN_SO=$(gcc -print-file-name=libasan.so 2>/dev/null || true)
if [ -n "$ASAN_SO" ] && [ -f "$ASAN_SO" ] && "$PY" -m venv "$OUT/vasan" 2>/dev/null; then
  "$OUT/vasan/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  "$OUT/vasan/bin/pip" install -q --upgrade setuptools wheel cffi pytest hypothesis numpy >/dev/null 2>&1
  if NATIVEMEM_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
       "$OUT/vasan/bin/pip" install -q --no-build-isolation "$ROOT" >"$OUT/asanbuild.log" 2>&1; then
    TESTS=()
    for t in test_allocator test_pool test_strtab test_cow test_numpy_handler test_threads_stress test_prop \
             test_pool_asan test_bad_input test_hostile test_prop_deep test_debug test_usage_errors \
             test_alignment; do
      [ -f "$ROOT/tests/$t.py" ] && TESTS+=("$ROOT/tests/$t.py")
    done
    if (cd "$OUT" && LD_PRELOAD="$ASAN_SO" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 PYTHONMALLOC=malloc \
        timeout 900 "$OUT/vasan/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
        -k "not overflow and not underflow and not write_after_free and not use_after_free_write and not corrupt and not guard_pages and not canary and not bounded and not realloc_moves_and_keeps_contents and not guard_page_blocks" \
        >"$OUT/asanpy.out" 2>&1); then
      note "Python suite under ASan: $(tail -n 1 "$OUT/asanpy.out")"
    else
      bad "Python suite under ASan"; grep -m1 -A30 "ERROR: AddressSanitizer" "$OUT/asanpy.out" || tail -n 30 "$OUT/asanpy.out"
    fi
  else
    bad "ASan build of the extension"; tail -n 20 "$OUT/asanbuild.log"
  fi
else
  note "SKIP Python suite under ASan: no libasan or no venv"
fi

# 8. Other CPUs and compilers through zig's clang (the ziglang wheel, pinned, in a venv kept between runs):
# the harness built for 32-bit x86 (musl, whose malloc here aligns to 8 only; runs natively on
# x86-64) and for aarch64 (run under qemu-user when qemu-aarch64 is installed), and the MSVC
# branches of platform.h compiled in MSVC mode for Windows ARM64, x64 and x86 (no MSVC here:
# stand-in SDK headers in tests/c/msvc; clang's own intrinsics) -- a syntax and type check.
# The venv is the one .ci/cross-checks.sh uses (same path, same pinned ziglang): one download per
# machine, and zig's per-target C runtimes (cached by its install path) are built once for both.
ZIG=()
ZIG_VENV=${CROSS_ZIG_VENV:-${TMPDIR:-/tmp}/nativemem-cross-zig}
ZIGLANG_SPEC=${ZIGLANG_SPEC:-ziglang==0.17.1}
if (
     if command -v flock >/dev/null 2>&1; then exec 9>"$ZIG_VENV.lock" && flock -w 600 9; fi
     if ! "$ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
       rm -rf "$ZIG_VENV" && "$PY" -m venv "$ZIG_VENV" \
         && timeout 300 "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check "$ZIGLANG_SPEC"
     fi
   ) >"$OUT/zigpip.log" 2>&1 && "$ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
  ZIG=("$ZIG_VENV/bin/python" -m ziglang)
fi
if [ ${#ZIG[@]} -gt 0 ]; then
  note "zig $("${ZIG[@]}" version)"
  if "${ZIG[@]}" cc -target x86-linux-musl "${CFLAGS[@]}" "${SRC[@]}" tests/c/harness.c -o "$OUT/harness-x86" \
       2>"$OUT/zig-x86.log" \
     && "${ZIG[@]}" cc -target x86-linux-musl "${CFLAGS[@]}" "${SRC[@]}" tests/c/seeded.c -o "$OUT/seeded-x86" \
       2>>"$OUT/zig-x86.log"; then
    run_harness x86-32 "$OUT/harness-x86"
    seeded debug-overflow "nativemem: buffer overflow.*offset 10" x86-32 "$OUT/seeded-x86"
    seeded debug-use-after-free "nativemem: write after free" x86-32 "$OUT/seeded-x86"
    seeded pool-double-free "nativemem: double free" x86-32 "$OUT/seeded-x86"
  else
    bad "build harness for x86-linux-musl with zig"; tail -n 20 "$OUT/zig-x86.log"
  fi
  if have qemu-aarch64; then
    if "${ZIG[@]}" cc -target aarch64-linux-musl "${CFLAGS[@]}" "${SRC[@]}" tests/c/harness.c -o "$OUT/harness-a64" \
         2>"$OUT/zig-a64.log"; then
      # qemu-user is not fork-safe with threads: the harness skips its fork check there
      NM_HARNESS_EMULATED=1 run_harness aarch64-qemu "$OUT/harness-a64" timeout 900 qemu-aarch64
    else
      bad "build harness for aarch64-linux-musl with zig"; tail -n 20 "$OUT/zig-a64.log"
    fi
  else
    note "SKIP aarch64 harness: qemu-aarch64 missing (apt-get install qemu-user)"
  fi
  for t in aarch64-windows-msvc x86_64-windows-msvc x86-windows-msvc; do
    ok=1
    for f in "${SRC[@]}"; do
      "${ZIG[@]}" cc -target $t -std=c11 -ffreestanding -fms-extensions -fms-compatibility -DNM_CHECK_MSVC_BRANCH \
        -Werror -Wno-unused-function -Itests/c/msvc -Icsrc/include -Icsrc -c "$f" -o "$OUT/msvc.o" >"$OUT/msvc.log" 2>&1 \
        || { ok=0; bad "MSVC-mode compile of $f for $t"; tail -n 20 "$OUT/msvc.log"; }
    done
    [ $ok = 1 ] && note "MSVC branch compiled for $t (clang in MSVC mode, NM_CHECK_MSVC_BRANCH): ${#SRC[@]} files"
  done
else
  note "SKIP zig steps (32-bit x86, aarch64, MSVC-mode compile): cannot pip install ziglang (offline?): $(tail -n 1 "$OUT/zigpip.log" 2>/dev/null)"
fi

if [ $FAIL -ne 0 ]; then echo "C checks: FAILED"; exit 1; fi
echo "C checks: all passed"
