"""More hostile tests, of three hot paths rewritten for speed: string interning (csrc/strtab.c:
one-cache-line buckets, no tombstones), the debug allocator (csrc/debug.c: live-only address hash,
64-byte poison steps, inline canary checks) and the pool (csrc/pool.c: the free of the object a
thread allocated last, inline zeroing).

Each case runs in a fresh process with a timeout (a crash or a hang fails the case with the
child's output); the C-level cases build a small program from tests/c/hostile2/ against csrc/.
A case asserts the correct behaviour: it fails while the bug it targets exists.
"""
from __future__ import annotations

import os

from hostile_child import build_c, linux_only, needs_cc, needs_checkout, prelude, run_exe
from hostile_child import run_child as _run_child_with

HOSTILE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "hostile2")

PRELUDE = prelude()


def run_child(code: str, timeout: float = 120, args=()) -> str:
    return _run_child_with(PRELUDE, code, timeout, args)


def _build(tmp_path, src, name, extra=(), exclude=()):
    return build_c(tmp_path, HOSTILE_C, src, name, extra, exclude)


_run_exe = run_exe


# ==== bugs found (fixed): pool.c, the free of the last-allocated object (tc->last_obj) ====
#
# nm__free compares p with tc->last_obj before anything else, and a free of that object clears
# last_obj to NULL but leaves last_obj_chunk / last_obj_idx as they were.  nm_pool_free(pool, NULL)
# then takes the shortcut (NULL == last_obj) with a stale slot, or with last_obj_chunk NULL in a
# cache that never allocated.  Before the rewrite a NULL free went to nm__chunk_of -> "invalid free".


def test_pool_free_null_does_not_free_a_live_object():
    """alloc x; free x (x becomes the hot object, last_obj = NULL); alloc_many takes x back (a
    batch does not set last_obj); nm_pool_free(pool, NULL) must be NM_ERR_INVALID_FREE.  The bug:
    it returns 0 and clears the allocation bit of the live x (its later free is a 'double free')."""
    run_child(r'''
    for flags in (0, lib.NM_POOL_ZERO):
        p = lib.nm_pool_create(ffi.NULL, 64, 64, flags)
        x = lib.nm_pool_alloc(p)
        check("free x", lib.nm_pool_free(p, x) == 0)
        out = ffi.new("void *[1]")
        check("alloc_many", lib.nm_pool_alloc_many(p, out, 1) == 1)
        rc = lib.nm_pool_free(p, ffi.NULL)
        check(f"flags {flags}: nm_pool_free(NULL) returned {rc} (want NM_ERR_INVALID_FREE {lib.NM_ERR_INVALID_FREE})",
              rc == lib.NM_ERR_INVALID_FREE)
        check(f"flags {flags}: the live object is no longer owned after free(NULL)", lib.nm_pool_owns(p, out[0]) == 1)
        rc = lib.nm_pool_free(p, out[0])
        check(f"flags {flags}: free of the live object after free(NULL): {rc} {err()}", rc == 0)
        lib.nm_pool_destroy(p)
    done()
    ''')


def test_pool_free_null_first_call_does_not_crash():
    """nm_pool_free(pool, NULL) as a thread's first call on a pool (the main thread, and a new
    thread): its cache is made with last_obj == last_obj_chunk == NULL, so NULL matches last_obj
    and nm__free reads c->magic through a NULL chunk -> SIGSEGV.  Must be NM_ERR_INVALID_FREE."""
    run_child(r'''
    p = lib.nm_pool_create(ffi.NULL, 64, 64, 0)
    rc = lib.nm_pool_free(p, ffi.NULL)
    check(f"main thread: {rc}", rc == lib.NM_ERR_INVALID_FREE)
    rcs = []
    th = threading.Thread(target=lambda: rcs.append(lib.nm_pool_free(p, ffi.NULL)))
    th.start(); th.join()
    check(f"new thread: {rcs}", rcs == [lib.NM_ERR_INVALID_FREE])
    lib.nm_pool_destroy(p)
    done()
    ''', timeout=60)


