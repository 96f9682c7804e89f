/* pool_vg.c -- pools under Valgrind memcheck.  Built with -DNM_HAVE_VALGRIND=1 so that pool.c
 * issues its client requests; a pool created under Valgrind (pool->vg) takes the full paths
 * (pool->fast == NM__FAST_NONE), which issue them.
 *
 *   pool_vg ok        correct use of every mode (default, zero, checked, unchecked) and many
 *                     sizes and alignments: singles (the hot object, the last allocated), list
 *                     pops, batches, frees by other threads singly and in batches, a thread that
 *                     exits holding a hot object, check and stats; memcheck must report nothing
 *   pool_vg bad [,MODE,MODE,]
 *                     seeded misuses in the modes named (default, zero, checked, unchecked,
 *                     unchecked-zero; all without the argument), one after another: reads and
 *                     writes of freed objects (the one freed last, one freed before it, batch-freed,
 *                     freed by another thread), a branch on a reallocated object's old contents;
 *                     each must raise memcheck's error count (VALGRIND_COUNT_ERRORS), else the
 *                     program prints "MISSED: <case>" and fails
 *
 * "OK" is printed last on stdout. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <valgrind/valgrind.h>
#include "nm_pool.h"
#include "nm_alloc.h"

static int nfail;
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            nfail++;                                                           \
            fprintf(stderr, "FAIL line %d: ", __LINE__);                       \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
    } while (0)

static volatile int sink;

/* A read memcheck must see: the byte decides a branch (an undefined one is reported). */
static __attribute__((noinline)) void touch_read(const void *p, size_t off) {
    if (((const volatile unsigned char *)p)[off] == 0x5a) sink++;
}
static __attribute__((noinline)) void touch_write(void *p, size_t off) {
    ((volatile unsigned char *)p)[off] = 0x77;
}

static void fill(void *p, size_t n, unsigned v) { memset(p, (int)(v & 0xff), n); }
static int same(const void *p, size_t n, unsigned v) {
    const unsigned char *c = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++)
        if (c[i] != (unsigned char)(v & 0xff)) return 0;
    return 1;
}
static int zero(const void *p, size_t n) { return same(p, n, 0); }

static void stats(nm_pool_t *p, int64_t *a, int64_t *f, int64_t *l) {
    nm_pool_stats_t st;
    nm_pool_stats(p, &st);
    *a = st.allocations;
    *f = st.frees;
    *l = st.live;
}

/* ---- ok ---------------------------------------------------------------------------------- */
typedef struct {
    nm_pool_t *p;
    void **objs;
    size_t n;
    int mode; /* 0: free objs singly, 1: in one batch, 2: allocate n, write, keep in objs; 3: hot exit */
    int rc;
} job_t;

static void *worker(void *arg) {
    job_t *j = (job_t *)arg;
    size_t i, size = nm_pool_object_size(j->p);
    j->rc = 0;
    if (j->mode == 0) {
        for (i = 0; i < j->n; i++) j->rc |= nm_pool_free(j->p, j->objs[i]);
    } else if (j->mode == 1) {
        j->rc = nm_pool_free_many(j->p, j->objs, j->n);
    } else if (j->mode == 2) {
        for (i = 0; i < j->n; i++) {
            j->objs[i] = nm_pool_alloc(j->p);
            if (!j->objs[i]) { j->rc = -1; break; }
            fill(j->objs[i], size, 0x30 + (unsigned)i);
        }
    } else {
        void *x = nm_pool_alloc(j->p);
        if (!x) j->rc = -1;
        else {
            fill(x, size, 9);
            j->rc = nm_pool_free(j->p, x); /* exits holding it as its hot object */
        }
    }
    return NULL;
}

static void run_job(job_t *j) {
    pthread_t t;
    pthread_create(&t, NULL, worker, j);
    pthread_join(t, NULL);
}

#define NOBJ 120

