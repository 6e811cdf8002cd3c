/*
 * heat.h - the numerical core shared by every version of the heat equation
 * (heat.c: System V processes, heat_threads.c: pthreads, heat_mpi.c: MPI).
 *
 * One definition of the boundary, the stencil and the checksum, so that all
 * versions compute every cell by the same expression from the same inputs
 * and print bit-identical results.  See heat.c for the problem.
 */
#ifndef KDIPC_HEAT_H
#define KDIPC_HEAT_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define HEAT_ALPHA 0.2
#define HEAT_HOT 100.0

/* Fixed boundary: the first N/2 cells of the top row and left column are hot. */
static inline double heat_boundary_value(long n, long i, long j)
{
    if ((i == 0 && j < n / 2) || (j == 0 && i < n / 2))
        return HEAT_HOT;
    return 0.0;
}

/* Initial value of row i (boundary cells fixed, interior 0.0) into row[0..n). */
static inline void heat_init_row(double *row, long n, long i)
{
    int edge_row = i == 0 || i == n - 1;
    for (long j = 0; j < n; j++)
        row[j] = edge_row || j == 0 || j == n - 1 ? heat_boundary_value(n, i, j) : 0.0;
}

/* One step of the explicit 5-point stencil on the interior cells of a row. */
static inline void heat_step_row(const double *up, const double *mid, const double *down,
                                 double *out, long n)
{
    for (long j = 1; j < n - 1; j++)
        out[j] = mid[j] + HEAT_ALPHA * ((up[j] + down[j]) + (mid[j - 1] + mid[j + 1]) - 4.0 * mid[j]);
}

/*
 * The result line of rank 0; every version prints exactly this format:
 *   heat rank 0: n=N steps=S nprocs=P time=T checksum=C center=X bits=H
 * checksum = sum of all cells in row-major order (%.10e), center = the
 * cell (N/2, N/2), bits = FNV-1a over the bit patterns of all cells, so
 * that equal "bits" means the same field bit for bit.
 */
static inline void heat_report(const double *field, long n, long steps, int nprocs, double elapsed)
{
    double checksum = 0.0;
    uint64_t bits = 0xcbf29ce484222325ULL;
    for (long k = 0; k < n * n; k++) {
        checksum += field[k];
        uint64_t v;
        memcpy(&v, &field[k], sizeof v);
        bits = (bits ^ v) * 0x100000001b3ULL;
    }
    double center = field[(n / 2) * n + n / 2];
    printf("heat rank 0: n=%ld steps=%ld nprocs=%d time=%.3fs checksum=%.10e center=%.10e bits=%016llx\n",
           n, steps, nprocs, elapsed, checksum, center, (unsigned long long)bits);
    fflush(stdout);
}

#endif /* KDIPC_HEAT_H */