def test_pool_free_many_with_a_null_entry_does_not_crash():
    """nm_pool_free_many(pool, [NULL], 1) on a fresh pool: the same shortcut, SIGSEGV."""
    run_child(r'''
    p = lib.nm_pool_create(ffi.NULL, 64, 64, lib.NM_POOL_CHECKED)
    rc = lib.nm_pool_free_many(p, [ffi.NULL], 1)
    check(f"free_many([NULL]): {rc}", rc == lib.NM_ERR_INVALID_FREE)
    x = lib.nm_pool_alloc(p)
    check("free x", lib.nm_pool_free(p, x) == 0)
    rc = lib.nm_pool_free_many(p, [ffi.NULL], 1)
    check(f"free_many([NULL]) after a free: {rc}", rc == lib.NM_ERR_INVALID_FREE)
    lib.nm_pool_destroy(p)
    done()
    ''', timeout=60)


# ==== bug found (fixed; ASan builds only, pre-existing): unchecked tiny objects ==========

@needs_cc
@needs_checkout
@linux_only
def test_unchecked_pool_objects_smaller_than_a_pointer_under_asan(tmp_path):
    """An NM_POOL_UNCHECKED pool of 1..7-byte objects in an ASan build: nm__ualloc unpoisons
    object_size bytes, nm__ufree then stores its 8-byte link in the slot -> ASan
    'use-after-poison' in nm__ufree (csrc/pool.c) on the first free.  (Checked pools are fine.)"""
    exe = _build(tmp_path, "pool_unchecked_tiny_asan.c", "pool_tiny_asan",
                 extra=("-fsanitize=address", "-fno-omit-frame-pointer"))
    r = _run_exe([exe], timeout=60, env={"ASAN_OPTIONS": "detect_leaks=0"})
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout[-500:] + r.stderr[-3000:]


# ==== found (fixed): strtab.c, a release that only checked constant in-band magic ===============

def test_strtab_release_of_an_interior_pointer_with_forged_header():
    """Release of s + 16 where the interned bytes s[8..16) read as an entry header with the old
    constant magic ("STR1" << 32 | length) and s[0..8) as a count above 1.  It was taken for an
    entry: the fast path decremented the 'count' (the shared, immutable string's bytes changed)
    and returned 0.  The magic is now keyed by the entry's address and the table's secret, so
    string bytes cannot pass for a header: NM_ERR_INVALID_FREE, the string left alone."""
    run_child(r'''
    t = lib.nm_strtab_create(ffi.NULL)
    s = struct.pack("<qII", 5, 3, 0x53545231) + b"abc"
    p = lib.nm_strtab_intern(t, s, len(s))
    rc = lib.nm_strtab_release(t, ffi.cast("char *", p) + 16)
    check(f"release(s + 16) returned {rc}, want NM_ERR_INVALID_FREE", rc == lib.NM_ERR_INVALID_FREE)
    check(f"interned bytes changed: {ffi.buffer(p, len(s))[:]!r}", ffi.buffer(p, len(s))[:] == s)
    done()
    ''', timeout=60)


# ==== regression cases that pass now ==============================================================