static void ok_case(unsigned flags, size_t size, size_t align) {
    nm_pool_t *p = nm_pool_create_ex(NULL, size, 16, align, flags);
    void *objs[NOBJ], *more[NOBJ];
    size_t i, k;
    int64_t a = 0, f = 0, live = 0, ga, gf, gl;
    int zeroing = (flags & NM_POOL_ZERO) != 0;
    job_t j;
    CHECK(p != NULL, "create %u %zu %zu", flags, size, align);
    if (!p) return;
    /* pairs: the hot object (and the object allocated last) */
    for (i = 0; i < 50; i++) {
        void *x = nm_pool_alloc(p);
        CHECK(x != NULL, "alloc");
        if (zeroing) CHECK(zero(x, size), "pair %zu: not zero", i);
        fill(x, size, (unsigned)i);
        CHECK(same(x, size, (unsigned)i), "pair contents");
        CHECK(nm_pool_free(p, x) == 0, "pair free: %s", nm_last_error_message());
        a++, f++;
    }
    /* many live, freed singly in an interleaved order, then list pops */
    for (i = 0; i < NOBJ; i++) {
        objs[i] = nm_pool_alloc(p);
        CHECK(objs[i] != NULL, "alloc %zu", i);
        if (zeroing) CHECK(zero(objs[i], size), "fresh %zu not zero", i);
        fill(objs[i], size, (unsigned)i);
        a++;
    }
    for (i = 0; i < NOBJ; i += 3) {
        CHECK(nm_pool_free(p, objs[i]) == 0, "free %zu: %s", i, nm_last_error_message());
        f++;
    }
    for (i = 0; i < NOBJ; i += 3) {
        objs[i] = nm_pool_alloc(p);
        CHECK(objs[i] != NULL, "realloc %zu", i);
        if (zeroing) CHECK(zero(objs[i], size), "list pop %zu not zero", i);
        fill(objs[i], size, (unsigned)i);
        a++;
    }
    for (i = 0; i < NOBJ; i++) CHECK(same(objs[i], size, (unsigned)i), "contents of %zu", i);
    /* batches */
    CHECK(nm_pool_free_many(p, objs, NOBJ / 2) == 0, "free_many: %s", nm_last_error_message());
    f += NOBJ / 2;
    k = nm_pool_alloc_many(p, more, NOBJ);
    CHECK(k == NOBJ, "alloc_many %zu", k);
    a += (int64_t)k;
    for (i = 0; i < k; i++) {
        if (zeroing) CHECK(zero(more[i], size), "batch %zu not zero", i);
        fill(more[i], size, 0x80 + (unsigned)i);
    }
    for (i = NOBJ / 2; i < NOBJ; i++) CHECK(same(objs[i], size, (unsigned)i), "contents of %zu after batch", i);
    for (i = 0; i < k; i++) CHECK(same(more[i], size, 0x80 + (unsigned)i), "batch contents %zu", i);
    /* another thread frees the main thread's objects: singly, then in a batch */
    j.p = p, j.objs = more, j.n = NOBJ / 2, j.mode = 0;
    run_job(&j);
    CHECK(j.rc == 0, "remote singles");
    j.objs = more + NOBJ / 2, j.mode = 1;
    run_job(&j);
    CHECK(j.rc == 0, "remote batch");
    f += NOBJ;
    /* the main thread gets them back (remote frees folded), and frees the rest */
    k = nm_pool_alloc_many(p, more, NOBJ);
    CHECK(k == NOBJ, "alloc_many after remote frees %zu", k);
    a += (int64_t)k;
    for (i = 0; i < k; i++) {
        if (zeroing) CHECK(zero(more[i], size), "batch after remote %zu not zero", i);
        fill(more[i], size, 3);
    }
    for (i = NOBJ / 2; i < NOBJ; i++) CHECK(nm_pool_free(p, objs[i]) == 0, "free %zu", i);
    f += NOBJ / 2;
    /* another thread allocates; the main thread frees them, singly and as a batch */
    j.objs = objs, j.n = NOBJ, j.mode = 2;
    run_job(&j);
    CHECK(j.rc == 0, "remote allocations");
    a += NOBJ;
    for (i = 0; i < NOBJ; i++) CHECK(same(objs[i], size, 0x30 + (unsigned)i), "thread's object %zu", i);
    for (i = 0; i < NOBJ / 2; i++) CHECK(nm_pool_free(p, objs[i]) == 0, "free of a thread's object %zu", i);
    CHECK(nm_pool_free_many(p, objs + NOBJ / 2, NOBJ / 2) == 0, "batch free of a thread's objects");
    f += NOBJ;
    /* threads exit holding a hot object; then everything is allocated again */
    for (i = 0; i < 3; i++) {
        j.mode = 3;
        run_job(&j);
        CHECK(j.rc == 0, "hot exit");
        a++, f++;
    }
    k = nm_pool_alloc_many(p, objs, NOBJ);
    CHECK(k == NOBJ, "alloc_many at the end");
    a += (int64_t)k;
    for (i = 0; i < k; i++) {
        if (zeroing) CHECK(zero(objs[i], size), "end batch %zu not zero", i);
        fill(objs[i], size, 1);
    }
    CHECK(nm_pool_free_many(p, objs, k) == 0, "last batch");
    CHECK(nm_pool_free_many(p, more, NOBJ) == 0, "more");
    f += (int64_t)k + NOBJ;
    if (!(flags & NM_POOL_UNCHECKED)) CHECK(nm_pool_check(p) == 0, "check: %s", nm_last_error_message());
    stats(p, &ga, &gf, &gl);
    CHECK(ga == a && gf == f && gl == live, "stats %lld %lld %lld, want %lld %lld %lld", (long long)ga,
          (long long)gf, (long long)gl, (long long)a, (long long)f, (long long)live);
    nm_pool_destroy(p);
}

