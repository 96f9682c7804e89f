"""atheris harness over nativemem's Python API (random sizes, orders and bad inputs).

Run when asked (not collected by pytest):  python tests/fuzz/fuzz_api.py -max_total_time=60
Any crash of the interpreter, or an exception that is not a NativeMemError where bad input was
given, is a finding.  Needs `pip install atheris`.
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import nativemem as nm

ALLOCS = [nm.allocator("libc"), nm.Arena(1 << 20), nm.DebugAllocator(quarantine=16)]
POOL = nm.Pool(48, checked=True)
TABLE = nm.StringTable()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    live, objs, strs, cows = [], [], [], []
    for _ in range(fdp.ConsumeIntInRange(1, 40)):
        op = fdp.ConsumeIntInRange(0, 11)
        a = ALLOCS[fdp.ConsumeIntInRange(0, len(ALLOCS) - 1)]
        size = fdp.ConsumeIntInRange(-(2 ** 65), 2 ** 65) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 5000)
        try:
            if op == 0:
                live.append(a.malloc(size))
            elif op == 1:
                live.append(a.calloc(fdp.ConsumeIntInRange(-5, 1000), size))
            elif op == 2:
                live.append(a.memalign(fdp.ConsumeIntInRange(-8, 1 << 13), size))
            elif op == 3 and live:
                b = live[fdp.ConsumeIntInRange(0, len(live) - 1)]
                b.allocator.realloc(b, size)
            elif op == 4 and live:
                live.pop(fdp.ConsumeIntInRange(0, len(live) - 1)).free()
            elif op == 5 and live:
                b = live[fdp.ConsumeIntInRange(0, len(live) - 1)]
                b.write(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)), fdp.ConsumeIntInRange(-2, 6000))
            elif op == 6:
                objs.append(POOL.alloc())
            elif op == 7:
                POOL.free(objs.pop() if objs and fdp.ConsumeBool() else fdp.ConsumeIntInRange(-1, 2 ** 64))
            elif op == 8:
                strs.append(TABLE.intern(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 30))))
            elif op == 9 and strs:
                strs.pop(fdp.ConsumeIntInRange(0, len(strs) - 1)).release()
            elif op == 10:
                cows.append(nm.CowBuffer(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 50))))
            elif op == 11 and cows:
                c = cows.pop()
                cows.append(c.share() if fdp.ConsumeBool() else c.make_writable())
        except nm.NativeMemError:
            pass
    for b in live:
        if not b.freed:
            b.free()
    POOL.free_many(objs)
    for s in strs:
        s.release()
    for c in cows:
        if not c.released:
            c.release()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