def test_pool_zeroing_every_size_and_neighbours_kept():
    """Sizes 1..300, ZERO / ZERO|CHECKED / ZERO|UNCHECKED / plain: a reused object is all zero
    with NM_POOL_ZERO (single and batch allocations), and the neighbours' bytes stay intact."""
    run_child(r'''
    for flags in (lib.NM_POOL_ZERO, lib.NM_POOL_ZERO | lib.NM_POOL_CHECKED, lib.NM_POOL_ZERO | lib.NM_POOL_UNCHECKED,
                  0, lib.NM_POOL_CHECKED):
        for n in range(1, 301):
            if flags & lib.NM_POOL_UNCHECKED and n < 8:
                continue  # ASan builds: see test_unchecked_pool_objects_smaller_than_a_pointer_under_asan
            p = lib.nm_pool_create(ffi.NULL, n, 16, flags)
            objs = [lib.nm_pool_alloc(p) for _ in range(12)]
            for i, o in enumerate(objs):
                ffi.memmove(o, bytes([0x40 + i]) * n, n)
            for o in objs[::2]:
                lib.nm_pool_free(p, o)
            new = [lib.nm_pool_alloc(p) for _ in range(6)]
            for o in new:
                ffi.memmove(o, b"\x77" * n, n)
                lib.nm_pool_free(p, o)
            out = ffi.new("void *[6]")
            check(f"{flags} {n} alloc_many", lib.nm_pool_alloc_many(p, out, 6) == 6)
            if flags & lib.NM_POOL_ZERO:
                for o in out:
                    check(f"flags {flags} size {n}: batch object not zeroed", ffi.buffer(o, n)[:] == bytes(n))
                lib.nm_pool_free_many(p, out, 6)
                singles = [lib.nm_pool_alloc(p) for _ in range(6)]
                for o in singles:
                    check(f"flags {flags} size {n}: object not zeroed", ffi.buffer(o, n)[:] == bytes(n))
            for i, o in enumerate(objs):
                if i % 2:
                    check(f"flags {flags} size {n}: neighbour {i} changed", ffi.buffer(o, n)[:] == bytes([0x40 + i]) * n)
            lib.nm_pool_destroy(p)
    done()
    ''')


def test_pool_last_object_double_remote_interior_stale():
    """The last-allocated shortcut: free twice, freed by another thread then by its allocator,
    an interior pointer of it, a stale last_obj after a batch; all reported as before."""
    run_child(r'''
    for flags in (0, lib.NM_POOL_CHECKED, lib.NM_POOL_ZERO):
        p = lib.nm_pool_create(ffi.NULL, 32, 64, flags)
        x = lib.nm_pool_alloc(p)
        check("free", lib.nm_pool_free(p, x) == 0)
        rc = lib.nm_pool_free(p, x)
        check(f"{flags} double free of the last object: {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        x = lib.nm_pool_alloc(p)
        rcs = []
        th = threading.Thread(target=lambda: rcs.append(lib.nm_pool_free(p, x))); th.start(); th.join()
        rc = lib.nm_pool_free(p, x)
        check(f"{flags} remote free then own free: {rcs} {rc}", rcs == [0] and rc == lib.NM_ERR_DOUBLE_FREE)
        x = lib.nm_pool_alloc(p)
        rc = lib.nm_pool_free(p, ffi.cast("char *", x) + 8)
        check(f"{flags} interior of the last object: {rc}", rc == lib.NM_ERR_INVALID_FREE)
        check("free x", lib.nm_pool_free(p, x) == 0)
        x = lib.nm_pool_alloc(p)
        out = ffi.new("void *[3]")
        lib.nm_pool_alloc_many(p, out, 3)
        check("x", lib.nm_pool_free(p, x) == 0)
        check("many", lib.nm_pool_free_many(p, out, 3) == 0)
        rc = lib.nm_pool_free(p, x)
        check(f"{flags} stale last object double free: {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        lib.nm_pool_destroy(p)
    # threads: alloc/free pairs, cross-thread frees, no object handed out twice
    p = lib.nm_pool_create(ffi.NULL, 48, 32, lib.NM_POOL_CHECKED)
    handed = {}
    lock = threading.Lock()
    def worker(seed):
        r = random.Random(seed); mine = []
        for i in range(15000):
            if mine and r.random() < 0.5:
                o = mine.pop(r.randrange(len(mine)) if r.random() < 0.5 else -1)
                with lock:
                    handed.pop(o)
                rc = lib.nm_pool_free(p, ffi.cast("void *", o))
                if rc:
                    FAILS.append(f"free: {rc} {err()}")
            else:
                o = int(ffi.cast("uintptr_t", lib.nm_pool_alloc(p)))
                with lock:
                    if o in handed:
                        FAILS.append(f"{o:#x} handed out twice")
                    handed[o] = seed
                mine.append(o)
                if r.random() < 0.1:  # give it to another thread's list
                    pass
        for o in mine:
            with lock:
                handed.pop(o)
            lib.nm_pool_free(p, ffi.cast("void *", o))
    ts = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    check(f"pool check: {err()}", lib.nm_pool_check(p) == 0)
    lib.nm_pool_destroy(p)
    done()
    ''')


