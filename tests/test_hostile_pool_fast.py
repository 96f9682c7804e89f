"""Hostile tests of the pool's rewritten fast paths (csrc/pool.c): nm_pool_alloc / nm_pool_free
handling the common case in the entry point (the thread's last pool, its hot object, the object
it allocated last, the unchecked cache), alloc_many / free_many popping and pushing a chunk's free
list with its head in a local (nm__alloc_run, nm__run_t and free_many's inline check of the run
chunk), and nm__zero's overlapping stores.

Each Python case runs in a fresh process with a timeout (a crash or a hang fails the case with the
child's output); the C cases build a program from tests/c/hostile3/ against csrc/ with
AddressSanitizer or ThreadSanitizer.  A case asserts the correct behaviour: it fails while the bug
it targets exists.
"""
from __future__ import annotations

import os
import textwrap

import pytest
from hostile_child import build_c, linux_only, needs_cc, needs_checkout, prelude, run_exe
from hostile_child import run_child as _run_child_with

HOSTILE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "hostile3")

PRELUDE = prelude(r'''
def run_thread(f):
    t = threading.Thread(target=f)
    t.start()
    t.join()
''')


def run_child(code: str, timeout: float = 60, args=()) -> str:
    return _run_child_with(PRELUDE, code, timeout, args)


# ==== bug: free_many's inline check of the run chunk has no slot bound ====================
#
# nm_pool_free_many (csrc/pool.c) frees "an object of the run's chunk" inline when
#     bits != NULL && fast && off < span && (off & tzmask) == 0 && nm__bit_get(bits, idx) && ...
# with idx = (off >> stride_tz) * stride_inv.  That is an exact division only when off is a
# multiple of the stride; nm__slot_index and nm__alloc_run reject the rest with `idx < nobj`, which
# this test lacks.  With a stride that is not a power of two (24 = 8 x 3, 48 = 16 x 3, 192 = 64 x 3)
# a pointer inside an object at a multiple of 2^stride_tz gives idx ~ 2^63, and nm__bit_get reads
# (and nm__bit_put would write) alloc_bits[idx / 64]: SIGSEGV instead of NM_ERR_INVALID_FREE.
# nm_pool_free of the same pointer is refused correctly.


def test_free_many_interior_pointer_of_the_run_chunk_is_refused():
    """free_many([a, b + align, c]) with a, b, c objects of one chunk: pointer 1 must be refused
    (NM_ERR_INVALID_FREE, 'pointer 1 of 3'), a and c freed, b still live.  The bug: SIGSEGV."""
    run_child(r'''
    for flags in (lib.NM_POOL_CHECKED, 0, lib.NM_POOL_ZERO):   # checked mode takes nm__free: fine
        for size, align in ((64, 64), (100, 64), (24, 8), (48, 16), (150, 64)):
            stride = -(-size // align) * align
            for off in range(align, stride, align):
                p = lib.nm_pool_create_ex(ffi.NULL, size, 16, align, flags | lib.NM_POOL_QUIET)
                a, b, c = (lib.nm_pool_alloc(p) for _ in range(3))
                tag = f"flags {flags} size {size} align {align}: free_many([a, b + {off}, c])"
                print(tag, flush=True)
                rc = lib.nm_pool_free_many(p, [a, ffi.cast("char *", b) + off, c], 3)
                check(f"{tag} -> {rc} {err()!r}", rc == lib.NM_ERR_INVALID_FREE and "pointer 1 of 3" in err())
                check(f"{tag}: b no longer live", lib.nm_pool_owns(p, b) == 1)
                check(f"{tag}: a or c still live", lib.nm_pool_owns(p, a) == 0 and lib.nm_pool_owns(p, c) == 0)
                check(f"{tag}: free b", lib.nm_pool_free(p, b) == 0)
                st = ffi.new("nm_pool_stats_t *")
                lib.nm_pool_stats(p, st)
                check(f"{tag}: stats {st.live} {st.frees}", (st.live, st.frees) == (0, 3))
                lib.nm_pool_destroy(p)
    done()
    ''')


