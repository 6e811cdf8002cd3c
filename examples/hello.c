/*
 * hello - every rank adds its number to a distributed counter.
 *
 *   hello [KEY=0x6b646970]
 *
 * Start it as several ranks: `kdipc run -n 4 -- ./hello`, or under an
 * existing launcher (mpirun, srun) with the shim preloaded; kdipc_rank()
 * and kdipc_nprocs() read the launcher's environment.  Each rank adds
 * rank + 1 to a counter in a distributed segment under a semaphore lock and
 * waits for the others; rank 0 then checks the total, prints
 *
 *   hello: N ranks, total T (expected T)
 *
 * and removes the segment and the semaphore set.  Exit 0 on success, 1 on a
 * wrong total, 2 on a setup error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>

#include <kdipc.h>

enum { LOCK, ARRIVED, LEFT };

static void die(const char *what)
{
    perror(what);
    exit(2);
}

/* semop on one semaphore of the set. */
static void sem(int set, unsigned short num, short op)
{
    struct sembuf b = {num, op, 0};
    if (semop(set, &b, 1) != 0)
        die("semop");
}

int main(int argc, char **argv)
{
    key_t key = argc > 1 ? (key_t)strtol(argv[1], NULL, 0) : 0x6b646970;
    int rank = kdipc_rank(), nprocs = kdipc_nprocs();
    if (rank < 0 || nprocs < 1 || rank >= nprocs) {
        fprintf(stderr, "hello: no rank from the launcher (kdipc run, mpirun, srun)\n");
        return 2;
    }
    int shm = shmget(key, 4096, IPC_CREAT | 0600 | IPC_KDIPC);
    if (shm < 0)
        die("shmget");
    volatile long *counter = shmat(shm, NULL, 0);
    if (counter == (void *)-1)
        die("shmat");
    /* Whoever creates the set unlocks it; the others wait for that. */
    int set = semget(key, 3, IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC);
    if (set >= 0)
        sem(set, LOCK, 1);
    else if ((set = semget(key, 3, 0600 | IPC_KDIPC)) < 0)
        die("semget");

    sem(set, LOCK, -1);
    *counter += rank + 1;
    sem(set, LOCK, 1);

    /* Barrier: wait until all have arrived (value >= nprocs, unchanged). */
    sem(set, ARRIVED, 1);
    struct sembuf all[2] = {{ARRIVED, (short)-nprocs, 0}, {ARRIVED, (short)nprocs, 0}};
    if (semop(set, all, 2) != 0)
        die("semop");

    if (rank != 0) {
        sem(set, LEFT, 1);
        return 0;
    }
    long total = *counter, expected = (long)nprocs * (nprocs + 1) / 2;
    printf("hello: %d ranks, total %ld (expected %ld)\n", nprocs, total, expected);
    sem(set, LEFT, (short)-(nprocs - 1));
    shmdt((void *)counter);
    shmctl(shm, IPC_RMID, NULL);
    semctl(set, 0, IPC_RMID);
    return total == expected ? 0 : 1;
}
