/*
 * ownhandler - a program with its own SIGSEGV handler keeps working.
 *
 *   ownhandler RANK NPROCS KEY [ROUNDS=200]     (NPROCS must be 2)
 *
 * Each rank attaches a distributed segment, then installs its own SIGSEGV
 * handler (sigaction, SA_SIGINFO). In every round it (1) provokes a genuine fault
 * outside distributed memory (a load from address 16) and recovers from
 * it with siglongjmp in its handler, checking that the handler saw that
 * address, and (2) exchanges a value with the other rank through the
 * distributed segment with SIGSEGV blocked by sigprocmask, as some legacy
 * programs block every signal (the shim's page faults must still be
 * served, and never reach the program's handler). At the end it checks that sigaction reports its own
 * handler back and that the handler ran exactly ROUNDS times.
 */
#include "common.h"

#include <setjmp.h>
#include <signal.h>

static sigjmp_buf recover;
static volatile sig_atomic_t caught;
static void *volatile last_addr;

/* An address the compiler cannot see through. */
static volatile uintptr_t bad_address = 16;

static void on_segv(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    caught++;
    last_addr = info->si_addr;
    siglongjmp(recover, 1);
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 200);
    int id;
    uint8_t *seg = attach_segment_id(a.key, 2 * PAGE_SIZE, &id);
    struct barrier b = barrier_join((struct barrier_shared *)seg, 2);
    volatile uint64_t *box = (volatile uint64_t *)(seg + PAGE_SIZE);

    struct sigaction sa, back;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGSEGV);

    for (long r = 0; r < a.iters; r++) {
        if (sigsetjmp(recover, 1) == 0) {
            volatile int *bad = (volatile int *)bad_address;
            (void)*bad;
            fail("round %ld: the load from address 16 did not fault", r);
        }
        if (last_addr != (void *)16)
            fail("round %ld: handler saw address %p, not 0x10", r, last_addr);
        /* Distributed pages with SIGSEGV blocked (natively harmless: no
         * fault happens; under the shim the page faults must still work). */
        sigprocmask(SIG_BLOCK, &block, NULL);
        if (a.rank == (int)(r % 2))
            box[a.rank] = (uint64_t)r + 1;
        barrier_wait(&b);
        if (box[r % 2] != (uint64_t)r + 1)
            fail("round %ld: read %llu from the other rank", r, (unsigned long long)box[r % 2]);
        barrier_wait(&b);
        sigprocmask(SIG_UNBLOCK, &block, NULL);
    }
    if (sigaction(SIGSEGV, NULL, &back) != 0 || back.sa_sigaction != on_segv)
        fail("sigaction does not report the program's handler");
    if (caught != a.iters)
        fail("handler ran %d times, expected %ld", (int)caught, a.iters);
    barrier_wait(&b);
    if (a.rank == 0)
        remove_segment(id);
    printf("ownhandler rank %d: rounds=%ld handled=%d\n", a.rank, a.iters, (int)caught);
    return 0;
}