def test_python_pool_free_many_interior_pointer_raises():
    """The Python face: Pool(150) has a 192-byte stride (64 x 3); free_many([a, b + 64]) must raise
    InvalidFreeError and leave b live.  The bug: the interpreter dies with SIGSEGV."""
    run_child(r'''
    pool = nativemem.Pool(150)
    a, b = pool.alloc(), pool.alloc()
    print("free_many([a, b + 64])", flush=True)
    try:
        pool.free_many([a, b + 64])
        check("no exception", False)
    except nativemem.InvalidFreeError as e:
        check(f"message {e}", "pointer 1 of 2" in str(e))
    check("b still live", pool.owns(b))
    pool.free(b)
    check(f"stats {pool.stats()}", pool.stats().live == 0)
    pool.close()
    done()
    ''')


@needs_cc
@needs_checkout
def test_free_many_interior_pointer_under_asan(tmp_path):
    """The same in C under AddressSanitizer (strides 24, 48, 192, 320; every aligned interior
    offset; default, zeroing and checked modes).  The bug: 'SEGV on unknown address' in
    nm__bit_get called from nm_pool_free_many."""
    exe = build_c(tmp_path, HOSTILE_C, "pool_free_many_interior.c", "interior", extra=("-fsanitize=address",))
    r = run_exe([exe], timeout=60)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), (r.stdout[-2000:], r.stderr[-4000:])


# ==== what held up (regression tests) =====================================================


def test_stale_last_object_after_batches_and_remote_frees():
    """The object a thread allocated last (tc->last_obj) freed by the other paths, which leave the
    field set: freed inside a batch by free_many's inline check, then freed singly (a double free:
    the entry point's shortcut must see its allocation bit clear); taken back by alloc_many (live
    again), freed singly, then once more; freed by another thread (remote bit), then by the owner.
    Each double free reported, and afterwards no object handed out twice."""
    run_child(r'''
    for flags in (0, lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED):
        p = lib.nm_pool_create(ffi.NULL, 64, 16, flags | lib.NM_POOL_QUIET)
        y, x = lib.nm_pool_alloc(p), lib.nm_pool_alloc(p)        # last_obj = x, no hot object
        check(f"{flags}: batch", lib.nm_pool_free_many(p, [y, x], 2) == 0)   # x by the inline check
        rc = lib.nm_pool_free(p, x)
        check(f"{flags}: free of x after a batch freed it -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        rc = lib.nm_pool_free_many(p, [x], 1)
        check(f"{flags}: batch free of x after a batch freed it -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        got = [A(lib.nm_pool_alloc(p)) for _ in range(3)]
        out = ffi.new("void *[40]")
        check(f"{flags}: alloc_many", lib.nm_pool_alloc_many(p, out, 40) == 40)
        got += [A(out[i]) for i in range(40)]
        check(f"{flags}: an object handed out twice {len(set(got))} of {len(got)}", len(set(got)) == len(got))
        lib.nm_pool_free_many(p, [P(a) for a in got], len(got))
        # x stale in last_obj, on the free list; alloc_many takes it back (live again)
        y, x = lib.nm_pool_alloc(p), lib.nm_pool_alloc(p)
        lib.nm_pool_free_many(p, [y, x], 2)
        lib.nm_pool_alloc_many(p, out, 2)
        check(f"{flags}: alloc_many took x back", A(x) in (A(out[0]), A(out[1])))
        rc = lib.nm_pool_free(p, x)
        check(f"{flags}: free of x taken back by a batch -> {rc} {err()}", rc == 0)
        rc = lib.nm_pool_free(p, x)
        check(f"{flags}: its second free -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        other = out[0] if A(out[1]) == A(x) else out[1]
        check(f"{flags}: free other", lib.nm_pool_free(p, other) == 0)
        a, b = lib.nm_pool_alloc(p), lib.nm_pool_alloc(p)
        check(f"{flags}: the same object twice after the double free", A(a) != A(b))
        lib.nm_pool_free(p, b); lib.nm_pool_free(p, a)
        # the last object freed by another thread, then by its owner
        x = lib.nm_pool_alloc(p)
        rcs = []
        run_thread(lambda: rcs.append(lib.nm_pool_free(p, x)))
        check(f"{flags}: remote free {rcs}", rcs == [0])
        rc = lib.nm_pool_free(p, x)
        check(f"{flags}: owner's free after the remote one -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        got = [A(lib.nm_pool_alloc(p)) for _ in range(200)]
        check(f"{flags}: an object handed out twice after remote + owner frees", len(set(got)) == len(got))
        lib.nm_pool_free_many(p, [P(a) for a in got], len(got))
        st = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(p, st)
        check(f"{flags}: stats {st.allocations} {st.frees} {st.live}", st.live == 0 and st.allocations == st.frees)
        lib.nm_pool_destroy(p)
    done()
    ''')


