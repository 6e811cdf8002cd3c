/*
 * faultbench - latency of single page faults on a distributed segment.
 *
 *   faultbench RANK 2 KEY [PAGES=1000]
 *
 * Two ranks, A (0) and B (1); page 0 holds the barrier, pages 1..PAGES are
 * measured. Each access below is timed on its own (CLOCK_MONOTONIC around
 * one load or store), and each phase prints one line:
 *
 *   phase NAME n=N p50=US p90=US p99=US max=US
 *
 * Phases, in order:
 *   zero-read     B reads pages nobody ever wrote (zero pages, no payload)
 *   read          A has written every page; B reads each (fetched from A)
 *   write-inval   B writes each page it holds for reading; A's copy must be
 *                 invalidated and acknowledged first (one reader)
 *   write-fetch   A writes each page B holds for writing (ownership and
 *                 bytes move from B to A, no readers)
 *
 * Run it under the shim (the benchmark in benches/ does); natively every
 * access is a plain memory access and the figures show the timer's cost.
 */
#include "common.h"

#include <stdint.h>

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void report(const char *name, uint64_t *lat, long n)
{
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    printf("phase %s n=%ld p50=%.1f p90=%.1f p99=%.1f max=%.1f\n", name, n,
           lat[n / 2] / 1e3, lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3,
           lat[n - 1] / 1e3);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 1000);
    long pages = a.iters;
    int id;
    uint8_t *seg = attach_segment_id(a.key, (size_t)(pages + 1) * PAGE_SIZE, &id);
    struct barrier b = barrier_join((struct barrier_shared *)seg, 2);
    uint64_t *lat = calloc((size_t)pages, sizeof *lat);
    if (lat == NULL)
        die("out of memory");
#define PAGE(i) ((volatile uint64_t *)(seg + (size_t)((i) + 1) * PAGE_SIZE))

    barrier_wait_sleeping(&b);
    if (a.rank == 1) {
        uint64_t sum = 0;
        for (long i = 0; i < pages; i++) {
            uint64_t t = now_ns();
            sum += *PAGE(i);
            lat[i] = now_ns() - t;
        }
        if (sum != 0)
            fail("zero pages were not zero");
        report("zero-read", lat, pages);
    }
    barrier_wait_sleeping(&b);
    if (a.rank == 0)
        for (long i = 0; i < pages; i++)
            *PAGE(i) = (uint64_t)i + 1;
    barrier_wait_sleeping(&b);
    if (a.rank == 1) {
        for (long i = 0; i < pages; i++) {
            uint64_t t = now_ns();
            uint64_t v = *PAGE(i);
            lat[i] = now_ns() - t;
            if (v != (uint64_t)i + 1)
                fail("page %ld: read %llu, expected %ld", i, (unsigned long long)v, i + 1);
        }
        report("read", lat, pages);
        for (long i = 0; i < pages; i++) {
            uint64_t t = now_ns();
            *PAGE(i) = (uint64_t)i + 2;
            lat[i] = now_ns() - t;
        }
        report("write-inval", lat, pages);
    }
    /* (A holds every page for reading since B's reads.) */
    barrier_wait_sleeping(&b);
    if (a.rank == 0) {
        for (long i = 0; i < pages; i++) {
            uint64_t t = now_ns();
            *PAGE(i) = (uint64_t)i + 3;
            lat[i] = now_ns() - t;
        }
        report("write-fetch", lat, pages);
    }
    barrier_wait_sleeping(&b);
    if (a.rank == 0)
        remove_segment(id);
    return 0;
}
