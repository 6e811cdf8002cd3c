/*
 * sembench.c - latency of one uncontended semop.
 *
 *   sembench RANK NPROCS KEY [ITERS=2000]
 *
 * Rank 0 alone creates semget(KEY, 1, IPC_CREAT|IPC_EXCL|0600|IPC_KDIPC)
 * with value 1, does 50 unmeasured warm-up pairs, then ITERS pairs of
 * semop(-1) and semop(+1), timing every single call with CLOCK_MONOTONIC,
 * removes the set and prints the median and 99th percentile of the 2*ITERS
 * calls in microseconds:
 *
 *   semop p50=US p99=US
 *
 * Other ranks exit at once (the benchmark runs one process).  Natively
 * (KDIPC_NATIVE=1) this measures the kernel; under the shim, a round trip
 * to the set's owner.  Exit status: 0 ok, 1 a semop failed, 2 setup error.
 */
#define _GNU_SOURCE
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

#define WARMUP 50

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double percentile(const double *sorted, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static void one(int id, short op)
{
    struct sembuf s = { 0, op, 0 };
    if (semop(id, &s, 1) != 0)
        fail("semop(%d): %s", op, strerror(errno));
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 0, 2000);
    if (a.rank != 0)
        return 0;
    int id = semget(a.key, 1, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0)
        die("semget: %s (stale set? remove it with ipcrm)", strerror(errno));
    union semun u = { .val = 1 };
    if (semctl(id, 0, SETVAL, u) != 0)
        die("SETVAL: %s", strerror(errno));
    for (int i = 0; i < WARMUP; i++) {
        one(id, -1);
        one(id, 1);
    }
    size_t n = 2 * (size_t)a.iters;
    double *us = malloc(n * sizeof *us);
    if (us == NULL)
        die("out of memory");
    for (long i = 0; i < a.iters; i++) {
        for (int k = 0; k < 2; k++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            one(id, k == 0 ? -1 : 1);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            us[2 * i + k] = (double)(t1.tv_sec - t0.tv_sec) * 1e6 +
                            (double)(t1.tv_nsec - t0.tv_nsec) * 1e-3;
        }
    }
    if (semctl(id, 0, IPC_RMID) != 0)
        die("IPC_RMID: %s", strerror(errno));
    qsort(us, n, sizeof *us, cmp_double);
    printf("semop p50=%.1f p99=%.1f\n", percentile(us, n, 0.50), percentile(us, n, 0.99));
    free(us);
    return 0;
}
