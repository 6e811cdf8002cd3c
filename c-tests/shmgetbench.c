/*
 * shmgetbench.c - the rate of the nameserver's registry calls.
 *
 *   shmgetbench RANK NPROCS KEY [ITERS=1000]
 *
 * Rank 0 alone times, call by call with CLOCK_MONOTONIC, three phases of
 * ITERS calls each on the keys KEY+1 .. KEY+ITERS (one page each):
 *   create  shmget(KEY+i, 4096, IPC_CREAT|IPC_EXCL|0600|IPC_KDIPC)
 *   lookup  shmget(KEY+i, 0, 0600|IPC_KDIPC)   (find an existing key)
 *   remove  shmctl(id, IPC_RMID, NULL)
 * and prints one line per phase:
 *   phase NAME p50=US p99=US rate=CALLS_PER_S
 * Natively (KDIPC_NATIVE=1) this measures the kernel; under the shim, a
 * round trip to the nameserver per call.  Other ranks exit at once.
 * Exit status: 0 ok, 1 a call failed, 2 setup error.
 */
#define _GNU_SOURCE
#include <sys/shm.h>

#include "common.h"

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static void report(const char *name, double *us, long n)
{
    double total = 0;
    for (long i = 0; i < n; i++)
        total += us[i];
    qsort(us, (size_t)n, sizeof(double), cmp_double);
    printf("phase %s p50=%.2f p99=%.2f rate=%.0f\n", name, us[n / 2],
           us[(long)(0.99 * (double)(n - 1) + 0.5)], (double)n / (total / 1e6));
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 0, 1000);
    if (a.rank != 0)
        return 0;
    if (a.iters < 1 || a.iters > 100000)
        die("need 1 <= ITERS <= 100000");
    long n = a.iters;
    int *ids = calloc((size_t)n, sizeof(int));
    double *us = calloc((size_t)n, sizeof(double));
    if (ids == NULL || us == NULL)
        die("out of memory");
    for (long i = 0; i < n; i++) {
        double t = now_seconds();
        ids[i] = shmget(a.key + 1 + (key_t)i, PAGE_SIZE, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
        us[i] = (now_seconds() - t) * 1e6;
        if (ids[i] < 0)
            fail("shmget(create %ld): %s (stale keys? ipcrm them)", i, strerror(errno));
    }
    report("create", us, n);
    for (long i = 0; i < n; i++) {
        double t = now_seconds();
        int id = shmget(a.key + 1 + (key_t)i, 0, kdipc_flags(0600 | IPC_KDIPC));
        us[i] = (now_seconds() - t) * 1e6;
        if (id != ids[i])
            fail("shmget(lookup %ld) = %d, want %d: %s", i, id, ids[i], strerror(errno));
    }
    report("lookup", us, n);
    for (long i = 0; i < n; i++) {
        double t = now_seconds();
        int r = shmctl(ids[i], IPC_RMID, NULL);
        us[i] = (now_seconds() - t) * 1e6;
        if (r != 0)
            fail("shmctl(IPC_RMID %ld): %s", i, strerror(errno));
    }
    report("remove", us, n);
    return 0;
}
