"""The debug allocator through the C API (cffi): the recycled block's poison and byte bound,
double-free sites, memalign messages, and errors found by frees that cannot return them (the
report hook, stderr, and the pending error nm_debug_check returns)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from nativemem._ffi import ffi, lib

# Sites outlive the blocks that record them (the allocator keeps the pointers).
VICTIM = ffi.new("char[]", b"victim.c")
FREER = ffi.new("char[]", b"freer.c")
MiB = 1 << 20


def last_message() -> str:
    return ffi.string(lib.nm_last_error_message()).decode()


def scribble(p, offset: int) -> None:
    """A write after free, or past an end: the debug allocator must find it."""
    ffi.cast("char *", p)[offset] = b"x"


def names_block(text: str, p, size: int) -> bool:
    """The report names the block's address, size, allocation site and free site."""
    addr = format(int(ffi.cast("uintptr_t", p)), "x")
    return (addr in text.lower() and f"{size} bytes" in text and "victim.c:7" in text
            and "freer.c:11" in text)


@pytest.fixture
def debug():
    """debug(quarantine=1, base=NULL): a debug allocator table, destroyed afterwards."""
    made = []

    def make(quarantine: int = 1, base=ffi.NULL):
        t = lib.nm_debug_create_ex(base, 0, quarantine)
        assert t != ffi.NULL
        made.append(t)
        return t

    yield make
    for t in made:
        lib.nm_allocator_destroy(t)
    lib.nm_clear_error()


@pytest.fixture
def reports():
    """The report hook, recording (allocator name, code, message); the previous one restored."""
    got = []

    @ffi.callback("nm_report_fn")
    def hook(name, code, message):
        got.append((ffi.string(name).decode(), code, ffi.string(message).decode()))

    previous = lib.nm_get_report_hook()
    lib.nm_set_report_hook(hook)
    try:
        yield got
    finally:
        lib.nm_set_report_hook(previous)
        lib.nm_clear_error()


@pytest.fixture
def counted_base():
    base = lib.nm_allocator_clone(lib.nm_allocator_libc(), b"counted libc")
    yield base
    lib.nm_allocator_destroy(base)


def base_live_blocks(base) -> int:
    st = ffi.new("nm_alloc_stats_t *")
    lib.nm_allocator_stats(base, st)
    return st.live_blocks


def recycled_victim(t):
    """A 48-byte block allocated at victim.c:7, freed at freer.c:11, now t's recycled block."""
    p = lib.nm_malloc_at(t, 48, VICTIM, 7)
    q = lib.nm_malloc(t, 48)
    assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
    assert lib.nm_free_checked(t, q) == lib.NM_OK  # p leaves the quarantine of one block
    return p


# ---- 1. the recycled block's poison --------------------------------------------------------------
def test_recycled_block_is_verified_when_handed_out_again(debug):
    t = debug()
    p = recycled_victim(t)
    scribble(p, 5)
    assert lib.nm_malloc(t, 48) == ffi.NULL
    assert lib.nm_last_error() == lib.NM_ERR_USE_AFTER_FREE
    assert names_block(last_message(), p, 48) and "offset 5" in last_message()
    q = lib.nm_malloc(t, 48)  # the damaged block went back to base; the allocator carries on
    assert q != ffi.NULL and lib.nm_free_checked(t, q) == lib.NM_OK
    assert lib.nm_debug_flush(t) == lib.NM_OK


def test_recycled_block_is_verified_when_flushed(debug):
    t = debug()
    p = recycled_victim(t)
    scribble(p, 47)
    assert lib.nm_debug_flush(t) == lib.NM_ERR_USE_AFTER_FREE
    assert names_block(last_message(), p, 48)


def test_recycled_block_is_verified_when_replaced(debug):
    t = debug()
    p = recycled_victim(t)
    scribble(p, 0)
    r = lib.nm_malloc(t, 100)
    assert lib.nm_free_checked(t, r) == lib.NM_ERR_USE_AFTER_FREE  # the last block out replaces p
    assert names_block(last_message(), p, 48)


def test_recycled_block_is_verified_when_destroyed(reports):
    t = lib.nm_debug_create_ex(ffi.NULL, 0, 1)
    p = recycled_victim(t)
    scribble(p, 20)
    lib.nm_clear_error()
    lib.nm_allocator_destroy(t)
    assert lib.nm_last_error() == lib.NM_ERR_USE_AFTER_FREE
    assert [(name, code) for name, code, _ in reports] == [("debug", lib.NM_ERR_USE_AFTER_FREE)]
    assert names_block(reports[0][2], p, 48)


