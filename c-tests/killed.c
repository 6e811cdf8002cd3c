/*
 * killed - the others continue when a process dies holding pages in read
 * mode and a semaphore with SEM_UNDO.
 *
 *   killed survive KEY PAGES   creates a segment (a flag page + PAGES data
 *                              pages) and a set of 1 semaphore (value 1),
 *                              writes the data pages, raises the flag,
 *                              waits until the victim holds the semaphore,
 *                              then takes it (semtimedop, 60 s at most)
 *                              and writes every data page again; prints
 *                              how long each took; exit 0
 *   killed hold KEY PAGES      the victim: waits for the flag, reads every
 *                              data page (they are then shared, read
 *                              mode), takes the semaphore with SEM_UNDO,
 *                              prints "holding" and sleeps until killed
 *
 * Start `survive` first, then `hold`; send SIGKILL to `hold` once it
 * printed "holding". Exit status: 0 ok, 1 violation, 2 setup error.
 */
#define _GNU_SOURCE
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

static unsigned char pat(int round, size_t i)
{
    return (unsigned char)(mix64((uint64_t)round * 7919u + i) | 1);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        die("usage: killed survive|hold KEY PAGES");
    int survive = strcmp(argv[1], "survive") == 0;
    key_t key = (key_t)parse_long("KEY", argv[2]);
    size_t len = (size_t)parse_long("PAGES", argv[3]) * PAGE_SIZE;
    int id;
    uint8_t *seg = attach_segment_id(key, PAGE_SIZE + len, &id);
    volatile uint64_t *flag = (volatile uint64_t *)seg;
    uint8_t *data = seg + PAGE_SIZE;
    int sem = semget(key, 1, kdipc_flags(IPC_CREAT | 0600 | IPC_KDIPC));
    if (sem < 0)
        die("semget: %s", strerror(errno));
    if (!survive) {
        while (*flag != 1)
            usleep(1000);
        long bad = 0;
        for (size_t i = 0; i < len; i++)
            bad += data[i] != pat(1, i);
        if (bad)
            fail("hold: %ld bad bytes", bad);
        struct sembuf take = { 0, -1, SEM_UNDO };
        if (semop(sem, &take, 1) != 0)
            die("hold: semop: %s", strerror(errno));
        printf("holding\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (semctl(sem, 0, SETVAL, 1) != 0)
        die("SETVAL: %s", strerror(errno));
    for (size_t i = 0; i < len; i++)
        data[i] = pat(1, i);
    *flag = 1;
    while (semctl(sem, 0, GETVAL) != 0)
        usleep(10000);
    printf("waiting\n");
    fflush(stdout);
    double t0 = now_seconds();
    struct sembuf take = { 0, -1, 0 };
    struct timespec limit = { 60, 0 };
    if (semtimedop(sem, &take, 1, &limit) != 0)
        fail("survive: semtimedop: %s (the victim's SEM_UNDO was not applied)", strerror(errno));
    double t1 = now_seconds();
    printf("continued: semaphore after %.3f s\n", t1 - t0);
    fflush(stdout);
    for (size_t i = 0; i < len; i++)
        data[i] = pat(2, i);
    double t2 = now_seconds();
    long bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += data[i] != pat(2, i);
    if (bad)
        fail("survive: %ld bad bytes", bad);
    printf("continued: pages written %.3f s later\n", t2 - t1);
    semctl(sem, 0, IPC_RMID);
    remove_segment(id);
    return 0;
}
