/*
 * heat - the heat equation on a square plate, System V shared memory
 * version (Tapus thesis, chapter 4).
 *
 *   heat [-n N] [-s STEPS] [-o out.png] RANK NPROCS KEY
 *
 * Defaults: N = 256, STEPS = 200, no picture.  Options may come before or
 * after the positional arguments (GNU getopt).  One process per rank, all
 * started together, like the other multi-rank programs.
 *
 * Problem: an N x N grid of doubles.  The boundary is fixed: the first N/2
 * cells of the top row and of the left column (the top-left corner) are
 * held at 100.0, the rest of the boundary at 0.0; the interior starts at
 * 0.0.  Each step applies the explicit 5-point stencil
 *     new = old + ALPHA * ((up + down) + (left + right) - 4 * old)
 * to every interior cell, reading one grid and writing the other (double
 * buffering: step s reads grid s % 2 and writes grid (s + 1) % 2).
 *
 * Shared memory:
 *   KEY             both grids, each rounded up to whole pages.
 *   KEY + rank + 1  one page per rank: its progress, a uint64 equal to the
 *                   number of completed steps plus one (0 = not started,
 *                   1 = initialised), as in the thesis.
 *
 * Work split: the interior rows 1..N-2 are divided into NPROCS contiguous
 * bands (band edges moved to page boundaries when rows are smaller than a
 * page and that keeps every band non-empty, so that neighbouring ranks do
 * not write the same page).  Every rank initialises its own rows in both
 * grids (rank 0 also the top boundary row, the last rank the bottom one),
 * then publishes progress 1.  Before step s a rank polls until both of its
 * neighbours' progress is at least s + 1, i.e. they finished step s - 1:
 * this covers both the rows it is about to read (written by the neighbours
 * in step s - 1) and the rows they may still be reading in the grid it is
 * about to overwrite.  After the step it publishes s + 2.  Publication uses
 * release stores and acquire loads.
 *
 * At the end rank 0 waits until every rank has published STEPS + 1, prints
 *   heat rank 0: n=N steps=S nprocs=P time=T checksum=C center=X
 * (checksum = sum of all cells of the final grid in row-major order, %.10e),
 * writes the PNG if asked, and removes all segments.  The other ranks print
 * their band and time.  Every cell is computed by the same expression from
 * the same inputs whatever the split, so the result, and the checksum, are
 * bit-identical for any NPROCS.
 *
 * The PNG (8-bit RGB, black-red-yellow-white heat map over 0..100) is
 * written without zlib: deflate "stored" blocks, CRC-32 and Adler-32
 * computed here.
 */
#include "common.h"

#include <getopt.h>

#define ALPHA 0.2
#define HOT 100.0

struct plate {
    long n;
    size_t grid_bytes;  /* one grid, rounded up to whole pages */
    uint8_t *seg;
};

static double *grid(const struct plate *pl, long step)
{
    return (double *)(pl->seg + (size_t)(step % 2) * pl->grid_bytes);
}

static double boundary_value(long n, long i, long j)
{
    if ((i == 0 && j < n / 2) || (j == 0 && i < n / 2))
        return HOT;
    return 0.0;
}

/* First interior row of each band: bounds[r] .. bounds[r + 1] - 1. */
static void split_rows(long n, int nprocs, long *bounds)
{
    long interior = n - 2;
    for (int r = 0; r <= nprocs; r++)
        bounds[r] = 1 + (long)r * interior / nprocs;

    size_t row_bytes = (size_t)n * sizeof(double);
    if (row_bytes >= PAGE_SIZE || PAGE_SIZE % row_bytes != 0)
        return;
    long rows_per_page = (long)(PAGE_SIZE / row_bytes);
    long aligned[nprocs + 1];
    aligned[0] = bounds[0];
    aligned[nprocs] = bounds[nprocs];
    for (int r = 1; r < nprocs; r++) {
        aligned[r] = (bounds[r] + rows_per_page / 2) / rows_per_page * rows_per_page;
        if (aligned[r] <= aligned[r - 1])
            return; /* a band would be empty: keep the plain split */
    }
    if (aligned[nprocs] <= aligned[nprocs - 1])
        return;
    memcpy(bounds, aligned, sizeof aligned);
}

