/* Keys crafted (with strtab.c's own hash, included here) to share one shard and one home bucket,
 * some with the same tag too; long runs of intern/release that empty and refill the buckets.
 * Every held string must stay findable with its count; prints "bad N". */
#include "../../../csrc/strtab.c"
#include <stdlib.h>

#define NK 2000
static char keys[NK][24];
static size_t lens[NK];
static intptr_t held[NK];
static const char *ptr[NK];

int main(int argc, char **argv) {
    unsigned long rounds = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
    nm_strtab_t *t = nm_strtab_create(NULL);
    size_t nk = 0, bad = 0;
    unsigned long i, seed = 12345;
    uint64_t want = 0;
    /* keys of shard 3 whose low 5 bits (home bucket while nb <= 32) are 0; a third share a tag */
    for (i = 0; nk < NK; i++) {
        char b[24];
        int n = snprintf(b, sizeof b, "key-%lu", i);
        uint64_t h = nm__strhash(b, (size_t)n);
        if (nm__shard_of(h) != 3 || (h & 31) != 0) continue;
        if (nk % 3 == 0 && nk) { if (nm__tag(h) != nm__tag(want)) continue; }
        if (nk == 0) want = h;
        memcpy(keys[nk], b, (size_t)n + 1);
        lens[nk++] = (size_t)n;
    }
    for (i = 0; i < rounds; i++) {
        size_t k;
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        k = (size_t)(seed >> 33) % (i < rounds / 2 ? 300 : NK);
        if ((seed >> 20) & 1) {
            const char *p = nm_strtab_intern(t, keys[k], lens[k]);
            if (held[k] && p != ptr[k]) { bad++; fprintf(stderr, "key %zu moved\n", k); }
            ptr[k] = p;
            held[k]++;
        } else if (held[k]) {
            if (nm_strtab_release(t, ptr[k]) != NM_OK) bad++;
            held[k]--;
        }
        if (i % 5000 == 0) {
            size_t j, cnt = 0;
            for (j = 0; j < NK; j++) {
                if (nm_strtab_lookup_refs(t, keys[j], lens[j]) != held[j]) {
                    bad++;
                    if (bad < 10) fprintf(stderr, "round %lu key %zu refs %ld want %ld\n", i, j,
                                          (long)nm_strtab_lookup_refs(t, keys[j], lens[j]), (long)held[j]);
                }
                cnt += held[j] != 0;
            }
            if (nm_strtab_count(t) != cnt) { bad++; fprintf(stderr, "count %zu want %zu\n", nm_strtab_count(t), cnt); }
        }
    }
    {
        size_t j;
        for (j = 0; j < NK; j++) while (held[j]--) if (nm_strtab_release(t, ptr[j]) != NM_OK) bad++;
        if (nm_strtab_count(t) != 0) bad++;
    }
    nm_strtab_destroy(t);
    printf("bad %zu\n", bad);
    return bad != 0;
}