# ---- 2. the byte bound covers the recycled block ---------------------------------------------------
def test_huge_freed_block_goes_back_to_base_at_once(debug, counted_base):
    t = debug(1024, counted_base)  # the default byte bound: NM_DEBUG_QUARANTINE_BYTES (64 MiB)
    p = lib.nm_malloc(t, 65 * MiB)
    assert p != ffi.NULL
    assert base_live_blocks(counted_base) == 1
    lib.nm_free(t, p)
    assert base_live_blocks(counted_base) == 0  # not kept as the recycled block until flush()
    assert lib.nm_last_error() == lib.NM_OK


def test_quarantine_and_recycled_block_stay_within_the_bound(debug, counted_base):
    t = debug(16, counted_base)
    assert lib.nm_debug_set_quarantine_bytes(t, 4096) == lib.NM_OK
    blocks = [lib.nm_malloc(t, 1500) for _ in range(3)]
    for b in blocks:
        lib.nm_free(t, b)
    st = ffi.new("nm_debug_stats_t *")
    lib.nm_debug_stats(t, st)
    # two blocks (3000 bytes) quarantined; the oldest did not fit beside them: back in base
    assert (st.quarantined_blocks, st.quarantined_bytes) == (2, 3000)
    assert base_live_blocks(counted_base) == 2
    assert lib.nm_debug_set_quarantine_bytes(t, 1000) == lib.NM_OK
    assert base_live_blocks(counted_base) == 0


# ---- 3. a double free names both sites ---------------------------------------------------------
@pytest.mark.parametrize("where", ["quarantined", "recycled", "gone"])
def test_double_free_names_allocation_and_first_free(debug, where):
    t = debug()
    p = lib.nm_malloc_at(t, 48, VICTIM, 7)
    assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
    if where in ("recycled", "gone"):
        assert lib.nm_free_checked(t, lib.nm_malloc(t, 64)) == lib.NM_OK  # p out of the quarantine
    if where == "gone":
        assert lib.nm_free_checked(t, lib.nm_malloc(t, 80)) == lib.NM_OK  # and given back to base
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    text = last_message()
    assert text.startswith("double free of") and names_block(text, p, 48), text


def test_double_free_with_unknown_sites_says_so(debug):
    t = debug()
    lib.nm_site_set(ffi.NULL, 0)
    p = lib.nm_malloc(t, 8)
    assert lib.nm_free_checked(t, p) == lib.NM_OK
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    assert "allocated at an unknown site, first freed at an unknown site" in last_message()


# ---- 4. memalign failures name the alignment and the size ------------------------------------------
@pytest.mark.skipif(ffi.sizeof("size_t") < 8, reason="64-bit sizes")
def test_impossible_alignment_is_not_an_out_of_memory(debug):
    for t in (lib.nm_allocator_libc(), debug()):
        assert lib.nm_memalign(t, 2 ** 62, 8) == ffi.NULL
        assert lib.nm_last_error() in (lib.NM_ERR_INVALID, lib.NM_ERR_OVERFLOW)
        assert "memalign(alignment=4611686018427387904, size=8)" in last_message()
        assert "out of memory" not in last_message()


def test_memalign_messages_name_alignment_and_size(debug):
    assert lib.nm_memalign(debug(), 24, 10) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_INVALID
    assert "memalign(alignment=24, size=10)" in last_message()
    fa = lib.nm_allocator_faulty(ffi.NULL, 1)  # its first request fails
    try:
        assert lib.nm_memalign(fa, 64, 8) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_NOMEM
        assert "out of memory: memalign(alignment=64, size=8)" in last_message()
    finally:
        lib.nm_allocator_destroy(fa)
    lib.nm_clear_error()


# ---- 5. errors found by frees that cannot return them --------------------------------------------
def test_nm_free_reports_and_check_returns_the_pending_error(debug, reports):
    t = debug(16)
    p = lib.nm_malloc_at(t, 64, VICTIM, 7)
    ffi.cast("char *", p)[64] = b"x"  # one byte past the end
    lib.nm_free(t, p)
    assert [(name, code) for name, code, _ in reports] == [("debug", lib.NM_ERR_BUFFER_OVERFLOW)]
    assert "buffer overflow" in reports[0][2] and "victim.c:7" in reports[0][2]
    lib.nm_clear_error()
    assert lib.nm_debug_check(t) == lib.NM_ERR_BUFFER_OVERFLOW
    assert last_message() == reports[0][2]
    assert lib.nm_debug_check(t) == lib.NM_OK  # returned once
    # nm_free_checked returns the code to its caller: no report, nothing pending
    p = lib.nm_malloc(t, 32)
    scribble(p, 32)
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_BUFFER_OVERFLOW
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    assert len(reports) == 1 and lib.nm_debug_check(t) == lib.NM_OK
    st = ffi.new("nm_debug_stats_t *")
    lib.nm_debug_stats(t, st)
    assert st.errors == 3  # every one counted


