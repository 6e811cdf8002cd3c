/*
 * hammer - threads of several processes increment the same pages inside a
 * semaphore-guarded critical section.
 *
 *   hammer RANK NPROCS KEY [ITERS=200] [THREADS=8]
 *
 * Every rank runs THREADS threads; each does ITERS times: semop -1 on a
 * distributed semaphore (SEM_UNDO), then on each of PAGES pages a plain
 * read-modify-write of one counter (correct only under mutual exclusion)
 * and an atomic increment of another, then semop +1. After a barrier,
 * rank 0 checks that every counter is exactly NPROCS * THREADS * ITERS.
 */
#include "common.h"

#include <pthread.h>
#include <sys/sem.h>

#define PAGES 4

static uint8_t *seg;
static int sem;
static long iters;

static void *worker(void *arg)
{
    (void)arg;
    struct sembuf down = { 0, -1, SEM_UNDO }, up = { 0, 1, SEM_UNDO };
    for (long i = 0; i < iters; i++) {
        if (semop(sem, &down, 1) != 0)
            fail("semop -1: %s", strerror(errno));
        for (int p = 0; p < PAGES; p++) {
            volatile uint64_t *c = (volatile uint64_t *)(seg + (size_t)(1 + p) * PAGE_SIZE);
            c[0] = c[0] + 1;
            __atomic_fetch_add((uint64_t *)&c[8], 1, __ATOMIC_SEQ_CST);
        }
        if (semop(sem, &up, 1) != 0)
            fail("semop +1: %s", strerror(errno));
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc == 6 ? (int)parse_long("THREADS", argv[5]) : 8;
    struct args a = parse_args(argc == 6 ? 5 : argc, argv, 0, 200);
    iters = a.iters;
    int id;
    seg = attach_segment_id(a.key, (1 + PAGES) * PAGE_SIZE, &id);
    sem = semget(a.key, 1, kdipc_flags(IPC_CREAT | 0600 | IPC_KDIPC));
    if (sem < 0)
        die("semget: %s", strerror(errno));
    struct barrier b = barrier_join((struct barrier_shared *)seg, a.nprocs);
    if (a.rank == 0 && semctl(sem, 0, SETVAL, 1) != 0)
        die("semctl SETVAL: %s", strerror(errno));
    barrier_wait(&b);
    double t0 = now_seconds();
    pthread_t t[64];
    if (threads < 1 || threads > 64)
        die("THREADS must be 1..64");
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0)
            die("pthread_create");
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    barrier_wait(&b);
    if (a.rank == 0) {
        uint64_t want = (uint64_t)a.nprocs * (uint64_t)threads * (uint64_t)iters;
        for (int p = 0; p < PAGES; p++) {
            uint64_t *c = (uint64_t *)(seg + (size_t)(1 + p) * PAGE_SIZE);
            if (c[0] != want || c[8] != want)
                fail("page %d: plain %lu atomic %lu, expected %lu", p, (unsigned long)c[0],
                     (unsigned long)c[8], (unsigned long)want);
        }
        printf("hammer: %d procs x %d threads x %ld iters: totals exact (%lu) in %.2f s\n", a.nprocs, threads,
               iters, (unsigned long)want, now_seconds() - t0);
        semctl(sem, 0, IPC_RMID);
        remove_segment(id);
    }
    barrier_wait(&b);
    return 0;
}
