/*
 * matmul_threads - the naive matrix multiply of matmul.c with POSIX
 * threads in one process (the "Par" column of the thesis's figure 6.1).
 *
 *   matmul_threads [-n N] NTHREADS
 *
 * Default N = 200.  The main thread fills A and B (matmul.h), every thread
 * computes its block of rows of C, and the time runs from a barrier after
 * the fill ("all ready") to a barrier after the last block ("all done").
 * Prints the same line as matmul.c:
 *   matmul rank 0: n=N nprocs=P time=T checksum=C
 */
#include "common.h"

#include <getopt.h>
#include <pthread.h>

#include "matmul.h"

struct shared {
    long n;
    int nthreads;
    const double *a, *b;
    double *c;
    pthread_barrier_t barrier;
    double t0, t1;
};

struct worker {
    struct shared *sh;
    int t;
    pthread_t thread;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    long n = sh->n;
    if (pthread_barrier_wait(&sh->barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
        sh->t0 = now_seconds();
    long lo = matmul_first_row(n, w->t, sh->nthreads), hi = matmul_first_row(n, w->t + 1, sh->nthreads);
    matmul_rows(sh->a + lo * n, sh->b, sh->c + lo * n, n, hi - lo);
    if (pthread_barrier_wait(&sh->barrier) == PTHREAD_BARRIER_SERIAL_THREAD)
        sh->t1 = now_seconds();
    return NULL;
}

int main(int argc, char **argv)
{
    long n = 200;
    int opt;
    while ((opt = getopt(argc, argv, "n:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        default: die("usage: %s [-n N] NTHREADS", argv[0]);
        }
    }
    if (argc - optind != 1)
        die("usage: %s [-n N] NTHREADS", argv[0]);
    int nthreads = (int)parse_long("NTHREADS", argv[optind]);
    if (nthreads < 1 || nthreads > 1024)
        die("need 1 <= NTHREADS <= 1024");
    if (n < 1 || n > 32768)
        die("need 1 <= N <= 32768");

    size_t bytes = (size_t)n * (size_t)n * sizeof(double);
    double *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    if (a == NULL || b == NULL || c == NULL)
        die("out of memory");
    matmul_fill(a, b, n);
    struct shared sh = { .n = n, .nthreads = nthreads, .a = a, .b = b, .c = c };
    if (pthread_barrier_init(&sh.barrier, NULL, (unsigned)nthreads) != 0)
        die("pthread_barrier_init failed");
    struct worker w[nthreads];
    for (int t = 0; t < nthreads; t++) {
        w[t] = (struct worker){ .sh = &sh, .t = t };
        if (t > 0 && pthread_create(&w[t].thread, NULL, run, &w[t]) != 0)
            die("pthread_create failed");
    }
    run(&w[0]);
    for (int t = 1; t < nthreads; t++)
        pthread_join(w[t].thread, NULL);
    matmul_report(c, n, nthreads, sh.t1 - sh.t0);
    return 0;
}
