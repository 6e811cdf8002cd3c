/*
 * semundo.c - SEM_UNDO when the holder of a semaphore is killed.
 *
 *   semundo hold KEY [WARM]
 *                       creates (IPC_EXCL) a set of 1 semaphore and sets it
 *                       to 1 (or gets the existing set, unchanged), takes
 *                       and gives it back WARM times (default 0; under KDIPC
 *                       a set used by one process alone is lent to it),
 *                       takes it with SEM_UNDO, prints "holding" and sleeps
 *                       until killed (the test sends SIGKILL)
 *   semundo wait KEY    gets the set (retrying for up to 30 s until it
 *                       exists), takes the semaphore with a blocking semop,
 *                       prints "acquired after X.XXX s" (time spent in that
 *                       semop), checks that the value is then 0, gives it
 *                       back and exits 0; start it after `hold` printed
 *                       "holding"
 *   semundo rm KEY      removes the set
 *
 * The set is semget(KEY, 1, ...|0600|IPC_KDIPC).  What it checks: when
 * the holder dies, the kernel (or KDIPC, on whichever host the holder ran)
 * applies its adjustment, the semaphore returns to 1, and the blocked
 * waiter gets it.  Exit status: 0 ok, 1 violation, 2 setup error.
 */
#define _GNU_SOURCE
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

static int open_set(key_t key, int create)
{
    if (create) {
        int id = semget(key, 1, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
        if (id >= 0) {
            union semun a = { .val = 1 };
            if (semctl(id, 0, SETVAL, a) != 0)
                die("SETVAL: %s", strerror(errno));
            return id;
        }
        if (errno != EEXIST)
            die("semget(create): %s", strerror(errno));
    }
    double t0 = now_seconds();
    for (;;) {
        int id = semget(key, 1, kdipc_flags(0600 | IPC_KDIPC));
        if (id >= 0)
            return id;
        if (errno != ENOENT || create || now_seconds() - t0 > 30)
            die("semget: %s", strerror(errno));
        usleep(10000);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[1], "hold") == 0))
        die("usage: %s hold KEY [WARM] | wait KEY | rm KEY", argv[0]);
    key_t key = (key_t)parse_long("KEY", argv[2]);
    const char *mode = argv[1];

    if (strcmp(mode, "hold") == 0) {
        int id = open_set(key, 1);
        long warm = argc == 4 ? parse_long("WARM", argv[3]) : 0;
        for (long i = 0; i < warm; i++) {
            struct sembuf take = { 0, -1, SEM_UNDO }, give = { 0, 1, SEM_UNDO };
            if (semop(id, &take, 1) != 0 || semop(id, &give, 1) != 0)
                die("warm-up semop: %s", strerror(errno));
        }
        struct sembuf s = { 0, -1, SEM_UNDO };
        if (semop(id, &s, 1) != 0)
            die("semop(-1, SEM_UNDO): %s", strerror(errno));
        printf("holding\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (strcmp(mode, "wait") == 0) {
        int id = open_set(key, 0);
        struct sembuf s = { 0, -1, 0 };
        double t0 = now_seconds();
        int r;
        while ((r = semop(id, &s, 1)) != 0 && errno == EINTR)
            ;
        if (r != 0)
            fail("semop(-1): %s", strerror(errno));
        printf("acquired after %.3f s\n", now_seconds() - t0);
        int v = semctl(id, 0, GETVAL);
        if (v != 0)
            fail("value after acquiring is %d, not 0 (%s)", v, v < 0 ? strerror(errno) : "");
        s.sem_op = 1;
        if (semop(id, &s, 1) != 0)
            fail("semop(+1): %s", strerror(errno));
        v = semctl(id, 0, GETVAL);
        printf("value after giving it back: %d\n", v);
        if (v != 1)
            fail("value after giving it back is %d, not 1", v);
        return 0;
    }
    if (strcmp(mode, "rm") == 0) {
        int id = semget(key, 1, kdipc_flags(0600 | IPC_KDIPC));
        if (id < 0)
            die("semget: %s", strerror(errno));
        if (semctl(id, 0, IPC_RMID) != 0)
            die("IPC_RMID: %s", strerror(errno));
        return 0;
    }
    die("unknown mode %s", mode);
}
