/*
 * common.h - helpers shared by the KDIPC C test programs (not public API;
 * the public header is kdipc.h).
 *
 * Conventions of the multi-rank programs:
 *
 *   PROG RANK NPROCS KEY [ITERS]
 *
 * One OS process per rank, all started at the same time (by the test
 * harness, or by hand: `./bin/sb 0 2 0x1234 & ./bin/sb 1 2 0x1234; wait`).
 * KEY is parsed with strtol base 0 (so 0x1234 works).  Every rank calls
 * shmget(KEY, size, IPC_CREAT | 0600 | IPC_KDIPC): whichever comes first
 * creates the segment.  The harness gives every run a fresh key, so the
 * segment starts zero-filled and the barrier counters start at 0.  Rank 0
 * removes the segment (IPC_RMID) at the very end, after a final barrier; the
 * kernel/cluster destroys it when the last process detaches.
 *
 * Exit status: 0 success, 1 a detected violation (message on stderr),
 * 2 a setup error (bad arguments, shmget/shmat failure, stale segment).
 *
 * Native baseline: without the shim, set KDIPC_NATIVE=1 and attach_segment()
 * strips IPC_KDIPC before calling the real shmget, so the same binaries run
 * on plain Linux shared memory.
 *
 * Synchronisation helpers use __atomic builtins with seq_cst ordering.  They
 * are fine under the DSM: an atomic read-modify-write is a write access,
 * and a write fault hands the page over exclusively.  The litmus variables
 * themselves are accessed with plain volatile loads and stores, ordered
 * only by compiler_barrier(): it is the DSM's sequential consistency that
 * must make the outcomes correct, not fences in the program.
 */
#ifndef KDIPC_COMMON_H
#define KDIPC_COMMON_H

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <time.h>

#include "kdipc.h"

#define PAGE_SIZE 4096UL

/* Keeps the compiler from moving memory accesses across this point. */
#define compiler_barrier() __asm__ __volatile__("" ::: "memory")

#define EXIT_VIOLATION 1
#define EXIT_SETUP 2

extern char *program_invocation_short_name; /* glibc, <errno.h> with _GNU_SOURCE */

static inline void vmessage(const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "%s: ", program_invocation_short_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

/* Setup error: print the message and exit 2. */
__attribute__((format(printf, 1, 2), noreturn))
static inline void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    exit(EXIT_SETUP);
}

/* Detected violation: print the message and exit 1. */
__attribute__((format(printf, 1, 2), noreturn))
static inline void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    exit(EXIT_VIOLATION);
}

/* Flags for shmget: IPC_KDIPC is dropped when KDIPC_NATIVE=1. */
static inline int kdipc_flags(int flags)
{
    const char *native = getenv("KDIPC_NATIVE");
    if (native != NULL && strcmp(native, "1") == 0)
        flags &= ~IPC_KDIPC;
    return flags;
}

static inline long parse_long(const char *what, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0')
        die("bad %s '%s'", what, s);
    return v;
}

/* Arguments of the PROG RANK NPROCS KEY [ITERS] convention. */
struct args {
    int rank;
    int nprocs;
    key_t key;
    long iters;
};

/*
 * Parses PROG RANK NPROCS KEY [ITERS].  want_nprocs > 0 requires exactly
 * that many ranks.
 */
static inline struct args parse_args(int argc, char **argv, int want_nprocs,
                                     long default_iters)
{
    if (argc < 4 || argc > 5)
        die("usage: %s RANK NPROCS KEY [ITERS=%ld]", argv[0], default_iters);
    struct args a;
    a.rank = (int)parse_long("RANK", argv[1]);
    a.nprocs = (int)parse_long("NPROCS", argv[2]);
    a.key = (key_t)parse_long("KEY", argv[3]);
    a.iters = argc == 5 ? parse_long("ITERS", argv[4]) : default_iters;
    if (a.nprocs < 1 || a.rank < 0 || a.rank >= a.nprocs)
        die("need 0 <= RANK < NPROCS (got rank %d, nprocs %d)", a.rank, a.nprocs);
    if (want_nprocs > 0 && a.nprocs != want_nprocs)
        die("this test needs exactly %d ranks (got %d)", want_nprocs, a.nprocs);
    if (a.iters < 1)
        die("ITERS must be positive");
    return a;
}

/* shmget(key, size, IPC_CREAT|0600|IPC_KDIPC) + shmat; exits 2 on failure. */
static inline void *attach_segment_id(key_t key, size_t size, int *id_out)
{
    int id = shmget(key, size, kdipc_flags(IPC_CREAT | 0600 | IPC_KDIPC));
    if (id < 0) {
        perror("shmget");
        exit(EXIT_SETUP);
    }
    void *p = shmat(id, NULL, 0);
    if (p == (void *)-1) {
        perror("shmat");
        exit(EXIT_SETUP);
    }
    if (id_out != NULL)
        *id_out = id;
    return p;
}

static inline void *attach_segment(key_t key, size_t size)
{
    return attach_segment_id(key, size, NULL);
}

static inline void remove_segment(int id)
{
    if (shmctl(id, IPC_RMID, NULL) != 0) {
        perror("shmctl(IPC_RMID)");
        exit(EXIT_SETUP);
    }
}

