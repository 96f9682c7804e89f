"""Hostile tests of the C interface: user ops tables (nm_allocator_new), statistics modes and the
per-thread counter slots, deferred destroy, the C API capsule (nm_capi.h), NM_POOL_UNCHECKED pools
and props drawing from allocators.

Everything that may crash or hang runs in a subprocess with a timeout.  Every bug these tests
found is fixed; the tests of those say what it was."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from capi_build import build_capi_extension
from hostile_child import CC_EXE, build_c, needs_cc, needs_checkout, run_exe

import nativemem

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE_C = os.path.join(HERE, "c", "hostile")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux (fork, membarrier)")


def run_py(code, timeout=120, cwd=None, env=None):
    """Run `code` in a fresh interpreter; returns the CompletedProcess (a hang fails the test)."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung (timeout {timeout}s): {e.stdout!r} {e.stderr!r}")


def ok(code, **kw):
    r = run_py(code, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


# A user ops table made of cffi callbacks over the C library (the GIL is taken by each callback).
OPS = """
import ctypes
from nativemem._ffi import ffi, lib
C = ctypes.CDLL(None)
C.malloc.restype = ctypes.c_void_p; C.malloc.argtypes = [ctypes.c_size_t]
C.calloc.restype = ctypes.c_void_p; C.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
C.realloc.restype = ctypes.c_void_p; C.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
C.free.argtypes = [ctypes.c_void_p]
C.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
C.malloc_usable_size.restype = ctypes.c_size_t; C.malloc_usable_size.argtypes = [ctypes.c_void_p]
C.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def P(x): return ffi.cast("void *", x or 0)
def I(p): return int(ffi.cast("uintptr_t", p))
calls = []
destroyed = []
@ffi.callback("void *(void *, size_t)")
def cb_malloc(ctx, n):
    calls.append(("malloc", n)); p = C.malloc(n)
    if p: C.memset(p, 0xAB, n)          # garbage: nm_calloc must zero it
    return P(p)
@ffi.callback("void *(void *, size_t, size_t)")
def cb_calloc(ctx, n, s): calls.append(("calloc", n, s)); return P(C.calloc(n, s))
@ffi.callback("void *(void *, void *, size_t)")
def cb_realloc(ctx, p, n): calls.append(("realloc", n)); return P(C.realloc(I(p), n))
@ffi.callback("void (void *, void *)")
def cb_free(ctx, p): calls.append(("free",)); C.free(I(p))
@ffi.callback("void *(void *, size_t, size_t)")
def cb_memalign(ctx, al, n):
    out = ctypes.c_void_p(); rc = C.posix_memalign(ctypes.byref(out), al, n)
    return P(out.value if rc == 0 else 0)
@ffi.callback("size_t (void *, void *)")
def cb_usable(ctx, p): return C.malloc_usable_size(I(p))
@ffi.callback("void (void *)")
def cb_destroy(ctx): destroyed.append(1)
@ffi.callback("void *(void *, size_t)")
def cb_null(ctx, n): return ffi.NULL
def make_ops(**kw):
    ops = ffi.new("nm_allocator_ops_t *")
    ops.malloc = kw.get("malloc", cb_malloc); ops.calloc = kw.get("calloc", cb_calloc)
    ops.realloc = kw.get("realloc", cb_realloc); ops.free = kw.get("free", cb_free)
    ops.memalign = kw.get("memalign", cb_memalign); ops.usable_size = kw.get("usable_size", cb_usable)
    ops.destroy = kw.get("destroy", cb_destroy); ops.alignment = kw.get("alignment", 0)
    ops.flags = kw.get("flags", 0)
    return ops
def stats(a):
    st = ffi.new("nm_alloc_stats_t *"); lib.nm_allocator_stats(a, st)
    return (st.live_blocks, st.live_bytes, st.peak_bytes, st.total_allocs, st.total_frees, st.failures)
"""


# ---- 1. user ops tables ------------------------------------------------------------------------
def test_ops_validation_rejects_bad_tables():
    ok(OPS + """
for kw in (dict(malloc=ffi.NULL), dict(realloc=ffi.NULL), dict(free=ffi.NULL), dict(memalign=ffi.NULL),
           dict(alignment=24), dict(alignment=3), dict(flags=2), dict(flags=0x80000000)):
    lib.nm_clear_error()
    a = lib.nm_allocator_new(b"bad", make_ops(**kw), ffi.NULL)
    assert a == ffi.NULL, kw
    assert lib.nm_last_error() == lib.NM_ERR_INVALID, kw
    assert b"bad" in ffi.string(lib.nm_last_error_message()), kw
lib.nm_clear_error()
assert lib.nm_allocator_new(b"n", ffi.NULL, ffi.NULL) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_INVALID
# optional functions may be NULL
a = lib.nm_allocator_new(b"opt", make_ops(calloc=ffi.NULL, usable_size=ffi.NULL, destroy=ffi.NULL), ffi.NULL)
assert a != ffi.NULL
lib.nm_allocator_destroy(a)
# a NULL name is accepted and reads back empty
a = lib.nm_allocator_new(ffi.NULL, make_ops(), ffi.NULL)
assert a != ffi.NULL and ffi.string(lib.nm_allocator_name(a)) == b""
lib.nm_allocator_destroy(a)
""")


def test_backend_returning_null_is_nomem_and_counted():
    ok(OPS + """
a = lib.nm_allocator_new(b"nullish", make_ops(malloc=cb_null, calloc=ffi.NULL), ffi.NULL)
assert lib.nm_malloc(a, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM
assert b"nullish" in ffi.string(lib.nm_last_error_message())
assert lib.nm_calloc(a, 3, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM   # malloc+memset path
assert lib.nm_realloc(a, ffi.NULL, 5) == ffi.NULL
live, lb, pk, al, fr, fails = stats(a)
assert (live, al, fr) == (0, 0, 0) and fails == 3, stats(a)
lib.nm_allocator_destroy(a)
assert destroyed == [1]
""")


def test_calloc_null_uses_malloc_and_zeroes():
    ok(OPS + """
a = lib.nm_allocator_new(b"nocalloc", make_ops(calloc=ffi.NULL), ffi.NULL)
p = lib.nm_calloc(a, 7, 13)
assert calls[-1] == ("malloc", 91), calls
assert bytes(ffi.buffer(p, 91)) == bytes(91)
q = lib.nm_calloc(a, 0, 5)                          # zero total: a unique minimal block
assert q != ffi.NULL and q != p and calls[-1] == ("malloc", 1)
lib.nm_clear_error()
assert lib.nm_calloc(a, 1 << 40, 1 << 40) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_OVERFLOW
lib.nm_free(a, p); lib.nm_free(a, q)
assert stats(a)[0] == 0
lib.nm_allocator_destroy(a)
""")


def test_set_stats_modes():
    ok(OPS + """
a = lib.nm_allocator_new(b"s", make_ops(), ffi.NULL)
assert lib.nm_allocator_get_stats_mode(a) == lib.NM_STATS_BLOCKS
for bad in (-1, 3, 1 << 30):
    assert lib.nm_allocator_set_stats(a, bad) == lib.NM_ERR_INVALID
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BYTES) == 0
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BLOCKS) == 0    # still fresh: any counted mode
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BYTES) == 0
p = lib.nm_malloc(a, 100)
assert stats(a)[:2] == (1, C.malloc_usable_size(I(p)))
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_OFF) == lib.NM_ERR_BUSY
lib.nm_free(a, p)
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BLOCKS) == lib.NM_ERR_BUSY   # busy for good
assert stats(a)[:2] == (0, 0)
lib.nm_allocator_destroy(a)
assert lib.nm_allocator_set_stats(lib.nm_allocator_libc(), lib.NM_STATS_BYTES) == lib.NM_ERR_UNSUPPORTED
import nativemem
d = nativemem.DebugAllocator()
assert lib.nm_allocator_set_stats(d.cdata, lib.NM_STATS_OFF) == lib.NM_ERR_UNSUPPORTED
""")


def test_deferred_destroy_and_stats_off_destroy():
    ok(OPS + """
a = lib.nm_allocator_new(b"d", make_ops(), ffi.NULL)
ps = [lib.nm_malloc(a, 10) for _ in range(3)]
lib.nm_allocator_destroy(a)
lib.nm_allocator_destroy(a)                      # a second request is ignored
assert destroyed == []
lib.nm_free(a, ps[0]); lib.nm_free(a, ps[1])
assert destroyed == []
lib.nm_free(a, ps[2])
assert destroyed == [1]
# stats OFF: destroyed at once, even with a block live (documented)
b = lib.nm_allocator_new(b"off", make_ops(), ffi.NULL)
assert lib.nm_allocator_set_stats(b, lib.NM_STATS_OFF) == 0
p = lib.nm_malloc(b, 10)
assert stats(b)[:4] == (0, 0, 0, 0)
lib.nm_free(b, p)
lib.nm_allocator_destroy(b)
assert destroyed == [1, 1]
# no block ever: at once
c = lib.nm_allocator_new(b"z", make_ops(), ffi.NULL)
lib.nm_allocator_destroy(c)
assert destroyed == [1, 1, 1]
""")


def test_bytes_stats_without_usable_size():
    ok(OPS + """
for flags in (0, 1):    # 1: NM_OPS_EXACT_SIZE
    a = lib.nm_allocator_new(b"nousable", make_ops(usable_size=ffi.NULL, flags=flags), ffi.NULL)
    # was: accepted, and live_bytes only ever grew; now bytes need usable_size
    assert lib.nm_allocator_set_stats(a, lib.NM_STATS_BYTES) == lib.NM_ERR_UNSUPPORTED
    p = lib.nm_malloc(a, 100)
    assert stats(a)[:2] == (1, 0), stats(a)
    p = lib.nm_realloc(a, p, 1000)
    lib.nm_free(a, p)
    assert stats(a)[:2] == (0, 0), ("free", flags, stats(a))
    lib.nm_allocator_destroy(a)
""")


def test_set_stats_after_uncounted_allocations_is_busy():
    ok(OPS + """
a = lib.nm_allocator_new(b"offon", make_ops(), ffi.NULL)
assert lib.nm_allocator_set_stats(a, lib.NM_STATS_OFF) == 0
p = lib.nm_malloc(a, 10)
rc = lib.nm_allocator_set_stats(a, lib.NM_STATS_BLOCKS)
lib.nm_free(a, p)
assert rc == lib.NM_ERR_BUSY, rc
""")


# ---- 2. per-thread statistics slots ------------------------------------------------------------
def test_many_threads_exact_block_counts():
    """Waves of 48 threads (more than the 31 owned slots; exiting threads free theirs for the next
    wave), each allocating and freeing through one allocator with the GIL released (cffi)."""
    ok("""
import threading
from nativemem._ffi import ffi, lib
a = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"hammer")
b = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"hammer-bytes")
assert lib.nm_allocator_set_stats(b, lib.NM_STATS_BYTES) == 0
kept = []
lock = threading.Lock()
bar = [None]
def work(k):
    mine = []
    bar[0].wait()                 # all 48 alive at once: 31 own a slot, the rest share the last one
    for i in range(400):
        p = lib.nm_malloc(a, 16 + (i & 63)); q = lib.nm_calloc(b, 1, 24)
        if i % 50 == 0:
            mine.append((a, p)); lib.nm_free(b, q)
        else:
            lib.nm_free(a, p); lib.nm_free(b, q)
    with lock:
        kept.extend(mine)
    bar[0].wait()                 # nobody exits (handing its slot back) before all are done
for wave in range(6):
    bar[0] = threading.Barrier(48)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(48)]
    for t in ts: t.start()
    for t in ts: t.join()
st = ffi.new("nm_alloc_stats_t *")
lib.nm_allocator_stats(a, st)
n = 6 * 48 * 400
assert (st.total_allocs, st.total_frees, st.live_blocks) == (n, n - len(kept), len(kept)), \
    (st.total_allocs, st.total_frees, st.live_blocks, len(kept))
lib.nm_allocator_stats(b, st)
assert (st.total_allocs, st.total_frees, st.live_blocks, st.live_bytes) == (n, n, 0, 0)
# frees from other threads than the allocating ones
def free_some(items):
    for al, p in items: lib.nm_free(al, p)
ts = [threading.Thread(target=free_some, args=(kept[i::40],)) for i in range(40)]
for t in ts: t.start()
for t in ts: t.join()
lib.nm_allocator_stats(a, st)
assert (st.total_allocs, st.total_frees, st.live_blocks) == (n, n, 0)
lib.nm_allocator_destroy(a); lib.nm_allocator_destroy(b)
print("ok")
""", timeout=240)


def _build(tmp_path, src, name, extra=()):
    return build_c(tmp_path, HOSTILE_C, src, name, extra)


_run_exe = run_exe


@needs_cc
@needs_checkout
@linux_only
def test_deferred_destroy_racing_last_frees_runs_once(tmp_path):
    """Without a sanitizer: the destroy callback runs exactly once per allocator, no crash."""
    exe = _build(tmp_path, "destroy_race.c", "destroy_race")
    r = _run_exe([exe, "3000"], timeout=240)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


@needs_cc
@needs_checkout
@linux_only
def test_deferred_destroy_racing_last_frees_asan(tmp_path):
    exe = _build(tmp_path, "destroy_race.c", "destroy_race_asan", extra=("-fsanitize=address",))
    env = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    for _ in range(2):  # each run: 2000 destroys racing 8 freeing threads (the bug showed within the first thousands)
        r = _run_exe([exe, "2000"], timeout=240, env=env)
        assert "AddressSanitizer" not in r.stderr, r.stderr[:3000]
        assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr[:3000]


@needs_cc
@needs_checkout
@linux_only
def test_counts_exact_when_thread_exit_destructors_free(tmp_path):
    """Was a bug (fixed in alloc.c nm__slot_release): a later TLS destructor of the exiting thread (a
    pool's nm__thread_exit frees its records with nm_free(libc)) bumped the released slot with plain
    stores while a new thread owned it: lost updates, live_blocks drifted."""
    exe = _build(tmp_path, "slot_exit_race.c", "slot_exit_race")
    for _ in range(5):
        r = _run_exe([exe, "300"], timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr


@needs_cc
@needs_checkout
@linux_only
def test_counts_exact_with_thread_churn_in_c(tmp_path):
    """The same churn with no thread-exit destructor allocating: exact."""
    exe = _build(tmp_path, "slot_exit_race.c", "slot_exit_race_np")
    r = _run_exe([exe, "300"], timeout=240, env={"NOPOOL": "1"})
    assert r.returncode == 0, r.stdout + r.stderr


@needs_cc
@needs_checkout
@linux_only
def test_fork_during_first_allocation_does_not_deadlock_child(tmp_path):
    exe = _build(tmp_path, "fork_slot_setup.c", "fork_slot_setup")
    for _ in range(3):
        r = _run_exe([exe], timeout=60)
        assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


@linux_only
def test_fork_right_after_threads_start_allocating_python():
    code = """
import os, threading, faulthandler
from nativemem._ffi import ffi, lib
a = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"forky")
stop = []
def w():
    while not stop:
        ps = [lib.nm_malloc(a, 64) for _ in range(100)]
        for p in ps: lib.nm_free(a, p)
ths = [threading.Thread(target=w, daemon=True) for _ in range(8)]
for t in ths: t.start()
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(5, exit=True)
    for _ in range(1000): lib.nm_free(a, lib.nm_malloc(a, 8))
    os._exit(0)
_, status = os.waitpid(pid, 0)
stop.append(1)
assert status == 0, status
"""
    for _ in range(5):  # each a fresh process: the slot set-up happens once per process
        ok(code, timeout=60)


@linux_only
def test_fork_while_threads_allocate():
    """Threads allocate (slots already set up); the children allocate from new threads of their own,
    read consistent stats and finish a deferred destroy."""
    ok("""
import os, threading, time, faulthandler
from nativemem._ffi import ffi, lib
a = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"forky")
lib.nm_free(a, lib.nm_malloc(a, 8))           # slots set up before any fork
stop = []
def w():
    while not stop:
        ps = [lib.nm_malloc(a, 64) for _ in range(100)]
        for p in ps: lib.nm_free(a, p)
ths = [threading.Thread(target=w, daemon=True) for _ in range(8)]
for t in ths: t.start()
time.sleep(0.05)
for i in range(10):
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(20, exit=True)
        def cw():
            for _ in range(1000): lib.nm_free(a, lib.nm_malloc(a, 8))
        cts = [threading.Thread(target=cw) for _ in range(40)]
        for t in cts: t.start()
        for t in cts: t.join()
        st = ffi.new("nm_alloc_stats_t *")
        lib.nm_allocator_stats(a, st)
        good = 0 <= st.live_blocks <= 800 and st.total_allocs >= 40000
        p = lib.nm_malloc(a, 8)
        lib.nm_allocator_destroy(a)
        lib.nm_free(a, p)
        os._exit(0 if good else 3)
    _, status = os.waitpid(pid, 0)
    assert status == 0, (i, status)
stop.append(1)
for t in ths: t.join()
st = ffi.new("nm_alloc_stats_t *")
lib.nm_allocator_stats(a, st)
assert st.live_blocks == 0 and st.total_allocs == st.total_frees
""", timeout=180)


# ---- 3. the C API capsule ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def nmhostile(tmp_path_factory):
    if shutil.which(CC_EXE) is None or sys.platform == "win32":
        pytest.skip(f"no C compiler ({CC_EXE})")
    d = tmp_path_factory.mktemp("nmhostile")
    build_capi_extension(os.path.join(HOSTILE_C, "nmhostile.c"), "nmhostile", d)
    return d


def capi(d, code, timeout=120):
    return ok(code, cwd=d, env={"PYTHONPATH": str(d)}, timeout=timeout)


def test_capi_acquire_rejects_non_allocators(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H
for o in (None, object(), 1, nativemem, nativemem.Prop("x")):
    try:
        H.acquire(o)
    except TypeError as e:
        assert "nativemem.Allocator" in str(e), e
    else:
        raise AssertionError(o)
a = nativemem.allocator("libc"); a.close()
try:
    H.acquire(a)
except nativemem.ClosedError:
    pass
else:
    raise AssertionError("closed allocator acquired")
for o in (object(), None, a):             # no lease: refused with an error, nothing changed
    try:
        H.release_raw(o)
    except TypeError:
        pass
    else:
        raise AssertionError(o)
""")


def test_capi_closed_error_message(nmhostile):
    """Was: the literal 'allocator %R is closed' (nmpy_raisef is vsnprintf-based; fixed in capi.c)."""
    capi(nmhostile, """
import nativemem, nmhostile as H
a = nativemem.allocator("libc"); a.close()
try:
    H.acquire(a)
except nativemem.ClosedError as e:
    assert "%R" not in str(e) and "libc" in str(e), str(e)
""")


def test_capi_close_waits_for_c_users(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H
base = nativemem.allocator("libc")
for make in (lambda: nativemem.Arena(1 << 20, allocator=base), lambda: nativemem.DebugAllocator(base)):
    al = make()
    t = H.acquire(al)
    al.close()                                    # the table stays for the C user
    ps = [H.malloc(t, 100) for _ in range(50)]
    assert all(ps)
    assert base.stats().live_blocks >= 1
    assert H.stats(t)[0] == 50, H.stats(t)
    for p in ps[:-1]: H.free(t, p)
    H.release(al)                                 # one block still live: destruction deferred
    assert base.stats().live_blocks >= 1
    H.free(t, ps[-1])                             # the last free finishes it
    del al
    import gc; gc.collect()
    assert base.stats().live_blocks == 0, base.stats()
print("ok")
""")


def test_capi_stray_release_does_not_steal_a_use(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H
base = nativemem.allocator("libc")
ar = nativemem.Arena(1 << 16, allocator=base)
t = H.acquire(ar)              # extension A holds the arena (a lease)
try:
    H.release_raw(ar)          # extension B: a release with no lease of its own
except TypeError:
    pass
else:
    raise AssertionError("a release without a lease was accepted")
ar.close()
# A still holds a use: the arena's region must still be there
assert base.stats().live_blocks == 1, base.stats()
""")


def test_capi_debug_double_free_through_free_checked(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H
d = nativemem.DebugAllocator()
t = H.acquire(d)
p = H.malloc(t, 32)
assert H.free_checked(t, p) == (0, "")
rc, msg = H.free_checked(t, p)
assert rc == -4 and "double free" in msg, (rc, msg)
rc, msg = H.free_checked(t, 12345)
assert rc == -5, (rc, msg)
assert H.free_checked(t, 0) == (0, "")
assert H.stats(t)[0] == 0
H.release(d)
d.close()
""")


def test_capi_pool_on_arena_closed_meanwhile(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H, gc
base = nativemem.allocator("libc")
for flags in (0, 16):          # 16: NM_POOL_UNCHECKED
    ar = nativemem.Arena(1 << 20, allocator=base)
    t = H.acquire(ar)
    pl = H.pool_create(t, 48, 64, 64, flags)
    H.release(ar); ar.close(); del ar; gc.collect()
    objs = [H.pool_alloc(pl) for _ in range(1000)]     # new chunks from the closed (dying) arena
    assert all(objs)
    st = H.pool_stats(pl)
    assert st[2] == 1000, st
    for o in objs: assert H.pool_free(pl, o) == 0
    assert base.stats().live_blocks == 1
    H.pool_destroy(pl)                                 # its last free destroys the arena
    assert base.stats().live_blocks == 0, base.stats()
# an arena too small: the pool stops cleanly
ar = nativemem.Arena(1 << 14, allocator=base)
t = H.acquire(ar)
pl = H.pool_create(t, 48, 64, 64, 16)
objs = []
while True:
    o = H.pool_alloc(pl)
    if not o: break
    objs.append(o)
assert 0 < len(objs) < 1000
assert H.pool_stats(pl)[2] == len(objs)
for o in objs: H.pool_free(pl, o)
assert H.pool_stats(pl)[:3] == (len(objs), len(objs), 0)
H.pool_destroy(pl); H.release(ar); ar.close()
print("ok")
""")


# ---- 4. NM_POOL_UNCHECKED ----------------------------------------------------------------------
def test_unchecked_pool_cross_thread_frees_and_churn():
    ok("""
import threading
from nativemem._ffi import ffi, lib
pool = lib.nm_pool_create(ffi.NULL, 40, 64, lib.NM_POOL_UNCHECKED)
assert pool != ffi.NULL
def st():
    s = ffi.new("nm_pool_stats_t *"); lib.nm_pool_stats(pool, s)
    return (s.allocations, s.frees, s.live, s.peak, s.chunks, s.reserved_bytes)
N = 200000
out = ffi.new("void *[]", N)
assert lib.nm_pool_alloc_many(pool, out, N) == N
assert len({int(ffi.cast("uintptr_t", out[i])) for i in range(N)}) == N
ptrs = [out[i] for i in range(N)]
def fr(part):
    arr = ffi.new("void *[]", part)
    assert lib.nm_pool_free_many(pool, arr, len(part)) == 0
ts = [threading.Thread(target=fr, args=(ptrs[i::40],)) for i in range(40)]   # exit with full free lists
for t in ts: t.start()
for t in ts: t.join()
s = st()
assert s[:3] == (N, N, 0), s
chunks = s[4]
assert lib.nm_pool_alloc_many(pool, out, N) == N       # the exited threads' objects come back
assert st()[4] == chunks, (st(), chunks)
assert lib.nm_pool_free_many(pool, out, N) == 0
def churn():
    loc = ffi.new("void *[]", 1000)
    for r in range(20):
        assert lib.nm_pool_alloc_many(pool, loc, 1000) == 1000
        assert lib.nm_pool_free_many(pool, loc, 1000) == 0
for rnd in range(4):
    ts = [threading.Thread(target=churn) for _ in range(40)]
    for t in ts: t.start()
    for t in ts: t.join()
s = st()
assert s[:3] == (2 * N + 4 * 40 * 20000, 2 * N + 4 * 40 * 20000, 0), s
assert lib.nm_pool_free_many(pool, out, 0) == 0
assert lib.nm_pool_free(pool, ffi.NULL) == lib.NM_ERR_INVALID_FREE
lib.nm_pool_destroy(pool)
print("ok")
""", timeout=240)


def test_unchecked_pool_alloc_many_past_the_backend_and_destroy_with_live():
    ok("""
import nativemem
from nativemem._ffi import ffi, lib
base = nativemem.allocator("libc")
ar = nativemem.Arena(1 << 16, allocator=base)
pool = lib.nm_pool_create(ar.cdata, 64, 32, lib.NM_POOL_UNCHECKED)
N = 1 << 20
out = ffi.new("void *[]", N)
lib.nm_clear_error()
n = lib.nm_pool_alloc_many(pool, out, N)
assert 0 < n < N and lib.nm_last_error() == lib.NM_ERR_NOMEM, (n, lib.nm_last_error())
s = ffi.new("nm_pool_stats_t *"); lib.nm_pool_stats(pool, s)
assert (s.allocations, s.live) == (n, n)
assert lib.nm_pool_live_objects(pool, ffi.NULL, 0) == 0 and lib.nm_last_error() == lib.NM_ERR_UNSUPPORTED
lib.nm_pool_destroy(pool)                 # live objects: everything goes back to the arena
assert ar.stats().live_blocks == 0, ar.stats()
ar.close()
assert base.stats().live_blocks == 0
print("ok")
""")


def test_unchecked_pool_reuses_chunks_of_exited_threads():
    ok("""
import threading
from nativemem._ffi import ffi, lib
pool = lib.nm_pool_create(ffi.NULL, 40, 64, lib.NM_POOL_UNCHECKED)
keep = []
def one(): keep.append(lib.nm_pool_alloc(pool))
for _ in range(300):
    t = threading.Thread(target=one); t.start(); t.join()
s = ffi.new("nm_pool_stats_t *"); lib.nm_pool_stats(pool, s)
for p in keep: lib.nm_pool_free(pool, p)
lib.nm_pool_destroy(pool)
assert s.live == 300 and s.chunks <= 10, (s.live, s.chunks, s.reserved_bytes)
""")


@pytest.mark.parametrize("flags", [0, 16])
def test_pool_free_from_new_thread_when_allocator_full(flags):
    ok(f"""
import threading, nativemem
from nativemem._ffi import ffi, lib
ar = nativemem.Arena(1 << 14)
pool = lib.nm_pool_create(ar.cdata, 64, 32, {flags})
objs = []
while True:
    p = lib.nm_pool_alloc(pool)
    if p == ffi.NULL: break
    objs.append(p)
while lib.nm_malloc(ar.cdata, 16) != ffi.NULL:   # and the arena is full
    pass
res = []
def fr(): res.append(lib.nm_pool_free(pool, objs[0]))
t = threading.Thread(target=fr); t.start(); t.join()
s = ffi.new("nm_pool_stats_t *"); lib.nm_pool_stats(pool, s)
assert res == [0] and s.live == len(objs) - 1, (res, s.live, len(objs))
""")


# ---- 5. props with allocators ------------------------------------------------------------------
def test_prop_on_allocator_closed_while_props_live():
    ok("""
import gc, nativemem
from nativemem import Prop
base = nativemem.allocator("libc")
for make in (lambda: nativemem.Arena(1 << 20, allocator=base), lambda: nativemem.DebugAllocator(base)):
    al = make()
    root = Prop("root", allocator=al, value="hello")
    c = Prop("c", parent=root, value=b"x" * 100)
    al.close()
    assert root.value == "hello" and c.value == b"x" * 100
    c.value = "set after close"                 # the table lives on (deferred) while props hold blocks
    assert c.value == "set after close"
    try:
        Prop("new", allocator=al)
    except nativemem.ClosedError:
        pass
    else:
        raise AssertionError("prop on a closed allocator")
    del c
    root.destroy()
    del root, al
    gc.collect()
    assert base.stats().live_blocks == 0, base.stats()
print("ok")
""")


def test_prop_handles_report_their_own_allocator():
    ok("""
import nativemem
from nativemem import Prop
a1 = nativemem.Arena(1 << 16); a2 = nativemem.DebugAllocator()
r = Prop("r", allocator=a1)
ch = Prop("ch", parent=r, allocator=a2)
assert ch.allocator is a2 and r.allocator is a1
assert r.children[0].allocator is a2, r.children[0].allocator
assert ch.parent.allocator is a1, ch.parent.allocator
""")


def test_prop_deep_tree_on_debug_allocator():
    ok("""
import gc, nativemem
from nativemem import Prop
from nativemem._ffi import lib
d = nativemem.DebugAllocator()
live0 = lib.nm_prop_live_count()
top = Prop("top", allocator=d); cur = top
for i in range(200000):
    cur = Prop(None, parent=cur, value=i if i % 2 else str(i))
del cur
top.destroy(); del top; gc.collect()
st = d.stats()
assert st.live_blocks == 0 and st.total_allocs == st.total_frees, st
assert lib.nm_prop_live_count() == live0
print("ok")
""", timeout=240)


def test_prop_value_clear_semantics():
    ok("""
import nativemem
from nativemem._ffi import ffi, lib
d = nativemem.DebugAllocator()
p = lib.nm_prop_create(d.cdata, ffi.NULL, b"n", 1)
assert lib.nm_prop_set_data(p, lib.NM_PROP_STRING, b"abc", 3) == 0
v = ffi.new("nm_prop_value_t *")
assert lib.nm_prop_get(p, v) == 0
assert v.allocator == d.cdata and ffi.string(v.data) == b"abc" and v.len == 3
before = d.stats().live_blocks
lib.nm_prop_value_clear(v)
assert d.stats().live_blocks == before - 1
assert v.type == 0 and v.data == ffi.NULL and v.len == 0 and v.allocator == ffi.NULL
lib.nm_prop_value_clear(v)                     # twice: a no-op
z = ffi.new("nm_prop_value_t *"); lib.nm_prop_value_clear(z)
# a copy outlives the prop (and keeps the allocator's deferred destroy waiting)
assert lib.nm_prop_get(p, v) == 0
assert lib.nm_prop_release(p) == 1
d.close()
assert ffi.string(v.data) == b"abc"
lib.nm_prop_value_clear(v)
# a scalar value has nothing to free
q = lib.nm_prop_create(ffi.NULL, ffi.NULL, ffi.NULL, 0)
lib.nm_prop_set_int(q, 7); assert lib.nm_prop_get(q, v) == 0 and v.i == 7 and v.data == ffi.NULL
lib.nm_prop_value_clear(v)
assert lib.nm_prop_destroy(q) == 0 and lib.nm_prop_get(q, v) == lib.NM_ERR_CLOSED
lib.nm_prop_release(q)
print("ok")
""")


def test_prop_retain_release_and_deprecated_aliases():
    ok("""
import warnings, nativemem
from nativemem import Prop, RefCount
p = Prop("x", allocator=nativemem.Arena(1 << 16))
r = p.retain()
assert p.refcount == 2 and r.allocator is p.allocator
r.release()
for bad in (r.release, lambda: r.value, r.retain):
    try:
        bad()
    except nativemem.ClosedError:
        pass
    else:
        raise AssertionError(bad)
assert p.refcount == 1
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    q = p.ref(); q.unref()
    rc = RefCount(); rc.inc(); rc.dec()
assert [x.category for x in w] == [DeprecationWarning] * 4, [(x.category, str(x.message)) for x in w]
assert p.refcount == 1
p.destroy()
assert p.zombie
try:
    p.value = 1
except nativemem.ClosedError:
    pass
else:
    raise AssertionError("set on a zombie")
p.release()
print("ok")
""")


def test_prop_children_created_while_parent_is_destroyed_concurrently():
    """8 threads (GIL released by cffi) add children under a root, set and read values, while the
    main thread destroys the root: no crash, every prop and block accounted for."""
    ok("""
import threading, nativemem
from nativemem._ffi import ffi, lib
ar = nativemem.Arena(1 << 24)
A = ar.cdata
live0 = lib.nm_prop_live_count()
for rnd in range(30):
    root = lib.nm_prop_create(A, ffi.NULL, b"root", 4)
    def w(k):
        for i in range(300):
            c = lib.nm_prop_create(ffi.NULL, root, b"c", 1)
            if c == ffi.NULL:
                assert lib.nm_last_error() == lib.NM_ERR_CLOSED, lib.nm_last_error()
                continue
            lib.nm_prop_set_data(c, lib.NM_PROP_STRING, b"x" * (i % 50), i % 50)
            v = ffi.new("nm_prop_value_t *")
            if lib.nm_prop_get(c, v) == 0:
                lib.nm_prop_value_clear(v)
            if i % 3 == 0:
                lib.nm_prop_destroy(c)
            lib.nm_prop_release(c)
    ts = [threading.Thread(target=w, args=(k,)) for k in range(8)]
    for t in ts: t.start()
    lib.nm_prop_destroy(root)
    for t in ts: t.join()
    lib.nm_prop_release(root)
assert lib.nm_prop_live_count() == live0
st = ar.stats()
assert st.live_blocks == 0 and st.total_allocs == st.total_frees, st
print("ok")
""", timeout=180)


def test_capi_release_without_acquire(nmhostile):
    capi(nmhostile, """
import nativemem, nmhostile as H
base = nativemem.allocator("libc")
ar = nativemem.Arena(1 << 16, allocator=base)
pool = nativemem.Pool(64, allocator=ar)       # nativemem's own C-level use of the arena
try:
    H.release_raw(ar)                         # not a lease
except TypeError as e:
    assert "lease" in str(e), e
else:
    raise AssertionError("no TypeError")
t = H.acquire(ar)
lease = H.lease_of(ar)
assert "lease" in repr(lease)
H.release(ar)
try:
    H.release_raw(lease)                      # the same lease again
except RuntimeError as e:
    assert "twice" in str(e), e
else:
    raise AssertionError("no RuntimeError")
t = H.acquire(ar)                             # held across close(): the arena stays
ar.close()
assert base.stats().live_blocks == 1
H.release(ar)
assert base.stats().live_blocks == 1          # the pool still holds the arena: not destroyed
pool.close(); del pool
import gc; gc.collect()
assert base.stats().live_blocks == 0, base.stats()
print("ok")
""")