def test_debug_canaries_every_byte_every_size():
    """Sizes 0..300 and 1000..1100: each of the 16 bytes past the end and before the start, changed
    alone, is reported by nm_free_checked (overflow / underflow)."""
    run_child(r'''
    d = lib.nm_debug_create_ex(ffi.NULL, 0, 1024)
    for n in list(range(0, 301)) + list(range(1000, 1101)):
        m = max(n, 1)  # malloc(0) is one byte
        for off in range(16):
            p = ffi.cast("unsigned char *", lib.nm_malloc(d, n))
            p[m + off] ^= 0x5A
            rc = lib.nm_free_checked(d, p)
            check(f"size {n}: byte {m + off} (past the end) -> {rc}", rc == lib.NM_ERR_BUFFER_OVERFLOW)
        for off in range(1, 17):
            p = ffi.cast("unsigned char *", lib.nm_malloc(d, n))
            p[-off] ^= 0x5A
            rc = lib.nm_free_checked(d, p)
            check(f"size {n}: byte -{off} -> {rc}", rc == lib.NM_ERR_BUFFER_UNDERFLOW)
    lib.nm_allocator_destroy(d)
    done()
    ''')


def test_debug_write_after_free_every_offset():
    """A byte written at every offset of a quarantined block (sizes 1..300, ends of 1000..1100)
    is reported by nm_debug_check; and by the reuse of the recycled block."""
    run_child(r'''
    for n in list(range(1, 301)) + list(range(1000, 1101)):
        offs = range(n) if n <= 300 else list(range(0, 70)) + list(range(n - 70, n))
        d = lib.nm_debug_create_ex(ffi.NULL, 0, 4)
        for off in offs:
            p = ffi.cast("unsigned char *", lib.nm_malloc(d, n))
            lib.nm_free_checked(d, p)
            p[off] = 0x11
            rc = lib.nm_debug_check(d)
            check(f"size {n} offset {off}: check -> {rc}", rc == lib.NM_ERR_USE_AFTER_FREE)
            p[off] = 0xDD
            lib.nm_debug_check(d)
        lib.nm_allocator_destroy(d)
    # the recycled block (quarantine 0): its reuse verifies the poison
    d = lib.nm_debug_create_ex(ffi.NULL, 0, 1)
    for n in (1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 300, 1030):
        for off in sorted({0, n // 2, n - 1}):
            p = ffi.cast("unsigned char *", lib.nm_malloc(d, n)); lib.nm_free_checked(d, p)
            q = lib.nm_malloc(d, 5000); lib.nm_free_checked(d, q)  # p leaves the ring: recycled
            p[off] = 0
            r = lib.nm_malloc(d, n)
            check(f"recycled size {n} offset {off}: reuse gave {r} ({lib.nm_last_error()})",
                  r == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_USE_AFTER_FREE)
            lib.nm_debug_check(d)
    lib.nm_allocator_destroy(d)
    done()
    ''')


