/* platform.c -- the OS behind platform.h's small interface: threads, clocks, the contended path
 * of the spinlock, and the fork-safety registry with its pthread_atfork handlers.  It uses the OS
 * and the C library directly and includes nothing of nativemem but platform.h: the rest of the
 * core depends on it, never the other way. */
#include "platform.h"

#include <stdlib.h>
#include <string.h>

#include <time.h>
#if !defined(_WIN32)
#  include <sched.h>
#  include <unistd.h>
#endif
#if defined(__linux__)
#  include <sys/syscall.h>
#endif

#if defined(NM_OS_WINDOWS)

struct nm_thread { HANDLE h; nm_thread_fn fn; void *arg; };
static DWORD WINAPI nm__thread_main(LPVOID v) {
    struct nm_thread *t = (struct nm_thread *)v;
    t->fn(t->arg);
    return 0;
}
nm_thread_t *nm_thread_start(nm_thread_fn fn, void *arg) {
    struct nm_thread *t = (struct nm_thread *)HeapAlloc(GetProcessHeap(), 0, sizeof *t);
    if (t == NULL) return NULL;
    t->fn = fn;
    t->arg = arg;
    t->h = CreateThread(NULL, 0, nm__thread_main, t, 0, NULL);
    if (t->h == NULL) { HeapFree(GetProcessHeap(), 0, t); return NULL; }
    return t;
}
void nm_thread_join(nm_thread_t *t) {
    WaitForSingleObject(t->h, INFINITE);
    CloseHandle(t->h);
    HeapFree(GetProcessHeap(), 0, t);
}
void nm_thread_yield(void) { SwitchToThread(); }

int nm_heavy_barrier_init(void) { return 1; } /* FlushProcessWriteBuffers: Vista and later */
void nm_heavy_barrier(void) { FlushProcessWriteBuffers(); }

uint64_t nm_now_ns(void) {
    static LARGE_INTEGER freq;
    LARGE_INTEGER now;
    if (freq.QuadPart == 0) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (uint64_t)((double)now.QuadPart * 1e9 / (double)freq.QuadPart);
}

