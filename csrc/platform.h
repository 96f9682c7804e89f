/* platform.h -- the one place for compiler and OS differences in nativemem's C core.
 *
 * Atomics (GCC/Clang __atomic builtins, MSVC Interlocked intrinsics), mutexes (pthread or
 * SRWLOCK), thread-local storage, page mapping/protection (mmap or VirtualAlloc), branch
 * hints, and the optional Valgrind / AddressSanitizer annotations.  Every other file in
 * csrc/ is plain C11 and reaches the platform only through the macros and inline
 * functions below.
 */
#ifndef NM_PLATFORM_H
#define NM_PLATFORM_H

/* mingw-w64: C99 printf (%zu) instead of the old msvcrt one; must precede <stdio.h>. */
#if defined(__MINGW32__) && !defined(__USE_MINGW_ANSI_STDIO)
#  define __USE_MINGW_ANSI_STDIO 1
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#  define NM_OS_WINDOWS 1
#else
#  include <pthread.h>
#  include <sys/mman.h>
#  include <unistd.h>
#  define NM_OS_POSIX 1
#endif

/* ---- compiler ------------------------------------------------------------------------ */
/* NM_MSVC: take the MSVC branches below.  clang-cl defines _MSC_VER too and takes the GNU ones
 * (it has both); .ci/c-checks.sh defines NM_CHECK_MSVC_BRANCH to compile the MSVC ones with
 * clang in MSVC mode for Windows ARM64, x64 and x86, this machine having no MSVC. */
#if defined(_MSC_VER) && (!(defined(__GNUC__) || defined(__clang__)) || defined(NM_CHECK_MSVC_BRANCH))
#  define NM_MSVC 1
#endif

#if (defined(__GNUC__) || defined(__clang__)) && !defined(NM_MSVC)
#  define NM_LIKELY(x)    __builtin_expect(!!(x), 1)
#  define NM_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#  define NM_NOINLINE     __attribute__((noinline))
#  define NM_INLINE       static inline __attribute__((always_inline))
#  define NM_THREAD_LOCAL __thread
#  define NM_GNU_ATOMICS  1
#elif defined(NM_MSVC)
#  include <intrin.h>
#  define NM_LIKELY(x)    (x)
#  define NM_UNLIKELY(x)  (x)
#  define NM_NOINLINE     __declspec(noinline)
#  define NM_INLINE       static __forceinline
#  define NM_THREAD_LOCAL __declspec(thread)
#else
#  define NM_LIKELY(x)    (x)
#  define NM_UNLIKELY(x)  (x)
#  define NM_NOINLINE
#  define NM_INLINE       static inline
#  define NM_THREAD_LOCAL _Thread_local
#endif

/* Thread-locals on hot paths: the initial-exec model is one %fs-relative load instead of a
 * __tls_get_addr call in a shared object (uses a little of glibc's static TLS surplus).  Only
 * with glibc: its dynamic linker reserves that surplus for libraries loaded with dlopen (the
 * Python extension is one).  musl reserves none and refuses to load such a library
 * ("initial-exec TLS resolves to dynamic definition"; issue 14), as do other C libraries, so
 * everywhere else the compiler's default model for the build (-fPIC: dynamic) is kept.  glibc
 * is detected positively: __GLIBC__ comes from <features.h>, which every glibc header includes
 * (<string.h> and <unistd.h> above); musl defines no such macro on purpose.  __has_include
 * guards the direct include, <features.h> being glibc's and musl's but not macOS's or MSVC's.
 * A definition from the command line wins (-DNM_TLS_FAST= : the default model everywhere). */
#if !defined(_WIN32) && !defined(__APPLE__) && !defined(__GLIBC__) && defined(__has_include)
#  if __has_include(<features.h>)
#    include <features.h>
#  endif
#endif
#if defined(NM_TLS_FAST)
/* given on the command line (.ci/cross-checks.sh forces initial-exec on musl to see it refused) */
#elif (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32) && !defined(__APPLE__) && defined(__GLIBC__)
#  define NM_TLS_FAST __attribute__((tls_model("initial-exec")))
#else
#  define NM_TLS_FAST
#endif