/* ---- bad: seeded misuses ------------------------------------------------------------------ */
static unsigned long errs_before;
static char pending[200];
/* Ends the previous case (it must have raised memcheck's error count), starts the next. */
static void announce(const char *name, const char *expect) {
    unsigned long now = (unsigned long)VALGRIND_COUNT_ERRORS;
    if (pending[0] && now == errs_before) {
        nfail++;
        fprintf(stderr, "MISSED: %s\n", pending);
    }
    snprintf(pending, sizeof pending, "%s (want: %s)", name, expect);
    if (strcmp(expect, "-") == 0) pending[0] = 0;
    fprintf(stderr, "CASE %s | %s\n", name, expect);
    errs_before = (unsigned long)VALGRIND_COUNT_ERRORS;
}

static void *remote_free(void *arg) {
    void **a = (void **)arg;
    if (nm_pool_free((nm_pool_t *)a[0], a[1]) != 0) nfail++;
    return NULL;
}

static void bad_cases(const char *only) {
    static const struct { unsigned flags; const char *name; } modes[] = {
        {0, "default"}, {NM_POOL_ZERO, "zero"}, {NM_POOL_CHECKED | NM_POOL_QUIET, "checked"},
        {NM_POOL_UNCHECKED, "unchecked"}, {NM_POOL_UNCHECKED | NM_POOL_ZERO, "unchecked-zero"}};
    static const size_t sizes[] = {8, 48};
    size_t m, s;
    char name[160];
    for (m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            unsigned flags = modes[m].flags;
            size_t size = sizes[s];
            nm_pool_t *p;
            char want[64];
            snprintf(want, sizeof want, ",%s,", modes[m].name);
            if (only && !strstr(only, want)) continue;
            p = nm_pool_create_ex(NULL, size, 16, 16, flags);
            void *x, *y, *objs[8];
            pthread_t t;
            void *arg[2];
            const char *mn = modes[m].name;
#define CASE(what, expect) (snprintf(name, sizeof name, "%s/%zu: %s", mn, size, what), announce(name, expect))
            /* the object freed last (the hot one, where a mode keeps one) */
            x = nm_pool_alloc(p);
            fill(x, size, 1);
            nm_pool_free(p, x);
            CASE("read of the object freed last, byte 0", "Invalid read");
            touch_read(x, 0);
            CASE("read of the object freed last, last byte", "Invalid read");
            touch_read(x, size - 1);
            /* an object freed while another one is hot: on a list */
            x = nm_pool_alloc(p);
            y = nm_pool_alloc(p);
            fill(x, size, 3), fill(y, size, 4);
            nm_pool_free(p, y);
            nm_pool_free(p, x);
            CASE("read of an object freed before the last, byte 0", "Invalid read");
            touch_read(y, 0);
            CASE("read of an object freed before the last, last byte", "Invalid read");
            touch_read(y, size - 1);
            /* freed in a batch */
            if (nm_pool_alloc_many(p, objs, 8) == 8) {
                size_t i;
                for (i = 0; i < 8; i++) fill(objs[i], size, 6);
                nm_pool_free_many(p, objs, 8);
                CASE("read of a batch-freed object, byte 0", "Invalid read");
                touch_read(objs[3], 0);
                CASE("read of a batch-freed object, last byte", "Invalid read");
                touch_read(objs[5], size - 1);
            } else {
                nfail++;
            }
            /* freed by another thread */
            x = nm_pool_alloc(p);
            fill(x, size, 2);
            arg[0] = p, arg[1] = x;
            pthread_create(&t, NULL, remote_free, arg);
            pthread_join(t, NULL);
            CASE("read of an object another thread freed, byte 0", "Invalid read");
            touch_read(x, 0);
            CASE("read of an object another thread freed, last byte", "Invalid read");
            touch_read(x, size - 1);
            /* uninitialised: an unzeroed object's old contents, reallocated */
            if (!(flags & NM_POOL_ZERO)) {
                x = nm_pool_alloc(p);
                fill(x, size, 5);
                nm_pool_free(p, x);
                x = nm_pool_alloc(p);
                CASE("branch on a reallocated object's old contents", "Conditional jump (uninitialised)");
                touch_read(x, size - 1);
                nm_pool_free(p, x);
            }
            /* last (it may damage a free-list link): a write after free */
            x = nm_pool_alloc(p);
            nm_pool_free(p, x);
            CASE("write to the object freed last, byte 0", "Invalid write");
            touch_write(x, 0);
            announce("end of mode", "-");
            nm_pool_destroy(p);
#undef CASE
        }
    }
}

