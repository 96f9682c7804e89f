"""Hostile tests of the pool after its latest rewrite (csrc/pool.c): one remembered object per
thread (tc->mine: the last allocated, or with bit 0 set the hot one freed last), the peak computed
from allocs - frees (nm__count_allocs), inline paths chosen at creation (pool->fast: none for a
pool created under Valgrind, whose full paths issue the client requests, out of line in
nm__vg_request), the zeroing mode chosen at creation, and the batch loops (nm__alloc_run_z,
nm__free_run).

Each Python case runs in a fresh process with a timeout (a crash or a hang fails the case with the
child's output).  The Valgrind cases build tests/c/hostile4/pool_vg.c with -DNM_HAVE_VALGRIND=1
and run it under memcheck, and run the real interpreter under memcheck (PYTHONMALLOC=malloc,
judging only reports that involve nativemem).  A case asserts the correct behaviour: it fails
while the bug it targets exists.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from hostile_child import build_c, linux_only, needs_cc, needs_checkout, prelude, run_exe
from conftest import MEMCHECK_KINDS, SRC_DIR, memcheck_reports
from hostile_child import run_child as _run_child_with

import nativemem

HOSTILE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "hostile4")
VALGRIND = shutil.which("valgrind")

PRELUDE = prelude(r'''
def stats(p):
    st = ffi.new("nm_pool_stats_t *")
    lib.nm_pool_stats(p, st)
    return st
''')


def run_child(code: str, timeout: float = 60, args=()) -> str:
    return _run_child_with(PRELUDE, code, timeout, args)


needs_valgrind = pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")


# ==== bug 1: a refused allocation (checked mode, poison damaged) leaves the peak raised ======
#
# nm__hand_out counts a single allocation first -- nm__count_allocs(tc, 1) raises tc->peak_net to
# allocs - frees -- and only then verifies a reused slot's poison.  When the poison is damaged the
# slot is refused (NULL, NM_ERR_USE_AFTER_FREE) and "the count is undone": tc->allocs is
# decremented, but tc->peak_net keeps the value the refused allocation gave it.  When live is at
# its maximum at that moment, nm_pool_stats reports a peak one above any live count there ever was
# (single-threaded, where the peak is documented exact).


def test_checked_refused_allocation_does_not_raise_the_peak():
    """Checked pool, one thread: fill chunk 1 (n objects), one more (chunk 2 becomes current),
    free one object of chunk 1 and write into it, allocate until the damaged slot is reached (it
    is refused).  True live peak: 2n - 1; nm_pool_stats says 2n.  The same through the Python face
    (Pool(checked=True).alloc raises UseAfterFreeError)."""
    run_child(r'''
    for extra in (0, lib.NM_POOL_ZERO):
        p = lib.nm_pool_create(ffi.NULL, 64, 16, lib.NM_POOL_CHECKED | lib.NM_POOL_QUIET | extra)
        n = lib.nm_pool_objects_per_chunk(p)
        first = [lib.nm_pool_alloc(p) for _ in range(n)]
        rest = [lib.nm_pool_alloc(p)]
        victim = first.pop(7)
        check("free", lib.nm_pool_free(p, victim) == 0)
        ffi.cast("unsigned char *", victim)[40] = 0x41            # write after free
        true_peak = len(first) + len(rest)
        refused = None
        for _ in range(3 * n):
            x = lib.nm_pool_alloc(p)
            if x == ffi.NULL:
                refused = lib.nm_last_error()
                break
            rest.append(x)
            true_peak = max(true_peak, len(first) + len(rest))
        check(f"flags {extra}: the damaged slot was refused ({refused}, {err()!r})", refused == lib.NM_ERR_USE_AFTER_FREE)
        live = len(first) + len(rest)
        st = stats(p)
        check(f"flags {extra}: allocations {st.allocations} live {st.live} (want {live + 1}, {live})",
              (st.allocations, st.live) == (live + 1, live))
        check(f"flags {extra}: peak {st.peak}, but live never exceeded {true_peak} (n = {n})", st.peak == true_peak)
        lib.nm_pool_free_many(p, first + rest, len(first + rest))
        lib.nm_pool_destroy(p)

    pool = nativemem.Pool(64, checked=True, objects_per_chunk=16)
    objs = [pool.alloc() for _ in range(2)]
    held = []
    # one chunk's worth, then one more: the chunk with the damaged slot is no longer current
    while True:
        held.append(pool.alloc())
        if pool.stats().chunks == 2:
            break
    victim = held.pop(3)
    pool.free(victim)
    ffi.cast("unsigned char *", victim)[40] = 0x41
    true_peak = len(objs) + len(held)
    try:
        for _ in range(10000):
            held.append(pool.alloc())
            true_peak = max(true_peak, len(objs) + len(held))
        check("Python face: no UseAfterFreeError", False)
    except nativemem.UseAfterFreeError:
        pass
    s = pool.stats()
    check(f"Python face: peak {s.peak}, but live never exceeded {true_peak}", s.peak == true_peak)
    pool.free_many(objs + held)
    pool.close()
    done()
    ''')


# ==== bug 2 (older than this change): nm_pool_check skips objects allocated without a site =====
#
# nm_pool_check verifies the poison of a free slot only `if (c->site_file[i])`; nm_pool_alloc and
# nm_pool_alloc_many record _nm_site_file, which is NULL for every allocation from C or cffi that
# did not go through nm_pool_alloc_at / nm_site_set (the Python face sets a site: not affected).
# So a write after free into such an object is never found by nm_pool_check (0: intact), though
# nm_pool_alloc does refuse the slot when it reaches it.  nm_pool.h: "Checked mode: verifies the
# poison of every free object".


def test_check_finds_write_after_free_of_objects_allocated_without_a_site():
    """Checked pool: an object from nm_pool_alloc / nm_pool_alloc_many, freed (singly, in a batch,
    by another thread), then written: nm_pool_check must return NM_ERR_USE_AFTER_FREE.  Control:
    the same with nm_pool_alloc_at (a site) is reported."""
    run_child(r'''
    def scenario(alloc, free_how):
        p = lib.nm_pool_create(ffi.NULL, 48, 16, lib.NM_POOL_CHECKED | lib.NM_POOL_QUIET)
        objs = alloc(p, 4)
        x = objs[2]
        if free_how == "single":
            lib.nm_pool_free(p, x)
        elif free_how == "batch":
            lib.nm_pool_free_many(p, [x], 1)
        else:
            t = threading.Thread(target=lambda: lib.nm_pool_free(p, x)); t.start(); t.join()
        check(f"check before the write: {err()}", lib.nm_pool_check(p) == 0)
        ffi.cast("unsigned char *", x)[30] = 0x42
        rc = lib.nm_pool_check(p)
        lib.nm_pool_destroy(p)
        return rc
    def with_site(p, k):
        return [lib.nm_pool_alloc_at(p, b"site.c", 7) for _ in range(k)]
    def single(p, k):
        return [lib.nm_pool_alloc(p) for _ in range(k)]
    def batch(p, k):
        out = ffi.new("void *[]", k)
        lib.nm_pool_alloc_many(p, out, k)
        return [out[i] for i in range(k)]
    for how in ("single", "batch", "remote"):
        rc = scenario(with_site, how)
        check(f"control: alloc_at, freed {how}: check -> {rc}", rc == lib.NM_ERR_USE_AFTER_FREE)
        for name, f in (("nm_pool_alloc", single), ("nm_pool_alloc_many", batch)):
            rc = scenario(f, how)
            check(f"{name}, freed {how}, then written: nm_pool_check -> {rc} (want NM_ERR_USE_AFTER_FREE)",
                  rc == lib.NM_ERR_USE_AFTER_FREE)
    # control: the Python face records a site (alloc_many included), so check() finds the write
    pool = nativemem.Pool(48, checked=True)
    objs = pool.alloc_many(3)
    pool.free(objs[1])
    ffi.cast("unsigned char *", objs[1])[30] = 0x42
    try:
        pool.check()
        check("control: Pool(checked=True).alloc_many object written after free: check() raised nothing", False)
    except nativemem.UseAfterFreeError:
        pass
    pool.free(objs[0]); pool.free(objs[2])
    pool.close()
    done()
    ''')


# ==== Valgrind memcheck: the C program (tests/c/hostile4/pool_vg.c) ==========================


@pytest.fixture(scope="module")
def vg_exe(tmp_path_factory):
    if VALGRIND is None:
        pytest.skip("valgrind is not installed")
    return build_c(tmp_path_factory.mktemp("pool_vg"), HOSTILE_C, "pool_vg.c", "pool_vg",
                   extra=("-DNM_HAVE_VALGRIND=1",))


def _memcheck(exe, *args, timeout=120):
    return run_exe([VALGRIND, "-q", "--tool=memcheck", "--error-exitcode=99", "--num-callers=30", exe, *args],
                   timeout=timeout)


@needs_cc
@needs_checkout
@needs_valgrind
@linux_only
def test_memcheck_correct_use_of_every_mode_reports_nothing(vg_exe):
    """Default, zero, checked (+zero), unchecked (+zero); sizes 1..300, alignments 8..4096: pairs
    (the hot object), list pops, batches, frees by another thread singly and in batches, threads
    exiting with a hot object, check, exact stats -- memcheck's error count stays 0.  (Negative
    control: with pool->fast chosen without pool->vg, the inline paths skip the requests and this
    reports ~277000 errors.)"""
    r = _memcheck(vg_exe, "ok")
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), r.stderr[-6000:]


@needs_cc
@needs_checkout
@needs_valgrind
@linux_only
def test_memcheck_reports_use_after_free_in_default_zero_and_checked_pools(vg_exe):
    """Seeded misuses (read of the object freed last -- the hot one --, of one freed before it,
    of a batch-freed one, of one another thread freed, first and last byte; a branch on a
    reallocated object's old contents; a write after free): each raises memcheck's error count.
    (Negative control: with the inline paths taken under Valgrind most are MISSED.)"""
    r = _memcheck(vg_exe, "bad", ",default,zero,checked,")
    missed = [l for l in r.stderr.splitlines() if l.startswith(("MISSED", "FAIL"))]
    assert not missed and r.stdout.rstrip().endswith("OK"), "\n".join(missed) or r.stderr[-4000:]


# ==== bug 3 (older than this change): unchecked pools keep a freed object's first word open =====
#
# nm__ufree (csrc/pool.c) issues MEMPOOL_FREE and then VALGRIND_MAKE_MEM_UNDEFINED(p, 8) -- the
# link word stays addressable (ASan: NM_ASAN_UNPOISON(p, 8), no poison after the store), and the
# link words stay so while they are on the thread's list and the shared list.  A read or write of
# the first 8 bytes of a freed object is never reported; for objects of at most 8 bytes the whole
# object is invisible: every use after free passes unseen, and a write corrupts the free list
# (the next allocations follow the written pointer).  The other modes hide the link word
# (nm__link_close after each store) and memcheck reports all of these.


@needs_cc
@needs_checkout
@needs_valgrind
@linux_only
def test_memcheck_reports_use_after_free_in_unchecked_pools(vg_exe):
    """The same seeded misuses in NM_POOL_UNCHECKED pools (8- and 48-byte objects): every one must
    raise memcheck's error count.  Now the reads and writes of byte 0 (and of any byte of an
    8-byte object) are MISSED."""
    r = _memcheck(vg_exe, "bad", ",unchecked,unchecked-zero,")
    missed = [l for l in r.stderr.splitlines() if l.startswith(("MISSED", "FAIL"))]
    assert not missed and r.stdout.rstrip().endswith("OK"), "\n".join(missed) or r.stderr[-4000:]


# ==== Valgrind memcheck: the real interpreter ===================================================

VG_PY = r'''
import ctypes, sys, threading
import nativemem
from nativemem._ffi import ffi, lib
def A(p): return int(ffi.cast("uintptr_t", p))
def work(flags, size, align):
    p = lib.nm_pool_create_ex(ffi.NULL, size, 16, align, flags | lib.NM_POOL_QUIET)
    for i in range(20):
        x = lib.nm_pool_alloc(p); ffi.memmove(x, bytes([i]) * size, size); lib.nm_pool_free(p, x)
    objs = [lib.nm_pool_alloc(p) for _ in range(50)]
    for o in objs:
        if flags & lib.NM_POOL_ZERO:
            assert bytes(ffi.buffer(o, size)) == b"\0" * size
        ffi.memmove(o, b"\x11" * size, size)
    for o in objs[::2]: lib.nm_pool_free(p, o)
    arr = ffi.new("void *[40]")
    n = lib.nm_pool_alloc_many(p, arr, 40)
    for i in range(n): ffi.memmove(arr[i], b"\x22" * size, size)
    lib.nm_pool_free_many(p, arr, n)
    rest = objs[1::2]
    t = threading.Thread(target=lambda: lib.nm_pool_free_many(p, rest, len(rest))); t.start(); t.join()
    n = lib.nm_pool_alloc_many(p, arr, 40)
    for i in range(n): ffi.memmove(arr[i], b"\x33" * size, size)
    t = threading.Thread(target=lambda: [lib.nm_pool_free(p, arr[i]) for i in range(n)]); t.start(); t.join()
    if not flags & lib.NM_POOL_UNCHECKED:
        assert lib.nm_pool_check(p) == 0
    st = ffi.new("nm_pool_stats_t *"); lib.nm_pool_stats(p, st)
    assert st.live == 0 and st.allocations == st.frees == 20 + 50 + 40 + 40, (st.allocations, st.frees)
    lib.nm_pool_destroy(p)
for flags in (0, lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED, lib.NM_POOL_CHECKED | lib.NM_POOL_ZERO,
              lib.NM_POOL_UNCHECKED, lib.NM_POOL_UNCHECKED | lib.NM_POOL_ZERO):
    for size, align in ((8, 8), (48, 16), (100, 64)):
        work(flags, size, align)
base = nativemem.allocator("libc")
pool = nativemem.Pool(48, zero=True, objects_per_chunk=16, allocator=base)
xs = pool.alloc_many(10)
pool.free_many(xs)
sys.stdout.write("phase ok\n"); sys.stdout.flush()
# seeded uses after free, each read by a different mechanism (memcheck shows one report per stack)
hot = pool.alloc(); pool.free(hot)                                  # the hot object (Pool.free)
sys.stdout.write(f"uaf {A(hot) + 40:#x}\n"); sys.stdout.flush()
ctypes.c_ubyte.from_address(A(hot) + 40).value
batch = pool.alloc_many(4); pool.free_many(batch)                   # batch-freed
sys.stdout.write(f"uaf {A(batch[2]) + 8:#x}\n"); sys.stdout.flush()
ctypes.string_at(A(batch[2]) + 8, 1)
p = lib.nm_pool_create(ffi.NULL, 64, 16, 0)
x = lib.nm_pool_alloc(p)
t = threading.Thread(target=lambda: lib.nm_pool_free(p, x)); t.start(); t.join()   # remote free
sys.stdout.write(f"uaf {A(x) + 63:#x}\n"); sys.stdout.flush()
ffi.cast("unsigned char *", x)[63]
lib.nm_pool_destroy(p)
pool.close()
sys.stdout.write("done\n")
'''

NATIVE_FRAME = re.compile(r"pool\.c|alloc\.c|backends\.c|nativemem[./]_native|\bnm_pool_|\bnm__")


@needs_valgrind
@linux_only
@pytest.mark.skipif(not nativemem.build_info()["valgrind"],
                    reason="nativemem was built without valgrind/memcheck.h (no client requests)")
def test_python_under_memcheck_every_mode(tmp_path):
    """The interpreter under memcheck: every mode (pairs, list pops, batches, frees by another
    thread, check, stats) -- no report involves nativemem but the three seeded uses after free
    (the hot object, a batch-freed object, an object another thread freed), each reported as an
    invalid read at its address."""
    prog = tmp_path / "vg_prog.py"
    prog.write_text(VG_PY)
    env = dict(os.environ, PYTHONMALLOC="malloc", PYTHONPATH=SRC_DIR)
    try:
        r = subprocess.run([VALGRIND, "--tool=memcheck", "--num-callers=40", sys.executable, str(prog)],
                           env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"valgrind run hung: {e.stdout!r} {e.stderr!r}")
    assert r.returncode == 0 and "done" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
    errors = memcheck_reports(r.stderr, MEMCHECK_KINDS[:-1] + r"|Illegal|Syscall param)")
    want = [int(a, 16) for a in re.findall(r"^uaf (0x[0-9a-f]+)$", r.stdout, re.M)]
    assert len(want) == 3, r.stdout
    found, ours = set(), []
    for e in errors:
        m = re.search(r"Address (0x[0-9a-fA-F]+)", e)
        if e.startswith("Invalid read") and m and int(m.group(1), 16) in want:
            found.add(int(m.group(1), 16))
        elif NATIVE_FRAME.search(e):
            ours.append(e)
    assert ours == [], "memcheck errors involving nativemem in correct use:\n\n" + "\n\n".join(ours)
    assert found == set(want), (f"uses after free not reported: {[hex(a) for a in set(want) - found]}\n\n"
                                + "\n\n".join(errors))


# ==== what held up (regression tests) ========================================================

MODEL = r'''
UAF_RE = re.compile(r"write after free in pool object (0x[0-9a-f]+)")

class Helper:
    """One long-lived second thread that runs calls for the main thread (frees by another thread)."""
    def __init__(self):
        self.q, self.r = queue.Queue(), queue.Queue()
        self.t = threading.Thread(target=self.loop, daemon=True); self.t.start()
    def loop(self):
        while True:
            f = self.q.get()
            if f is None: return
            self.r.put(f())
    def call(self, f):
        self.q.put(f); return self.r.get()
    def stop(self):
        self.q.put(None); self.t.join()

def pat(a, n, g):
    return ((a ^ g).to_bytes(8, "little") * ((n + 7) // 8 + 1))[:n]

def model(shapes, seed, steps, helper):
    """Three pools (the shapes) used alternately against a Python model: single and batch
    allocations and frees; frees by another thread (singly and in batches); batches with
    duplicates, freed objects, NULL, interior pointers and the other pools' objects; double frees
    (often of the object allocated last) by the owner and by the other thread; odd, interior,
    neighbouring and foreign pointers; checked pools: writes after free, whose slot must be
    refused when it comes up; pools destroyed and recreated (likely at the same address).
    Every object handed out is new (in no pool's live set), zeroed (NM_POOL_ZERO) and keeps its
    contents while live; every free returns the model's code; allocations, frees and live are
    exact; the peak is exact while only one thread used the pool (else between live and the true
    peak), the refused allocations aside (bug 1 above); owns, live_objects and check agree."""
    rng = random.Random(seed)
    def make(flags, size, align, per):
        p = lib.nm_pool_create_ex(ffi.NULL, size, per, align, flags | lib.NM_POOL_QUIET)
        assert p != ffi.NULL
        return dict(p=p, flags=flags, size=size, align=align, per=per, stride=-(-max(size, 8) // align) * align,
                    live={}, freed=set(), dead=set(), damaged=set(), allocs=0, frees=0, peak=0, refused=0,
                    one_thread=True, gen=0)
    pools = [make(*s) for s in shapes]
    strict = lambda M: not (M["flags"] & lib.NM_POOL_UNCHECKED)
    def new_obj(M, a, tag):
        for Q in pools:
            check(f"{tag}: {a:#x} handed out while live", a not in Q["live"])
        check(f"{tag}: {a:#x} handed out although refused as damaged", a not in M["dead"] and a not in M["damaged"])
        if M["flags"] & lib.NM_POOL_ZERO:
            check(f"{tag}: {a:#x} not zeroed", bytes(ffi.buffer(P(a), M["size"])) == b"\0" * M["size"])
        M["gen"] += 1
        ffi.memmove(P(a), pat(a, M["size"], M["gen"]), M["size"])
        M["live"][a] = M["gen"]; M["freed"].discard(a); M["allocs"] += 1
        M["peak"] = max(M["peak"], len(M["live"])); M["last"] = a
    def verify(M, a, tag):
        check(f"{tag}: contents of live {a:#x} changed", bytes(ffi.buffer(P(a), M["size"])) == pat(a, M["size"], M["live"][a]))
    def gone(M, a):
        del M["live"][a]; M["freed"].add(a); M["frees"] += 1
    def refused(M, tag):
        e, msg = lib.nm_last_error(), err()
        m = UAF_RE.search(msg)
        a = int(m.group(1), 16) if m else None
        if e == lib.NM_ERR_USE_AFTER_FREE and a in M["damaged"]:
            M["damaged"].discard(a); M["dead"].add(a); M["refused"] += 1
        else:
            check(f"{tag}: allocation failed: {e} {msg}", False)
    for step in range(steps):
        M = rng.choice(pools)
        O = rng.choice([Q for Q in pools if Q is not M])
        p, live, size = M["p"], M["live"], M["size"]
        tag = f"seed {seed} step {step} flags {M['flags']} size {size}/{M['align']}"
        op = rng.random()
        if op < 0.22:
            x = lib.nm_pool_alloc(p)
            if x == ffi.NULL: refused(M, tag + " alloc")
            else: new_obj(M, A(x), tag + " alloc")
        elif op < 0.32:
            k = rng.randrange(1, 50)
            out = ffi.new("void *[]", k)
            got = lib.nm_pool_alloc_many(p, out, k)
            for i in range(got):
                new_obj(M, A(out[i]), tag + " alloc_many")
            if got < k: refused(M, tag + f" alloc_many {got} of {k}")
        elif op < 0.5 and live:
            a = M["last"] if M.get("last") in live and rng.random() < 0.4 else rng.choice(sorted(live))
            verify(M, a, tag)
            rc = lib.nm_pool_free(p, P(a))
            check(f"{tag}: free of a live object -> {rc} {err()}", rc == 0)
            gone(M, a)
        elif op < 0.66:
            items, avail = [], set(live)
            for _ in range(rng.randrange(0, 50)):
                r = rng.random()
                if r < 0.7 and avail:
                    a = rng.choice(sorted(avail)); avail.discard(a); items.append(a)
                elif not strict(M):
                    continue
                elif r < 0.76 and items:
                    items.append(rng.choice(items))
                elif r < 0.82 and (M["freed"] or M["dead"]):
                    items.append(rng.choice(sorted(M["freed"] | M["dead"])))
                elif r < 0.85:
                    items.append(0)
                elif r < 0.9 and live:
                    items.append(rng.choice(sorted(live)) + rng.choice([o for o in (1, 8, M["stride"] // 2) if o % M["stride"]]))
                elif O["live"]:
                    items.append(rng.choice(sorted(O["live"])))
            want, left = 0, set(live)
            for a in items:
                if a in left:
                    left.discard(a); e = 0
                elif a in live or a in M["freed"] or a in M["dead"] or a in M["damaged"]:
                    e = lib.NM_ERR_DOUBLE_FREE
                else:
                    e = lib.NM_ERR_INVALID_FREE
                if e and not want: want = e
            for a in set(live) - left:
                verify(M, a, tag)
            arr = ffi.new("void *[]", [P(a) for a in items] or [ffi.NULL])
            if strict(M) and rng.random() < 0.25:
                rc = helper.call(lambda: lib.nm_pool_free_many(p, arr, len(items)))
                M["one_thread"] = False; how = "free_many by another thread"
            else:
                rc = lib.nm_pool_free_many(p, arr, len(items)); how = "free_many"
            check(f"{tag}: {how} of {len(items)} -> {rc} (want {want}) {err() if rc != want else ''}", rc == want)
            for a in set(live) - left:
                gone(M, a)
        elif op < 0.72 and live and strict(M):
            a = rng.choice(sorted(live))
            verify(M, a, tag)
            rc = helper.call(lambda: lib.nm_pool_free(p, P(a)))
            M["one_thread"] = False
            check(f"{tag}: free by another thread -> {rc}", rc == 0)
            gone(M, a)
        elif op < 0.78 and strict(M) and (M["freed"] or M["dead"]):
            pool_of = sorted(M["freed"] | M["dead"])
            a = M["last"] if M.get("last") in M["freed"] and rng.random() < 0.5 else rng.choice(pool_of)
            if rng.random() < 0.25:
                rc = helper.call(lambda: lib.nm_pool_free(p, P(a))); M["one_thread"] = False
            else:
                rc = lib.nm_pool_free(p, P(a))
            check(f"{tag}: double free of {a:#x} -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        elif op < 0.82 and strict(M):
            cands = [0]
            if O["live"]: cands.append(rng.choice(sorted(O["live"])))
            for S in (live, M["freed"]):
                if S:
                    b = rng.choice(sorted(S))
                    cands += [b + o for o in (1, 8, -8, M["stride"] // 2, M["stride"] - 1) if o % M["stride"]]
            a = rng.choice(cands)
            if a in live or a in M["freed"]:
                continue
            rc = lib.nm_pool_free(p, P(a))
            check(f"{tag}: free of a foreign, odd or interior {a:#x} -> {rc}", rc == lib.NM_ERR_INVALID_FREE)
        elif op < 0.85 and (M["flags"] & lib.NM_POOL_CHECKED) and size > 16 and M["freed"]:
            a = rng.choice(sorted(M["freed"]))                          # write after free
            ffi.cast("unsigned char *", a)[size - 1] ^= 0x55
            M["freed"].discard(a); M["damaged"].add(a)
        elif op < 0.91:
            for a in sorted(live)[:5]:
                check(f"{tag}: owns(live {a:#x})", lib.nm_pool_owns(p, P(a)) == 1)
            if strict(M):
                for a in sorted(M["freed"] | M["dead"])[:5]:
                    check(f"{tag}: owns(freed {a:#x})", lib.nm_pool_owns(p, P(a)) == 0)
        elif op < 0.985:
            st = stats(p)
            got = (st.allocations, st.frees, st.live)
            check(f"{tag}: stats {got} want {(M['allocs'], M['frees'], len(live))}", got == (M["allocs"], M["frees"], len(live)))
            if M["one_thread"] and strict(M) and not M["refused"]:
                check(f"{tag}: peak {st.peak} want {M['peak']}", st.peak == M["peak"])
            else:
                check(f"{tag}: peak {st.peak} outside [{len(live)}, {M['peak']} + {M['refused']} refused]",
                      len(live) <= st.peak <= M["peak"] + M["refused"])
            if strict(M):
                check(f"{tag}: live_objects", lib.nm_pool_live_objects(p, ffi.NULL, 0) == len(live))
                if not (M["damaged"] or M["dead"]):
                    check(f"{tag}: check -> {err()}", lib.nm_pool_check(p) == 0)
        else:
            for a in sorted(live): verify(M, a, tag)
            lib.nm_pool_destroy(p)
            pools[pools.index(M)] = make(M["flags"], M["size"], M["align"], M["per"])
        if len(FAILS) > 20:
            break
    for M in pools:
        st = stats(M["p"])
        check(f"seed {seed}: final stats {st.allocations} {st.frees} {st.live}",
              (st.allocations, st.frees, st.live) == (M["allocs"], M["frees"], len(M["live"])))
        lib.nm_pool_destroy(M["p"])
'''


@pytest.mark.parametrize("seed", [11, 12])
def test_model_three_pools_every_mode_with_remote_frees(seed):
    run_child(MODEL + textwrap.dedent(r'''
    seed = int(sys.argv[1])
    Z, C, U = lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED, lib.NM_POOL_UNCHECKED
    helper = Helper()
    for shapes in ([(0, 48, 16, 8), (Z, 48, 16, 8), (C, 48, 16, 8)],
                   [(U, 24, 8, 16), (U | Z, 40, 8, 8), (0, 24, 8, 16)],
                   [(C | Z, 100, 64, 4), (Z, 1, 8, 16), (0, 300, 16, 8)],
                   [(C, 33, 16, 16), (U | Z, 64, 64, 8), (Z, 17, 8, 32)]):
        model(shapes, seed, 5000, helper)
    helper.stop()
    done()
    '''), args=(seed,))


@linux_only
def test_fork_with_unchecked_caches_and_hot_objects():
    """Another thread holds live objects and a cache of free ones (unchecked) or a hot object;
    fork: the child allocates a lot, singly and in batches -- never a live object, never one twice
    -- and its live count is exact."""
    run_child(r'''
    for flags in (lib.NM_POOL_UNCHECKED, lib.NM_POOL_UNCHECKED | lib.NM_POOL_ZERO, 0, lib.NM_POOL_ZERO):
        p = lib.nm_pool_create(ffi.NULL, 24, 16, flags | lib.NM_POOL_QUIET)
        live = set()
        go, ready = threading.Event(), threading.Event()
        def holder():
            objs = [lib.nm_pool_alloc(p) for _ in range(200)]
            for o in objs[100:]: lib.nm_pool_free(p, o)
            x = lib.nm_pool_alloc(p); lib.nm_pool_free(p, x)
            live.update(A(o) for o in objs[:100])
            ready.set(); go.wait()
            lib.nm_pool_free_many(p, objs[:100], 100)
        th = threading.Thread(target=holder); th.start(); ready.wait()
        mine = [lib.nm_pool_alloc(p) for _ in range(50)]
        x = lib.nm_pool_alloc(p); lib.nm_pool_free(p, x)      # the main thread's hot object
        live.update(A(o) for o in mine)
        pid = os.fork()
        if pid == 0:
            bad = []
            arr = ffi.new("void *[2000]")
            n = lib.nm_pool_alloc_many(p, arr, 2000)
            got = [A(arr[i]) for i in range(n)] + [A(lib.nm_pool_alloc(p)) for _ in range(300)]
            if len(set(got)) != len(got): bad.append(f"{flags}: an object handed out twice in the child")
            if set(got) & live: bad.append(f"{flags}: the child got {len(set(got) & live)} live object(s)")
            st = stats(p)
            if st.live != len(live) + len(got): bad.append(f"{flags}: child live {st.live}, want {len(live) + len(got)}")
            sys.stderr.write("\n".join(bad) + "\n")
            os._exit(1 if bad else 0)
        _, status = os.waitpid(pid, 0)
        check(f"flags {flags}: child exit status {status:#x}", status == 0)
        go.set(); th.join()
        for o in mine: lib.nm_pool_free(p, o)
        st = stats(p)
        check(f"flags {flags}: parent stats {st.allocations} {st.frees} {st.live}", st.live == 0 and st.allocations == st.frees)
        lib.nm_pool_destroy(p)
    done()
    ''')


def test_peak_exact_single_thread_batches_and_singles():
    """One thread, every non-unchecked mode: peak == the model's maximum after batch allocations
    followed by singles, singles after batch frees, hot-object pairs at the maximum, and a pool
    destroyed and recreated at (likely) the same address starting from zero."""
    run_child(r'''
    rng = random.Random(5)
    for flags in (0, lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED, lib.NM_POOL_CHECKED | lib.NM_POOL_ZERO):
        for size in (8, 48, 200):
            p = lib.nm_pool_create(ffi.NULL, size, 16, flags | lib.NM_POOL_QUIET)
            live, peak = [], 0
            for rnd in range(60):
                op = rng.random()
                if op < 0.3:
                    k = rng.randrange(1, 80)
                    out = ffi.new("void *[]", k)
                    check("alloc_many", lib.nm_pool_alloc_many(p, out, k) == k)
                    live += [out[i] for i in range(k)]
                elif op < 0.55:
                    for _ in range(rng.randrange(1, 30)):
                        live.append(lib.nm_pool_alloc(p))
                elif op < 0.75 and live:
                    rng.shuffle(live)
                    k = rng.randrange(0, len(live) + 1)
                    check("free_many", lib.nm_pool_free_many(p, live[:k], k) == 0)
                    del live[:k]
                elif live:
                    for _ in range(rng.randrange(1, 10)):
                        if live: lib.nm_pool_free(p, live.pop())
                peak = max(peak, len(live))
                for _ in range(3):                    # pairs at the current level (hot object)
                    x = lib.nm_pool_alloc(p); lib.nm_pool_free(p, x)
                peak = max(peak, len(live) + 1)
                st = stats(p)
                check(f"flags {flags} size {size} round {rnd}: live {st.live} peak {st.peak}, want {len(live)} {peak}",
                      (st.live, st.peak) == (len(live), peak))
            lib.nm_pool_free_many(p, live, len(live))
            lib.nm_pool_destroy(p)
            q = lib.nm_pool_create(ffi.NULL, size, 16, flags | lib.NM_POOL_QUIET)
            x = lib.nm_pool_alloc(q)
            st = stats(q)
            check(f"recreated pool: {st.allocations} {st.live} {st.peak}", (st.allocations, st.live, st.peak) == (1, 1, 1))
            lib.nm_pool_free(q, x)
            lib.nm_pool_destroy(q)
    done()
    ''')
