/*
 * perm.c - System V permissions seen by separate processes (other users,
 * other hosts), one step per run, so that a test can run each step as
 * another user and on another host and compare every answer with the
 * kernel's for the same sequence (shim/tests/trust.rs).
 *
 *   perm owner KEYBASE     as root: creates the objects below
 *   perm other KEYBASE     as uid 1000 whose group 1000 is only among many
 *                          supplementary groups: gets, attaches, operates,
 *                          changes and removes
 *   perm remove KEYBASE    as root: checks what `other` wrote, removes all
 *   perm probe KEYBASE [SHMID SEMID]
 *                          any user: shmget/semget of objects `owner` made,
 *                          and, when they succeed, a read and a semop; with
 *                          ids, also shmat and semop of those ids without
 *                          asking for them first
 *
 * Objects (keys KEYBASE + 0 .. 5):
 *   +0 segment 0600 holding "secret"      +1 segment 0644 holding "public"
 *   +2 set of 1, 0600, value 1            +3 set of 1, 0644, value 1
 *   +4 segment 0660 group 1000 (IPC_SET)  +5 segment 0600 owner 1000 (IPC_SET)
 *
 * Every call prints one line `step-case: ret=<0|-1|id|N> errno=<NAME>
 * [more]` with nothing run-specific (no ids, no addresses), so the output
 * of a run on the kernel (KDIPC_NATIVE=1, no shim) and of a distributed
 * run must be identical.  Exit status 0, or 2 on a setup error.
 */
#define _GNU_SOURCE
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

#define OTHER 1000

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

static key_t base;

static const char *ename(int e)
{
    switch (e) {
    case 0: return "0";
#define E(x) case x: return #x;
        E(EPERM) E(ENOENT) E(EACCES) E(EINVAL) E(EEXIST) E(EIDRM) E(ENOMEM) E(EAGAIN) E(EFAULT)
        E(ENOSPC) E(E2BIG) E(EFBIG) E(ERANGE)
#undef E
    default: return "other";
    }
}

static void line(const char *name, long r, int e, const char *more)
{
    printf("%s: ret=%ld errno=%s%s%s\n", name, r, ename(e), more[0] ? " " : "", more);
    fflush(stdout);
}

/* An id prints as `id`: ids differ between the kernel and the cluster. */
static int shm_get(const char *name, int k, size_t size, int flags)
{
    errno = 0;
    int id = shmget(base + k, size, kdipc_flags(flags | IPC_KDIPC));
    int e = errno;
    printf("%s: ret=%s errno=%s\n", name, id >= 0 ? "id" : "-1", ename(e));
    fflush(stdout);
    return id;
}

static int sem_get(const char *name, int k, int nsems, int flags)
{
    errno = 0;
    int id = semget(base + k, nsems, kdipc_flags(flags | IPC_KDIPC));
    int e = errno;
    printf("%s: ret=%s errno=%s\n", name, id >= 0 ? "id" : "-1", ename(e));
    fflush(stdout);
    return id;
}

static char *at(const char *name, int id, int flags)
{
    errno = 0;
    void *p = shmat(id, NULL, flags);
    int e = errno;
    char more[64] = "";
    if (p != (void *)-1)
        snprintf(more, sizeof more, "content=%.16s", (char *)p);
    printf("%s: ret=%s errno=%s%s%s\n", name, p != (void *)-1 ? "addr" : "-1", ename(e),
           more[0] ? " " : "", more);
    fflush(stdout);
    return p == (void *)-1 ? NULL : p;
}

static void shm_ctl(const char *name, int id, int cmd, struct shmid_ds *ds)
{
    errno = 0;
    int r = shmctl(id, cmd, ds);
    int e = errno;
    char more[96] = "";
    if (r == 0 && cmd == IPC_STAT)
        snprintf(more, sizeof more, "uid=%u gid=%u cuid=%u mode=%o", ds->shm_perm.uid, ds->shm_perm.gid,
                 ds->shm_perm.cuid, ds->shm_perm.mode & 0777);
    line(name, r, e, more);
}

static void shm_set(const char *name, int id, uid_t uid, gid_t gid, int mode)
{
    struct shmid_ds ds;
    memset(&ds, 0, sizeof ds);
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (unsigned short)mode;
    shm_ctl(name, id, IPC_SET, &ds);
}

static void sem_op(const char *name, int id, short op)
{
    struct sembuf b = {0, op, IPC_NOWAIT};
    errno = 0;
    int r = semop(id, &b, 1);
    line(name, r, errno, "");
}

static void sem_ctl(const char *name, int id, int cmd, union semun arg)
{
    errno = 0;
    int r = semctl(id, 0, cmd, arg);
    line(name, r, errno, "");
}

static void sem_set(const char *name, int id, uid_t uid, int mode)
{
    struct semid_ds ds;
    memset(&ds, 0, sizeof ds);
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = uid;
    ds.sem_perm.mode = (unsigned short)mode;
    sem_ctl(name, id, IPC_SET, (union semun){.buf = &ds});
}

static int must(int id, const char *what)
{
    if (id < 0)
        die("setup: %s: %s", what, strerror(errno));
    return id;
}

