/*
 * forkers - the classic System V pattern: create, fork workers, wait.
 *
 *   forkers KEY [WORKERS=4] [PAGES=16]
 *   forkers check KEY ID PAGES     (run by exec from the workers)
 *
 * The parent creates a distributed segment and a semaphore set, then forks
 * WORKERS children. Child i fills its share of the segment with a pattern
 * and posts the semaphore (SEM_UNDO-free +1). The parent waits for all
 * posts with one semop(-WORKERS), checks every byte, and checks that
 * shm_nattch counted the children while they were attached. Then two more
 * children exec `forkers check KEY ID PAGES`, which attach by key and by
 * the id passed in argv and check every byte. Exit 0 when all is right.
 */
#include "common.h"

#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char pat(size_t i)
{
    return (unsigned char)(mix64(i) | 1);
}

static long check(const uint8_t *p, size_t len)
{
    long bad = 0;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pat(i))
            bad++;
    return bad;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "check") == 0) {
        key_t key = (key_t)parse_long("KEY", argv[2]);
        int id = (int)parse_long("ID", argv[3]);
        size_t len = (size_t)parse_long("PAGES", argv[4]) * PAGE_SIZE;
        int by_key = shmget(key, 0, kdipc_flags(IPC_KDIPC));
        if (by_key != id)
            fail("checker: shmget by key gave %d, expected %d", by_key, id);
        uint8_t *a = shmat(id, NULL, SHM_RDONLY);
        uint8_t *b = shmat(by_key, NULL, 0);
        if (a == (void *)-1 || b == (void *)-1)
            fail("checker: shmat: %s", strerror(errno));
        long bad = check(a, len) + check(b, len);
        if (bad)
            fail("checker: %ld bad bytes", bad);
        printf("checker %d: ok\n", (int)getpid());
        return 0;
    }
    if (argc < 2 || argc > 4)
        die("usage: forkers KEY [WORKERS=4] [PAGES=16] | forkers check KEY ID PAGES");
    key_t key = (key_t)parse_long("KEY", argv[1]);
    int workers = argc > 2 ? (int)parse_long("WORKERS", argv[2]) : 4;
    long pages = argc > 3 ? parse_long("PAGES", argv[3]) : 16;
    size_t len = (size_t)pages * PAGE_SIZE;
    int id = shmget(key, len, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    int sem = semget(key, 1, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0 || sem < 0)
        die("create: %s", strerror(errno));
    uint8_t *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        die("shmat: %s", strerror(errno));
    p[0] = 0; /* the parent holds a page before forking */
    size_t share = len / (size_t)workers;
    for (int w = 0; w < workers; w++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            size_t lo = (size_t)w * share, hi = w == workers - 1 ? len : lo + share;
            for (size_t i = lo; i < hi; i++)
                p[i] = pat(i);
            struct shmid_ds ds;
            if (shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_nattch < 2)
                fail("worker %d: shm_nattch %lu, expected the parent and the worker", w,
                     (unsigned long)ds.shm_nattch);
            struct sembuf post = { 0, 1, 0 };
            if (semop(sem, &post, 1) != 0)
                fail("worker %d: semop: %s", w, strerror(errno));
            _exit(0);
        }
    }
    struct sembuf all = { 0, (short)-workers, 0 };
    if (semop(sem, &all, 1) != 0)
        fail("parent: semop: %s", strerror(errno));
    long bad = check(p, len);
    if (bad)
        fail("parent: %ld bad bytes after the workers posted", bad);
    int status, failed = 0;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (failed)
        fail("a worker failed");
    char ids[32], keys[32], pagess[32];
    snprintf(ids, sizeof ids, "%d", id);
    snprintf(keys, sizeof keys, "%d", (int)key);
    snprintf(pagess, sizeof pagess, "%ld", pages);
    for (int c = 0; c < 2; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl("/proc/self/exe", argv[0], "check", keys, ids, pagess, (char *)NULL);
            _exit(127);
        }
    }
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (failed)
        fail("a checker failed");
    shmdt(p);
    shmctl(id, IPC_RMID, NULL);
    semctl(sem, 0, IPC_RMID);
    printf("forkers: %d workers, %ld pages, checkers ok\n", workers, pages);
    return 0;
}
