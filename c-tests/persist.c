/*
 * persist - a segment outlives the process that wrote it.
 *
 *   persist write KEY PAGES
 *   persist read  KEY PAGES
 *
 * (argv differs from the multi-rank programs: no RANK/NPROCS.)
 *
 * write: creates the segment (IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC, so a
 *        left-over segment is a setup error), writes a pattern derived from
 *        KEY on every byte of PAGES pages, detaches and exits WITHOUT
 *        removing it.
 * read:  looks the segment up by key (no IPC_CREAT: it must exist), checks
 *        its size is at least PAGES pages, attaches, verifies every byte,
 *        detaches and removes it (IPC_RMID).
 *
 * Run `write`, let it exit, then run `read` (possibly on another host).
 * Under KDIPC the writer's pages must be handed to another holder (or the
 * nameserver) when it exits.
 *
 * Violation (exit 1): a byte differs (first bad offset and count reported).
 * Setup error (exit 2): segment exists on write, missing on read, too small.
 * Output: `persist write: key=0x... pages=N` / `persist read: ... bad_bytes=0`.
 */
#include "common.h"

static inline uint8_t persist_byte(key_t key, size_t offset)
{
    uint64_t h = mix64(((uint64_t)(uint32_t)key << 32) ^ (offset >> 3));
    return (uint8_t)(h >> (8 * (offset & 7)));
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "write") != 0 && strcmp(argv[1], "read") != 0))
        die("usage: %s write|read KEY PAGES", argv[0]);
    int writing = strcmp(argv[1], "write") == 0;
    key_t key = (key_t)parse_long("KEY", argv[2]);
    long pages = parse_long("PAGES", argv[3]);
    if (pages < 1)
        die("PAGES must be positive");
    size_t size = (size_t)pages * PAGE_SIZE;

    int flags = writing ? IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC : 0600 | IPC_KDIPC;
    int id = shmget(key, size, kdipc_flags(flags));
    if (id < 0)
        die("shmget(key 0x%x, %zu bytes, %s): %s", (unsigned)key, size,
            writing ? "IPC_CREAT|IPC_EXCL" : "existing", strerror(errno));

    if (!writing) {
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds) != 0)
            die("shmctl(IPC_STAT): %s", strerror(errno));
        if (ds.shm_segsz < size)
            die("segment has %zu bytes, expected at least %zu", (size_t)ds.shm_segsz, size);
    }

    volatile uint8_t *p = shmat(id, NULL, 0);
    if (p == (void *)-1)
        die("shmat: %s", strerror(errno));

    if (writing) {
        for (size_t off = 0; off < size; off++)
            p[off] = persist_byte(key, off);
        if (shmdt((const void *)p) != 0)
            die("shmdt: %s", strerror(errno));
        printf("persist write: key=0x%x pages=%ld id=%d\n", (unsigned)key, pages, id);
        return 0;
    }

    long bad = 0;
    size_t first_bad = 0;
    uint8_t first_got = 0;
    for (size_t off = 0; off < size; off++) {
        uint8_t got = p[off];
        if (got != persist_byte(key, off) && bad++ == 0) {
            first_bad = off;
            first_got = got;
        }
    }
    if (shmdt((const void *)p) != 0)
        die("shmdt: %s", strerror(errno));
    remove_segment(id);
    printf("persist read: key=0x%x pages=%ld bad_bytes=%ld\n", (unsigned)key, pages, bad);
    if (bad != 0)
        fail("%ld bad bytes, first at offset %zu (page %zu): got 0x%02x want 0x%02x",
             bad, first_bad, first_bad / PAGE_SIZE, first_got, persist_byte(key, first_bad));
    return 0;
}