int main(int argc, char **argv) {
    static const unsigned flag_sets[] = {0, NM_POOL_ZERO, NM_POOL_CHECKED | NM_POOL_QUIET,
                                         NM_POOL_CHECKED | NM_POOL_ZERO | NM_POOL_QUIET, NM_POOL_UNCHECKED,
                                         NM_POOL_UNCHECKED | NM_POOL_ZERO};
    static const size_t shapes[][2] = {{1, 8}, {8, 8}, {24, 8}, {40, 64}, {48, 16}, {100, 64}, {300, 16}, {64, 4096}};
    size_t f, s;
    const char *mode = argc > 1 ? argv[1] : "ok";
    setvbuf(stderr, NULL, _IONBF, 0);
    if (strcmp(mode, "ok") == 0) {
        for (f = 0; f < sizeof flag_sets / sizeof flag_sets[0]; f++)
            for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++) ok_case(flag_sets[f], shapes[s][0], shapes[s][1]);
    } else {
        bad_cases(argc > 2 ? argv[2] : NULL);
    }
    if (RUNNING_ON_VALGRIND && strcmp(mode, "ok") == 0 && VALGRIND_COUNT_ERRORS != 0) {
        fprintf(stderr, "memcheck reported %u error(s) in correct use\n", (unsigned)VALGRIND_COUNT_ERRORS);
        nfail++;
    }
    if (!RUNNING_ON_VALGRIND) {
        fprintf(stderr, "not under Valgrind\n");
        nfail++;
    }
    if (nfail) {
        fprintf(stderr, "%d failure(s)\n", nfail);
        return 1;
    }
    printf("OK\n");
    return 0;
}
