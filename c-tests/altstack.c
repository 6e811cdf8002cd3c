/*
 * altstack - a program with its own alternate signal stack and its own
 * SIGSEGV handler (SA_ONSTACK) that catches its stack overflows keeps
 * working under the shim.
 *
 *   altstack RANK NPROCS KEY [ROUNDS=50]     (NPROCS must be 2)
 *
 * Both ranks install a 64 KiB alternate stack with sigaltstack and a
 * SIGSEGV handler with SA_ONSTACK|SA_SIGINFO that checks it runs on that
 * stack and recovers with siglongjmp. Every round, the rank whose turn it
 * is overflows its stack on purpose (unbounded recursion), recovers, then
 * both exchange a value through pages of a distributed segment the other
 * rank wrote last (faults served while the program's alternate stack is
 * the one in place). At the end: the handler ran once per own round, the
 * alternate stack is still the program's, and every value was right.
 */
#include "common.h"

#include <setjmp.h>
#include <signal.h>

#define ALT_SIZE (64 * 1024)

static sigjmp_buf recover;
static volatile sig_atomic_t caught, off_stack;
static char *alt;

static void on_segv(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)info;
    (void)ctx;
    char here;
    if (&here < alt || &here >= alt + ALT_SIZE)
        off_stack++;
    caught++;
    siglongjmp(recover, 1);
}

/* Recurses until the stack overflows (the limit is never reached). */
static volatile long limit = 1L << 40;

static __attribute__((noinline)) long deep(long n)
{
    volatile char pad[512];
    if (n > limit)
        return 0;
    pad[0] = (char)n;
    return deep(n + 1) + pad[0];
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 50);
    int id;
    uint8_t *seg = attach_segment_id(a.key, 4 * PAGE_SIZE, &id);
    struct barrier b = barrier_join((struct barrier_shared *)seg, 2);
    volatile uint64_t *box = (volatile uint64_t *)(seg + PAGE_SIZE);

    alt = malloc(ALT_SIZE);
    stack_t st = { .ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0 };
    if (alt == NULL || sigaltstack(&st, NULL) != 0)
        die("sigaltstack: %s", strerror(errno));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));

    long own = 0;
    for (long r = 0; r < a.iters; r++) {
        if (a.rank == (int)(r % 2)) {
            own++;
            if (sigsetjmp(recover, 1) == 0)
                fail("round %ld: deep() returned %ld", r, deep(0));
            /* Pages of the other rank's last round, written here. */
            for (int p = 0; p < 3; p++)
                box[(size_t)p * PAGE_SIZE / 8 + (size_t)a.rank] = (uint64_t)r + 1;
        }
        barrier_wait(&b);
        for (int p = 0; p < 3; p++)
            if (box[(size_t)p * PAGE_SIZE / 8 + (size_t)(r % 2)] != (uint64_t)r + 1)
                fail("round %ld page %d: read %llu", r, p,
                     (unsigned long long)box[(size_t)p * PAGE_SIZE / 8 + (size_t)(r % 2)]);
        barrier_wait(&b);
    }
    stack_t now;
    if (sigaltstack(NULL, &now) != 0 || now.ss_sp != alt || now.ss_size != ALT_SIZE)
        fail("the alternate stack is no longer the program's");
    if (caught != own || off_stack != 0)
        fail("handler ran %d times (expected %ld), %d of them off the alternate stack", (int)caught, own,
             (int)off_stack);
    barrier_wait(&b);
    if (a.rank == 0)
        remove_segment(id);
    printf("altstack rank %d: rounds=%ld overflows=%d ok\n", a.rank, a.iters, (int)caught);
    return 0;
}
