/*
 * iriw - independent reads of independent writes.
 *
 *   iriw RANK NPROCS KEY [ITERS=20000]        (NPROCS must be 4)
 *
 *   rank 0:  x = 1;
 *   rank 1:  y = 1;
 *   rank 2:  r1 = x;  r2 = y;
 *   rank 3:  r3 = y;  r4 = x;
 *
 * Forbidden: r1 == 1, r2 == 0, r3 == 1, r4 == 0 - the two readers disagree
 * on the order of the two independent writes (rank 2 saw x before y,
 * rank 3 saw y before x).  x86 is multi-copy atomic, so this is forbidden
 * natively too.  Under KDIPC a bug such as granting a write before every
 * read copy is invalidated would let one reader keep the old page.
 *
 * Layout and pacing: see the litmus section of common.h (per-iteration
 * slots holding i + 1, a barrier every 16 iterations, blocks alternating
 * between x/y on one page and on two pages).  Each reader keeps its
 * outcomes privately; at the end rank 3 copies its outcomes to the results
 * pages and rank 2 checks the combined outcome of every iteration.
 *
 * Output: one line per rank; rank 2's reads
 *   iriw rank 2: iters=N forbidden=F outcomes r1r2/r3r4: 00/00=... ...
 * listing only the combined outcomes that occurred.  Exit 1 if F > 0.
 */
#include "common.h"

/* Outcome bits of a reader: first read << 1 | second read. */
#define SAW_FIRST_ONLY 2

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 4, 20000);
    int id;
    uint8_t *seg = attach_segment_id(a.key, litmus_size(a.iters), &id);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, a.nprocs);
    uint8_t *seen = malloc((size_t)a.iters);
    if (seen == NULL)
        die("out of memory");

    /* Readers: rank 2 reads x then y, rank 3 reads y then x. */
    int first = a.rank == 2 ? 0 : 1;
    const char *first_name = first == 0 ? "x" : "y";
    const char *second_name = first == 0 ? "y" : "x";

    double t0 = now_seconds();
    for (long i = 0; i < a.iters; i++) {
        if (i % LITMUS_BLOCK == 0)
            barrier_wait(&bar);
        if (a.rank < 2) {
            *litmus_var(seg, a.rank, i) = (uint64_t)i + 1;
            continue;
        }
        volatile uint64_t *p = litmus_var(seg, first, i);
        volatile uint64_t *q = litmus_var(seg, 1 - first, i);
        uint64_t v1 = *p;
        compiler_barrier();
        uint64_t v2 = *q;
        seen[i] = (uint8_t)(litmus_seen(v1, i, first_name) << 1 |
                            litmus_seen(v2, i, second_name));
    }
    barrier_wait(&bar);

    volatile uint8_t *results = litmus_results(seg);
    if (a.rank == 3)
        for (long i = 0; i < a.iters; i++)
            results[i] = seen[i];
    barrier_wait(&bar);
    double elapsed = now_seconds() - t0;

    if (a.rank == 0)
        remove_segment(id);
    if (a.rank != 2) {
        free(seen);
        printf("iriw rank %d: iters=%ld time=%.3fs\n", a.rank, a.iters, elapsed);
        return 0;
    }

    long count[16] = { 0 };
    long forbidden = 0, first_forbidden = -1;
    for (long i = 0; i < a.iters; i++) {
        int r12 = seen[i], r34 = results[i];
        count[r12 << 2 | r34]++;
        if (r12 == SAW_FIRST_ONLY && r34 == SAW_FIRST_ONLY && forbidden++ == 0)
            first_forbidden = i;
    }
    free(seen);
    printf("iriw rank 2: iters=%ld forbidden=%ld outcomes r1r2/r3r4:", a.iters, forbidden);
    for (int c = 0; c < 16; c++)
        if (count[c] != 0)
            printf(" %d%d/%d%d=%ld", c >> 3 & 1, c >> 2 & 1, c >> 1 & 1, c & 1, count[c]);
    printf(" time=%.3fs\n", elapsed);
    if (forbidden != 0)
        fail("readers disagreed on the order of the writes %ld times "
             "(first at iteration %ld)", forbidden, first_forbidden);
    return 0;
}