def test_debug_double_free_states_realloc_memalign_threads():
    """Double free of a quarantined, a recycled and a long-gone block (quarantine 0, 1, 4, 1024);
    realloc of a freed block; interior pointer; memalign sizes with canaries; four threads."""
    run_child(r'''
    for q in (0, 1, 4, 1024):
        d = lib.nm_debug_create_ex(ffi.NULL, 0, q)
        p = lib.nm_malloc(d, 40)
        check("free", lib.nm_free_checked(d, p) == 0)
        rc = lib.nm_free_checked(d, p)
        check(f"q{q} double free at once: {rc} {err()}", rc == lib.NM_ERR_DOUBLE_FREE)
        for k in range(q + 3):
            x = lib.nm_malloc(d, 100 + k); lib.nm_free_checked(d, x)
        rc = lib.nm_free_checked(d, p)
        check(f"q{q} double free later: {rc} {err()}", rc == lib.NM_ERR_DOUBLE_FREE)
        r = lib.nm_realloc(d, p, 80)
        check(f"q{q} realloc of a freed block: {lib.nm_last_error()}",
              r == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_REALLOC_FREED)
        p = lib.nm_malloc(d, 64)
        rc = lib.nm_free_checked(d, ffi.cast("char *", p) + 16)
        check(f"q{q} interior: {rc}", rc == lib.NM_ERR_INVALID_FREE)
        check("live free", lib.nm_free_checked(d, p) == 0)
        for al in (16, 32, 64, 128, 256, 4096):
            for n in (0, 1, 15, 16, 17, 63, 64, 65, 200, 1000):
                m = lib.nm_memalign(d, al, n)
                check(f"memalign {al} {n}", m != ffi.NULL and int(ffi.cast("uintptr_t", m)) % al == 0)
                ffi.cast("unsigned char *", m)[max(n, 1)] ^= 1
                rc = lib.nm_free_checked(d, m)
                check(f"q{q} memalign {al} {n} overflow: {rc}", rc == lib.NM_ERR_BUFFER_OVERFLOW)
                m = lib.nm_memalign(d, al, n)
                ffi.cast("unsigned char *", m)[-1] ^= 1
                rc = lib.nm_free_checked(d, m)
                check(f"q{q} memalign {al} {n} underflow: {rc}", rc == lib.NM_ERR_BUFFER_UNDERFLOW)
        lib.nm_allocator_destroy(d)
    d = lib.nm_debug_create_ex(ffi.NULL, 0, 2)
    p = lib.nm_malloc(d, 24); lib.nm_free_checked(d, p)
    keep = [lib.nm_malloc(d, 5000 + k * 16) for k in range(10)]
    for x in keep:
        lib.nm_free_checked(d, x)
    rc = lib.nm_free_checked(d, p)
    check(f"double free of a block given back to base: {rc} {err()}", rc == lib.NM_ERR_DOUBLE_FREE)
    def worker(seed):
        r = random.Random(seed); live = []
        for i in range(15000):
            if live and r.random() < 0.5:
                x = live.pop(r.randrange(len(live)))
                rc = lib.nm_free_checked(d, x)
                if rc:
                    FAILS.append(f"thread free: {rc} {err()}")
            else:
                n = r.choice([0, 1, 16, 17, 63, 64, 65, 128, 300, 1024, 1030])
                x = lib.nm_malloc(d, n); ffi.memmove(x, b"\x07" * max(n, 1), max(n, 1)); live.append(x)
        for x in live:
            lib.nm_free_checked(d, x)
    ts = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    check(f"final check: {err()}", lib.nm_debug_check(d) == 0)
    lib.nm_allocator_destroy(d)
    done()
    ''')


