/*
 * sb - store buffering litmus test (Tapus thesis, Fig. 2.1).
 *
 *   sb RANK NPROCS KEY [ITERS=20000]          (NPROCS must be 2)
 *
 *   rank 0:  x = 1;  r0 = y;
 *   rank 1:  y = 1;  r1 = x;
 *
 * Forbidden under sequential consistency: r0 == 0 && r1 == 0 (each rank's
 * load was performed before the other rank's store).  Natively on x86 (TSO)
 * this outcome is allowed and does occur, because a store can wait in the
 * store buffer while the following load reads the cache; the program has no
 * fence on purpose.  Under KDIPC it must never occur: a write completes only
 * once every other copy of the page has been invalidated.
 *
 * Layout and pacing: see the litmus section of common.h (per-iteration
 * slots holding i + 1, a barrier every 16 iterations, blocks alternating
 * between x/y on one page and on two pages; at most two data pages per
 * iteration).  Each rank keeps its outcomes privately; at the end rank 1
 * copies its outcomes into the results pages and rank 0 counts the
 * combined outcomes r0r1 in {00, 01, 10, 11}.
 *
 * Output: one line per rank; rank 0's reads
 *   sb rank 0: iters=N forbidden=F outcomes 01=A 10=B 11=C time=T
 * Exit 1 if F > 0.
 */
#include "common.h"

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 20000);
    int id;
    uint8_t *seg = attach_segment_id(a.key, litmus_size(a.iters), &id);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, a.nprocs);
    uint8_t *seen = malloc((size_t)a.iters);
    if (seen == NULL)
        die("out of memory");

    int me = a.rank, other = 1 - a.rank;
    double t0 = now_seconds();
    for (long i = 0; i < a.iters; i++) {
        if (i % LITMUS_BLOCK == 0)
            barrier_wait(&bar);
        volatile uint64_t *mine = litmus_var(seg, me, i);
        volatile uint64_t *theirs = litmus_var(seg, other, i);
        *mine = (uint64_t)i + 1;
        compiler_barrier();
        uint64_t v = *theirs;
        seen[i] = (uint8_t)litmus_seen(v, i, me == 0 ? "y" : "x");
    }
    barrier_wait(&bar);

    volatile uint8_t *results = litmus_results(seg);
    if (me == 1)
        for (long i = 0; i < a.iters; i++)
            results[i] = seen[i];
    barrier_wait(&bar);
    double elapsed = now_seconds() - t0;

    if (me == 1) {
        long saw = 0;
        for (long i = 0; i < a.iters; i++)
            saw += seen[i];
        free(seen);
        printf("sb rank 1: iters=%ld saw_x=%ld time=%.3fs\n", a.iters, saw, elapsed);
        return 0;
    }

    remove_segment(id);
    long count[4] = { 0, 0, 0, 0 };
    long first_forbidden = -1;
    for (long i = 0; i < a.iters; i++) {
        int outcome = seen[i] << 1 | results[i];
        count[outcome]++;
        if (outcome == 0 && first_forbidden < 0)
            first_forbidden = i;
    }
    free(seen);
    printf("sb rank 0: iters=%ld forbidden=%ld outcomes 01=%ld 10=%ld 11=%ld time=%.3fs\n",
           a.iters, count[0], count[1], count[2], count[3], elapsed);
    if (count[0] != 0)
        fail("forbidden outcome r0=0 r1=0 seen %ld times (first at iteration %ld)",
             count[0], first_forbidden);
    return 0;
}