MODEL = r'''
def pat(a, n):
    return (a.to_bytes(8, "little") * ((n + 7) // 8 + 1))[3:3 + n]

def model(size, align, per, flags, seed, steps):
    """Two pools of one shape used alternately by one thread against a Python model: single and
    batch allocations and frees in random order, batches with duplicates, freed objects, NULL,
    interior pointers, the other pool's objects; every handed-out object is new (in neither
    pool's live set), zeroed (NM_POOL_ZERO) and keeps its contents while live; frees return the
    model's code; statistics, owns, live_objects and check agree with the model."""
    rng = random.Random(seed)
    strict = not (flags & lib.NM_POOL_UNCHECKED)   # unchecked pools: valid operations only
    pools = []
    for _ in range(2):
        p = lib.nm_pool_create_ex(ffi.NULL, size, per, align, flags | lib.NM_POOL_QUIET)
        stride = -(-max(size, 8) // align) * align
        pools.append(dict(p=p, live=set(), freed=set(), allocs=0, frees=0, peak=0, stride=stride))
    def new_obj(M, a, tag):
        check(f"{tag}: {a:#x} handed out while live", all(a not in Q["live"] for Q in pools))
        if flags & lib.NM_POOL_ZERO:
            check(f"{tag}: {a:#x} not zeroed", bytes(ffi.buffer(P(a), size)) == b"\0" * size)
        ffi.memmove(P(a), pat(a, size), size)
        M["live"].add(a); M["freed"].discard(a); M["allocs"] += 1; M["last"] = a
        M["peak"] = max(M["peak"], len(M["live"]))
    for step in range(steps):
        M = rng.choice(pools); O = pools[1] if M is pools[0] else pools[0]
        p, live = M["p"], M["live"]
        op = rng.random()
        tag = f"{size}/{align}/{per}/{flags} seed {seed} step {step}"
        if op < 0.25:
            x = lib.nm_pool_alloc(p)
            check(f"{tag}: alloc NULL {err()}", x != ffi.NULL)
            if x != ffi.NULL:
                new_obj(M, A(x), tag + " alloc")
        elif op < 0.35:
            k = rng.randrange(1, 40)
            out = ffi.new("void *[]", k)
            got = lib.nm_pool_alloc_many(p, out, k)
            check(f"{tag}: alloc_many {got} of {k} {err()}", got == k)
            for i in range(got):
                new_obj(M, A(out[i]), tag + " alloc_many")
        elif op < 0.6 and live:
            a = rng.choice(sorted(live))
            check(f"{tag}: contents of {a:#x} changed", bytes(ffi.buffer(P(a), size)) == pat(a, size))
            rc = lib.nm_pool_free(p, P(a))
            check(f"{tag}: free of a live object -> {rc} {err()}", rc == 0)
            live.discard(a); M["freed"].add(a); M["frees"] += 1
        elif op < 0.8:
            items, avail = [], set(live)
            for _ in range(rng.randrange(0, 40)):
                r = rng.random()
                if r < 0.7 and avail:
                    a = rng.choice(sorted(avail)); avail.discard(a); items.append(a)
                elif not strict:
                    continue
                elif r < 0.78 and items:
                    items.append(rng.choice(items))                     # duplicate
                elif r < 0.84 and M["freed"]:
                    items.append(rng.choice(sorted(M["freed"])))        # freed before
                elif r < 0.88:
                    items.append(0)                                     # NULL
                elif r < 0.94 and live:
                    # interior pointers, but not at a multiple of 2^stride_tz of a stride that is not
                    # a power of two: that is the bug above (a crash), tested on its own
                    s = M["stride"]; tzm = (s & -s) - 1
                    offs = [o for o in (1, 8, 16, s // 2) if 0 < o < s and (s & (s - 1) == 0 or o & tzm)]
                    if offs:
                        items.append(rng.choice(sorted(live)) + rng.choice(offs))
                elif O["live"]:
                    items.append(rng.choice(sorted(O["live"])))         # the other pool's
            want, left = 0, set(live)
            for i, a in enumerate(items):
                if a in left:
                    left.discard(a); e = 0
                elif a in live or a in M["freed"]:
                    e = lib.NM_ERR_DOUBLE_FREE
                else:
                    e = lib.NM_ERR_INVALID_FREE
                if e and not want:
                    want = e
            for a in live - left:
                check(f"{tag}: contents of {a:#x} changed (batch)", bytes(ffi.buffer(P(a), size)) == pat(a, size))
            arr = ffi.new("void *[]", [P(a) for a in items] or [ffi.NULL])
            rc = lib.nm_pool_free_many(p, arr, len(items))
            check(f"{tag}: free_many of {len(items)} -> {rc} (want {want}) {err() if rc else ''}", rc == want)
            for a in live - left:
                M["freed"].add(a); M["frees"] += 1
            live.intersection_update(left)
        elif not strict:
            continue
        elif op < 0.88 and M["freed"]:
            # often the object allocated last (the entry point's shortcut), freed by a batch
            a = M["last"] if M.get("last") in M["freed"] and rng.random() < 0.5 else rng.choice(sorted(M["freed"]))
            rc = lib.nm_pool_free(p, P(a))
            check(f"{tag}: double free -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        elif op < 0.92 and O["live"]:
            rc = lib.nm_pool_free(p, P(rng.choice(sorted(O["live"]))))
            check(f"{tag}: free of the other pool's object -> {rc}", rc == lib.NM_ERR_INVALID_FREE)
        elif op < 0.96:
            for a in sorted(live)[:6]:
                check(f"{tag}: owns(live)", lib.nm_pool_owns(p, P(a)) == 1)
            for a in sorted(M["freed"])[:6]:
                check(f"{tag}: owns(freed)", lib.nm_pool_owns(p, P(a)) == 0)
        else:
            st = ffi.new("nm_pool_stats_t *")
            lib.nm_pool_stats(p, st)
            got = (st.allocations, st.frees, st.live, st.peak)
            check(f"{tag}: stats {got} want {(M['allocs'], M['frees'], len(live), M['peak'])}",
                  got == (M["allocs"], M["frees"], len(live), M["peak"]))
            check(f"{tag}: live_objects", lib.nm_pool_live_objects(p, ffi.NULL, 0) == len(live))
            check(f"{tag}: check {err()}", lib.nm_pool_check(p) == 0)
        if len(FAILS) > 20:
            break
    for M in pools:
        st = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(M["p"], st)
        check(f"{size}/{align}/{flags} seed {seed}: final stats {st.allocations} {st.frees} {st.live}",
              (st.allocations, st.frees, st.live) == (M["allocs"], M["frees"], len(M["live"])))
        lib.nm_pool_destroy(M["p"])
'''


