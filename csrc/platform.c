/* platform.c -- OS page mapping and protection behind platform.h's small interface. */
#include "nm_internal.h"

#include <time.h>
#if !defined(_WIN32)
#  include <sched.h>
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
    struct nm_thread *t = (struct nm_thread *)nm_malloc(nm_allocator_libc(), sizeof *t);
    if (t == NULL) return NULL;
    t->fn = fn;
    t->arg = arg;
    if (pthread_create(&t->t, NULL, nm__thread_main, t) != 0) { nm_free(nm_allocator_libc(), t); return NULL; }
    return t;
}
void nm_thread_join(nm_thread_t *t) {
    pthread_join(t->t, NULL);
    nm_free(nm_allocator_libc(), t);
}
void nm_thread_yield(void) { sched_yield(); }

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
#  if defined(_M_X64) || defined(_M_IX86)
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
