/*
 * pattern - every byte written by one rank is read back by all the others.
 *
 *   pattern RANK NPROCS KEY [PAGES=64] [ROUNDS=2]
 *
 * Segment: one control page (barrier) followed by PAGES data pages.
 * In round r the writer, rank r % NPROCS, fills every data byte with a value
 * that depends on (r, offset); after a barrier every rank (the writer
 * included) checks every byte; a second barrier ends the round and the
 * writer role moves on.  Consecutive rounds use unrelated patterns, so a
 * stale page (an old copy, or a zero page that should not be zero) is
 * caught at nearly every byte.
 *
 * Violation (exit 1): any byte differs from the round's pattern; the first
 * bad offset and the number of bad bytes are reported.
 */
#include "common.h"

static inline uint8_t pattern_byte(long round, size_t offset)
{
    uint64_t h = mix64(((uint64_t)round << 40) ^ (offset >> 3));
    return (uint8_t)(h >> (8 * (offset & 7)));
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6)
        die("usage: %s RANK NPROCS KEY [PAGES=64] [ROUNDS=2]", argv[0]);
    /* The generic parser handles RANK NPROCS KEY; PAGES and ROUNDS follow. */
    struct args a = parse_args(4, argv, 0, 1);
    long pages = argc > 4 ? parse_long("PAGES", argv[4]) : 64;
    long rounds = argc > 5 ? parse_long("ROUNDS", argv[5]) : 2;
    if (pages < 1 || rounds < 1)
        die("PAGES and ROUNDS must be positive");

    size_t data_size = (size_t)pages * PAGE_SIZE;
    int id;
    uint8_t *seg = attach_segment_id(a.key, PAGE_SIZE + data_size, &id);
    struct barrier bar = barrier_join((struct barrier_shared *)seg, a.nprocs);
    volatile uint8_t *data = seg + PAGE_SIZE;

    double t0 = now_seconds();
    barrier_wait(&bar);

    long bad_total = 0;
    for (long r = 0; r < rounds; r++) {
        int writer = (int)(r % a.nprocs);
        if (a.rank == writer)
            for (size_t off = 0; off < data_size; off++)
                data[off] = pattern_byte(r, off);
        barrier_wait(&bar);

        long bad = 0;
        size_t first_bad = 0;
        for (size_t off = 0; off < data_size; off++) {
            uint8_t got = data[off];
            if (got != pattern_byte(r, off)) {
                if (bad == 0)
                    first_bad = off;
                bad++;
            }
        }
        if (bad != 0) {
            fprintf(stderr,
                    "pattern rank %d: round %ld (writer %d): %ld bad bytes, "
                    "first at offset %zu (page %zu): got 0x%02x want 0x%02x\n",
                    a.rank, r, writer, bad, first_bad, first_bad / PAGE_SIZE,
                    data[first_bad], pattern_byte(r, first_bad));
            bad_total += bad;
        }
        barrier_wait(&bar);
    }

    if (a.rank == 0)
        remove_segment(id);
    printf("pattern rank %d: pages=%ld rounds=%ld bad_bytes=%ld time=%.3fs\n",
           a.rank, pages, rounds, bad_total, now_seconds() - t0);
    return bad_total != 0 ? EXIT_VIOLATION : 0;
}
