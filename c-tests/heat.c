/*
 * heat - the heat equation on a square plate, System V shared memory
 * version (Tapus thesis, chapter 4).
 *
 *   heat [-n N] [-s STEPS] [-w poll|sem] [-o out.png] [-t SECONDS] [-k STEP]
 *        RANK NPROCS KEY
 *
 * Defaults: N = 256, STEPS = 200, polling, no picture.  Options may come
 * before or after the positional arguments (GNU getopt).  One process per
 * rank, all started together, like the other multi-rank programs.
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
 * Semaphore variant (-w sem): the same protocol with a semaphore set
 * instead of polling, semget(KEY, 2 * NPROCS + 1) (semaphore keys are
 * separate from segment keys).  Semaphore 2r counts the steps completed by
 * rank r - 1, semaphore 2r + 1 those of rank r + 1, both posted by that
 * neighbour (the initialisation counts as one); before step s rank r takes
 * one from each, so it has taken s + 1: its neighbours have finished step
 * s - 1, as with polling.  The last semaphore counts the ranks that are
 * done; rank 0 takes NPROCS - 1 from it at the end.  New sets start at 0.
 * The progress segments are still created and published (they are cheap
 * and tell a stale key apart).
 *
 * At the end rank 0 waits until every rank has published STEPS + 1, prints
 *   heat rank 0: n=N steps=S nprocs=P time=T checksum=C center=X bits=H
 * (checksum = sum of all cells of the final grid in row-major order, %.10e;
 * bits = a hash of the cells' bit patterns, see heat.h),
 * writes the PNG if asked, and removes all segments.  The other ranks print
 * their band and time.  Every cell is computed by the same expression from
 * the same inputs whatever the split, so the result, and the checksum, are
 * bit-identical for any NPROCS.
 *
 * Failure runs: -t SECONDS gives up when a neighbour (or, at the end, any
 * rank) makes no progress for that long: "heat rank R: no progress from
 * ... for T s (dead?)" on stderr, exit status 3 (a semaphore wait is then
 * a semtimedop with that time-out).  -k STEP: this rank dies by SIGKILL
 * after publishing step STEP.  A run with a dead rank never prints a
 * result: its band is gone.
 *
 * The PNG (8-bit RGB, black-red-yellow-white heat map over 0..100) is
 * written without zlib: deflate "stored" blocks, CRC-32 and Adler-32
 * computed here.
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <time.h>
#include <getopt.h>
#include <sys/sem.h>

#include "heat.h"

struct plate {
    long n;
    size_t grid_bytes;  /* one grid, rounded up to whole pages */
    uint8_t *seg;
};

static double *grid(const struct plate *pl, long step)
{
    return (double *)(pl->seg + (size_t)(step % 2) * pl->grid_bytes);
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
    for (long step = 0; step < 2; step++)
        heat_init_row(grid(pl, step) + i * pl->n, pl->n, i);
}

static void compute_rows(const struct plate *pl, long step, long lo, long hi)
{
    long n = pl->n;
    const double *old = grid(pl, step);
    double *new = grid(pl, step + 1);
    for (long i = lo; i < hi; i++)
        heat_step_row(old + (i - 1) * n, old + i * n, old + (i + 1) * n, new + i * n, n);
}

static uint64_t *attach_progress(key_t key, int rank)
{
    return attach_segment(key + rank + 1, PAGE_SIZE);
}

/* -t: give up after this many seconds without progress (0: never). */
static long stall_limit;
static int me_rank;

#define EXIT_STALLED 3

static void stalled(const char *what)
{
    fprintf(stderr, "heat rank %d: no progress from %s for %ld s (dead?)\n", me_rank, what,
            stall_limit);
    exit(EXIT_STALLED);
}

static void wait_progress(uint64_t *progress, uint64_t at_least)
{
    unsigned spins = 0;
    double t0 = stall_limit ? now_seconds() : 0;
    while (__atomic_load_n(progress, __ATOMIC_ACQUIRE) < at_least) {
        spin_pause(&spins);
        if (stall_limit && (spins & 1023) == 0 && now_seconds() - t0 > (double)stall_limit)
            stalled("a neighbour's progress page");
    }
}

/* ---- semaphore variant ---------------------------------------------------- */

static void sem_apply(int id, struct sembuf *ops, size_t nops)
{
    struct timespec limit = { stall_limit, 0 };
    while (semtimedop(id, ops, nops, stall_limit ? &limit : NULL) != 0) {
        if (errno == EAGAIN && stall_limit)
            stalled("the semaphores");
        if (errno != EINTR)
            die("semop: %s", strerror(errno));
    }
}

/* Posts one completed step to each neighbour. */
static void sem_post_step(int id, int rank, int nprocs)
{
    struct sembuf ops[2];
    size_t k = 0;
    if (rank > 0)
        ops[k++] = (struct sembuf){ (unsigned short)(2 * (rank - 1) + 1), 1, 0 };
    if (rank < nprocs - 1)
        ops[k++] = (struct sembuf){ (unsigned short)(2 * (rank + 1)), 1, 0 };
    if (k > 0)
        sem_apply(id, ops, k);
}

