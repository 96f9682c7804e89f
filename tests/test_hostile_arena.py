"""Hostile tests of the bounded arena's caches (csrc/arena.c): the single-thread quick cache and the
striped per-thread caches of an `mt` arena.

Each case runs in a fresh process with a timeout (a crash or a hang fails the case with the
child's output); the C-level cases build a small program from tests/c/hostile/ against csrc/,
with and without sanitizers.  A case asserts the correct behaviour: it fails while the bug it
targets exists.
"""
from __future__ import annotations

import os

import pytest
from hostile_child import build_c, linux_only, needs_cc, needs_checkout, prelude, run_exe
from hostile_child import run_child as _run_child_with

HOSTILE_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "hostile")

PRELUDE = prelude(r'''
def mt(ar):
    assert lib.nm_arena_testing_mt(ar.cdata, 1) == 1
    return ar

def whole(ar, what):
    """Everything freed: the checks pass, the counts are 0 and the region is one free block."""
    t = ar.cdata
    check(f"{what}: nm_arena_check failed: {err()}", lib.nm_arena_check(t) == 0)
    s = ar.stats()
    check(f"{what}: live blocks {s.live_blocks} bytes {s.live_bytes} (want 0, 0)",
          s.live_blocks == 0 and s.live_bytes == 0)
    st = ar.arena_stats()
    check(f"{what}: free_blocks {st.free_blocks} largest {st.largest_free} capacity {st.capacity}",
          st.free_blocks == 1 and st.largest_free == st.capacity and st.used_blocks == 0)
''', quiet=False)


def run_child(code: str, timeout: float = 120, args=()) -> str:
    return _run_child_with(PRELUDE, code, timeout, args)


def _build(tmp_path, src, name, extra=(), exclude=()):
    return build_c(tmp_path, HOSTILE_C, src, name, extra, exclude)


_run_exe = run_exe


# ---- the bugs this file found (fixed in csrc/arena.c; kept as regression cases) -------------------

@needs_cc
@needs_checkout
@linux_only
def test_double_free_racing_a_cache_flush_is_detected(tmp_path):
    """A plain double free (free p; free p) while another thread walks the arena (nm_arena_stats
    empties every cache into the heap).  The bug: the drain cleared the block's cached bit before
    nm__free_locked set its free bit, so in between the lock-free free validated the block as live
    and its claim succeeded -- the double free returned 0 and the block was both on the heap's free
    lists and in a stripe.  Now a cached block turns free in one store.  A race: before the fix it
    showed in ~70% of 5000-round runs on 2 CPUs; these 1600 rounds keep CI's time (10-30 s)."""
    exe = _build(tmp_path, "arena_dfree_flush.c", "arena_dfree_flush")
    for _ in range(2):
        r = _run_exe([exe, "800"], timeout=240)
        assert r.returncode == 0 and "accepted 0" in r.stdout, r.stdout + r.stderr[-3000:]


def test_realloc_grows_into_a_cached_neighbour():
    """The block after the one being grown sits in a cache (freed, kept whole), and only merging it
    back gives room.  The bug (the quick cache had it before the stripes): the in-place test did
    not see a cached neighbour and the move path found no separate block -> NULL, though a
    cache-less arena grows in place.  Now a cached neighbour is merged back first."""
    run_child(r'''
    for use_mt in (0, 1):
        ar = nativemem.Arena(4096); t = ar.cdata
        if use_mt: mt(ar)
        cap = ar.arena_stats().capacity
        a = lib.nm_malloc(t, 100)              # 144-byte block
        b = lib.nm_malloc(t, 100)              # 144-byte block, right after a
        c = lib.nm_malloc(t, cap - 288 - 32)   # the rest: the arena is full
        assert ffi.NULL not in (a, b, c)
        ffi.memmove(a, b"x" * 100, 100)
        lib.nm_free(t, b)                      # b: into the quick cache / a stripe
        q = lib.nm_realloc(t, a, 240)          # needs 272 bytes: a + b
        check(f"mt={use_mt}: realloc into the cached neighbour failed: {err()}", q != ffi.NULL)
        lib.nm_clear_error()
        if q != ffi.NULL:
            check(f"mt={use_mt}: contents lost", ffi.buffer(q, 100)[:] == b"x" * 100)
            a = q
        lib.nm_free(t, a); lib.nm_free(t, c)
        whole(ar, f"mt={use_mt}")
    done()
    ''')


