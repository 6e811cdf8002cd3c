/*
 * objstats - uses two segments and two semaphore sets unevenly, so that
 * `kdipc stats` can be checked per object.
 *
 *   objstats SHMKEY_A SHMKEY_B SEMKEY_S SEMKEY_T PAGES SEMOPS
 *
 * Creates segment A (PAGES pages), segment B (1 page), sets S and T (one
 * semaphore each), all IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC. Attaches A
 * and B, writes one byte at the start of every page of A, in order (each
 * page is touched once, by a write: at most PAGES write faults, fewer when
 * the runtime claims pages ahead), never touches B, does
 * SEMOPS operations (+1, never blocking) on S and none on T, checks S's
 * value, then detaches and removes all four.
 *
 * Output: `objstats: a=ID b=ID s=ID t=ID pages=N semops=M`.
 * Exit status 0, 1 if S's value is not SEMOPS, 2 on a setup error.
 */
#include <sys/sem.h>

#include "common.h"

int main(int argc, char **argv)
{
    if (argc != 7)
        die("usage: %s SHMKEY_A SHMKEY_B SEMKEY_S SEMKEY_T PAGES SEMOPS", argv[0]);
    key_t ka = (key_t)parse_long("SHMKEY_A", argv[1]);
    key_t kb = (key_t)parse_long("SHMKEY_B", argv[2]);
    key_t ks = (key_t)parse_long("SEMKEY_S", argv[3]);
    key_t kt = (key_t)parse_long("SEMKEY_T", argv[4]);
    long pages = parse_long("PAGES", argv[5]);
    long semops = parse_long("SEMOPS", argv[6]);
    if (pages < 1 || semops < 0)
        die("PAGES must be positive, SEMOPS not negative");
    int flags = kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC);

    int a = shmget(ka, (size_t)pages * PAGE_SIZE, flags);
    int b = shmget(kb, PAGE_SIZE, flags);
    if (a < 0 || b < 0)
        die("shmget: %s", strerror(errno));
    int s = semget(ks, 1, flags);
    int t = semget(kt, 1, flags);
    if (s < 0 || t < 0)
        die("semget: %s", strerror(errno));
    volatile uint8_t *pa = shmat(a, NULL, 0);
    volatile uint8_t *pb = shmat(b, NULL, 0);
    if (pa == (void *)-1 || pb == (void *)-1)
        die("shmat: %s", strerror(errno));

    for (long i = 0; i < pages; i++)
        pa[i * PAGE_SIZE] = (uint8_t)(i + 1);

    for (long i = 0; i < semops; i++) {
        struct sembuf op = {.sem_num = 0, .sem_op = 1, .sem_flg = 0};
        if (semop(s, &op, 1) != 0)
            die("semop: %s", strerror(errno));
    }
    int v = semctl(s, 0, GETVAL);
    if (v != semops)
        fail("semaphore S is %d after %ld operations", v, semops);

    if (shmdt((const void *)pa) != 0 || shmdt((const void *)pb) != 0)
        die("shmdt: %s", strerror(errno));
    printf("objstats: a=%d b=%d s=%d t=%d pages=%ld semops=%ld\n", a, b, s, t, pages, semops);
    fflush(stdout);
    if (shmctl(a, IPC_RMID, NULL) != 0 || shmctl(b, IPC_RMID, NULL) != 0)
        die("shmctl(IPC_RMID): %s", strerror(errno));
    if (semctl(s, 0, IPC_RMID) != 0 || semctl(t, 0, IPC_RMID) != 0)
        die("semctl(IPC_RMID): %s", strerror(errno));
    return 0;
}