def test_first_pending_error_is_kept_and_newer_findings_come_first(debug, reports):
    t = debug(16)
    p = lib.nm_malloc(t, 32)
    lib.nm_free(t, p)
    lib.nm_free(t, p)  # a double free nobody could be told of: pending
    q = lib.nm_malloc(t, 16)
    scribble(q, 16)
    lib.nm_free(t, q)  # a second one: reported, counted, the first stays pending
    assert [code for _, code, _ in reports] == [lib.NM_ERR_DOUBLE_FREE, lib.NM_ERR_BUFFER_OVERFLOW]
    r = lib.nm_malloc(t, 24)
    scribble(r, -1)
    assert lib.nm_debug_check(t) == lib.NM_ERR_BUFFER_UNDERFLOW  # found now: newer
    assert lib.nm_free_checked(t, r) == lib.NM_ERR_BUFFER_UNDERFLOW
    assert lib.nm_debug_check(t) == lib.NM_ERR_DOUBLE_FREE and last_message() == reports[0][2]
    assert lib.nm_debug_check(t) == lib.NM_OK
    st = ffi.new("nm_debug_stats_t *")
    lib.nm_debug_stats(t, st)
    assert st.errors == 4


def test_eviction_damage_found_by_nm_free_is_reported(debug, reports):
    t = debug(1)
    p = lib.nm_malloc_at(t, 40, VICTIM, 7)
    assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
    scribble(p, 3)  # write after free into the quarantined block
    lib.nm_free(t, lib.nm_malloc(t, 40))  # p leaves the quarantine...
    lib.nm_free(t, lib.nm_malloc(t, 56))  # ...and goes back to base: its poison is read
    assert [code for _, code, _ in reports] == [lib.NM_ERR_USE_AFTER_FREE]
    assert names_block(reports[0][2], p, 40)
    assert lib.nm_debug_check(t) == lib.NM_ERR_USE_AFTER_FREE and names_block(last_message(), p, 40)


def test_realloc_that_finds_damage_reports_it(debug, reports):
    t = debug(1)
    p = lib.nm_malloc_at(t, 40, VICTIM, 7)
    assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
    scribble(p, 3)
    lib.nm_free(t, lib.nm_malloc(t, 24))  # p is the recycled block
    q = lib.nm_malloc(t, 8)
    q = lib.nm_realloc(t, q, 16)  # releasing the old block replaces p: its damage found
    assert q != ffi.NULL
    assert [code for _, code, _ in reports] == [lib.NM_ERR_USE_AFTER_FREE]
    assert lib.nm_debug_check(t) == lib.NM_ERR_USE_AFTER_FREE
    assert lib.nm_free_checked(t, q) == lib.NM_OK


def test_arena_bad_free_is_reported_once_through_a_wrapper(reports):
    ar = lib.nm_arena_create(ffi.NULL, 1 << 16)
    fa = lib.nm_allocator_faulty(ar, 0)
    try:
        p = lib.nm_malloc(fa, 100)
        lib.nm_free(fa, p)
        lib.nm_free(fa, p)
        assert [(name, code) for name, code, _ in reports] == [("arena", lib.NM_ERR_DOUBLE_FREE)]
    finally:
        lib.nm_allocator_destroy(fa)
        lib.nm_allocator_destroy(ar)


def test_numpy_handler_free_is_reported(debug, reports):
    t = debug(16)
    h = ffi.new("nm_numpy_handler_t *")
    lib.nm_numpy_handler_init(h, t, b"test")
    p = h.malloc(h.ctx, 64)
    scribble(p, 64)
    h.free(h.ctx, p, 64)  # NumPy's free returns nothing: the hook hears it
    assert [(name, code) for name, code, _ in reports] == [("debug", lib.NM_ERR_BUFFER_OVERFLOW)]
    assert "numpy array data" in reports[0][2]
    assert lib.nm_debug_check(t) == lib.NM_ERR_BUFFER_OVERFLOW


def test_reports_from_threads(reports):
    tables = [lib.nm_debug_create_ex(ffi.NULL, 0, 4) for _ in range(4)]

    def work(t):
        for _ in range(50):
            p = lib.nm_malloc(t, 16)
            lib.nm_free(t, p)
            lib.nm_free(t, p)

    threads = [threading.Thread(target=work, args=(t,)) for t in tables]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(reports) == 200 and {code for _, code, _ in reports} == {lib.NM_ERR_DOUBLE_FREE}
    for t in tables:
        lib.nm_allocator_destroy(t)


def test_without_a_hook_reports_go_to_stderr():
    prog = textwrap.dedent("""
        from nativemem._ffi import ffi, lib
        lib.nm_set_report_hook(ffi.NULL)
        t = lib.nm_debug_create(ffi.NULL, 0)
        p = lib.nm_malloc(t, 8)
        lib.nm_free(t, p)
        lib.nm_free(t, p)
        assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE  # returned, not printed
        print("done")
    """)
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nativemem: ")]
    assert len(lines) == 1 and lines[0].startswith("nativemem: double free of"), r.stderr