@pytest.mark.parametrize("use_mt", [0, 1])
@pytest.mark.parametrize("word", [0, 0x30, 1 << 28])
@pytest.mark.parametrize("then", ["check", "stats", "big_malloc"])
def test_header_size_word_overwrite_is_reported(use_mt, word, then):
    """Writing 8 bytes at payload - 24 (the size word) leaves the magic word intact.  The bug (also
    before the stripes): the free accepted the block with its bogus size -- cached it, or a huge
    size faulted in the merge, and nm_arena_stats's walk looped forever on size 0.  Now the free
    checks the size word against the boundary tags (NM_ERR_CORRUPT) and the walk stops on a
    damaged header: a specific error, never a hang or a crash."""
    run_child(rf'''
    ar = nativemem.Arena(1 << 16); t = ar.cdata
    if {use_mt}: mt(ar)
    ps = [lib.nm_malloc(t, 100) for _ in range(5)]
    p = ps[2]
    ffi.cast("size_t *", p)[-3] = {word}
    rc = lib.nm_free_checked(t, p)
    lib.nm_clear_error()
    if "{then}" == "check":
        rc2 = lib.nm_arena_check(t)
        check(f"free rc {{rc}} then check rc {{rc2}}: the damage went unreported", rc != 0 or rc2 != 0)
    elif "{then}" == "stats":
        st = ffi.new("nm_arena_stats_t *")
        rc2 = lib.nm_arena_stats(t, st)
        check(f"free rc {{rc}} then stats rc {{rc2}} used+free {{st.used_bytes + st.free_bytes}} cap {{st.capacity}}",
              rc != 0 or rc2 != 0 or st.used_bytes + st.free_bytes == st.capacity)
    else:
        q = lib.nm_malloc(t, 60000)
        check(f"free rc {{rc}}: a 60000-byte block was handed out over 4 live blocks",
              rc != 0 or q == ffi.NULL)
    done()
    ''', timeout=30)


# ---- regression cases (pass today) --------------------------------------------------------------

@needs_cc
@needs_checkout
@linux_only
def test_racing_double_free_with_a_full_stripe(tmp_path):
    """Same class of race as the flush case, on the stripe-full path (which also turns a claimed
    block free now in one store): thread B retries its free of the block from the moment A's free
    claimed it.  Exactly one may succeed."""
    exe = _build(tmp_path, "arena_dfree_race.c", "arena_dfree_race")
    r = _run_exe([exe, "4"], timeout=120)
    assert r.returncode == 0 and "both-succeeded 0" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_cc
@needs_checkout
@linux_only
@pytest.mark.parametrize("arena,env", [(4096, {"TUSE": "8", "HOLD": "2", "BIG": "700"}),
                                       (16384, {"TUSE": "16", "HOLD": "2", "BIG": "700"}),
                                       (65536, {"TUSE": "64", "HOLD": "3", "BIG": "2000"}),
                                       (1 << 20, {})])
def test_many_threads_hammer_one_arena(tmp_path, arena, env):
    """40 threads (stripes shared, 9 threads on the shared front-door slot) mixing malloc, calloc,
    realloc, memalign, usable_size, cross-thread frees, nm_arena_check and nm_arena_stats; tiny
    arenas so that searches fail and flushes run under the other threads.  Every block is stamped
    over its payload (a block handed out twice shows), and at the end the arena is whole."""
    exe = _build(tmp_path, "arena_mt_stress.c", "arena_mt_stress")
    r = _run_exe([exe, str(arena), "40", "20000"], timeout=240, env=env)
    assert r.returncode == 0 and "failures=0" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_cc
@needs_checkout
@linux_only
def test_many_threads_hammer_one_arena_asan(tmp_path):
    exe = _build(tmp_path, "arena_mt_stress.c", "arena_mt_stress_asan",
                 extra=("-fsanitize=address,undefined", "-fno-omit-frame-pointer"))
    env = {"ASAN_OPTIONS": "detect_leaks=0", "TUSE": "16", "HOLD": "2", "BIG": "700"}
    r = _run_exe([exe, "8192", "40", "5000"], timeout=300, env=env)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[:4000]
    assert r.returncode == 0 and "failures=0" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_cc
@needs_checkout
@linux_only
def test_many_threads_hammer_one_arena_tsan(tmp_path):
    exe = _build(tmp_path, "arena_mt_stress.c", "arena_mt_stress_tsan", extra=("-fsanitize=thread",))
    env = {"TSAN_OPTIONS": "halt_on_error=1", "TUSE": "16", "HOLD": "2", "BIG": "700"}
    for args in (["8192", "40", "2000"], ["1048576", "12", "4000"]):
        r = _run_exe([exe, *args], timeout=300, env=env)
        assert "ThreadSanitizer" not in r.stderr, r.stderr[:4000]
        assert r.returncode == 0 and "failures=0" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_cc