@pytest.mark.parametrize("seed", [1, 2])
def test_model_random_single_and_batch_two_pools(seed):
    run_child(MODEL + textwrap.dedent(r'''
    seed = int(sys.argv[1])
    for size, align, per, flags in ((1, 8, 16, 0), (8, 8, 8, 0), (17, 8, 16, lib.NM_POOL_ZERO), (24, 8, 32, 0),
                                    (48, 16, 16, lib.NM_POOL_ZERO), (64, 64, 8, 0), (100, 64, 4, 0),
                                    (150, 64, 8, lib.NM_POOL_ZERO), (33, 16, 16, lib.NM_POOL_CHECKED),
                                    (64, 64, 8, lib.NM_POOL_CHECKED | lib.NM_POOL_ZERO),
                                    (40, 8, 8, lib.NM_POOL_UNCHECKED), (24, 8, 8, lib.NM_POOL_UNCHECKED | lib.NM_POOL_ZERO)):
        model(size, align, per, flags, seed, 2500)
    done()
    '''), args=(seed,))


def test_cross_thread_double_frees_hot_object_and_mixed_batches():
    """thread 1 allocates, thread 2 frees (singly or in a batch), thread 1 frees again: a double
    free, singly and in a batch; the thread's hot object freed by another thread; a batch from
    another thread mixing remote objects, its own, a duplicate, NULL, an interior pointer and a
    foreign address; threads exiting with a hot object, then another allocating.  Statistics
    exact when quiescent."""
    run_child(r'''
    for flags in (0, lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED):
        p = lib.nm_pool_create(ffi.NULL, 64, 16, flags | lib.NM_POOL_QUIET)
        out = []
        x = lib.nm_pool_alloc(p)
        run_thread(lambda: out.append(lib.nm_pool_free(p, x)))
        check(f"{flags}: remote free {out}", out == [0])
        rc = lib.nm_pool_free(p, x)
        check(f"{flags}: owner frees again after a remote free -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        y = lib.nm_pool_alloc(p)
        run_thread(lambda: out.append(lib.nm_pool_free_many(p, [y], 1)))
        rc = lib.nm_pool_free_many(p, [y], 1)
        check(f"{flags}: owner batch-frees again after a remote batch free -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        rc = lib.nm_pool_free(p, y)
        check(f"{flags}: owner frees again after a remote batch free -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        z = lib.nm_pool_alloc(p)
        lib.nm_pool_free(p, z)                     # z: the main thread's hot object
        run_thread(lambda: out.append(lib.nm_pool_free(p, z)))
        check(f"{flags}: another thread frees the hot object -> {out[-1]}", out[-1] == lib.NM_ERR_DOUBLE_FREE)
        run_thread(lambda: out.append(lib.nm_pool_free_many(p, [z], 1)))
        check(f"{flags}: another thread batch-frees the hot object -> {out[-1]}", out[-1] == lib.NM_ERR_DOUBLE_FREE)
        z2, z3 = lib.nm_pool_alloc(p), lib.nm_pool_alloc(p)
        check(f"{flags}: the hot object handed out twice", A(z2) != A(z3))
        lib.nm_pool_free(p, z2); lib.nm_pool_free(p, z3)
        objs = [lib.nm_pool_alloc(p) for _ in range(40)]
        def other():
            mine = [lib.nm_pool_alloc(p) for _ in range(10)]
            batch = objs[:20] + mine + [objs[0], ffi.NULL, ffi.cast("char *", objs[21]) + 32, P(0x1234560)]
            out.append(lib.nm_pool_free_many(p, batch, len(batch)))
            out.append(err())
        run_thread(other)
        check(f"{flags}: mixed batch -> {out[-2:]}", out[-2] == lib.NM_ERR_DOUBLE_FREE and "pointer 30 of 34" in out[-1])
        for o in objs[:20]:
            rc = lib.nm_pool_free(p, o)
            check(f"{flags}: owner frees an object another thread freed in a batch -> {rc}", rc == lib.NM_ERR_DOUBLE_FREE)
        rc = lib.nm_pool_free_many(p, objs[20:], 20)
        check(f"{flags}: the rest -> {rc} {err()}", rc == 0)
        st = ffi.new("nm_pool_stats_t *")
        lib.nm_pool_stats(p, st)
        check(f"{flags}: stats {st.allocations} {st.frees} {st.live}",
              (st.allocations, st.frees, st.live) == (55, 55, 0))
        def exit_hot():
            a = lib.nm_pool_alloc(p); lib.nm_pool_free(p, a)
        for _ in range(5):
            run_thread(exit_hot)
        seen = set()
        def take():
            arr = ffi.new("void *[200]")
            n = lib.nm_pool_alloc_many(p, arr, 200)
            seen.update(A(arr[i]) for i in range(n))
            check(f"{flags}: duplicates after threads exited with a hot object ({len(seen)} of {n})", len(seen) == n == 200)
            single = lib.nm_pool_alloc(p)
            check(f"{flags}: a single allocation repeats a batch's", A(single) not in seen)
            lib.nm_pool_free(p, single)
            lib.nm_pool_free_many(p, arr, n)
        run_thread(take)
        lib.nm_pool_stats(p, st)
        check(f"{flags}: stats at the end {st.allocations} {st.frees} {st.live}", st.live == 0 and st.allocations == st.frees)
        check(f"{flags}: check {err()}", lib.nm_pool_check(p) == 0)
        lib.nm_pool_destroy(p)
    # a pool destroyed with a hot object and a new one at (likely) the same address: the thread's
    # last pool must not be taken for the new one; the old pool's address is foreign to the new
    for flags in (0, lib.NM_POOL_ZERO):
        for it in range(200):
            a = lib.nm_pool_create(ffi.NULL, 64, 16, flags | lib.NM_POOL_QUIET)
            x = lib.nm_pool_alloc(a); lib.nm_pool_free(a, x)
            lib.nm_pool_destroy(a)
            b = lib.nm_pool_create(ffi.NULL, 64, 16, flags | lib.NM_POOL_QUIET)
            y = lib.nm_pool_alloc(b)
            check(f"new pool's object not its own", lib.nm_pool_owns(b, y) == 1)
            if A(x) != A(y):   # the same slot of a chunk at the same address is the new pool's
                rc = lib.nm_pool_free(b, x)
                check(f"free of the destroyed pool's object into the new pool -> {rc}", rc != 0)
            check(f"free y: {err()}", lib.nm_pool_free(b, y) == 0)
            lib.nm_pool_destroy(b)
    done()
    ''')


