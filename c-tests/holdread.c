/*
 * holdread - reads every page of an existing segment and keeps it attached
 * until its standard input closes (for `kdipc ipcs`' copies column).
 *
 *   holdread KEY PAGES [SEMKEY]
 *
 * Looks the segment up by key (it must exist, at least PAGES pages),
 * attaches it read-only, reads one byte of every page; with SEMKEY, also
 * does 4 operations (+1) on the existing set SEMKEY (a set one node uses
 * alone is lent to it). Then prints `holdread: key=0x... pages=N sum=S`
 * and waits for end of file on stdin; then detaches and exits 0. Exit
 * status 2 on a setup error.
 */
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        die("usage: %s KEY PAGES [SEMKEY]", argv[0]);
    key_t key = (key_t)parse_long("KEY", argv[1]);
    long pages = parse_long("PAGES", argv[2]);
    if (pages < 1)
        die("PAGES must be positive");
    int id = shmget(key, 0, kdipc_flags(0600 | IPC_KDIPC));
    if (id < 0)
        die("shmget(key 0x%x): %s", (unsigned)key, strerror(errno));
    volatile uint8_t *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (void *)-1)
        die("shmat: %s", strerror(errno));
    unsigned sum = 0;
    for (long i = 0; i < pages; i++)
        sum += p[i * PAGE_SIZE];
    if (argc == 4) {
        int sid = semget((key_t)parse_long("SEMKEY", argv[3]), 0, kdipc_flags(0600 | IPC_KDIPC));
        if (sid < 0)
            die("semget: %s", strerror(errno));
        for (int i = 0; i < 4; i++) {
            struct sembuf op = {.sem_num = 0, .sem_op = 1, .sem_flg = 0};
            if (semop(sid, &op, 1) != 0)
                die("semop: %s", strerror(errno));
        }
    }
    printf("holdread: key=0x%x pages=%ld sum=%u\n", (unsigned)key, pages, sum);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;
    if (shmdt((const void *)p) != 0)
        die("shmdt: %s", strerror(errno));
    return 0;
}