@needs_checkout
@linux_only
@pytest.mark.parametrize("asan", [False, True])
def test_destroy_deferred_to_a_free_into_a_stripe(tmp_path, asan):
    """The arena is destroyed while 40 threads hold blocks; they free each other's blocks into
    their stripes and the last free finishes the destroy; the region goes back to its base."""
    extra = ("-fsanitize=address", "-fno-omit-frame-pointer") if asan else ()
    exe = _build(tmp_path, "arena_destroy_stripes.c", "arena_destroy_stripes" + ("_asan" if asan else ""), extra)
    r = _run_exe([exe, "40" if asan else "100", "40"], timeout=300, env={"ASAN_OPTIONS": "detect_leaks=0"})
    assert "AddressSanitizer" not in r.stderr, r.stderr[:4000]
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


@linux_only
def test_fork_while_threads_hammer_an_mt_arena():
    """12 threads hammer a 64 KiB mt arena (and walk it); the main thread forks 60 times.  Each
    child must not hang, and must allocate, check, walk, free and get the largest free block."""
    run_child(r'''
    warnings.simplefilter("ignore", DeprecationWarning)
    ar = mt(nativemem.Arena(1 << 16)); t = ar.cdata
    stop = False
    def work(seed):
        rng = random.Random(seed); held = []
        while not stop:
            p = lib.nm_malloc(t, rng.randint(1, 480))
            if p != ffi.NULL: held.append(p)
            else: lib.nm_clear_error()
            if len(held) > 6 or (held and rng.random() < .5):
                lib.nm_free(t, held.pop(rng.randrange(len(held))))
            if rng.random() < .02: lib.nm_arena_check(t)
        for p in held: lib.nm_free(t, p)
    ths = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for th in ths: th.start()
    for i in range(60):
        pid = os.fork()
        if pid == 0:
            try:
                ps = [lib.nm_malloc(t, 100) for _ in range(50)]
                assert all(p != ffi.NULL for p in ps), "malloc failed in the child"
                assert lib.nm_arena_check(t) == 0, err()
                st = ffi.new("nm_arena_stats_t *"); assert lib.nm_arena_stats(t, st) == 0
                for p in ps: assert lib.nm_free_checked(t, p) == 0
                assert lib.nm_arena_check(t) == 0, err()
                assert lib.nm_arena_stats(t, st) == 0
                big = lib.nm_malloc(t, st.largest_free - 32); assert big != ffi.NULL, st.largest_free
                lib.nm_free(t, big)
                os._exit(0)
            except BaseException:
                import traceback; traceback.print_exc(); os._exit(1)
        deadline = time.time() + 20
        while True:
            r, status = os.waitpid(pid, os.WNOHANG)
            if r: break
            if time.time() > deadline:
                os.kill(pid, 9); os.waitpid(pid, 0); check(f"fork {i}: child hung", False); break
            time.sleep(0.005)
        if r: check(f"fork {i}: child exit status {status}", status == 0)
    stop = True
    for th in ths: th.join()
    whole(ar, "parent after the forks")
    done()
    ''', timeout=300)


def test_thread_churn_beyond_the_slots_leaves_stripes_consistent():
    """Waves of 40 short-lived threads (more than the 31 owned front-door slots, so exiting threads'
    slots are reused and some threads share the last one): each leaves blocks cached in its stripe
    and live blocks for the next wave to free; nothing is lost, nothing handed out twice."""
    run_child(r'''
    ar = mt(nativemem.Arena(1 << 16)); t = ar.cdata
    carry = []; lock = threading.Lock(); live = set(); bad = []
    def work(seed, inherited):
        rng = random.Random(seed)
        for p in inherited:
            with lock: live.discard(int(ffi.cast("uintptr_t", p)))
            if lib.nm_free_checked(t, p) != 0: bad.append(f"free of inherited block: {err()}")
        mine = []
        for _ in range(60):
            p = lib.nm_malloc(t, rng.randint(1, 480))
            if p == ffi.NULL: lib.nm_clear_error(); continue
            a = int(ffi.cast("uintptr_t", p))
            with lock:
                if a in live: bad.append(f"block {a:#x} handed out twice")
                live.add(a)
            mine.append(p)
            if rng.random() < .6:
                q = mine.pop(rng.randrange(len(mine)))
                with lock: live.discard(int(ffi.cast("uintptr_t", q)))
                lib.nm_free(t, q)
        with lock: carry.extend(mine[:3])
        for q in mine[3:]:
            with lock: live.discard(int(ffi.cast("uintptr_t", q)))
            lib.nm_free(t, q)
    for wave in range(15):
        with lock: inherited, carry[:] = list(carry), []
        ths = [threading.Thread(target=work, args=(wave * 100 + i, inherited[i::40])) for i in range(40)]
        for th in ths: th.start()
        for th in ths: th.join()
        check(f"wave {wave}: check failed: {err()}", lib.nm_arena_check(t) == 0)
        check(f"wave {wave}: live blocks {ar.stats().live_blocks} != {len(live)}", ar.stats().live_blocks == len(live))
    for p in carry: lib.nm_free(t, p)
    check("; ".join(bad[:5]), not bad)
    whole(ar, "after the waves")
    done()
    ''', timeout=300)