static void init_row(const struct plate *pl, long i)
{
    long n = pl->n;
    for (long step = 0; step < 2; step++) {
        double *row = grid(pl, step) + i * n;
        int edge_row = i == 0 || i == n - 1;
        for (long j = 0; j < n; j++)
            row[j] = edge_row || j == 0 || j == n - 1 ? boundary_value(n, i, j) : 0.0;
    }
}

static void compute_rows(const struct plate *pl, long step, long lo, long hi)
{
    long n = pl->n;
    const double *old = grid(pl, step);
    double *new = grid(pl, step + 1);
    for (long i = lo; i < hi; i++) {
        const double *up = old + (i - 1) * n, *mid = old + i * n, *down = old + (i + 1) * n;
        double *out = new + i * n;
        for (long j = 1; j < n - 1; j++)
            out[j] = mid[j] + ALPHA * ((up[j] + down[j]) + (mid[j - 1] + mid[j + 1]) - 4.0 * mid[j]);
    }
}

static uint64_t *attach_progress(key_t key, int rank)
{
    return attach_segment(key + rank + 1, PAGE_SIZE);
}

static void wait_progress(uint64_t *progress, uint64_t at_least)
{
    unsigned spins = 0;
    while (__atomic_load_n(progress, __ATOMIC_ACQUIRE) < at_least)
        spin_pause(&spins);
}

/* ---- PNG without zlib ---------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *buf, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint32_t adler32(const uint8_t *buf, size_t len)
{
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < len; i++) {
        a = (a + buf[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

static uint8_t *put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static void write_chunk(FILE *f, const char *type, const uint8_t *data, size_t len)
{
    uint8_t head[8];
    put_be32(head, (uint32_t)len);
    memcpy(head + 4, type, 4);
    uint32_t crc = crc32_update(0, head + 4, 4);
    crc = crc32_update(crc, data, len);
    uint8_t tail[4];
    put_be32(tail, crc);
    fwrite(head, 1, 8, f);
    if (len != 0)
        fwrite(data, 1, len, f);
    fwrite(tail, 1, 4, f);
}

/* zlib stream of `raw` using only stored (uncompressed) deflate blocks. */
static uint8_t *zlib_stored(const uint8_t *raw, size_t len, size_t *out_len)
{
    size_t blocks = len / 65535 + 1;
    uint8_t *z = malloc(2 + len + 5 * blocks + 4);
    if (z == NULL)
        die("out of memory");
    uint8_t *p = z;
    *p++ = 0x78; /* CM = 8 (deflate), CINFO = 7 (32 KiB window) */
    *p++ = 0x01; /* FCHECK: 0x7801 is a multiple of 31, no dictionary */
    size_t done = 0;
    do {
        size_t n = len - done > 65535 ? 65535 : len - done;
        int final = done + n == len;
        *p++ = (uint8_t)final; /* BFINAL, BTYPE = 00 (stored) */
        *p++ = (uint8_t)n;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)~n;
        *p++ = (uint8_t)(~n >> 8);
        memcpy(p, raw + done, n);
        p += n;
        done += n;
    } while (done < len);
    p = put_be32(p, adler32(raw, len));
    *out_len = (size_t)(p - z);
    return z;
}

static uint8_t clamp_byte(double v)
{
    if (v <= 0.0)
        return 0;
    if (v >= 1.0)
        return 255;
    return (uint8_t)(v * 255.0 + 0.5);
}

static void write_png(const char *path, const double *field, long n)
{
    size_t stride = 1 + 3 * (size_t)n; /* filter byte + RGB */
    uint8_t *raw = malloc(stride * (size_t)n);
    if (raw == NULL)
        die("out of memory");
    for (long i = 0; i < n; i++) {
        uint8_t *row = raw + (size_t)i * stride;
        row[0] = 0; /* filter: none */
        for (long j = 0; j < n; j++) {
            double t = field[i * n + j] / HOT;
            uint8_t *px = row + 1 + 3 * j;
            px[0] = clamp_byte(3.0 * t);
            px[1] = clamp_byte(3.0 * t - 1.0);
            px[2] = clamp_byte(3.0 * t - 2.0);
        }
    }
    size_t zlen;
    uint8_t *z = zlib_stored(raw, stride * (size_t)n, &zlen);

    FILE *f = fopen(path, "wb");
    if (f == NULL)
        die("%s: %s", path, strerror(errno));
    static const uint8_t signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    fwrite(signature, 1, sizeof signature, f);
    uint8_t ihdr[13];
    put_be32(ihdr, (uint32_t)n);
    put_be32(ihdr + 4, (uint32_t)n);
    ihdr[8] = 8;   /* bit depth */
    ihdr[9] = 2;   /* colour type: RGB */
    ihdr[10] = 0;  /* compression: deflate */
    ihdr[11] = 0;  /* filter method 0 */
    ihdr[12] = 0;  /* no interlace */
    crc_init();
    write_chunk(f, "IHDR", ihdr, sizeof ihdr);
    write_chunk(f, "IDAT", z, zlen);
    write_chunk(f, "IEND", NULL, 0);
    if (ferror(f) || fclose(f) != 0)
        die("%s: write failed", path);
    free(z);
    free(raw);
}