/* ---- overflow-checked size arithmetic ------------------------------------------------- */
/* Returns nonzero when a*b overflows size_t; *out receives the product otherwise. */
NM_INLINE int nm_mul_overflow(size_t a, size_t b, size_t *out) {
#if defined(NM_GNU_ATOMICS)
    return __builtin_mul_overflow(a, b, out);
#else
    if (b != 0 && a > SIZE_MAX / b) return 1;
    *out = a * b;
    return 0;
#endif
}
NM_INLINE int nm_add_overflow(size_t a, size_t b, size_t *out) {
    if (a > SIZE_MAX - b) return 1;
    *out = a + b;
    return 0;
}

/* ---- bit scans ------------------------------------------------------------------------ */
/* Index of the lowest set bit of a nonzero 32-bit word. */
NM_INLINE int nm_ctz32(uint32_t x) {
#if defined(NM_GNU_ATOMICS)
    return __builtin_ctz(x);
#elif defined(NM_MSVC)
    unsigned long i;
    _BitScanForward(&i, x);
    return (int)i;
#else
    int i = 0;
    while (!(x & 1u)) { x >>= 1; i++; }
    return i;
#endif
}
/* Index of the highest set bit of a nonzero size_t. */
NM_INLINE int nm_fls_size(size_t x) {
#if defined(NM_GNU_ATOMICS)
    return (int)(sizeof(size_t) * 8 - 1) - (sizeof(size_t) == 8 ? __builtin_clzll((unsigned long long)x) : __builtin_clz((unsigned)x));
#elif defined(NM_MSVC) && defined(_WIN64)
    unsigned long i;
    _BitScanReverse64(&i, (unsigned __int64)x);
    return (int)i;
#elif defined(NM_MSVC)
    unsigned long i;
    _BitScanReverse(&i, (unsigned long)x);
    return (int)i;
#else
    int i = -1;
    while (x) { x >>= 1; i++; }
    return i;
#endif
}

/* ---- atomics on intptr_t-sized words ------------------------------------------------- *
 * nm_atomic_t is a plain word; all access goes through these helpers so that the memory
 * order of each access is explicit and MSVC builds without C11 <stdatomic.h>. */
typedef intptr_t nm_atomic_t;