@linux_only
def test_fork_with_hot_objects_in_two_threads():
    """Two threads each hold live objects and a hot object (one also a batch's leftovers); fork:
    the child allocates singly and in batches -- never a parent's live object, never one twice --
    frees everything, and its statistics are exact."""
    run_child(r'''
    for flags in (0, lib.NM_POOL_ZERO, lib.NM_POOL_CHECKED):
        p = lib.nm_pool_create(ffi.NULL, 48, 16, flags | lib.NM_POOL_QUIET)
        live = set()
        go, ready = threading.Event(), threading.Event()
        def holder():
            objs = [lib.nm_pool_alloc(p) for _ in range(10)]
            lib.nm_pool_free(p, objs.pop())
            arr = ffi.new("void *[3]")
            lib.nm_pool_alloc_many(p, arr, 3)
            lib.nm_pool_free_many(p, arr, 2)
            objs.append(arr[2])
            live.update(A(o) for o in objs)
            ready.set(); go.wait()
            lib.nm_pool_free_many(p, objs, len(objs))
        th = threading.Thread(target=holder); th.start(); ready.wait()
        mine = [lib.nm_pool_alloc(p) for _ in range(10)]
        lib.nm_pool_free(p, mine.pop())
        live.update(A(o) for o in mine)
        pid = os.fork()
        if pid == 0:
            bad = []
            for r in range(3):
                arr = ffi.new("void *[300]")
                n = lib.nm_pool_alloc_many(p, arr, 300)
                s = [lib.nm_pool_alloc(p) for _ in range(20)]
                got = [A(arr[i]) for i in range(n)] + [A(x) for x in s]
                if len(set(got)) != len(got): bad.append("an object handed out twice in the child")
                if set(got) & live: bad.append(f"the child was handed {len(set(got) & live)} live object(s)")
                for x in s: lib.nm_pool_free(p, x)
                lib.nm_pool_free_many(p, arr, n)
            st = ffi.new("nm_pool_stats_t *")
            lib.nm_pool_stats(p, st)
            if st.live != len(live): bad.append(f"child live {st.live}, want {len(live)}")
            for a in live:
                if lib.nm_pool_free(p, P(a)) != 0: bad.append("free of a parent's object in the child: " + err())
            lib.nm_pool_stats(p, st)
            if st.live != 0: bad.append(f"child live at the end {st.live}")
            if lib.nm_pool_check(p) != 0: bad.append("check: " + err())
            sys.stderr.write("\n".join(bad) + "\n")
            os._exit(1 if bad else 0)
        _, status = os.waitpid(pid, 0)
        check(f"flags {flags}: child exit status {status:#x}", status == 0)
        go.set(); th.join()
        for o in mine: lib.nm_pool_free(p, o)
        lib.nm_pool_destroy(p)
    done()
    ''')