/* ---- main ------------------------------------------------------------------ */

static void usage(const char *prog)
{
    die("usage: %s [-n N] [-s STEPS] [-o out.png] RANK NPROCS KEY", prog);
}

int main(int argc, char **argv)
{
    long n = 256, steps = 200;
    const char *png = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:o:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        case 's': steps = parse_long("STEPS", optarg); break;
        case 'o': png = optarg; break;
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
    if (n < 3 || n > 65536 || steps < 0)
        die("need 3 <= N <= 65536 and STEPS >= 0");
    if (n - 2 < nprocs)
        die("%ld interior rows cannot be split among %d ranks", n - 2, nprocs);

    struct plate pl;
    pl.n = n;
    pl.grid_bytes = ((size_t)n * (size_t)n * sizeof(double) + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE;
    int grid_id;
    pl.seg = attach_segment_id(key, 2 * pl.grid_bytes, &grid_id);

    long bounds[nprocs + 1];
    split_rows(n, nprocs, bounds);
    long lo = bounds[rank], hi = bounds[rank + 1];

    /* Progress pages: our own, our neighbours', and (rank 0) everyone's. */
    uint64_t *progress[nprocs];
    for (int r = 0; r < nprocs; r++)
        progress[r] = rank == 0 || r == rank || r == rank - 1 || r == rank + 1
                      ? attach_progress(key, r) : NULL;
    if (__atomic_load_n(progress[rank], __ATOMIC_ACQUIRE) != 0)
        die("stale progress segment 0x%x (key reused? remove it with ipcrm)",
            (unsigned)(key + rank + 1));

    double t0 = now_seconds();
    if (rank == 0)
        init_row(&pl, 0);
    for (long i = lo; i < hi; i++)
        init_row(&pl, i);
    if (rank == nprocs - 1)
        init_row(&pl, n - 1);
    __atomic_store_n(progress[rank], 1, __ATOMIC_RELEASE);

    for (long s = 0; s < steps; s++) {
        if (rank > 0)
            wait_progress(progress[rank - 1], (uint64_t)s + 1);
        if (rank < nprocs - 1)
            wait_progress(progress[rank + 1], (uint64_t)s + 1);
        compute_rows(&pl, s, lo, hi);
        __atomic_store_n(progress[rank], (uint64_t)s + 2, __ATOMIC_RELEASE);
    }

    if (rank != 0) {
        printf("heat rank %d: n=%ld steps=%ld rows=%ld-%ld time=%.3fs\n",
               rank, n, steps, lo, hi - 1, now_seconds() - t0);
        return 0;
    }

    for (int r = 0; r < nprocs; r++)
        wait_progress(progress[r], (uint64_t)steps + 1);
    double elapsed = now_seconds() - t0;
    const double *field = grid(&pl, steps);
    double checksum = 0.0;
    for (long k = 0; k < n * n; k++)
        checksum += field[k];
    double center = field[(n / 2) * n + n / 2];
    printf("heat rank 0: n=%ld steps=%ld nprocs=%d time=%.3fs checksum=%.10e center=%.10e\n",
           n, steps, nprocs, elapsed, checksum, center);
    fflush(stdout);

    if (png != NULL)
        write_png(png, field, n);

    remove_segment(grid_id);
    for (int r = 0; r < nprocs; r++) {
        int id = shmget(key + r + 1, PAGE_SIZE, kdipc_flags(0600 | IPC_KDIPC));
        if (id < 0)
            die("shmget(progress of rank %d): %s", r, strerror(errno));
        remove_segment(id);
    }
    return 0;
}
