/*
 * matmul.h - the numerical core shared by every version of the matrix
 * multiply (matmul.c: System V processes, matmul_threads.c: pthreads,
 * matmul_mpi.c: MPI): the inputs, the naive triple loop, the row split and
 * the result line, defined once so that all versions agree bit for bit.
 */
#ifndef KDIPC_MATMUL_H
#define KDIPC_MATMUL_H

#include <stdio.h>

/*
 * Deterministic inputs in [0, 1) and [-0.5, 0.5), not dyadic: the sums
 * round, so a different summation order would show in the checksum.
 */
static inline double matmul_a(long i, long j)
{
    return (double)((i * 31 + j * 17) % 101) / 101.0;
}

static inline double matmul_b(long i, long j)
{
    return (double)((i * 13 + j * 7) % 97) / 97.0 - 0.5;
}

static inline void matmul_fill(double *a, double *b, long n)
{
    for (long i = 0; i < n; i++)
        for (long j = 0; j < n; j++) {
            a[i * n + j] = matmul_a(i, j);
            b[i * n + j] = matmul_b(i, j);
        }
}

/* First row of block r of P: rows matmul_first_row(r) .. matmul_first_row(r + 1) - 1. */
static inline long matmul_first_row(long n, int r, int nprocs)
{
    return (long)r * n / nprocs;
}

/*
 * Rows lo..hi-1 of C = A * B, the naive triple loop: every element is the
 * sum over k = 0 .. N-1 in increasing order.  a points at row lo of A and
 * c at row lo of C; b is all of B.
 */
static inline void matmul_rows(const double *a, const double *b, double *c, long n, long rows)
{
    for (long i = 0; i < rows; i++)
        for (long j = 0; j < n; j++) {
            double sum = 0.0;
            for (long k = 0; k < n; k++)
                sum += a[i * n + k] * b[k * n + j];
            c[i * n + j] = sum;
        }
}

/*
 * The result line of rank 0, the same for every version:
 *   matmul rank 0: n=N nprocs=P time=T checksum=C
 * (checksum = sum of all elements of C in row-major order, printed with 17
 * significant digits so that it identifies the double exactly).
 */
static inline void matmul_report(const double *c, long n, int nprocs, double elapsed)
{
    double checksum = 0.0;
    for (long k = 0; k < n * n; k++)
        checksum += c[k];
    printf("matmul rank 0: n=%ld nprocs=%d time=%.6fs checksum=%.16e\n", n, nprocs, elapsed, checksum);
    fflush(stdout);
}

#endif /* KDIPC_MATMUL_H */
