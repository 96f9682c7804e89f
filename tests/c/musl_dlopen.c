/* musl_dlopen.c -- the C core as a shared library under musl, loaded with dlopen() (issue 14).
 *
 * musl's dynamic linker keeps no static-TLS surplus for libraries loaded at run time: a
 * dlopen'ed object with initial-exec TLS relocations fails to load ("initial-exec TLS resolves
 * to dynamic definition").  .ci/cross-checks.sh builds every csrc .c file with musl-gcc as a shared
 * library and this program with musl-gcc too, and runs it: it dlopen()s the library, dlsym()s
 * a few entry points and uses them from two threads (each thread's first touch of nativemem's
 * thread-locals).  Exit status 0 when everything worked.
 *
 * Only the public API is used, through pointers found with dlsym (no nativemem symbol is linked
 * in), typed from nativemem.h's prototypes (__typeof__: GCC and Clang).
 *
 *   usage: musl_dlopen /path/to/libnativemem_core.so
 */
#include "nativemem.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* pointer types from the header's own prototypes: a signature change there fails this build */
static __typeof__(nm_allocator_libc) *p_allocator_libc;
static __typeof__(nm_malloc) *p_malloc;
static __typeof__(nm_free) *p_free;
static __typeof__(nm_pool_create) *p_pool_create;
static __typeof__(nm_pool_alloc) *p_pool_alloc;
static __typeof__(nm_pool_free) *p_pool_free;
static __typeof__(nm_pool_destroy) *p_pool_destroy;
static __typeof__(nm_last_error) *p_last_error;

static nm_pool_t *pool;

#define ROUNDS 2000
#define BATCH 16

static void *work(void *arg) {
    nm_allocator_t *libc = p_allocator_libc();
    void *objs[BATCH];
    int r, i, bad = 0;
    (void)arg;
    for (r = 0; r < ROUNDS && !bad; r++) {
        unsigned char *p = (unsigned char *)p_malloc(libc, 48 + (size_t)r % 200);
        if (!p) { bad = 1; break; }
        memset(p, 0x5A, 48);
        p_free(libc, p);
        for (i = 0; i < BATCH; i++) {
            objs[i] = p_pool_alloc(pool);
            if (!objs[i]) { bad = 1; break; }
            memset(objs[i], i, 32);
        }
        while (i-- > 0)
            if (p_pool_free(pool, objs[i]) != 0) bad = 1;
    }
    if (p_last_error() != NM_OK) bad = 1; /* nothing failed: the thread's error is still clear */
    return bad ? (void *)"failed" : NULL;
}

#define SYM(var, name)                                                                             \
    do {                                                                                           \
        *(void **)&(var) = dlsym(lib, name);                                                       \
        if (!(var)) { fprintf(stderr, "musl_dlopen: dlsym(%s): %s\n", name, dlerror()); return 1; } \
    } while (0)

int main(int argc, char **argv) {
    void *lib, *res[2];
    pthread_t t[2];
    int i, bad = 0;
    if (argc != 2) { fprintf(stderr, "usage: %s LIBRARY\n", argv[0]); return 2; }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "musl_dlopen: dlopen: %s\n", dlerror()); return 1; }
    SYM(p_allocator_libc, "nm_allocator_libc");
    SYM(p_malloc, "nm_malloc");
    SYM(p_free, "nm_free");
    SYM(p_pool_create, "nm_pool_create");
    SYM(p_pool_alloc, "nm_pool_alloc");
    SYM(p_pool_free, "nm_pool_free");
    SYM(p_pool_destroy, "nm_pool_destroy");
    SYM(p_last_error, "nm_last_error");

    pool = p_pool_create(p_allocator_libc(), 32, 64, 0);
    if (!pool) { fprintf(stderr, "musl_dlopen: nm_pool_create failed (%d)\n", p_last_error()); return 1; }
    for (i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, work, NULL) != 0) { fprintf(stderr, "musl_dlopen: pthread_create\n"); return 1; }
    for (i = 0; i < 2; i++) {
        pthread_join(t[i], &res[i]);
        if (res[i]) { fprintf(stderr, "musl_dlopen: thread %d %s (error %d)\n", i, (const char *)res[i], p_last_error()); bad = 1; }
    }
    if (work(NULL) != NULL) { fprintf(stderr, "musl_dlopen: main thread failed\n"); bad = 1; }
    p_pool_destroy(pool);
    if (p_last_error() != NM_OK) { fprintf(stderr, "musl_dlopen: error %d set after destroy\n", p_last_error()); bad = 1; }
    if (dlclose(lib) != 0) { fprintf(stderr, "musl_dlopen: dlclose: %s\n", dlerror()); bad = 1; }
    if (bad) return 1;
    printf("musl_dlopen: dlopen + 8 symbols + 2 threads + main: OK\n");
    return 0;
}
