/*
 * heat_threads - the heat equation of heat.c with POSIX threads in one
 * process (the "threads" baseline of scripts/heat-bench).
 *
 *   heat_threads [-n N] [-s STEPS] NTHREADS
 *
 * Same problem, same defaults (N = 256, STEPS = 200) and same result line
 * as heat.c:
 *   heat rank 0: n=N steps=S nprocs=P time=T checksum=C center=X bits=H
 * Both grids are in ordinary memory; the interior rows 1..N-2 are divided
 * into NTHREADS contiguous bands, and the threads meet at a barrier after
 * every step (a thread may only start step s when every thread has
 * finished step s - 1: the rows it reads and the grid it overwrites are
 * then settled).  Every cell is computed by heat.h's expression from the
 * same inputs, so the checksum is bit-identical to every other version.
 * The time runs from the start of initialisation to the end of the last
 * step.
 */
#include "common.h"

#include <getopt.h>
#include <pthread.h>

#include "heat.h"

struct shared {
    long n, steps;
    int nthreads;
    double *grid[2];
    pthread_barrier_t barrier;
};

struct worker {
    struct shared *sh;
    long lo, hi; /* interior rows lo..hi-1 */
    int first, last;
    pthread_t thread;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    long n = sh->n;
    for (long i = w->first ? 0 : w->lo; i < (w->last ? n : w->hi); i++) {
        heat_init_row(sh->grid[0] + i * n, n, i);
        heat_init_row(sh->grid[1] + i * n, n, i);
    }
    pthread_barrier_wait(&sh->barrier);
    for (long s = 0; s < sh->steps; s++) {
        const double *old = sh->grid[s % 2];
        double *new = sh->grid[(s + 1) % 2];
        for (long i = w->lo; i < w->hi; i++)
            heat_step_row(old + (i - 1) * n, old + i * n, old + (i + 1) * n, new + i * n, n);
        pthread_barrier_wait(&sh->barrier);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long n = 256, steps = 200;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        case 's': steps = parse_long("STEPS", optarg); break;
        default: die("usage: %s [-n N] [-s STEPS] NTHREADS", argv[0]);
        }
    }
    if (argc - optind != 1)
        die("usage: %s [-n N] [-s STEPS] NTHREADS", argv[0]);
    int nthreads = (int)parse_long("NTHREADS", argv[optind]);
    if (n < 3 || n > 65536 || steps < 0)
        die("need 3 <= N <= 65536 and STEPS >= 0");
    if (nthreads < 1 || n - 2 < nthreads)
        die("%ld interior rows cannot be split among %d threads", n - 2, nthreads);

    struct shared sh = { .n = n, .steps = steps, .nthreads = nthreads };
    for (int g = 0; g < 2; g++) {
        sh.grid[g] = malloc((size_t)n * (size_t)n * sizeof(double));
        if (sh.grid[g] == NULL)
            die("out of memory");
    }
    if (pthread_barrier_init(&sh.barrier, NULL, (unsigned)nthreads) != 0)
        die("pthread_barrier_init failed");

    struct worker w[nthreads];
    double t0 = now_seconds();
    for (int t = 0; t < nthreads; t++) {
        w[t] = (struct worker){ .sh = &sh, .first = t == 0, .last = t == nthreads - 1,
                                .lo = 1 + (long)t * (n - 2) / nthreads,
                                .hi = 1 + (long)(t + 1) * (n - 2) / nthreads };
        if (t > 0 && pthread_create(&w[t].thread, NULL, run, &w[t]) != 0)
            die("pthread_create failed");
    }
    run(&w[0]);
    for (int t = 1; t < nthreads; t++)
        pthread_join(w[t].thread, NULL);
    heat_report(sh.grid[steps % 2], n, steps, nthreads, now_seconds() - t0);
    return 0;
}
