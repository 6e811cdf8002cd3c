/*
 * threads - a multithreaded reader process against a writer process.
 *
 *   threads RANK NPROCS KEY [ITERS=1000]      (NPROCS must be 2)
 *
 * Rank 0 writes ITERS generations over NPAGES (8) data pages; rank 1 runs
 * NREADERS (8) pthreads that read the same pages and different pages at the
 * same time (each thread sweeps all pages, from its own start page, half of
 * them in the other direction).  Under KDIPC this checks that the fault
 * path serves several faulting threads of one process correctly and that a
 * page is never visible to a thread before all of its bytes are in place.
 *
 * Page format (512 64-bit words): word 0 is a sequence number, words 1..511
 * the stamp.  Generation g of a page is written as
 *     w[0] = 2g - 1;  w[1..511] = g;  w[0] = 2g;
 * (a seqlock).  A reader takes s1 = w[0], reads w[1..511], then s2 = w[0].
 *
 * Why not simply "all words equal": under sequential consistency a reader
 * may legally observe a page while the writer is half-way through it (the
 * writer can take the page between two of the reader's loads), so a torn
 * snapshot by itself is not an error.  What SC does guarantee, with the
 * writer's program order above, is, for every word v of a snapshot:
 *     s1 / 2 <= v <= (s2 + 1) / 2          (integer division)
 * and in particular, when s1 == s2 is even (no write overlapped the
 * snapshot), every word equals s1 / 2: the page is internally consistent.
 * A page exposed before its bytes were copied in (e.g. a new sequence
 * number but an old or zero body) violates this.  Also checked, per thread
 * and page: the sequence number never goes backwards, and after the writer
 * has set `done` every page shows generation ITERS, stable.
 *
 * Natively (x86 TSO, compiler barriers only) the same reasoning holds, so
 * the test passes natively too.
 *
 * Output: rank 1 prints
 *   threads rank 1: iters=N pages=8 readers=8 snapshots=S stable=K violations=V
 * Exit 1 if V > 0.
 */
#include "common.h"

#include <pthread.h>

#define NPAGES 8
#define NREADERS 8
#define WORDS (PAGE_SIZE / sizeof(uint64_t))
#define MAX_REPORTS 5

struct control {
    struct barrier_shared bar;
    uint64_t readers_ready; /* reader threads started; the writer waits for all */
    uint64_t pad[7];
    uint64_t done;          /* set by the writer after the last generation */
};

struct reader {
    pthread_t thread;
    int index;
    struct control *ctl;
    uint8_t *data;
    uint64_t iters;
    uint64_t last_seq[NPAGES];
    long snapshots, stable, violations;
};

static volatile uint64_t *page_words(uint8_t *data, int p)
{
    return (uint64_t *)(data + (size_t)p * PAGE_SIZE);
}

static void report(struct reader *r, int p, const char *what, uint64_t s1,
                   uint64_t s2, uint64_t lo, uint64_t hi)
{
    if (r->violations++ < MAX_REPORTS)
        fprintf(stderr, "threads: reader %d page %d: %s (s1=%llu s2=%llu "
                "body min=%llu max=%llu, last seq=%llu)\n", r->index, p, what,
                (unsigned long long)s1, (unsigned long long)s2,
                (unsigned long long)lo, (unsigned long long)hi,
                (unsigned long long)r->last_seq[p]);
}

static void check_page(struct reader *r, int p, int final)
{
    volatile uint64_t *w = page_words(r->data, p);
    uint64_t s1 = w[0];
    compiler_barrier();
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t k = 1; k < WORDS; k++) {
        uint64_t v = w[k];
        if (v < lo)
            lo = v;
        if (v > hi)
            hi = v;
    }
    compiler_barrier();
    uint64_t s2 = w[0];

    r->snapshots++;
    int stable = s1 == s2 && s1 % 2 == 0;
    r->stable += stable;
    if (s2 < s1 || s1 < r->last_seq[p])
        report(r, p, "sequence number went backwards", s1, s2, lo, hi);
    else if (s2 > 2 * r->iters)
        report(r, p, "sequence number beyond the last generation", s1, s2, lo, hi);
    else if (lo < s1 / 2 || hi > (s2 + 1) / 2)
        report(r, p, stable ? "torn page: words differ in a stable snapshot"
                            : "page body outside the generations the sequence allows",
               s1, s2, lo, hi);
    else if (final && (!stable || s1 != 2 * r->iters))
        report(r, p, "after done, page is not at the last generation", s1, s2, lo, hi);
    if (s2 > r->last_seq[p])
        r->last_seq[p] = s2;
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    int step = r->index % 2 ? 1 : NPAGES - 1;
    __atomic_fetch_add(&r->ctl->readers_ready, 1, __ATOMIC_SEQ_CST);
    for (long k = 0; !__atomic_load_n(&r->ctl->done, __ATOMIC_SEQ_CST); k++)
        check_page(r, (int)((r->index + k * step) % NPAGES), 0);
    for (int p = 0; p < NPAGES; p++)
        check_page(r, p, 1);
    return NULL;
}

static void writer(struct control *ctl, uint8_t *data, uint64_t iters)
{
    unsigned spins = 0;
    while (__atomic_load_n(&ctl->readers_ready, __ATOMIC_SEQ_CST) < NREADERS)
        spin_pause(&spins);
    for (uint64_t g = 1; g <= iters; g++) {
        for (int p = 0; p < NPAGES; p++) {
            volatile uint64_t *w = page_words(data, p);
            w[0] = 2 * g - 1;
            compiler_barrier();
            for (size_t k = 1; k < WORDS; k++)
                w[k] = g;
            compiler_barrier();
            w[0] = 2 * g;
            compiler_barrier();
        }
    }
    __atomic_store_n(&ctl->done, 1, __ATOMIC_SEQ_CST);
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 1000);
    int id;
    uint8_t *seg = attach_segment_id(a.key, (1 + NPAGES) * PAGE_SIZE, &id);
    struct control *ctl = (struct control *)seg;
    struct barrier bar = barrier_join(&ctl->bar, a.nprocs);
    uint8_t *data = seg + PAGE_SIZE;

    barrier_wait(&bar);
    double t0 = now_seconds();
    if (a.rank == 0) {
        writer(ctl, data, (uint64_t)a.iters);
        barrier_wait(&bar);
        remove_segment(id);
        printf("threads rank 0: iters=%ld pages=%d time=%.3fs\n",
               a.iters, NPAGES, now_seconds() - t0);
        return 0;
    }

    static struct reader readers[NREADERS];
    for (int i = 0; i < NREADERS; i++) {
        readers[i] = (struct reader){ .index = i, .ctl = ctl, .data = data,
                                      .iters = (uint64_t)a.iters };
        int err = pthread_create(&readers[i].thread, NULL, reader_main, &readers[i]);
        if (err != 0)
            die("pthread_create: %s", strerror(err));
    }
    long snapshots = 0, stable = 0, violations = 0;
    for (int i = 0; i < NREADERS; i++) {
        pthread_join(readers[i].thread, NULL);
        snapshots += readers[i].snapshots;
        stable += readers[i].stable;
        violations += readers[i].violations;
    }
    barrier_wait(&bar);
    printf("threads rank 1: iters=%ld pages=%d readers=%d snapshots=%ld stable=%ld "
           "violations=%ld time=%.3fs\n", a.iters, NPAGES, NREADERS, snapshots,
           stable, violations, now_seconds() - t0);
    if (violations != 0)
        fail("%ld violations", violations);
    return 0;
}
