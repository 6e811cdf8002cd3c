/*
 * heat_mpi - the heat equation of heat.c with MPI message passing (the
 * "MPI" baseline of scripts/heat-bench).
 *
 *   mpirun -np P heat_mpi [-n N] [-s STEPS]
 *
 * Same problem, same defaults (N = 256, STEPS = 200) and same result line
 * as heat.c (printed by rank 0):
 *   heat rank 0: n=N steps=S nprocs=P time=T checksum=C center=X bits=H
 * Each rank holds its band of interior rows (the same contiguous split as
 * heat.c without page alignment) plus one halo row above and below, in two
 * local grids.  Before every step it exchanges its first and last rows
 * with its neighbours (MPI_Sendrecv); the boundary rows 0 and N-1 are the
 * halos of the first and last rank and never change.  The time runs from
 * a barrier before initialisation to a barrier after the last step; the
 * final gather of the field to rank 0 (for the checksum) is not timed, as
 * heat.c does not time rank 0 reading the shared field.  Every cell is
 * computed by heat.h's expression from the same inputs, so the checksum
 * is bit-identical to every other version.
 */
#include "common.h"

#include <getopt.h>
#include <mpi.h>

#include "heat.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, nprocs;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nprocs);

    long n = 256, steps = 200;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        case 's': steps = parse_long("STEPS", optarg); break;
        default: die("usage: %s [-n N] [-s STEPS]", argv[0]);
        }
    }
    if (argc != optind)
        die("usage: %s [-n N] [-s STEPS]", argv[0]);
    if (n < 3 || n > 65536 || steps < 0)
        die("need 3 <= N <= 65536 and STEPS >= 0");
    if (n - 2 < nprocs)
        die("%ld interior rows cannot be split among %d ranks", n - 2, nprocs);

    long lo = 1 + (long)rank * (n - 2) / nprocs, hi = 1 + (long)(rank + 1) * (n - 2) / nprocs;
    long rows = hi - lo;
    /* Local row k holds global row lo - 1 + k, k = 0 .. rows + 1. */
    double *grid[2];
    for (int g = 0; g < 2; g++) {
        grid[g] = malloc((size_t)(rows + 2) * (size_t)n * sizeof(double));
        if (grid[g] == NULL)
            die("out of memory");
    }
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL;
    int down = rank < nprocs - 1 ? rank + 1 : MPI_PROC_NULL;

    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int g = 0; g < 2; g++)
        for (long k = 0; k < rows + 2; k++)
            heat_init_row(grid[g] + k * n, n, lo - 1 + k);
    for (long s = 0; s < steps; s++) {
        double *old = grid[s % 2], *new = grid[(s + 1) % 2];
        MPI_Sendrecv(old + 1 * n, (int)n, MPI_DOUBLE, up, 0,
                     old + (rows + 1) * n, (int)n, MPI_DOUBLE, down, 0,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(old + rows * n, (int)n, MPI_DOUBLE, down, 1,
                     old, (int)n, MPI_DOUBLE, up, 1,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (long k = 1; k <= rows; k++)
            heat_step_row(old + (k - 1) * n, old + k * n, old + (k + 1) * n, new + k * n, n);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double elapsed = MPI_Wtime() - t0;

    /* Gather the interior rows of the final grid to rank 0. */
    const double *final = grid[steps % 2];
    double *field = NULL;
    int *counts = NULL, *displs = NULL;
    if (rank == 0) {
        field = malloc((size_t)n * (size_t)n * sizeof(double));
        counts = malloc((size_t)nprocs * sizeof(int));
        displs = malloc((size_t)nprocs * sizeof(int));
        if (field == NULL || counts == NULL || displs == NULL)
            die("out of memory");
        for (int r = 0; r < nprocs; r++) {
            long rlo = 1 + (long)r * (n - 2) / nprocs, rhi = 1 + (long)(r + 1) * (n - 2) / nprocs;
            counts[r] = (int)((rhi - rlo) * n);
            displs[r] = (int)(rlo * n);
        }
        heat_init_row(field, n, 0);
        heat_init_row(field + (n - 1) * n, n, n - 1);
    }
    MPI_Gatherv(final + n, (int)(rows * n), MPI_DOUBLE, field, counts, displs, MPI_DOUBLE, 0,
                MPI_COMM_WORLD);
    if (rank == 0)
        heat_report(field, n, steps, nprocs, elapsed);
    MPI_Finalize();
    return 0;
}