def test_zeroing_every_size_alignment_and_path():
    """NM_POOL_ZERO for sizes 1..300 (alignments 8, 16) and a selection at 64 and 4096, plain,
    unchecked and checked: fresh, hot, list-popped and batch-popped objects are zero over the
    whole object, while neighbours keep their contents and the padding past the link word is
    never written."""
    run_child(r'''
    cases = [(n, a) for a in (8, 16) for n in range(1, 301)]
    cases += [(n, a) for a in (64, 4096) for n in (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 100, 255, 256, 257, 300)]
    for n, align in cases:
        for extra in (0, lib.NM_POOL_UNCHECKED, lib.NM_POOL_CHECKED):
            tag = f"size {n} align {align} flags {extra}"
            p = lib.nm_pool_create_ex(ffi.NULL, n, 8, align, lib.NM_POOL_ZERO | lib.NM_POOL_QUIET | extra)
            stride = -(-max(n, 8) // align) * align
            K = 8
            objs = ffi.new("void *[]", K)
            check(f"{tag}: alloc_many", lib.nm_pool_alloc_many(p, objs, K) == K)
            pad = max(n, 8)
            def fill(x, i):
                ffi.memmove(x, bytes([0x11 + i]) * n, n)
            for i in range(K):
                check(f"{tag}: fresh object not zero", bytes(ffi.buffer(objs[i], n)) == b"\0" * n)
                fill(objs[i], i)
                if stride > pad:
                    ffi.memmove(ffi.cast("char *", objs[i]) + pad, b"\xee" * (stride - pad), stride - pad)
            index = {A(objs[i]): i for i in range(K)}
            def verify(what):
                for i in range(K):
                    check(f"{tag} {what}: object {i} changed", bytes(ffi.buffer(objs[i], n)) == bytes([0x11 + i]) * n)
                    if stride > pad:
                        check(f"{tag} {what}: padding of {i} written",
                              bytes(ffi.buffer(ffi.cast("char *", objs[i]) + pad, stride - pad)) == b"\xee" * (stride - pad))
            for which in ([3], [2, 5]):   # the hot object, then the hot object and a list pop
                for i in which:
                    lib.nm_pool_free(p, objs[i])
                for _ in which:
                    x = lib.nm_pool_alloc(p)
                    check(f"{tag}: single not zero", bytes(ffi.buffer(x, n)) == b"\0" * n)
                    check(f"{tag}: single from elsewhere", A(x) in index)
                    if A(x) in index: fill(x, index[A(x)])
                verify(f"singles {which}")
            lib.nm_pool_free_many(p, [objs[1], objs[4], objs[6]], 3)
            out = ffi.new("void *[3]")
            check(f"{tag}: alloc_many 3", lib.nm_pool_alloc_many(p, out, 3) == 3)
            for x in out:
                check(f"{tag}: batch not zero", bytes(ffi.buffer(x, n)) == b"\0" * n)
                if A(x) in index: fill(x, index[A(x)])
            verify("batch")
            lib.nm_pool_free_many(p, objs, K)
            lib.nm_pool_destroy(p)
            if len(FAILS) > 30: done()
    done()
    ''')