/* Busy-wait hint; yields the CPU after a while (ranks may outnumber cores). */
static inline void spin_pause(unsigned *spins)
{
    if (++*spins > 200) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/*
 * Counter barrier across processes.  The shared state (struct barrier_shared)
 * lives in the segment, on a page of its own so that barrier traffic does
 * not disturb the pages under test; it starts zeroed.  `arrived` is never
 * reset: the n-th barrier of a run completes when arrived >= n * nprocs, so
 * there is no sense to get confused and no reset race.  `joined` counts the
 * processes that ever used the barrier; a value >= nprocs at join time
 * means the segment is left over from an earlier run with the same key.
 * The process that notices sets `poisoned`, so that the other ranks of the
 * run, which may be waiting in a barrier, give up too instead of hanging.
 */
struct barrier_shared {
    uint64_t arrived;
    uint64_t pad1[7];
    uint64_t joined;
    uint64_t poisoned;
    uint64_t pad2[6];
};

struct barrier {
    struct barrier_shared *shared;
    uint64_t epoch;    /* barriers this process has passed */
    uint64_t nprocs;
};

static inline struct barrier barrier_join(struct barrier_shared *shared, int nprocs)
{
    struct barrier b = { shared, 0, (uint64_t)nprocs };
    uint64_t before = __atomic_fetch_add(&shared->joined, 1, __ATOMIC_SEQ_CST);
    if (before >= b.nprocs) {
        __atomic_store_n(&shared->poisoned, 1, __ATOMIC_SEQ_CST);
        die("stale segment: %llu processes already joined its barrier "
            "(key reused? remove it with ipcrm)", (unsigned long long)before);
    }
    return b;
}

static inline void barrier_wait(struct barrier *b)
{
    b->epoch++;
    uint64_t target = b->epoch * b->nprocs;
    __atomic_fetch_add(&b->shared->arrived, 1, __ATOMIC_SEQ_CST);
    unsigned spins = 0;
    while (__atomic_load_n(&b->shared->arrived, __ATOMIC_SEQ_CST) < target) {
        if (__atomic_load_n(&b->shared->poisoned, __ATOMIC_RELAXED))
            die("stale segment: another rank found this segment in use by an "
                "earlier run (key reused? remove it with ipcrm)");
        spin_pause(&spins);
    }
}

/* The same barrier, sleeping 2 ms between checks: for benchmarks, where
 * the waiting rank must leave the CPU to the threads being measured. */
static inline void barrier_wait_sleeping(struct barrier *b)
{
    b->epoch++;
    uint64_t target = b->epoch * b->nprocs;
    __atomic_fetch_add(&b->shared->arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&b->shared->arrived, __ATOMIC_SEQ_CST) < target) {
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
    }
}

static inline double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A well-mixed 64-bit hash (splitmix64 finaliser) for test patterns. */
static inline uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/*
 * Litmus layout, shared by sb, mp and iriw.  Segment pages:
 *
 *   0        control (barrier)
 *   1        split page of x: x[s] = uint64 slot s
 *   2        split page of y
 *   3        pair page: x[s] and y[s] side by side (same page, same line)
 *   4 ...    results: one byte per iteration, for the cross-rank check
 *
 * Iteration i uses slot s = i % LITMUS_SLOTS and writes the value i + 1, so
 * a slot is reused with a fresh value (a stale copy holds an older,
 * non-zero value, not just 0).  Blocks of LITMUS_BLOCK iterations are
 * separated by a barrier, which keeps the ranks racing on the same slots;
 * blocks alternate between the same-page layout (x, y share one page: the
 * ranks fight over ownership of one page) and the split layout (x, y on two
 * pages: read copies must be invalidated before a write completes).  Every
 * iteration touches at most two data pages.
 */
#define LITMUS_BLOCK 16
#define LITMUS_SLOTS 256
#define LITMUS_RESULTS_PAGE 4

static inline size_t litmus_size(long iters)
{
    size_t result_pages = ((size_t)iters + PAGE_SIZE - 1) / PAGE_SIZE;
    return (LITMUS_RESULTS_PAGE + result_pages) * PAGE_SIZE;
}

/* Variable `var` (0 = x, 1 = y) of iteration i. */
static inline volatile uint64_t *litmus_var(uint8_t *seg, int var, long i)
{
    size_t s = (size_t)(i % LITMUS_SLOTS);
    int split = (int)((i / LITMUS_BLOCK) & 1);
    uint64_t *page;
    if (split) {
        page = (uint64_t *)(seg + (1 + (size_t)var) * PAGE_SIZE);
        return &page[s];
    }
    page = (uint64_t *)(seg + 3 * PAGE_SIZE);
    return &page[2 * s + (size_t)var];
}

static inline volatile uint8_t *litmus_results(uint8_t *seg)
{
    return seg + LITMUS_RESULTS_PAGE * PAGE_SIZE;
}

/*
 * Classifies a value read from a slot in iteration i: 1 if it is this
 * iteration's write, 0 if it is older (0, or the value of an earlier
 * iteration that used the same slot).  Anything else cannot have been
 * written there and is reported as a violation.
 */
static inline int litmus_seen(uint64_t v, long i, const char *what)
{
    uint64_t want = (uint64_t)i + 1;
    if (v == want)
        return 1;
    if (v == 0 || (v < want && (v - 1) % LITMUS_SLOTS == (uint64_t)i % LITMUS_SLOTS))
        return 0;
    fail("iteration %ld: %s holds %llu, a value never written to that slot "
         "before (expected <= %llu)", i, what, (unsigned long long)v,
         (unsigned long long)want);
}

#endif /* KDIPC_COMMON_H */
