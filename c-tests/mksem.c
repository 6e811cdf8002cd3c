/*
 * mksem - creates a distributed semaphore set and exits without removing it
 * (for the `kdipc ipcs`/`kdipc ipcrm` tests).
 *
 *   mksem KEY NSEMS
 *
 * semget(KEY, NSEMS, IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC), so a
 * left-over set is a setup error.  Output: `mksem: key=0x... nsems=N id=ID`.
 * Exit status 0, or 2 on a setup error.
 */
#include <sys/sem.h>

#include "common.h"

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: %s KEY NSEMS", argv[0]);
    key_t key = (key_t)parse_long("KEY", argv[1]);
    int nsems = (int)parse_long("NSEMS", argv[2]);
    int id = semget(key, nsems, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0)
        die("semget(key 0x%x, %d): %s", (unsigned)key, nsems, strerror(errno));
    printf("mksem: key=0x%x nsems=%d id=%d\n", (unsigned)key, nsems, id);
    return 0;
}