def test_alloc_many_forged_links_report_corrupt():
    """A write after free that forges a free-list link (the secret recovered from a freed object's
    link): to itself, to the chunk header, inside an object, to an allocated object, to the chunk's
    last bytes, or random bytes.  alloc_many (the run, then nm__alloc) must report NM_ERR_CORRUPT,
    never hand out a live object or one object twice, never hang or crash."""
    run_child(r'''
    for mode in ("self", "header", "interior", "allocated", "chunk end", "garbage"):
        for flags in (0, lib.NM_POOL_ZERO):
            p = lib.nm_pool_create(ffi.NULL, 64, 16, flags | lib.NM_POOL_QUIET)
            check("layout assumed: 62 objects after a 128-byte header in 4096", lib.nm_pool_objects_per_chunk(p) == 62)
            a, b, c = (lib.nm_pool_alloc(p) for _ in range(3))
            chunk = A(a) - 128
            lib.nm_pool_free_many(p, [a, b], 2)             # list: b -> a -> NULL
            secret = int.from_bytes(ffi.buffer(a, 8), "little") ^ A(a)
            nxt = {"self": A(b), "header": chunk + 8, "interior": A(a) + 8, "allocated": A(c),
                   "chunk end": chunk + 4096 - 4, "garbage": None}[mode]
            link = os.urandom(8) if nxt is None else (nxt ^ secret ^ A(b)).to_bytes(8, "little")
            ffi.memmove(b, link, 8)
            handed = []
            for rnd in range(3):
                out = ffi.new("void *[8]")
                n = lib.nm_pool_alloc_many(p, out, 8)
                got = [A(out[i]) for i in range(n)]
                if rnd == 0:
                    check(f"{mode}/{flags}: first call got {n} {err()!r}", n < 8 and "corrupt" in err())
                check(f"{mode}/{flags}: a live object handed out", A(c) not in got)
                handed += got
                for i in range(n):
                    ffi.memmove(out[i], b"\x5a" * 64, 64)   # the user writes what it gets
            check(f"{mode}/{flags}: an object handed out twice", len(set(handed)) == len(handed))
            lib.nm_pool_destroy(p)
    done()
    ''')


