/*
 * churn - short-lived processes: each takes the pages its predecessors
 * wrote, adds to them and exits, while others already want them.
 *
 *   churn KEY init PAGES      create the segment
 *   churn KEY work PAGES ID   one worker: ROUNDS times, on every page, add
 *                             1 to counter 0 and ID + 1 to counter 1
 *                             (atomic adds: the page moves between the
 *                             workers running at once), then exit
 *   churn KEY check PAGES N   counter 0 of every page must be ROUNDS N and
 *                             counter 1 ROUNDS N (N + 1) / 2; removes the
 *                             segment
 *
 * A process exits while the pages it owned are being handed on and asked
 * for by the others: a page lost, rolled back or left stale shows as a
 * wrong count ("churn: page P: ..."; exit 1) or a SIGBUS.
 */
#include "common.h"

#include <inttypes.h>

#define ROUNDS 8

int main(int argc, char **argv)
{
    if (argc < 4)
        die("usage: %s KEY init|work|check PAGES [ID|N]", argv[0]);
    key_t key = (key_t)parse_long("KEY", argv[1]);
    const char *what = argv[2];
    long pages = parse_long("PAGES", argv[3]);
    if (pages < 1 || pages > 1024)
        die("PAGES must be 1..1024");
    size_t size = (size_t)pages * PAGE_SIZE;
    int id;
    uint8_t *seg = attach_segment_id(key, size, &id);

    if (strcmp(what, "init") == 0) {
        printf("churn: init pages=%ld\n", pages);
        return 0;
    }
    if (argc != 5)
        die("usage: %s KEY work|check PAGES ID|N", argv[0]);
    long n = parse_long("ID|N", argv[4]);

    if (strcmp(what, "work") == 0) {
        for (int r = 0; r < ROUNDS; r++)
            for (long p = 0; p < pages; p++) {
                uint64_t *c = (uint64_t *)(seg + (size_t)p * PAGE_SIZE);
                __atomic_fetch_add(&c[0], 1, __ATOMIC_SEQ_CST);
                __atomic_fetch_add(&c[1], (uint64_t)n + 1, __ATOMIC_SEQ_CST);
            }
        return 0;
    }
    if (strcmp(what, "check") != 0)
        die("unknown command '%s'", what);
    uint64_t want0 = (uint64_t)ROUNDS * (uint64_t)n;
    uint64_t want1 = (uint64_t)ROUNDS * (uint64_t)n * (uint64_t)(n + 1) / 2;
    int bad = 0;
    for (long p = 0; p < pages; p++) {
        uint64_t *c = (uint64_t *)(seg + (size_t)p * PAGE_SIZE);
        if (c[0] != want0 || c[1] != want1) {
            fprintf(stderr, "churn: page %ld: count %" PRIu64 " (want %" PRIu64
                    "), sum %" PRIu64 " (want %" PRIu64 ")\n",
                    p, c[0], want0, c[1], want1);
            bad++;
        }
    }
    printf("churn: workers=%ld pages=%ld bad_pages=%d\n", n, pages, bad);
    remove_segment(id);
    return bad ? EXIT_VIOLATION : 0;
}