/* Takes one completed step from each neighbour. */
static void sem_wait_step(int id, int rank, int nprocs)
{
    struct sembuf ops[2];
    size_t k = 0;
    if (rank > 0)
        ops[k++] = (struct sembuf){ (unsigned short)(2 * rank), -1, 0 };
    if (rank < nprocs - 1)
        ops[k++] = (struct sembuf){ (unsigned short)(2 * rank + 1), -1, 0 };
    if (k > 0)
        sem_apply(id, ops, k);
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
            double t = field[i * n + j] / HEAT_HOT;
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
    die("usage: %s [-n N] [-s STEPS] [-w poll|sem] [-o out.png] [-t SECONDS] [-k STEP] RANK NPROCS KEY",
        prog);
}

int main(int argc, char **argv)
{
    long n = 256, steps = 200;
    const char *png = NULL;
    int use_sem = 0;
    long kill_at = -1;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:w:o:t:k:")) != -1) {
        switch (opt) {
        case 'n': n = parse_long("N", optarg); break;
        case 's': steps = parse_long("STEPS", optarg); break;
        case 'w':
            if (strcmp(optarg, "sem") != 0 && strcmp(optarg, "poll") != 0)
                die("-w: expected poll or sem, got '%s'", optarg);
            use_sem = strcmp(optarg, "sem") == 0;
            break;
        case 'o': png = optarg; break;
        case 't': stall_limit = parse_long("SECONDS", optarg); break;
        case 'k': kill_at = parse_long("STEP", optarg); break;
        default: usage(argv[0]);
        }
    }
    if (argc - optind != 3)
        usage(argv[0]);
    int rank = (int)parse_long("RANK", argv[optind]);
    int nprocs = (int)parse_long("NPROCS", argv[optind + 1]);
    key_t key = (key_t)parse_long("KEY", argv[optind + 2]);
    me_rank = rank;
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
    int sem_id = -1;
    if (use_sem) {
        sem_id = semget(key, 2 * nprocs + 1, kdipc_flags(IPC_CREAT | 0600 | IPC_KDIPC));
        if (sem_id < 0)
            die("semget: %s", strerror(errno));
    }

    double t0 = now_seconds();
    if (rank == 0)
        init_row(&pl, 0);
    for (long i = lo; i < hi; i++)
        init_row(&pl, i);
    if (rank == nprocs - 1)
        init_row(&pl, n - 1);
    __atomic_store_n(progress[rank], 1, __ATOMIC_RELEASE);
    if (use_sem)
        sem_post_step(sem_id, rank, nprocs);

    for (long s = 0; s < steps; s++) {
        if (use_sem) {
            sem_wait_step(sem_id, rank, nprocs);
        } else {
            if (rank > 0)
                wait_progress(progress[rank - 1], (uint64_t)s + 1);
            if (rank < nprocs - 1)
                wait_progress(progress[rank + 1], (uint64_t)s + 1);
        }
        compute_rows(&pl, s, lo, hi);
        __atomic_store_n(progress[rank], (uint64_t)s + 2, __ATOMIC_RELEASE);
        if (use_sem)
            sem_post_step(sem_id, rank, nprocs);
        if (s == kill_at) {
            fflush(stdout);
            raise(SIGKILL);
        }
    }

    if (rank != 0) {
        if (use_sem) {
            struct sembuf done = { (unsigned short)(2 * nprocs), 1, 0 };
            sem_apply(sem_id, &done, 1);
        }
        printf("heat rank %d: n=%ld steps=%ld rows=%ld-%ld time=%.3fs\n",
               rank, n, steps, lo, hi - 1, now_seconds() - t0);
        return 0;
    }

    if (use_sem && nprocs > 1) {
        struct sembuf all = { (unsigned short)(2 * nprocs), (short)-(nprocs - 1), 0 };
        sem_apply(sem_id, &all, 1);
    }
    for (int r = 0; r < nprocs; r++)
        wait_progress(progress[r], (uint64_t)steps + 1);
    double elapsed = now_seconds() - t0;
    const double *field = grid(&pl, steps);
    heat_report(field, n, steps, nprocs, elapsed);

    if (png != NULL)
        write_png(png, field, n);

    if (use_sem && semctl(sem_id, 0, IPC_RMID) != 0)
        die("semctl(IPC_RMID): %s", strerror(errno));
    remove_segment(grid_id);
    for (int r = 0; r < nprocs; r++) {
        int id = shmget(key + r + 1, PAGE_SIZE, kdipc_flags(0600 | IPC_KDIPC));
        if (id < 0)
            die("shmget(progress of rank %d): %s", r, strerror(errno));
        remove_segment(id);
    }
    return 0;
}
