/*
 * peterson - Peterson's mutual exclusion with plain loads and stores.
 *
 *   peterson RANK NPROCS KEY [ITERS=20000]    (NPROCS must be 2)
 *
 * Each rank enters the critical section ITERS times and increments a plain
 * (non-atomic) shared counter there:
 *
 *   flag[me] = 1;  turn = other;
 *   while (flag[other] && turn == other) ;
 *   counter = counter + 1;
 *   flag[me] = 0;
 *
 * Peterson's algorithm is correct only under sequential consistency: if a
 * rank's load of flag[other] may be performed before its own store to
 * flag[me] is visible, both ranks enter together and an increment is lost.
 * The program has no fence on purpose; natively on x86 (TSO) it can
 * therefore lose increments.  Under KDIPC the final counter must be exactly
 * 2 * ITERS.
 *
 * Layout (page-transfer cost versus strength of the test):
 *   page 0  control (barrier)
 *   page 1  flag[0], turn, counter  (different cache lines)
 *   page 2  flag[1]
 * flag[0] and flag[1] live on different pages, so each rank's critical
 * store -> load pair (flag[me] then flag[other]) spans two pages, which is
 * what sequential consistency has to order.  After each critical section a
 * rank "thinks" for 30 us (about a page transfer) without holding the
 * lock, so that the other rank's requests arrive meanwhile and the ranks
 * really interleave (without it one rank runs a whole block while it holds
 * the pages, and the lock is never contended).  turn and counter share
 * rank 0's flag page: rank 1 writes turn there anyway on every entry, so
 * the counter costs no extra transfer.  About two page transfers per
 * critical section when the ranks alternate, fewer when one rank keeps the
 * pages for several entries.  A barrier every BLOCK (256) entries keeps the
 * ranks contending (otherwise, natively, one rank can finish before the
 * other starts); it costs a few transfers per block.
 *
 * Output: rank 0 prints
 *   peterson rank 0: iters=N counter=C expected=2N time=T
 * Exit 1 if C != 2N.
 */
#include "common.h"

#define BLOCK 256
#define THINK_SECONDS 30e-6

struct lock_page0 {
    uint64_t flag0;
    uint64_t pad1[7];
    uint64_t turn;
    uint64_t pad2[7];
    uint64_t counter;
};

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 20000);
    int id;
    uint8_t *seg = attach_segment_id(a.key, 3 * PAGE_SIZE, &id);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, a.nprocs);
    volatile struct lock_page0 *p0 = (struct lock_page0 *)(seg + PAGE_SIZE);
    volatile uint64_t *flag[2] = { &p0->flag0, (uint64_t *)(seg + 2 * PAGE_SIZE) };
    volatile uint64_t *turn = &p0->turn;
    volatile uint64_t *counter = &p0->counter;

    int me = a.rank, other = 1 - a.rank;
    long waited = 0;
    double t0 = now_seconds();
    for (long i = 0; i < a.iters; i++) {
        if (i % BLOCK == 0)
            barrier_wait(&bar);
        *flag[me] = 1;
        compiler_barrier();
        *turn = (uint64_t)other;
        compiler_barrier();
        unsigned spins = 0;
        while (*flag[other] != 0 && *turn == (uint64_t)other) {
            if (spins == 0)
                waited++;
            spin_pause(&spins);
        }
        compiler_barrier();
        *counter = *counter + 1;
        compiler_barrier();
        *flag[me] = 0;
        /* Think outside the critical section (about one page transfer),
         * so that the other rank's requests arrive while this one does not
         * hold the lock and the ranks really interleave. */
        double until = now_seconds() + THINK_SECONDS;
        while (now_seconds() < until)
            compiler_barrier();
    }
    barrier_wait(&bar);
    double elapsed = now_seconds() - t0;

    if (me != 0) {
        printf("peterson rank %d: iters=%ld waited=%ld time=%.3fs\n",
               me, a.iters, waited, elapsed);
        return 0;
    }
    remove_segment(id);
    uint64_t got = *counter, want = 2 * (uint64_t)a.iters;
    printf("peterson rank 0: iters=%ld counter=%llu expected=%llu waited=%ld time=%.3fs\n",
           a.iters, (unsigned long long)got, (unsigned long long)want, waited, elapsed);
    if (got != want)
        fail("mutual exclusion violated: counter %llu, expected %llu "
             "(%llu increments lost)", (unsigned long long)got,
             (unsigned long long)want, (unsigned long long)(want - got));
    return 0;
}
