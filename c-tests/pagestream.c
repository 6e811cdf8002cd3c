/*
 * pagestream - page transfer throughput between two nodes.
 *
 *   pagestream RANK 2 KEY [PAGES=4096] [THREADS=1]
 *
 * Two ranks, A (0) and B (1); page 0 holds the barrier, pages 1..PAGES
 * are streamed. THREADS threads of the rank that reads split the pages in
 * contiguous blocks (several faults outstanding even without read-ahead).
 * Each phase is timed as a whole and prints one line:
 *
 *   phase NAME pages=N seconds=S pages_per_s=X MBps=Y
 *
 * Phases, in order:
 *   write-fresh   A writes every page (never written before: granted by
 *                 the home without payload)
 *   read          B reads every page (bytes come from A) and checks it
 *   write-take    B writes every page it holds for reading (A's copy is
 *                 invalidated; B's bytes are current)
 *   read-back     A reads every page back from B and checks it
 *
 * Natively every phase is plain memory access.
 */
#include "common.h"

#include <pthread.h>
#include <stdint.h>

static uint8_t *seg;
static long pages;
static int nthreads;

#define PAGE(i) ((volatile uint64_t *)(seg + (size_t)((i) + 1) * PAGE_SIZE))

enum op { WRITE_FRESH, READ, WRITE_TAKE, READ_BACK };

struct job {
    enum op op;
    long from, to;
};

static void *work(void *arg)
{
    struct job *j = arg;
    for (long i = j->from; i < j->to; i++) {
        volatile uint64_t *p = PAGE(i);
        switch (j->op) {
        case WRITE_FRESH:
            p[0] = (uint64_t)i + 1;
            p[511] = (uint64_t)i + 1;
            break;
        case READ:
            if (p[0] != (uint64_t)i + 1 || p[511] != (uint64_t)i + 1)
                fail("page %ld: read %llu, expected %ld", i, (unsigned long long)p[0], i + 1);
            break;
        case WRITE_TAKE:
            p[0] = (uint64_t)i + 7;
            break;
        case READ_BACK:
            if (p[0] != (uint64_t)i + 7 || p[511] != (uint64_t)i + 1)
                fail("page %ld: read back %llu, expected %ld", i, (unsigned long long)p[0], i + 7);
            break;
        }
    }
    return NULL;
}

static void phase(const char *name, enum op op)
{
    pthread_t t[64];
    struct job j[64];
    double t0 = now_seconds();
    for (int k = 0; k < nthreads; k++) {
        j[k] = (struct job){ op, pages * k / nthreads, pages * (k + 1) / nthreads };
        if (pthread_create(&t[k], NULL, work, &j[k]) != 0)
            die("pthread_create");
    }
    for (int k = 0; k < nthreads; k++)
        pthread_join(t[k], NULL);
    double s = now_seconds() - t0;
    printf("phase %s pages=%ld seconds=%.4f pages_per_s=%.0f MBps=%.1f\n", name, pages, s,
           pages / s, pages * (double)PAGE_SIZE / s / 1e6);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc == 6) {
        nthreads = (int)parse_long("THREADS", argv[5]);
        argc = 5;
    } else {
        nthreads = 1;
    }
    if (nthreads < 1 || nthreads > 64)
        die("THREADS must be 1..64");
    struct args a = parse_args(argc, argv, 2, 4096);
    pages = a.iters;
    int id;
    seg = attach_segment_id(a.key, (size_t)(pages + 1) * PAGE_SIZE, &id);
    struct barrier b = barrier_join((struct barrier_shared *)seg, 2);

    barrier_wait_sleeping(&b);
    if (a.rank == 0)
        phase("write-fresh", WRITE_FRESH);
    barrier_wait_sleeping(&b);
    if (a.rank == 1) {
        phase("read", READ);
        phase("write-take", WRITE_TAKE);
    }
    barrier_wait_sleeping(&b);
    if (a.rank == 0)
        phase("read-back", READ_BACK);
    barrier_wait_sleeping(&b);
    if (a.rank == 0)
        remove_segment(id);
    return 0;
}
