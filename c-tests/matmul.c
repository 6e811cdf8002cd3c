/*
 * matmul - naive matrix multiply C = A * B with System V shared memory and
 * one process per rank (the "ShMem" column of the thesis's figure 6.1;
 * under libkdipc.so the same binary is the "DSM" column).
 *
 *   matmul [-n N] RANK NPROCS KEY
 *
 * Default N = 200.  Ranks are started separately, like heat (see
 * common.h).  One segment, KEY: a control page (the barrier of common.h),
 * then A, B and C, N x N doubles each, every matrix starting on a page
 * boundary.  Rank 0 fills A and B deterministically (matmul.h); all ranks
 * then meet at a barrier ("all ready"), each computes its block of rows of
 * C (rows r*N/P .. (r+1)*N/P - 1) with the naive triple loop, and all meet
 * at a second barrier ("all done").  Rank 0 prints
 *   matmul rank 0: n=N nprocs=P time=T checksum=C
 * with T the time between the two barriers, then removes the segment.
 * Every element is summed in the same order in every version, so the
 * checksum is bit-identical to matmul_threads and matmul_mpi.
 */
#include "common.h"

#include <getopt.h>

#include "matmul.h"

static size_t page_round(size_t bytes)
{
    return (bytes + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE;
}

static void usage(const char *prog)
{
    die("usage: %s [-n N] RANK NPROCS KEY", prog);
}

int main(int argc, char **argv)
{
    long n = 200;
    int opt;
    while ((opt = getopt(argc, argv, "n:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        default: usage(argv[0]);
        }
    }
    if (argc - optind != 3)
        usage(argv[0]);
    int rank = (int)parse_long("RANK", argv[optind]);
    int nprocs = (int)parse_long("NPROCS", argv[optind + 1]);
    key_t key = (key_t)parse_long("KEY", argv[optind + 2]);
    if (nprocs < 1 || rank < 0 || rank >= nprocs)
        die("need 0 <= RANK < NPROCS (got rank %d, nprocs %d)", rank, nprocs);
    if (n < 1 || n > 32768)
        die("need 1 <= N <= 32768");

    size_t mat = page_round((size_t)n * (size_t)n * sizeof(double));
    int id;
    uint8_t *seg = attach_segment_id(key, PAGE_SIZE + 3 * mat, &id);
    double *a = (double *)(seg + PAGE_SIZE);
    double *b = (double *)(seg + PAGE_SIZE + mat);
    double *c = (double *)(seg + PAGE_SIZE + 2 * mat);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, nprocs);

    if (rank == 0)
        matmul_fill(a, b, n);
    barrier_wait(&bar);
    double t0 = now_seconds();
    long lo = matmul_first_row(n, rank, nprocs), hi = matmul_first_row(n, rank + 1, nprocs);
    matmul_rows(a + lo * n, b, c + lo * n, n, hi - lo);
    barrier_wait(&bar);
    double elapsed = now_seconds() - t0;

    if (rank == 0) {
        matmul_report(c, n, nprocs, elapsed);
        remove_segment(id);
    }
    return 0;
}
