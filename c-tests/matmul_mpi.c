/*
 * matmul_mpi - the naive matrix multiply of matmul.c with MPI message
 * passing (the "MsgPass" column of the thesis's figure 6.1).
 *
 *   mpirun -np P matmul_mpi [-n N]
 *
 * Default N = 200.  Rank 0 fills A and B (matmul.h); after a barrier ("all
 * ready") rank 0 scatters the blocks of rows of A (MPI_Scatterv, the same
 * split as matmul.c), broadcasts B, every rank computes its block of C and
 * rank 0 gathers C (MPI_Gatherv); the time runs from the barrier to the end
 * of the gather ("all done").  Prints the same line as matmul.c:
 *   matmul rank 0: n=N nprocs=P time=T checksum=C
 */
#include "common.h"

#include <getopt.h>
#include <mpi.h>

#include "matmul.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, nprocs;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nprocs);

    long n = 200;
    int opt;
    while ((opt = getopt(argc, argv, "n:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        default: die("usage: %s [-n N]", argv[0]);
        }
    }
    if (argc != optind)
        die("usage: %s [-n N]", argv[0]);
    if (n < 1 || n > 32768 || n * n > 0x7fffffffL)
        die("need 1 <= N <= 32768 and N * N < 2^31");

    size_t bytes = (size_t)n * (size_t)n * sizeof(double);
    long lo = matmul_first_row(n, rank, nprocs), hi = matmul_first_row(n, rank + 1, nprocs);
    long rows = hi - lo;
    double *b = malloc(bytes);
    double *a_rows = malloc((size_t)(rows > 0 ? rows : 1) * (size_t)n * sizeof(double));
    double *c_rows = malloc((size_t)(rows > 0 ? rows : 1) * (size_t)n * sizeof(double));
    double *a = NULL, *c = NULL;
    int *counts = malloc((size_t)nprocs * sizeof(int)), *displs = malloc((size_t)nprocs * sizeof(int));
    if (b == NULL || a_rows == NULL || c_rows == NULL || counts == NULL || displs == NULL)
        die("out of memory");
    for (int r = 0; r < nprocs; r++) {
        counts[r] = (int)((matmul_first_row(n, r + 1, nprocs) - matmul_first_row(n, r, nprocs)) * n);
        displs[r] = (int)(matmul_first_row(n, r, nprocs) * n);
    }
    if (rank == 0) {
        a = malloc(bytes);
        c = malloc(bytes);
        if (a == NULL || c == NULL)
            die("out of memory");
        matmul_fill(a, b, n);
    }

    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Scatterv(a, counts, displs, MPI_DOUBLE, a_rows, counts[rank], MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Bcast(b, (int)(n * n), MPI_DOUBLE, 0, MPI_COMM_WORLD);
    matmul_rows(a_rows, b, c_rows, n, rows);
    MPI_Gatherv(c_rows, counts[rank], MPI_DOUBLE, c, counts, displs, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    double elapsed = MPI_Wtime() - t0;

    if (rank == 0)
        matmul_report(c, n, nprocs, elapsed);
    MPI_Finalize();
    return 0;
}
