/*
 * forkers - the classic System V pattern: create, fork workers, wait,
 * exec helpers.
 *
 *   forkers KEY [WORKERS=4] [PAGES=16]
 *   forkers check KEY ID PAGES     (run by exec)
 *
 * The parent creates a distributed segment and a set of 2 semaphores, then
 * forks WORKERS children. Child i fills its share of the segment with a
 * pattern (pages only it then holds), checks that shm_nattch counts it,
 * posts semaphore 0 and at once execs `forkers check KEY ID PAGES`: its
 * pages must be handed back before the new image replaces it. The parent
 * waits for all posts with one semop(-WORKERS) and checks every byte.
 * The checkers wait on semaphore 1 (posted by the parent once it checked),
 * attach by key and by the id passed in argv, and check every byte. Then
 * the parent starts two more checkers with vfork+execl and posix_spawn,
 * and a forked child whose exec fails must still see its attach. Exit 0
 * when all is right.
 */
#define _GNU_SOURCE
#include "common.h"

#include <spawn.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

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

static int checker(key_t key, int id, size_t len)
{
    int by_key = shmget(key, 0, kdipc_flags(IPC_KDIPC));
    if (by_key != id)
        fail("checker: shmget by key gave %d, expected %d", by_key, id);
    int sem = semget(key, 0, kdipc_flags(IPC_KDIPC));
    struct sembuf go = { 1, -1, 0 };
    if (sem < 0 || semop(sem, &go, 1) != 0)
        fail("checker: semget/semop: %s", strerror(errno));
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

/* Waits for every child; whether all exited 0. */
static int reap(void)
{
    int status, failed = 0;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    return !failed;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "check") == 0)
        return checker((key_t)parse_long("KEY", argv[2]), (int)parse_long("ID", argv[3]),
                       (size_t)parse_long("PAGES", argv[4]) * PAGE_SIZE);
    if (argc < 2 || argc > 4)
        die("usage: forkers KEY [WORKERS=4] [PAGES=16] | forkers check KEY ID PAGES");
    key_t key = (key_t)parse_long("KEY", argv[1]);
    int workers = argc > 2 ? (int)parse_long("WORKERS", argv[2]) : 4;
    long pages = argc > 3 ? parse_long("PAGES", argv[3]) : 16;
    size_t len = (size_t)pages * PAGE_SIZE;
    int id = shmget(key, len, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    int sem = semget(key, 2, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0 || sem < 0)
        die("create: %s", strerror(errno));
    uint8_t *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        die("shmat: %s", strerror(errno));
    p[0] = 0; /* the parent holds a page before forking */
    char ids[32], keys[32], pagess[32];
    snprintf(ids, sizeof ids, "%d", id);
    snprintf(keys, sizeof keys, "%d", (int)key);
    snprintf(pagess, sizeof pagess, "%ld", pages);
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
            execl("/proc/self/exe", argv[0], "check", keys, ids, pagess, (char *)NULL);
            fail("worker %d: exec: %s", w, strerror(errno));
        }
    }
    struct sembuf all = { 0, (short)-workers, 0 };
    if (semop(sem, &all, 1) != 0)
        fail("parent: semop: %s", strerror(errno));
    long bad = check(p, len);
    if (bad)
        fail("parent: %ld bad bytes after the workers posted", bad);
    struct sembuf go = { 1, (short)workers, 0 };
    if (semop(sem, &go, 1) != 0)
        fail("parent: semop: %s", strerror(errno));
    if (!reap())
        fail("a worker's checker failed");

    /* A checker started with vfork + execl, one with posix_spawn: the
     * parent's node must not notice. */
    struct sembuf go2 = { 1, 2, 0 };
    if (semop(sem, &go2, 1) != 0)
        fail("parent: semop: %s", strerror(errno));
    pid_t v = vfork();
    if (v == 0) {
        execl("/proc/self/exe", argv[0], "check", keys, ids, pagess, (char *)NULL);
        _exit(127);
    }
    char *args[] = { argv[0], "check", keys, ids, pagess, NULL };
    pid_t s;
    if (v < 0 || posix_spawn(&s, "/proc/self/exe", NULL, NULL, args, environ) != 0)
        die("vfork/posix_spawn: %s", strerror(errno));
    if (!reap())
        fail("the vfork or posix_spawn checker failed");
    /* A vfork child whose exec fails and _exits leaves the parent's
     * attach alone; a forked child whose exec fails keeps its own. */
    v = vfork();
    if (v == 0) {
        execl("/nonexistent/checker", "checker", (char *)NULL);
        _exit(0);
    }
    if (fork() == 0) {
        execl("/nonexistent/checker", "checker", (char *)NULL);
        _exit(check(p, len) == 0 && errno == ENOENT ? 0 : 1);
    }
    if (!reap())
        fail("a child whose exec failed lost its attach");
    bad = check(p, len);
    if (bad)
        fail("parent: %ld bad bytes at the end", bad);
    shmdt(p);
    shmctl(id, IPC_RMID, NULL);
    semctl(sem, 0, IPC_RMID);
    printf("forkers: %d workers, %ld pages, checkers ok (exec after writing, vfork, posix_spawn, failed exec)\n",
           workers, pages);
    return 0;
}
