"""Run under Valgrind memcheck by tests/test_pool_valgrind.py.

``ok``: correct use of pools (alloc, write, free, batches, checked mode, ObjectPool).
``uaf``: the same, then a read of an object after it was freed (a seeded use-after-free).
``uninit``: reads an unzeroed, never-written pool object into a branch.
"""
import ctypes
import sys

import nativemem
from nativemem._ffi import ffi, lib

mode = sys.argv[1]

base = nativemem.allocator("libc")  # malloc that memcheck tracks
pool = nativemem.Pool(48, zero=True, objects_per_chunk=16, allocator=base)
objs = [pool.alloc() for _ in range(40)]
for i, o in enumerate(objs):
    ffi.cast("unsigned char *", o)[0:48] = bytes([i % 256]) * 48
total = sum(ffi.cast("unsigned char *", o)[47] for o in objs)
pool.free_many(objs[:20])
for o in objs[20:]:
    pool.free(o)
again = pool.alloc_many(30)
assert all(ffi.cast("unsigned char *", o)[5] == 0 for o in again)
pool.free_many(again)
with nativemem.Pool(32, checked=True, allocator=base) as cp:
    x = cp.alloc()
    cp.free(x)
    cp.check()
sys.stdout.write(f"phase ok {total}\n")
sys.stdout.flush()

if mode == "uaf":
    victim = pool.alloc()
    ffi.cast("int *", victim)[3] = 7
    pool.free(victim)
    # seeded use-after-free: read an int inside the freed object
    value = ctypes.c_int.from_address(int(ffi.cast("uintptr_t", victim)) + 12).value
    sys.stdout.write(f"read {value}\n")
pool.close()
sys.stdout.write("done\n")