def test_bad_pointers_to_an_mt_arena_get_specific_errors():
    """Foreign, interior, unaligned and out-of-range pointers, pointers into cached blocks,
    double frees of cached, merged and heap-freed blocks, realloc/usable_size of cached blocks, a
    block of another arena: each gets its own error, never a crash, and the arena stays whole."""
    run_child(r'''
    for use_mt in (0, 1):
        ar = nativemem.Arena(1 << 16); t = ar.cdata
        if use_mt: mt(ar)
        other = nativemem.Arena(1 << 16)
        IF, DF = lib.NM_ERR_INVALID_FREE, lib.NM_ERR_DOUBLE_FREE
        def free_rc(p):
            rc = lib.nm_free_checked(t, p); lib.nm_clear_error(); return rc
        libc_block = lib.nm_malloc(lib.nm_allocator_libc(), 100)
        o = lib.nm_malloc(other.cdata, 100)
        p = lib.nm_malloc(t, 100); q = lib.nm_malloc(t, 100); big = lib.nm_malloc(t, 3000)
        cp = ffi.cast("char *", p)
        cases = [("libc block", libc_block, IF), ("other arena's block", o, IF),
                 ("interior +16", cp + 16, IF), ("interior +1", cp + 1, IF), ("interior +48", cp + 48, IF),
                 ("one before", cp - 16, IF), ("inside free space", ffi.cast("char *", big) + 4000, IF),
                 ("far away", ffi.cast("char *", 4096), IF)]
        for name, ptr, code in cases:
            rc = free_rc(ptr)
            check(f"mt={use_mt} {name}: rc {rc}, want {code}", rc == code)
            check(f"mt={use_mt} {name}: usable_size not 0", lib.nm_usable_size(t, ptr) == 0)
        check(f"mt={use_mt}: free p", free_rc(p) == 0)          # p: cached now
        for name, ptr, code in [("cached p again", p, DF), ("interior of cached p", cp + 16, IF)]:
            rc = free_rc(ptr)
            check(f"mt={use_mt} {name}: rc {rc}, want {code}", rc == code)
        r = lib.nm_realloc(t, p, 50)
        check(f"mt={use_mt}: realloc of cached block", r == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_REALLOC_FREED)
        lib.nm_clear_error()
        check(f"mt={use_mt}: usable_size of cached block", lib.nm_usable_size(t, p) == 0)
        check(f"mt={use_mt}: free big", free_rc(big) == 0)
        check(f"mt={use_mt}: big again", free_rc(big) == DF)
        lib.nm_arena_check(t)                                   # flush: p merged into the heap
        check(f"mt={use_mt}: p after flush", free_rc(p) == DF)
        check(f"mt={use_mt}: free q", free_rc(q) == 0)
        lib.nm_arena_check(t)                                   # q merged with p's space: stale header
        check(f"mt={use_mt}: q after merge", free_rc(q) == DF)
        whole(ar, f"mt={use_mt}")
        lib.nm_free(other.cdata, o); lib.nm_free(lib.nm_allocator_libc(), libc_block)
    done()
    ''')


def test_racing_double_frees_and_usable_size_across_many_threads():
    """16 threads race to free each of a batch of small blocks (most double frees): every block is
    freed exactly once, the rest are told DOUBLE_FREE (INVALID_FREE once the block was merged into its
    freed predecessor, as without the caches); usable_size races the frees."""
    run_child(r'''
    ar = mt(nativemem.Arena(1 << 20)); t = ar.cdata
    N = 16; bar = threading.Barrier(N); box = []; wins = [0] * N; other = [0] * N
    def racer(i):
        for rnd in range(60):
            bar.wait()
            for p in box:
                lib.nm_usable_size(t, p)
                rc = lib.nm_free_checked(t, p)
                if rc == 0: wins[i] += 1
                # a double free of a block merged into its freed predecessor (header gone): invalid
                elif rc not in (lib.NM_ERR_DOUBLE_FREE, lib.NM_ERR_INVALID_FREE): other[i] += 1
            lib.nm_clear_error()
            bar.wait()
            if i == 0:
                box[:] = [lib.nm_malloc(t, 16 + 16 * (k % 30)) for k in range(64)]
            bar.wait()
    box[:] = [lib.nm_malloc(t, 16 + 16 * (k % 30)) for k in range(64)]
    ths = [threading.Thread(target=racer, args=(i,)) for i in range(N)]
    for th in ths: th.start()
    for th in ths: th.join()
    for p in box: lib.nm_free(t, p)
    check(f"wins {sum(wins)} want {60 * 64}", sum(wins) == 60 * 64)
    check(f"unexpected codes {sum(other)}", sum(other) == 0)
    whole(ar, "after the races")
    done()
    ''', timeout=300)