@pytest.fixture(scope="module")
def mt_asan_exe(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("mt_asan"), HOSTILE_C, "pool_fast_mt.c", "mt_asan",
                   extra=("-fsanitize=address",))


@needs_cc
@needs_checkout
@linux_only
@pytest.mark.parametrize("flags,size,align", [(0, 48, 16), (0, 24, 8), (1, 8, 8), (2, 33, 16), (16, 24, 8)],
                         ids=["default-48", "default-24", "zero-8", "checked-33", "unchecked-24"])
def test_threads_stress_asan(mt_asan_exe, flags, size, align):
    """tests/c/hostile3/pool_fast_mt.c under ASan: four threads, every entry point, hand-overs
    (remote frees singly and inside batches), immediate double frees of their own objects, exits
    with a hot object, two rounds (caches reused); stamps must survive, statistics be exact, and
    afterwards one thread must get every slot of every chunk with no new chunk."""
    r = run_exe([mt_asan_exe, str(flags), str(size), str(align), "4", "60000", "7"], timeout=120)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("OK"), (r.stdout[-2000:], r.stderr[-4000:])


@needs_cc
@needs_checkout
@linux_only
def test_threads_stress_tsan(tmp_path):
    """The same under ThreadSanitizer, the unchecked mode included (its unlocked peek at the shared
    list, pool->ushared in nm__ualloc_slow, was a plain read racing the locked writes)."""
    exe = build_c(tmp_path, HOSTILE_C, "pool_fast_mt.c", "mt_tsan", extra=("-fsanitize=thread",))
    for flags, size, align in ((0, 48, 16), (1, 48, 16), (16, 24, 8)):
        r = run_exe([exe, str(flags), str(size), str(align), "4", "10000", "3"], timeout=120)
        assert r.returncode == 0 and r.stdout.rstrip().endswith("OK") and "WARNING: ThreadSanitizer" not in r.stderr, \
            (flags, r.stdout[-2000:], r.stderr[-6000:])