#if defined(NM_GNU_ATOMICS)
#  define nm_atomic_load_relaxed(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#  define nm_atomic_load_acquire(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define nm_atomic_store_relaxed(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#  define nm_atomic_store_release(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* add and return the NEW value */
#  define nm_atomic_add_relaxed(p, v)    __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#  define nm_atomic_add_release(p, v)    __atomic_add_fetch((p), (v), __ATOMIC_RELEASE)
#  define nm_atomic_add_acq_rel(p, v)    __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#  define nm_atomic_exchange(p, v)       __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
/* compare-and-swap: returns nonzero on success; *expected is updated on failure */
#  define nm_atomic_cas(p, expected, desired) \
      __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#  define nm_atomic_cas_weak_relaxed(p, expected, desired) \
      __atomic_compare_exchange_n((p), (expected), (desired), 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
#  define nm_atomic_fence_acquire()      __atomic_thread_fence(__ATOMIC_ACQUIRE)
#  define nm_atomic_fence_seq_cst()      __atomic_thread_fence(__ATOMIC_SEQ_CST)
/* bitwise or/and returning the OLD value */
#  define nm_atomic_or(p, v)             __atomic_fetch_or((p), (v), __ATOMIC_RELAXED)
#  define nm_atomic_and(p, v)            __atomic_fetch_and((p), (v), __ATOMIC_RELAXED)
#elif defined(NM_MSVC)
#  if defined(_WIN64)
#    define NM__IADD(p, v)   (_InterlockedExchangeAdd64((volatile __int64 *)(p), (__int64)(v)) + (__int64)(v))
#    define NM__IXCHG(p, v)  _InterlockedExchange64((volatile __int64 *)(p), (__int64)(v))
#    define NM__ICAS(p, d, e) _InterlockedCompareExchange64((volatile __int64 *)(p), (__int64)(d), (__int64)(e))
#    define nm_atomic_or(p, v)  ((intptr_t)_InterlockedOr64((volatile __int64 *)(p), (__int64)(v)))
#    define nm_atomic_and(p, v) ((intptr_t)_InterlockedAnd64((volatile __int64 *)(p), (__int64)(v)))
#  else
#    define NM__IADD(p, v)   (_InterlockedExchangeAdd((volatile long *)(p), (long)(v)) + (long)(v))
#    define NM__IXCHG(p, v)  _InterlockedExchange((volatile long *)(p), (long)(v))
#    define NM__ICAS(p, d, e) _InterlockedCompareExchange((volatile long *)(p), (long)(d), (long)(e))
#    define nm_atomic_or(p, v)  ((intptr_t)_InterlockedOr((volatile long *)(p), (long)(v)))
#    define nm_atomic_and(p, v) ((intptr_t)_InterlockedAnd((volatile long *)(p), (long)(v)))
#  endif
NM_INLINE int nm__msvc_cas(volatile intptr_t *p, intptr_t *expected, intptr_t desired) {
    intptr_t old = (intptr_t)NM__ICAS(p, desired, *expected);
    if (old == *expected) return 1;
    *expected = old;
    return 0;
}
#  if defined(_M_ARM64) || defined(_M_ARM64EC) || defined(_M_ARM)
/* ARM: a volatile access is a plain load or store under MSVC's default /volatile:iso and orders
 * nothing on the CPU (nor does _ReadWriteBarrier, a compiler barrier): an acquire load is the
 * load and then a full inner-shareable barrier, a release store the barrier and then the store.
 * (The Interlocked intrinsics without _acq/_rel/_nf are full barriers on ARM already.) */
#    if defined(_M_ARM)
#      define NM__DMB() __dmb(_ARM_BARRIER_ISH)
#    else
#      define NM__DMB() __dmb(_ARM64_BARRIER_ISH)
#    endif
#    if defined(_WIN64)
#      define NM__VLOAD(p)     ((intptr_t)__iso_volatile_load64((const volatile __int64 *)(p)))
#      define NM__VSTORE(p, v) __iso_volatile_store64((volatile __int64 *)(p), (__int64)(v))
#    else
#      define NM__VLOAD(p)     ((intptr_t)__iso_volatile_load32((const volatile __int32 *)(p)))
#      define NM__VSTORE(p, v) __iso_volatile_store32((volatile __int32 *)(p), (__int32)(v))
#    endif
NM_INLINE intptr_t nm__msvc_load(volatile const intptr_t *p) { intptr_t v = NM__VLOAD(p); NM__DMB(); return v; }
NM_INLINE void nm__msvc_store_release(volatile intptr_t *p, intptr_t v) { NM__DMB(); NM__VSTORE(p, v); }
#    define nm_atomic_load_relaxed(p)      NM__VLOAD(p)
#    define nm_atomic_load_acquire(p)      nm__msvc_load((volatile const intptr_t *)(p))
#    define nm_atomic_store_relaxed(p, v)  NM__VSTORE((p), (v))
#    define nm_atomic_store_release(p, v)  nm__msvc_store_release((volatile intptr_t *)(p), (intptr_t)(v))
#    define nm_atomic_fence_acquire()      NM__DMB()
#  else
/* x86 and x64: every load is an acquire and every store a release in hardware (TSO); only the
 * compiler must not move accesses across them. */
NM_INLINE intptr_t nm__msvc_load(volatile const intptr_t *p) { intptr_t v = *p; _ReadWriteBarrier(); return v; }
#    define nm_atomic_load_relaxed(p)      (*(volatile intptr_t *)(p))
#    define nm_atomic_load_acquire(p)      nm__msvc_load((volatile const intptr_t *)(p))
#    define nm_atomic_store_relaxed(p, v)  (*(volatile intptr_t *)(p) = (intptr_t)(v))
#    define nm_atomic_store_release(p, v)  ((void)NM__IXCHG((p), (v)))
#    define nm_atomic_fence_acquire()      _ReadWriteBarrier()
#  endif
#  define nm_atomic_add_relaxed(p, v)    ((intptr_t)NM__IADD((p), (v)))
#  define nm_atomic_add_release(p, v)    ((intptr_t)NM__IADD((p), (v)))
#  define nm_atomic_add_acq_rel(p, v)    ((intptr_t)NM__IADD((p), (v)))
#  define nm_atomic_exchange(p, v)       ((intptr_t)NM__IXCHG((p), (v)))
#  define nm_atomic_cas(p, expected, desired) nm__msvc_cas((volatile intptr_t *)(p), (intptr_t *)(expected), (intptr_t)(desired))
#  define nm_atomic_cas_weak_relaxed(p, expected, desired) nm_atomic_cas(p, expected, desired)
#  define nm_atomic_fence_seq_cst()      MemoryBarrier()
#else
#  error "nativemem needs GCC/Clang __atomic builtins or MSVC intrinsics"
#endif

/* A compiler-only barrier: no instruction, only no reordering by the compiler across it. */
#if defined(NM_MSVC)
#  define nm_compiler_barrier() _ReadWriteBarrier()
#else
#  define nm_compiler_barrier() __asm__ __volatile__("" ::: "memory")
#endif

/* ---- an asymmetric barrier (platform.c) -------------------------------------------------------
 * nm_heavy_barrier makes every running thread of the process execute a full memory barrier before
 * it returns (membarrier(2) PRIVATE_EXPEDITED on Linux, FlushProcessWriteBuffers on Windows).  A
 * hot path may then order its plain store before a later load with a compiler barrier only, when
 * the rare side (which stores, then reads the hot path's store) calls nm_heavy_barrier in between:
 * the hot path either sees the rare side's store or has its own store seen.  nm_heavy_barrier_init
 * (once; thread-safe) returns 1 when the barrier is available, 0 when not (other systems, Linux
 * before 4.14, a seccomp filter, Valgrind): hot paths must then use real atomics. */
int nm_heavy_barrier_init(void);
void nm_heavy_barrier(void);

/* Pointer-typed helpers over the same primitives. */
#define nm_atomic_load_ptr_acquire(pp)   ((void *)nm_atomic_load_acquire((nm_atomic_t *)(pp)))

/* ---- mutex --------------------------------------------------------------------------- */
#if defined(NM_OS_WINDOWS)
typedef SRWLOCK nm_mutex_t;
#  define NM_MUTEX_INIT SRWLOCK_INIT
NM_INLINE void nm_mutex_init(nm_mutex_t *m)    { InitializeSRWLock(m); }
NM_INLINE void nm_mutex_destroy(nm_mutex_t *m) { (void)m; }
NM_INLINE void nm_mutex_lock(nm_mutex_t *m)    { AcquireSRWLockExclusive(m); }
NM_INLINE void nm_mutex_unlock(nm_mutex_t *m)  { ReleaseSRWLockExclusive(m); }
#else
typedef pthread_mutex_t nm_mutex_t;
#  define NM_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
NM_INLINE void nm_mutex_init(nm_mutex_t *m)    { pthread_mutex_init(m, NULL); }
NM_INLINE void nm_mutex_destroy(nm_mutex_t *m) { pthread_mutex_destroy(m); }
NM_INLINE void nm_mutex_lock(nm_mutex_t *m)    { pthread_mutex_lock(m); }
NM_INLINE void nm_mutex_unlock(nm_mutex_t *m)  { pthread_mutex_unlock(m); }
#endif

/* ---- spinlock -------------------------------------------------------------------------- */
/* For critical sections of a few dozen instructions on a hot path (the debug allocator, the
 * arena, the string table's shards): one atomic exchange to take it and a plain release store
 * to drop it, about half a mutex's cost uncontended.  A waiter spins with a pause instruction,
 * then yields its time slice, so a holder that was preempted (or is in a system call) gets the
 * CPU back.  Zero is unlocked, so zeroed memory holds a ready lock. */
typedef nm_atomic_t nm_spin_t;
void nm_spin_wait(nm_spin_t *s); /* the contended path (platform.c) */
NM_INLINE void nm_spin_lock(nm_spin_t *s) {
    if (NM_UNLIKELY(nm_atomic_exchange(s, 1) != 0)) nm_spin_wait(s);
}
NM_INLINE void nm_spin_unlock(nm_spin_t *s) { nm_atomic_store_release(s, 0); }

/* ---- fork safety (pthread_atfork) -------------------------------------------------------------- *
 * A child forked while another thread held one of nativemem's locks would inherit it held by a
 * thread that does not exist there, and hang on it.  So every live lock-holding object is in a
 * registry (platform.c) whose fork handlers take the registry's lock and then every registered
 * lock before fork(), and release them all after it, in the parent and in the child (where an
 * entry may also repair state, e.g. a pool orphans the caches of threads the child does not
 * have).  Only create and destroy touch the registry; the hot paths do not.
 *
 * Order.  Locks are taken by rank (NM_ATFORK_FIRST, then NM_ATFORK_SECOND, then objects), and
 * objects newest first: a lock may be held while taking another only when the second comes
 * later in that order.  It does: an object's base allocator is created before it, the prop tree
 * lock (FIRST) is held around the prop pool's paths, which take the pools' global lock (SECOND)
 * and then a pool's own lock.  And no thread holding one of these locks ever waits for the
 * registry's: nm_atfork_register and nm_atfork_unregister are called only from create and
 * destroy, with no nativemem lock held (they wait while a fork is in progress); a destroy that
 * may run under another object's lock (the arena's, deferred to a last nm_free) uses
 * nm_atfork_retire, which never waits for a fork.
 *
 * Windows has no fork: everything here compiles to nothing (nm_atfork_retire runs `fin` at once). */
/* NM_ATFORK_LAST: leaf locks that may be taken while an object's lock is held and under which no
 * other nativemem lock is ever taken (the front door's deferred-destroy and slot set-up locks). */
enum { NM_ATFORK_FIRST = 0, NM_ATFORK_SECOND = 1, NM_ATFORK_OBJECT = 2, NM_ATFORK_LAST = 3, NM_ATFORK_RANKS = 4 };
typedef void (*nm_atfork_fn)(void *arg);
typedef struct nm_atfork {
    nm_atfork_fn lock;          /* before fork: take every lock of the object               */
    nm_atfork_fn unlock;        /* after fork, in the parent: release them                  */
    nm_atfork_fn child;         /* after fork, in the child: release them (NULL: unlock)    */
    void *arg;
    int rank;
    /* the registry's own (nm_atfork_init zeroes them) */
    int linked, owned;
    struct nm_atfork *prev, *next;
    struct nm_atfork *parked_next; /* retired during a fork: unlinked and finished later     */
    nm_atfork_fn fin;
    void *fin_arg;
} nm_atfork_t;

NM_INLINE void nm_atfork_init(nm_atfork_t *e, nm_atfork_fn lock, nm_atfork_fn unlock, nm_atfork_fn child,
                              void *arg, int rank) {
    memset(e, 0, sizeof *e);
    e->lock = lock;
    e->unlock = unlock;
    e->child = child;
    e->arg = arg;
    e->rank = rank;
}
/* Entry functions for the common cases: arg is an nm_spin_t * or an nm_mutex_t *. */
void nm_atfork_spin_lock(void *spin);
void nm_atfork_spin_unlock(void *spin);
void nm_atfork_mutex_lock(void *mutex);
void nm_atfork_mutex_unlock(void *mutex);

#if defined(NM_OS_POSIX)
/* Add an entry (idempotent: a registered entry stays as it is).  Create paths, no lock held. */
void nm_atfork_register(nm_atfork_t *e);
/* Remove an entry; afterwards no fork handler touches it.  Destroy paths, no lock held. */
void nm_atfork_unregister(nm_atfork_t *e);
/* Remove an entry and then call fin(arg) (which may free the entry's memory), from a path that
 * may hold other nativemem locks: when a fork is in progress it does not wait; the entry stays
 * registered (its lock unused, its memory alive) and is removed and finished by the next
 * register/unregister call. */
void nm_atfork_retire(nm_atfork_t *e, nm_atfork_fn fin, void *arg);
/* A spinlock in memory the caller cannot extend (the registry allocates the entry). */
void nm_atfork_register_spin(nm_spin_t *lock);
void nm_atfork_unregister_spin(nm_spin_t *lock);
#else
NM_INLINE void nm_atfork_register(nm_atfork_t *e) { (void)e; }
NM_INLINE void nm_atfork_unregister(nm_atfork_t *e) { (void)e; }
NM_INLINE void nm_atfork_retire(nm_atfork_t *e, nm_atfork_fn fin, void *arg) { (void)e; fin(arg); }
NM_INLINE void nm_atfork_register_spin(nm_spin_t *lock) { (void)lock; }
NM_INLINE void nm_atfork_unregister_spin(nm_spin_t *lock) { (void)lock; }
#endif

/* ---- thread identity ----------------------------------------------------------------- */
/* A small nonzero number unique per live thread (the address of a thread-local byte). */
static NM_THREAD_LOCAL char nm__thread_marker;
NM_INLINE uintptr_t nm_thread_id(void) { return (uintptr_t)&nm__thread_marker; }

/* ---- threads (benchmarks and C tests) ---------------------------------------------------- */
typedef struct nm_thread nm_thread_t;
typedef void (*nm_thread_fn)(void *arg);
/* Start fn(arg) on a new thread; NULL on failure.  nm_thread_join waits and frees it. */
nm_thread_t *nm_thread_start(nm_thread_fn fn, void *arg);
void nm_thread_join(nm_thread_t *t);
void nm_thread_yield(void);

/* ---- monotonic clock ------------------------------------------------------------------- */
uint64_t nm_now_ns(void);

/* ---- OS pages ------------------------------------------------------------------------ */
size_t nm_os_page_size(void);
/* Reserve and commit `size` bytes of zeroed read/write memory; NULL on failure. */
void *nm_os_map(size_t size);
void nm_os_unmap(void *p, size_t size);
/* access: 0 = no access, 1 = read/write. Returns 0 on success. */
int nm_os_protect(void *p, size_t size, int access);

/* ---- Valgrind client requests (compile to nothing without valgrind/memcheck.h) ------- */
#if defined(NM_HAVE_VALGRIND)
#  include <valgrind/memcheck.h>
#  define NM_VG_MEMPOOL_CREATE(pool, rz, zeroed)  VALGRIND_CREATE_MEMPOOL((pool), (rz), (zeroed))
#  define NM_VG_MEMPOOL_DESTROY(pool)             VALGRIND_DESTROY_MEMPOOL((pool))
#  define NM_VG_MEMPOOL_ALLOC(pool, p, n)         VALGRIND_MEMPOOL_ALLOC((pool), (p), (n))
#  define NM_VG_MEMPOOL_FREE(pool, p)             VALGRIND_MEMPOOL_FREE((pool), (p))
#  define NM_VG_MALLOCLIKE(p, n, rz, zeroed)      VALGRIND_MALLOCLIKE_BLOCK((p), (n), (rz), (zeroed))
#  define NM_VG_FREELIKE(p, rz)                   VALGRIND_FREELIKE_BLOCK((p), (rz))
#  define NM_VG_RESIZEINPLACE(p, old, new_, rz)   VALGRIND_RESIZEINPLACE_BLOCK((p), (old), (new_), (rz))
#  define NM_VG_NOACCESS(p, n)                    VALGRIND_MAKE_MEM_NOACCESS((p), (n))
#  define NM_VG_UNDEFINED(p, n)                   VALGRIND_MAKE_MEM_UNDEFINED((p), (n))
#  define NM_VG_DEFINED(p, n)                     VALGRIND_MAKE_MEM_DEFINED((p), (n))
#  define NM_VG_RUNNING()                         RUNNING_ON_VALGRIND
#else
#  define NM_VG_MEMPOOL_CREATE(pool, rz, zeroed)  ((void)0)
#  define NM_VG_MEMPOOL_DESTROY(pool)             ((void)0)
#  define NM_VG_MEMPOOL_ALLOC(pool, p, n)         ((void)0)
#  define NM_VG_MEMPOOL_FREE(pool, p)             ((void)0)
#  define NM_VG_MALLOCLIKE(p, n, rz, zeroed)      ((void)0)
#  define NM_VG_FREELIKE(p, rz)                   ((void)0)
#  define NM_VG_RESIZEINPLACE(p, old, new_, rz)   ((void)0)
#  define NM_VG_NOACCESS(p, n)                    ((void)0)
#  define NM_VG_UNDEFINED(p, n)                   ((void)0)
#  define NM_VG_DEFINED(p, n)                     ((void)0)
#  define NM_VG_RUNNING()                         0
#endif

/* ---- AddressSanitizer poisoning (only when built with -fsanitize=address) ------------- */
#if defined(__SANITIZE_ADDRESS__)
#  define NM_HAVE_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define NM_HAVE_ASAN 1
#  endif
#endif
#if defined(NM_HAVE_ASAN)
#  include <sanitizer/asan_interface.h>
#  define NM_ASAN_POISON(p, n)    ASAN_POISON_MEMORY_REGION((p), (n))
#  define NM_ASAN_UNPOISON(p, n)  ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#  define NM_ASAN_POISON(p, n)    ((void)(p), (void)(n))
#  define NM_ASAN_UNPOISON(p, n)  ((void)(p), (void)(n))
#endif

/* ---- [pool] per-pointer thread-exit keys and a cheap thread id -------------------------------- *
 * nm_tls_key_t holds one pointer per thread; when a thread exits with a non-NULL value the
 * destructor runs with it (pthread keys; fiber-local storage on Windows, whose callback also
 * runs at thread exit).  NM_TLS_DTOR_CALL is the destructor's calling convention. */
#if defined(NM_OS_WINDOWS)
typedef DWORD nm_tls_key_t;
#  define NM_TLS_DTOR_CALL NTAPI
NM_INLINE int nm_tls_key_create(nm_tls_key_t *k, void (NM_TLS_DTOR_CALL *dtor)(void *)) {
    *k = FlsAlloc(dtor);
    return *k == FLS_OUT_OF_INDEXES ? -1 : 0;
}
NM_INLINE int nm_tls_key_set(nm_tls_key_t k, void *v) { return FlsSetValue(k, v) ? 0 : -1; }
NM_INLINE void *nm_tls_key_get(nm_tls_key_t k) { return FlsGetValue(k); }
#else
typedef pthread_key_t nm_tls_key_t;
#  define NM_TLS_DTOR_CALL
NM_INLINE int nm_tls_key_create(nm_tls_key_t *k, void (*dtor)(void *)) { return pthread_key_create(k, dtor) ? -1 : 0; }
NM_INLINE int nm_tls_key_set(nm_tls_key_t k, void *v) { return pthread_setspecific(k, v) ? -1 : 0; }
NM_INLINE void *nm_tls_key_get(nm_tls_key_t k) { return pthread_getspecific(k); }
#endif
/* A word unique among live threads that is cheap to read: the thread pointer where the
 * compiler exposes it (no __tls_get_addr call from a shared library), else nm_thread_id(). */
#if defined(__GNUC__) && !defined(__clang__) && !defined(_WIN32) && __GNUC__ >= 11 && (defined(__x86_64__) || defined(__aarch64__))
#  define NM_HAVE_THREAD_POINTER 1
#endif
NM_INLINE uintptr_t nm_thread_fast_id(void) {
#if defined(NM_HAVE_THREAD_POINTER)
    return (uintptr_t)__builtin_thread_pointer();
#elif defined(_MSC_VER) && defined(_M_X64) && !defined(_M_ARM64EC)
    return (uintptr_t)__readgsqword(0x30);
#elif defined(_MSC_VER) && defined(_M_IX86)
    return (uintptr_t)__readfsdword(0x18);
#else
    return nm_thread_id();
#endif
}
/* ---- [pool] end ---------------------------------------------------------------------- */

#endif /* NM_PLATFORM_H */
