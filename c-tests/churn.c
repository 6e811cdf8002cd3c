/*
 * churn - short-lived processes: each takes the pages its predecessors
 * wrote, adds to them and exits, while others already want them.
 *
 *   churn KEY init PAGES      create the segment and the mutex (value 1)
 *   churn KEY work PAGES ID   one worker: under the mutex (SEM_UNDO), add
 *                             1 to counter 0 of every page and ID + 1 to
 *                             counter 1 (a plain read-modify-write: exact
 *                             only under mutual exclusion and with no page
 *                             lost or rolled back), then detach and exit
 *   churn KEY check PAGES N   counter 0 of every page must be N and
 *                             counter 1 N (N + 1) / 2; removes both objects
 *
 * A process's exit hands back the pages it owned while the next workers'
 * requests for them are on their way: a page lost or a stale copy shows
 * as a wrong count ("churn: page P: ..."; exit 1).
 */
#include "common.h"

#include <inttypes.h>
#include <sys/sem.h>

static int open_mutex(key_t key, int flags)
{
    int sem = semget(key, 1, kdipc_flags(flags | 0600 | IPC_KDIPC));
    if (sem < 0)
        die("semget: %s", strerror(errno));
    return sem;
}

static void op(int sem, short delta)
{
    struct sembuf b = { 0, delta, SEM_UNDO };
    while (semop(sem, &b, 1) != 0)
        if (errno != EINTR)
            fail("semop %d: %s", delta, strerror(errno));
}

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
        int sem = open_mutex(key, IPC_CREAT | IPC_EXCL);
        if (semctl(sem, 0, SETVAL, 1) != 0)
            die("semctl SETVAL: %s", strerror(errno));
        printf("churn: init pages=%ld\n", pages);
        return 0;
    }
    if (argc != 5)
        die("usage: %s KEY work|check PAGES ID|N", argv[0]);
    long n = parse_long("ID|N", argv[4]);
    int sem = open_mutex(key, 0);

    if (strcmp(what, "work") == 0) {
        op(sem, -1);
        for (long p = 0; p < pages; p++) {
            volatile uint64_t *c = (volatile uint64_t *)(seg + (size_t)p * PAGE_SIZE);
            c[0] = c[0] + 1;
            c[1] = c[1] + (uint64_t)n + 1;
        }
        op(sem, 1);
        if (shmdt(seg) != 0)
            fail("shmdt: %s", strerror(errno));
        return 0;
    }
    if (strcmp(what, "check") != 0)
        die("unknown command '%s'", what);
    op(sem, -1);
    uint64_t want0 = (uint64_t)n, want1 = (uint64_t)n * (uint64_t)(n + 1) / 2;
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
    op(sem, 1);
    printf("churn: workers=%ld pages=%ld bad_pages=%d\n", n, pages, bad);
    remove_segment(id);
    if (semctl(sem, 0, IPC_RMID) != 0)
        die("semctl IPC_RMID: %s", strerror(errno));
    return bad ? EXIT_VIOLATION : 0;
}