def test_strtab_lengths_nuls_foreign_and_interior_releases():
    """Lengths 0..300, embedded NULs, one-byte differences at either end: distinct entries, the
    same address on a second intern; releases of interior (+1, +8) and foreign pointers refused."""
    run_child(r'''
    t = lib.nm_strtab_create(ffi.NULL)
    keys = []
    for n in range(0, 301):
        keys += [b"\0" * n, b"a" * n, bytes(range(256))[:n] if n <= 256 else b"x" * n, (b"ab\0" * 200)[:n]]
        if n:
            keys += [b"\0" * (n - 1) + b"\1", b"\1" + b"\0" * (n - 1)]
    keys = list(dict.fromkeys(keys))
    ptrs = {k: lib.nm_strtab_intern(t, k, len(k)) for k in keys}
    check("distinct keys share an entry", len(set(ptrs.values())) == len(keys))
    for k, p in ptrs.items():
        check(f"content {len(k)}", lib.nm_strtab_strlen(p) == len(k) and ffi.buffer(p, len(k))[:] == k)
        check(f"second intern {len(k)}", lib.nm_strtab_intern(t, k, len(k)) == p)
    for k, p in list(ptrs.items())[:300]:
        for off in (1, 8):
            if len(k) >= off:
                rc = lib.nm_strtab_release(t, ffi.cast("char *", p) + off)
                check(f"interior +{off} of {len(k)}: {rc}", rc == lib.NM_ERR_INVALID_FREE)
    buf = ffi.new("char[64]")
    check("foreign", lib.nm_strtab_release(t, buf + 32) == lib.NM_ERR_INVALID_FREE)
    for k, p in ptrs.items():
        check("release", lib.nm_strtab_release(t, p) == 0 and lib.nm_strtab_release(t, p) == 0)
    check(f"count {lib.nm_strtab_count(t)}", lib.nm_strtab_count(t) == 0)
    s = nativemem.StringTable()
    h = s.intern("x"); h.release()
    try:
        h.release()
        check("second release did not raise", False)
    except nativemem.NativeMemError:
        pass
    done()
    ''')


def test_strtab_threads_fork_random_churn():
    """Six threads intern and release shared and private keys (tables growing and emptying), each
    held string checked to stay at its address; then forks while four threads churn."""
    run_child(r'''
    t = lib.nm_strtab_create(ffi.NULL)
    shared = [("k%d" % i).encode() * (1 + i % 5) for i in range(3000)]
    def worker(seed):
        r = random.Random(seed); held = []
        for it in range(40000):
            if r.random() < 0.5:
                k = r.choice(shared) if r.random() < 0.7 else ("u%d_%d" % (seed, it)).encode()
                p = lib.nm_strtab_intern(t, k, len(k))
                if ffi.buffer(p, len(k))[:] != k:
                    FAILS.append("content")
                held.append((k, p))
            elif held:
                k, p = held.pop(r.randrange(len(held)))
                q = lib.nm_strtab_intern(t, k, len(k))
                if q != p:
                    FAILS.append(f"{k!r} moved")
                lib.nm_strtab_release(t, q)
                if lib.nm_strtab_release(t, p):
                    FAILS.append("release")
        for k, p in held:
            lib.nm_strtab_release(t, p)
    ts = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    [x.start() for x in ts]; [x.join() for x in ts]
    check(f"count {lib.nm_strtab_count(t)}", lib.nm_strtab_count(t) == 0)
    st = nativemem.StringTable()
    stop = []
    def churn(i):
        n = 0
        while not stop:
            h = st.intern("s%d-%d" % (i, n % 500)); h2 = st.intern(b"shared%d" % (n % 50))
            h.release(); h2.release(); n += 1
    ts = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    [x.start() for x in ts]
    for k in range(10):
        pid = os.fork()
        if pid == 0:
            h = st.intern("child"); ok = st.refcount("child") == 1 and "child" in st
            h.release(); h = st.intern("shared1"); h.release()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        check(f"child {status}", status == 0)
    stop.append(1)
    [x.join() for x in ts]
    check(f"len {len(st)}", len(st) == 0)
    done()
    ''')


@needs_cc
@needs_checkout
@linux_only
def test_strtab_crafted_bucket_collisions(tmp_path):
    """Keys crafted with strtab.c's own hash (the program includes it) to share a shard and a home
    bucket, a third of them a tag as well: 150000 rounds of intern/release that empty and refill
    the buckets; every held string stays findable with its count (overflow counts stay right)."""
    exe = _build(tmp_path, "strtab_collide.c", "strtab_collide", exclude=("strtab.c",))
    r = _run_exe([exe, "150000"], timeout=120)
    assert r.returncode == 0 and "bad 0" in r.stdout, r.stdout + r.stderr[-3000:]
