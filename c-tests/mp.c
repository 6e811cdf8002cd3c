/*
 * mp - message passing litmus test.
 *
 *   mp RANK NPROCS KEY [ITERS=20000]          (NPROCS must be 2)
 *
 *   rank 0:  data = v(i);  flag = i + 1;
 *   rank 1:  while (flag != i + 1) ;  r = data;
 *
 * Forbidden: rank 1 sees the flag of iteration i but data older than v(i)
 * (a stale copy of the data page survived the write).  Allowed by x86 TSO
 * too, so this also passes natively.
 *
 * Layout and pacing: see the litmus section of common.h; data is variable
 * x, flag is variable y, v(i) = i + 1.  Per-iteration slots, a barrier
 * every 16 iterations (so the writer stays at most one block ahead and the
 * reader is usually already spinning on the flag's page when it is
 * written), blocks alternating between data and flag on one page and on
 * two pages.  About two page transfers per iteration under KDIPC.
 *
 * Output: rank 1 (the checker) prints
 *   mp rank 1: iters=N forbidden=F waited=W time=T
 * where W counts iterations in which the flag was not yet set at the first
 * look (evidence of racing).  Exit 1 if F > 0.
 */
#include "common.h"

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 20000);
    int id;
    uint8_t *seg = attach_segment_id(a.key, litmus_size(a.iters), &id);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, a.nprocs);

    long forbidden = 0, first_forbidden = -1, waited = 0;
    uint64_t first_bad_value = 0;
    double t0 = now_seconds();
    for (long i = 0; i < a.iters; i++) {
        if (i % LITMUS_BLOCK == 0)
            barrier_wait(&bar);
        volatile uint64_t *data = litmus_var(seg, 0, i);
        volatile uint64_t *flag = litmus_var(seg, 1, i);
        uint64_t v = (uint64_t)i + 1;
        if (a.rank == 0) {
            *data = v;
            compiler_barrier();
            *flag = v;
            continue;
        }
        unsigned spins = 0;
        while (!litmus_seen(*flag, i, "flag")) {
            if (spins == 0)
                waited++;
            spin_pause(&spins);
        }
        compiler_barrier();
        uint64_t d = *data;
        if (!litmus_seen(d, i, "data")) {
            if (forbidden++ == 0) {
                first_forbidden = i;
                first_bad_value = d;
            }
        }
    }
    barrier_wait(&bar);
    double elapsed = now_seconds() - t0;

    if (a.rank == 0) {
        remove_segment(id);
        printf("mp rank 0: iters=%ld time=%.3fs\n", a.iters, elapsed);
        return 0;
    }
    printf("mp rank 1: iters=%ld forbidden=%ld waited=%ld time=%.3fs\n",
           a.iters, forbidden, waited, elapsed);
    if (forbidden != 0)
        fail("flag seen but data stale %ld times (first at iteration %ld: "
             "data %llu, want %ld)", forbidden, first_forbidden,
             (unsigned long long)first_bad_value, first_forbidden + 1);
    return 0;
}