# ---- 5. the fast paths: poison checked word-wide, freed blocks found in the ring ----------------
SIZES = sorted(set(range(1, 140)) | {191, 192, 193, 255, 256, 257, 300, 511, 512, 513, 544, 1000, 1023,
                                     1024, 1025, 1040, 3000, 4097})


def offsets(n: int):
    """Offsets to damage: both ends, and either side of every 16-byte word and 64-byte step."""
    cut = {0, 1, n // 2, n - 2, n - 1}
    for k in range(16, n, 16):
        cut |= {k - 1, k}
    return sorted(o for o in cut if 0 <= o < n)


def test_poison_checks_find_a_write_after_free_at_every_offset(debug):
    t = debug(4)
    for n in SIZES:
        p = lib.nm_malloc_at(t, n, VICTIM, 7)
        assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
        assert lib.nm_debug_check(t) == lib.NM_OK, n  # intact poison: no false report
        for off in offsets(n):
            old = ffi.cast("unsigned char *", p)[off]
            scribble(p, off)
            assert lib.nm_debug_check(t) == lib.NM_ERR_USE_AFTER_FREE, (n, off)
            assert names_block(last_message(), p, n) and f"offset {off} " in last_message(), (n, off)
            ffi.cast("unsigned char *", p)[off] = old
        assert lib.nm_debug_flush(t) == lib.NM_OK


@pytest.mark.parametrize("n", [1, 15, 16, 17, 48, 63, 64, 65, 200, 512, 513, 1025])
def test_recycled_block_check_finds_damage_at_either_end(debug, n):
    t = debug()
    for off in (0, n - 1):
        p = lib.nm_malloc_at(t, n, VICTIM, 7)
        q = lib.nm_malloc(t, n)
        assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
        assert lib.nm_free_checked(t, q) == lib.NM_OK  # p leaves the quarantine of one block
        scribble(p, off)
        assert lib.nm_malloc(t, n) == ffi.NULL and lib.nm_last_error() == lib.NM_ERR_USE_AFTER_FREE
        assert names_block(last_message(), p, n) and f"offset {off} " in last_message()
        assert lib.nm_debug_flush(t) == lib.NM_OK


def test_fills_cover_every_byte(debug):
    t = debug(0)
    for n in SIZES:
        p = lib.nm_malloc(t, n)
        assert bytes(ffi.buffer(p, n)) == b"\xcb" * n, n
        lib.nm_free(t, p)
        z = lib.nm_calloc(t, 1, n)
        assert bytes(ffi.buffer(z, n)) == b"\0" * n, n
        lib.nm_free(t, z)
    assert lib.nm_debug_check(t) == lib.NM_OK


def test_double_free_names_a_block_deep_in_the_quarantine(debug):
    t = debug(1024)
    p = lib.nm_malloc_at(t, 48, VICTIM, 7)
    assert lib.nm_free_checked_at(t, p, FREER, 11) == lib.NM_OK
    for _ in range(700):
        assert lib.nm_free_checked(t, lib.nm_malloc(t, 32)) == lib.NM_OK
    assert lib.nm_free_checked(t, p) == lib.NM_ERR_DOUBLE_FREE
    assert names_block(last_message(), p, 48) and "in the quarantine" in last_message()
    other = lib.nm_malloc(lib.nm_allocator_libc(), 64)
    try:
        assert lib.nm_free_checked(t, ffi.cast("char *", other) + 16) == lib.NM_ERR_INVALID_FREE
    finally:
        lib.nm_free(lib.nm_allocator_libc(), other)


def test_many_live_blocks_freed_in_any_order(debug):
    import random
    t = debug(64)
    rng = random.Random(13)
    live = []
    for _ in range(40_000):  # the hash grows to thousands of blocks and deletes from anywhere
        if live and rng.random() < 0.45:
            k = rng.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            assert lib.nm_free_checked(t, live.pop()) == lib.NM_OK
        else:
            p = lib.nm_malloc(t, rng.randrange(1, 700))
            assert p != ffi.NULL
            live.append(p)
    st = ffi.new("nm_debug_stats_t *")
    lib.nm_debug_stats(t, st)
    assert st.live_blocks == len(live) and st.errors == 0
    assert lib.nm_debug_blocks(t, ffi.NULL, 0, 0) == len(live)
    assert lib.nm_debug_check(t) == lib.NM_OK
    for p in live:
        assert lib.nm_free_checked(t, p) == lib.NM_OK
    assert lib.nm_debug_check(t) == lib.NM_OK
