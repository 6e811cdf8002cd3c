/*
 * forkbusy - fork while other threads fault on distributed pages and wait
 * in semop: the child must not inherit a half-held lock.
 *
 *   forkbusy KEY [FORKS=20] [PAGES=8]
 *
 * Two threads keep writing every page of a distributed segment, two keep
 * taking and giving back a distributed semaphore (SEM_UNDO). Meanwhile the
 * main thread forks FORKS children one after the other; child i (bounded
 * by alarm(20): a hang is a SIGALRM death) writes its mark on every page,
 * takes and gives back the semaphore, checks shm_nattch and _exits. The
 * parent then checks every child's marks. Exit 0 when all is right.
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

static uint8_t *seg;
static int sem;
static long pages;
static volatile int stop;

static void *writer(void *arg)
{
    long t = (long)arg;
    while (!stop)
        for (long p = 0; p < pages; p++)
            ((volatile uint64_t *)(seg + (size_t)p * PAGE_SIZE))[t] += 1;
    return NULL;
}

static void *semmer(void *arg)
{
    (void)arg;
    struct sembuf down = { 0, -1, SEM_UNDO }, up = { 0, 1, SEM_UNDO };
    while (!stop) {
        if (semop(sem, &down, 1) != 0 || semop(sem, &up, 1) != 0)
            fail("thread semop: %s", strerror(errno));
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4)
        die("usage: forkbusy KEY [FORKS=20] [PAGES=8]");
    key_t key = (key_t)parse_long("KEY", argv[1]);
    long forks = argc > 2 ? parse_long("FORKS", argv[2]) : 20;
    pages = argc > 3 ? parse_long("PAGES", argv[3]) : 8;
    if (forks < 1 || forks > 400 || pages < 1)
        die("need 1 <= FORKS <= 400, PAGES >= 1");
    int id = shmget(key, (size_t)pages * PAGE_SIZE, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    sem = semget(key, 1, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0 || sem < 0)
        die("create: %s", strerror(errno));
    seg = shmat(id, NULL, 0);
    if (seg == (void *)-1)
        die("shmat: %s", strerror(errno));
    if (semctl(sem, 0, SETVAL, 1) != 0)
        die("SETVAL: %s", strerror(errno));
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, i < 2 ? writer : semmer, (void *)i) != 0)
            die("pthread_create");
    double t0 = now_seconds();
    for (long c = 0; c < forks; c++) {
        usleep(2000); /* let the threads get going again */
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            alarm(20);
            for (long p = 0; p < pages; p++)
                ((volatile uint64_t *)(seg + (size_t)p * PAGE_SIZE))[8 + c] = (uint64_t)c + 1;
            struct sembuf down = { 0, -1, SEM_UNDO }, up = { 0, 1, SEM_UNDO };
            if (semop(sem, &down, 1) != 0 || semop(sem, &up, 1) != 0)
                fail("child %ld: semop: %s", c, strerror(errno));
            struct shmid_ds ds;
            if (shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_nattch < 2)
                fail("child %ld: shm_nattch %lu", c, (unsigned long)ds.shm_nattch);
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid: %s", strerror(errno));
        if (WIFSIGNALED(status))
            fail("child %ld died of signal %d%s", c, WTERMSIG(status),
                 WTERMSIG(status) == SIGALRM ? " (it hung for 20 s)" : "");
        if (WEXITSTATUS(status) != 0)
            fail("child %ld exited %d", c, WEXITSTATUS(status));
    }
    stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (long p = 0; p < pages; p++)
        for (long c = 0; c < forks; c++) {
            uint64_t v = ((uint64_t *)(seg + (size_t)p * PAGE_SIZE))[8 + c];
            if (v != (uint64_t)c + 1)
                fail("page %ld: child %ld's mark is %lu", p, c, (unsigned long)v);
        }
    printf("forkbusy: %ld forks while 4 threads fault and semop: ok in %.2f s\n", forks, now_seconds() - t0);
    shmdt(seg);
    shmctl(id, IPC_RMID, NULL);
    semctl(sem, 0, IPC_RMID);
    return 0;
}