size_t nm_os_page_size(void) {
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    return (size_t)si.dwPageSize;
}
void *nm_os_map(size_t size) {
    return VirtualAlloc(NULL, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
}
void nm_os_unmap(void *p, size_t size) {
    (void)size;
    if (p) VirtualFree(p, 0, MEM_RELEASE);
}
int nm_os_protect(void *p, size_t size, int access) {
    DWORD old;
    return VirtualProtect(p, size, access ? PAGE_READWRITE : PAGE_NOACCESS, &old) ? 0 : -1;
}

#else

struct nm_thread { pthread_t t; nm_thread_fn fn; void *arg; };
static void *nm__thread_main(void *v) {
    struct nm_thread *t = (struct nm_thread *)v;
    t->fn(t->arg);
    return NULL;
}
nm_thread_t *nm_thread_start(nm_thread_fn fn, void *arg) {
    struct nm_thread *t = (struct nm_thread *)malloc(sizeof *t);
    if (t == NULL) return NULL;
    t->fn = fn;
    t->arg = arg;
    if (pthread_create(&t->t, NULL, nm__thread_main, t) != 0) { free(t); return NULL; }
    return t;
}
void nm_thread_join(nm_thread_t *t) {
    pthread_join(t->t, NULL);
    free(t);
}
void nm_thread_yield(void) { sched_yield(); }

#if defined(__linux__) && defined(SYS_membarrier)
/* membarrier(2): QUERY 0, PRIVATE_EXPEDITED 8, REGISTER_PRIVATE_EXPEDITED 16 (Linux 4.14) */
static nm_atomic_t nm__membarrier; /* 0 not decided, 1 available, 2 not */
int nm_heavy_barrier_init(void) {
    intptr_t st = nm_atomic_load_acquire(&nm__membarrier);
    if (st == 0) {
        long cmds = syscall(SYS_membarrier, 0, 0, 0);
        st = (cmds > 0 && (cmds & 8) && (cmds & 16) && syscall(SYS_membarrier, 16, 0, 0) == 0) ? 1 : 2;
        nm_atomic_store_release(&nm__membarrier, st); /* racing deciders decide the same */
    }
    return st == 1;
}
void nm_heavy_barrier(void) { (void)syscall(SYS_membarrier, 8, 0, 0); }
#else
int nm_heavy_barrier_init(void) { return 0; }
void nm_heavy_barrier(void) { nm_atomic_fence_seq_cst(); }
#endif

uint64_t nm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#  define MAP_ANONYMOUS MAP_ANON
#endif

size_t nm_os_page_size(void) {
    static size_t cached;
    if (cached == 0) {
        long v = sysconf(_SC_PAGESIZE);
        cached = v > 0 ? (size_t)v : 4096;
    }
    return cached;
}
void *nm_os_map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
void nm_os_unmap(void *p, size_t size) {
    if (p) munmap(p, size);
}
int nm_os_protect(void *p, size_t size, int access) {
    return mprotect(p, size, access ? (PROT_READ | PROT_WRITE) : PROT_NONE);
}

#endif

/* ---- spinlock, contended path ------------------------------------------------------------ */
#if defined(_MSC_VER)
#  include <intrin.h>
#  if (defined(_M_X64) || defined(_M_IX86)) && !defined(_M_ARM64EC)
#    define NM__PAUSE() _mm_pause()
#  else
#    define NM__PAUSE() __yield()
#  endif
#elif defined(__x86_64__) || defined(__i386__)
#  define NM__PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#  define NM__PAUSE() __asm__ __volatile__("yield")
#else
#  define NM__PAUSE() ((void)0)
#endif

void nm_spin_wait(nm_spin_t *s) {
    unsigned spins = 0;
    for (;;) {
        /* wait on a plain load (no cache-line ping-pong), then try the exchange again */
        while (nm_atomic_load_relaxed(s) != 0) {
            if (++spins < 64) {
                NM__PAUSE();
            } else {
                nm_thread_yield();
                spins = 0;
            }
        }
        if (nm_atomic_exchange(s, 1) == 0) return;
    }
}

/* ---- fork safety: the registry and its pthread_atfork handlers (see platform.h) ------------------- */
void nm_atfork_spin_lock(void *spin) { nm_spin_lock((nm_spin_t *)spin); }
void nm_atfork_spin_unlock(void *spin) { nm_spin_unlock((nm_spin_t *)spin); }
void nm_atfork_mutex_lock(void *mutex) { nm_mutex_lock((nm_mutex_t *)mutex); }
void nm_atfork_mutex_unlock(void *mutex) { nm_mutex_unlock((nm_mutex_t *)mutex); }

#if defined(NM_OS_POSIX)
#include <stdlib.h>

/* The registry's lock: held from the prepare handler to the parent/child handler, and briefly
 * (never waiting for anything else) to add or remove entries. */
static pthread_mutex_t nm__fork_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t nm__fork_once = PTHREAD_ONCE_INIT;
static nm_atfork_t *nm__fork_heads[NM_ATFORK_RANKS]; /* per rank, newest first */
static nm_atomic_t nm__fork_pending;                 /* 1 from prepare until the lock is released */
static nm_atomic_t nm__fork_parked;                  /* nm_atfork_t *: retired during a fork */

static void nm__fork_prepare(void) {
    int r;
    nm_atfork_t *e;
    pthread_mutex_lock(&nm__fork_lock);
    nm_atomic_exchange(&nm__fork_pending, 1); /* from here nm_atfork_retire does not wait */
    for (r = 0; r < NM_ATFORK_RANKS; r++)
        for (e = nm__fork_heads[r]; e; e = e->next) e->lock(e->arg);
}

static void nm__fork_release(int in_child) {
    int r;
    nm_atfork_t *e;
    for (r = NM_ATFORK_RANKS - 1; r >= 0; r--)
        for (e = nm__fork_heads[r]; e; e = e->next) (in_child && e->child ? e->child : e->unlock)(e->arg);
    nm_atomic_exchange(&nm__fork_pending, 0);
    pthread_mutex_unlock(&nm__fork_lock);
    /* Parked entries are not finished here: their `fin` frees into allocators whose own fork
     * handlers may not have run yet.  The next register/unregister does it. */
}
static void nm__fork_parent(void) { nm__fork_release(0); }
static void nm__fork_child(void) { nm__fork_release(1); }

static void nm__fork_install(void) { (void)pthread_atfork(nm__fork_prepare, nm__fork_parent, nm__fork_child); }

static void nm__fork_link(nm_atfork_t *e) {
    nm_atfork_t **head = &nm__fork_heads[e->rank];
    e->prev = NULL;
    e->next = *head;
    if (*head) (*head)->prev = e;
    *head = e;
    e->linked = 1;
}
static void nm__fork_unlink(nm_atfork_t *e) {
    if (!e->linked) return;
    if (e->prev) e->prev->next = e->next;
    else nm__fork_heads[e->rank] = e->next;
    if (e->next) e->next->prev = e->prev;
    e->prev = e->next = NULL;
    e->linked = 0;
}

/* Unlink the parked entries (registry lock held); the caller finishes them after unlocking. */
static nm_atfork_t *nm__fork_take_parked(void) {
    nm_atfork_t *list = (nm_atfork_t *)nm_atomic_exchange(&nm__fork_parked, 0), *e;
    for (e = list; e; e = e->parked_next) nm__fork_unlink(e);
    return list;
}
static void nm__fork_finish(nm_atfork_t *list) {
    while (list) {
        nm_atfork_t *next = list->parked_next;
        list->fin(list->fin_arg); /* may free the entry */
        list = next;
    }
}

void nm_atfork_register(nm_atfork_t *e) {
    nm_atfork_t *parked;
    if (e->rank < 0 || e->rank >= NM_ATFORK_RANKS) e->rank = NM_ATFORK_OBJECT;
    pthread_once(&nm__fork_once, nm__fork_install);
    pthread_mutex_lock(&nm__fork_lock);
    if (!e->linked) nm__fork_link(e);
    parked = nm__fork_take_parked();
    pthread_mutex_unlock(&nm__fork_lock);
    nm__fork_finish(parked);
}

void nm_atfork_unregister(nm_atfork_t *e) {
    nm_atfork_t *parked;
    pthread_mutex_lock(&nm__fork_lock);
    nm__fork_unlink(e);
    parked = nm__fork_take_parked();
    pthread_mutex_unlock(&nm__fork_lock);
    nm__fork_finish(parked);
}

void nm_atfork_retire(nm_atfork_t *e, nm_atfork_fn fin, void *arg) {
    for (;;) {
        /* The lock is held either by a fork in progress (pending set right after taking it),
         * whose prepare handler may be waiting for a lock this thread holds -- then park -- or
         * briefly by a register/unregister, which waits for nothing: then try again. */
        if (pthread_mutex_trylock(&nm__fork_lock) == 0) {
            nm__fork_unlink(e);
            pthread_mutex_unlock(&nm__fork_lock);
            fin(arg);
            return;
        }
        if (nm_atomic_load_acquire(&nm__fork_pending)) {
            intptr_t head = nm_atomic_load_relaxed(&nm__fork_parked);
            e->fin = fin;
            e->fin_arg = arg;
            do {
                e->parked_next = (nm_atfork_t *)head;
            } while (!nm_atomic_cas(&nm__fork_parked, &head, (intptr_t)e));
            return;
        }
        nm_thread_yield();
    }
}

void nm_atfork_register_spin(nm_spin_t *lock) {
    nm_atfork_t *e = (nm_atfork_t *)malloc(sizeof *e);
    if (e == NULL) return; /* not protected across fork; nothing else changes */
    nm_atfork_init(e, nm_atfork_spin_lock, nm_atfork_spin_unlock, NULL, lock, NM_ATFORK_OBJECT);
    e->owned = 1;
    nm_atfork_register(e);
}

void nm_atfork_unregister_spin(nm_spin_t *lock) {
    nm_atfork_t *e, *parked;
    pthread_mutex_lock(&nm__fork_lock);
    for (e = nm__fork_heads[NM_ATFORK_OBJECT]; e; e = e->next)
        if (e->owned && e->arg == (void *)lock) break;
    if (e) nm__fork_unlink(e);
    parked = nm__fork_take_parked();
    pthread_mutex_unlock(&nm__fork_lock);
    free(e);
    nm__fork_finish(parked);
}
#endif
