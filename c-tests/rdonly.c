/*
 * rdonly - protection faults must still be real faults.
 *
 *   rdonly MODE KEY
 *
 * (argv differs from the multi-rank programs: one process, no RANK/NPROCS.)
 *
 * MODE:
 *   read-ro   attach with SHM_RDONLY, read every byte, exit 0.
 *   write-ro  attach with SHM_RDONLY, read every byte (fine), then write one
 *             byte: the process must die by SIGSEGV.  Under KDIPC the
 *             shim's SIGSEGV handler must not "serve" this write fault.
 *   badptr    attach normally, write and read the segment (so the shim's
 *             fault handler is installed and in use), then load from the
 *             invalid address 8: the process must die by SIGSEGV (the shim
 *             passes faults outside its segments to the default action).
 *
 * The segment (4 pages) is created with IPC_CREAT | IPC_EXCL | 0600 |
 * IPC_KDIPC if it does not exist yet, otherwise the existing one is used.
 * A segment this process created is marked IPC_RMID right after attaching,
 * so it disappears when the process exits or dies.
 *
 * The harness checks the termination signal.  Progress goes to stdout,
 * flushed before each step that may crash.  If a write to the read-only
 * attachment or the bad load does NOT crash, the program says so on stderr
 * and exits 1.
 */
#include "common.h"

#define SEG_PAGES 4

static void progress(const char *msg)
{
    printf("rdonly: %s\n", msg);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: %s read-ro|write-ro|badptr KEY", argv[0]);
    const char *mode = argv[1];
    int read_only;
    if (strcmp(mode, "read-ro") == 0 || strcmp(mode, "write-ro") == 0)
        read_only = 1;
    else if (strcmp(mode, "badptr") == 0)
        read_only = 0;
    else
        die("unknown MODE '%s' (read-ro, write-ro, badptr)", mode);
    key_t key = (key_t)parse_long("KEY", argv[2]);
    size_t size = SEG_PAGES * PAGE_SIZE;

    int created = 1;
    int id = shmget(key, size, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0 && errno == EEXIST) {
        created = 0;
        id = shmget(key, size, kdipc_flags(0600 | IPC_KDIPC));
    }
    if (id < 0)
        die("shmget: %s", strerror(errno));
    volatile uint8_t *p = shmat(id, NULL, read_only ? SHM_RDONLY : 0);
    if (p == (void *)-1)
        die("shmat: %s", strerror(errno));
    if (created)
        remove_segment(id);
    printf("rdonly: mode=%s id=%d created=%d attached %s\n", mode, id, created,
           read_only ? "read-only" : "read-write");

    if (!read_only) {
        for (size_t off = 0; off < size; off += 64)
            p[off] = (uint8_t)(off / 64);
        progress("wrote the segment");
    }
    unsigned long sum = 0;
    for (size_t off = 0; off < size; off++)
        sum += p[off];
    printf("rdonly: read %zu bytes, sum %lu\n", size, sum);
    fflush(stdout);

    if (strcmp(mode, "read-ro") == 0) {
        progress("done");
        return 0;
    }
    if (strcmp(mode, "write-ro") == 0) {
        progress("writing to the read-only attachment (must die by SIGSEGV)");
        p[size / 2] = 1;
        fail("write to a read-only attachment did not fault");
    }

    progress("loading from address 8 (must die by SIGSEGV)");
    volatile uintptr_t bad_address = 8;
    volatile int *bad = (volatile int *)bad_address;
    int v = *bad;
    fail("load from address 8 did not fault (read %d)", v);
}