static void owner(void)
{
    int a = must(shm_get("owner-create-private", 0, 4096, IPC_CREAT | IPC_EXCL | 0600), "shm +0");
    int b = must(shm_get("owner-create-public", 1, 4096, IPC_CREAT | IPC_EXCL | 0644), "shm +1");
    int c = must(sem_get("owner-create-sem-private", 2, 1, IPC_CREAT | IPC_EXCL | 0600), "sem +2");
    int d = must(sem_get("owner-create-sem-public", 3, 1, IPC_CREAT | IPC_EXCL | 0644), "sem +3");
    int g = must(shm_get("owner-create-group", 4, 4096, IPC_CREAT | IPC_EXCL | 0600), "shm +4");
    int o = must(shm_get("owner-create-given", 5, 4096, IPC_CREAT | IPC_EXCL | 0600), "shm +5");
    char *pa = at("owner-at-private", a, 0);
    char *pb = at("owner-at-public", b, 0);
    if (pa == NULL || pb == NULL)
        die("setup: shmat failed");
    strcpy(pa, "secret");
    strcpy(pb, "public");
    sem_ctl("owner-setval-private", c, SETVAL, (union semun){.val = 1});
    sem_ctl("owner-setval-public", d, SETVAL, (union semun){.val = 1});
    shm_set("owner-set-group", g, 0, OTHER, 0660);
    shm_set("owner-set-given", o, OTHER, 0, 0600);
}

static void other(void)
{
    /* A mode the user lacks: EACCES at get; no mode asked: the id. */
    shm_get("other-get-private-rw", 0, 0, 0600);
    shm_get("other-get-private-r", 0, 0, 0400);
    int a = shm_get("other-get-private-nomode", 0, 0, 0);
    at("other-at-private", a, 0);
    at("other-at-private-rdonly", a, SHM_RDONLY);
    struct shmid_ds ds;
    shm_ctl("other-stat-private", a, IPC_STAT, &ds);
    shm_set("other-set-private", a, OTHER, OTHER, 0666);
    shm_ctl("other-rmid-private", a, IPC_RMID, NULL);

    /* Others may read: SHM_RDONLY works, read-write does not. */
    shm_get("other-get-public-rw", 1, 0, 0666);
    int b = shm_get("other-get-public-r", 1, 0, 0444);
    at("other-at-public", b, 0);
    at("other-at-public-rdonly", b, SHM_RDONLY);
    shm_ctl("other-stat-public", b, IPC_STAT, &ds);
    shm_set("other-set-public", b, OTHER, OTHER, 0666);
    shm_ctl("other-rmid-public", b, IPC_RMID, NULL);

    /* Semaphores: operating needs write (alter) permission. */
    sem_get("other-semget-private-rw", 2, 0, 0600);
    int c = sem_get("other-semget-private-nomode", 2, 0, 0);
    sem_op("other-semop-private", c, -1);
    sem_ctl("other-getval-private", c, GETVAL, (union semun){.val = 0});
    sem_set("other-semset-private", c, OTHER, 0666);
    sem_ctl("other-semrmid-private", c, IPC_RMID, (union semun){.val = 0});
    sem_get("other-semget-public-rw", 3, 0, 0666);
    int d = sem_get("other-semget-public-r", 3, 0, 0444);
    sem_op("other-semop-public", d, -1);
    sem_ctl("other-getval-public", d, GETVAL, (union semun){.val = 0});
    sem_set("other-semset-public", d, OTHER, 0666);
    sem_ctl("other-semrmid-public", d, IPC_RMID, (union semun){.val = 0});

    /* The group the owner gave: read-write for the user's group. */
    int g = shm_get("other-get-group-rw", 4, 0, 0660);
    char *pg = at("other-at-group", g, 0);
    if (pg != NULL)
        strcpy(pg, "group");
    shm_set("other-set-group", g, OTHER, OTHER, 0666);

    /* Owner but not creator: IPC_SET and IPC_RMID are the user's. */
    int o = shm_get("other-get-given", 5, 0, 0600);
    shm_set("other-set-given", o, OTHER, OTHER, 0640);
    shm_ctl("other-stat-given", o, IPC_STAT, &ds);
    shm_ctl("other-rmid-given", o, IPC_RMID, NULL);
    shm_get("other-get-given-after-rmid", 5, 0, 0);
}

static void remove_all(void)
{
    int g = shm_get("remove-get-group", 4, 0, 0);
    at("remove-at-group", g, SHM_RDONLY);
    for (int k = 0; k < 2; k++) {
        int id = shm_get("remove-get", k, 0, 0);
        shm_ctl("remove-rmid", id, IPC_RMID, NULL);
    }
    shm_ctl("remove-rmid-group", g, IPC_RMID, NULL);
    for (int k = 2; k < 4; k++) {
        int id = sem_get("remove-semget", k, 0, 0);
        sem_ctl("remove-semrmid", id, IPC_RMID, (union semun){.val = 0});
    }
}

static void probe(int argc, char **argv)
{
    int b = shm_get("probe-get", 1, 0, 0);
    if (b >= 0)
        at("probe-at", b, SHM_RDONLY);
    int c = sem_get("probe-semget", 2, 0, 0);
    if (c >= 0)
        sem_op("probe-semop", c, -1);
    if (argc == 5) {
        at("probe-at-id", (int)parse_long("SHMID", argv[3]), SHM_RDONLY);
        sem_op("probe-semop-id", (int)parse_long("SEMID", argv[4]), 1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 5 && strcmp(argv[1], "probe") == 0))
        die("usage: %s owner|other|remove|probe KEYBASE [SHMID SEMID]", argv[0]);
    base = (key_t)parse_long("KEYBASE", argv[2]);
    if (strcmp(argv[1], "owner") == 0)
        owner();
    else if (strcmp(argv[1], "other") == 0)
        other();
    else if (strcmp(argv[1], "remove") == 0)
        remove_all();
    else if (strcmp(argv[1], "probe") == 0)
        probe(argc, argv);
    else
        die("unknown step '%s'", argv[1]);
    return 0;
}
