"""Thread stress: N = max(4, 2 x cores) threads over pools, the debug allocator, refcounts and
the string table for a bounded time; afterwards every count balances exactly and no destructor
ran twice."""
from __future__ import annotations

import os
import random
import threading
import time

import nativemem
from nativemem import DebugAllocator, Pool, RefCount, StringTable

N = max(4, 2 * (os.cpu_count() or 1))
SECONDS = float(os.environ.get("NATIVEMEM_STRESS_SECONDS", "2.0"))


def test_thread_stress():
    pool = Pool(40, objects_per_chunk=64)
    dbg = DebugAllocator(quarantine=128)
    table = StringTable()
    destroyed = []
    lock = threading.Lock()
    shared_refs = [RefCount(lambda i=i: destroyed.append(i)) for i in range(64)]
    for r in shared_refs:
        for _ in range(N):
            r.retain()  # one reference per thread, dropped at the end
    handoff = []
    ops = [0] * N
    errors = []
    deadline = time.monotonic() + SECONDS

    def work(k):
        rng = random.Random(k)
        mine_pool, mine_dbg, mine_str = [], [], []
        try:
            while time.monotonic() < deadline:
                for _ in range(50):
                    x = rng.random()
                    if x < 0.3:
                        mine_pool.append(pool.alloc())
                        if len(mine_pool) > 20:
                            o = mine_pool.pop(rng.randrange(len(mine_pool)))
                            with lock:
                                handoff.append(o)  # freed by some other thread
                    elif x < 0.4:
                        with lock:
                            o = handoff.pop() if handoff else None
                        if o is not None:
                            pool.free(o)
                    elif x < 0.6:
                        mine_dbg.append(dbg.malloc(rng.randint(1, 200)))
                        if len(mine_dbg) > 10:
                            mine_dbg.pop(0).free()
                    elif x < 0.8:
                        mine_str.append(table.intern(f"s{rng.randint(0, 100)}"))
                        if len(mine_str) > 10:
                            mine_str.pop(rng.randrange(len(mine_str))).release()
                    else:
                        r = shared_refs[rng.randrange(len(shared_refs))]
                        r.retain()
                        assert not r.release()
                    ops[k] += 1
            for o in mine_pool:
                pool.free(o)
            for b in mine_dbg:
                b.free()
            for s in mine_str:
                s.release()
            for r in shared_refs:
                r.release()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(N)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    for o in handoff:
        pool.free(o)
    st = pool.stats()
    assert st.live == 0 and st.allocations == st.frees
    ds = dbg.debug_stats()
    assert ds.live_blocks == 0 and ds.total_allocs == ds.total_frees and dbg.leaks() == []
    dbg.check()
    assert len(table) == 0
    assert all(r.count == 1 for r in shared_refs) and destroyed == []
    for r in shared_refs:
        assert r.release()
    assert sorted(destroyed) == list(range(64))  # each destructor exactly once
    print(f"thread stress: {N} threads, {sum(ops)} operations in {SECONDS}s")
