/*
 * sem_errno.c - return values and errno of semget/semop/semtimedop/semctl,
 * case by case, in a form that can be compared between the kernel and
 * KDIPC's distributed semaphores.
 *
 *   sem_errno KEYBASE
 *
 * Every case prints one line
 *
 *   case-name: ret=<value|-1|id|pid...> errno=<NAME> [field=value ...]
 *
 * with nothing that differs between two correct runs: ids print as `id`
 * (and whether they equal an earlier one), pids as `0`, `self` or `other`,
 * times as `0` or `set`, waits as `waited=yes|no` (half the time-out is the
 * threshold, where the time-out is long enough).  errno is cleared before every call and printed after it.
 *
 * The shim test (shim/tests/sem.rs) runs this once on the kernel
 * (KDIPC_NATIVE=1, no shim) and once under the shim with every set
 * distributed (semget with IPC_KDIPC), and requires identical output.  The
 * specification is the man pages semget(2), semop(2), semctl(2) and, where
 * several errors apply, the order of the checks in the kernel's ipc/sem.c;
 * the kernel run is the oracle.
 *
 * Covered: semget ENOENT EEXIST EINVAL (nsems < 0, > SEMMSL, 0 on a new
 * set, more than an existing set has) EACCES, IPC_PRIVATE, a set of SEMMSL
 * semaphores; semop E2BIG (nsops > SEMOPM, read from /proc/sys/kernel/sem)
 * EFBIG EAGAIN ERANGE EINVAL EACCES EFAULT, all-or-nothing arrays,
 * operations applied in array order (the same semaphore twice, ERANGE
 * against EAGAIN); semtimedop time-outs and bad timespecs; semctl GETVAL
 * SETVAL GETALL SETALL GETPID GETNCNT GETZCNT IPC_STAT IPC_SET IPC_RMID
 * IPC_INFO SEM_INFO, EPERM EACCES EINVAL ERANGE EFAULT; with threads of this
 * process: GETNCNT/GETZCNT of blocked waiters, wake-ups by SETVAL and semop,
 * EINTR (handler with and without SA_RESTART: semop is never restarted),
 * EIDRM for every waiter when the set is removed; SEM_UNDO in child
 * processes (this program again: `sem_errno KEYBASE child CASE ID`): undo
 * at exit, SETVAL clearing adjustments, clamping to 0 and SEMVMX, ERANGE
 * past SEMAEM, undo after SIGKILL (polled for up to 30 s: a distributed
 * implementation may learn of the death later), undo on a removed set.
 *
 * The permission cases switch the effective uid/gid to 65534
 * (supplementary groups {4242}) and back; they need root (without it they
 * print one `skip` line).  The EFAULT cases come last.
 *
 * All keys are KEYBASE + 0 .. 63.  Everything created is removed at exit.
 * Exit status 0, or 2 on a setup error.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define KEYS 64
#define NOBODY 65534
#define GROUP 4242
#define SEMVMX 32767

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
    struct seminfo *__buf;
};

static key_t kbase;
static pid_t self;
static char *self_argv0;
static int removed_id = -1;
static long semmsl, semopm;
static void *noaccess; /* a PROT_NONE page, for EFAULT */

/* ---------------------------------------------------------------- output */

static const char *ename(int e)
{
    static char buf[32];
    switch (e) {
    case 0:
        return "0";
#define E(x)                                                                  \
    case x:                                                                   \
        return #x;
        E(EPERM) E(ENOENT) E(EINTR) E(EBADF) E(ENOMEM) E(EACCES) E(EFAULT)
        E(EEXIST) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOSPC) E(ENOSYS) E(EIDRM)
        E(E2BIG) E(EOVERFLOW) E(ERANGE) E(EAGAIN) E(EFBIG)
#undef E
    }
    snprintf(buf, sizeof buf, "E#%d", e);
    return buf;
}

__attribute__((format(printf, 1, 2)))
static void line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static const char *pid_name(long p)
{
    return p == 0 ? "0" : p == self ? "self" : "other";
}

static const char *time_name(time_t t)
{
    return t == 0 ? "0" : "set";
}

static const char *key_name(key_t key)
{
    static char buf[32];
    if (key == IPC_PRIVATE)
        return "0";
    if (key >= kbase && key < kbase + KEYS) {
        snprintf(buf, sizeof buf, "base+%d", (int)(key - kbase));
        return buf;
    }
    return "other";
}

/* ------------------------------------------------------- ids for cleanup */

static int created[256];
static int ncreated;

static void track(int id)
{
    if (id >= 0 && ncreated < (int)(sizeof created / sizeof created[0]))
        created[ncreated++] = id;
}

static void cleanup(void)
{
    if (getuid() == 0) {
        if (setresuid(-1, 0, -1) != 0 || setresgid(-1, 0, -1) != 0)
            perror("cleanup: back to root");
    }
    for (int i = 0; i < ncreated; i++)
        semctl(created[i], 0, IPC_RMID); /* most are gone already */
    ncreated = 0;
}

/* ------------------------------------------------------------- semget */

static int kd(int flags)
{
    return kdipc_flags(flags | IPC_KDIPC);
}

/* semget; `same`, if >= 0, is an id the result is compared with. */
static int get_cmp(const char *name, int off, int nsems, int flags, int same)
{
    key_t key = off < 0 ? IPC_PRIVATE : kbase + off;
    errno = 0;
    int id = semget(key, nsems, kd(flags));
    int e = errno;
    track(id);
    if (id < 0)
        line("%s: ret=%d errno=%s", name, id, ename(e));
    else if (same >= 0)
        line("%s: ret=id errno=%s same=%s", name, ename(e), id == same ? "yes" : "no");
    else
        line("%s: ret=id errno=%s", name, ename(e));
    return id;
}

static int get(const char *name, int off, int nsems, int flags)
{
    return get_cmp(name, off, nsems, flags, -1);
}

/* A set the cases need: a setup error if it cannot be made. */
static int must_get(int off, int nsems, int flags)
{
    key_t key = off < 0 ? IPC_PRIVATE : kbase + off;
    int id = semget(key, nsems, kd(flags));
    if (id < 0)
        die("setup: semget(base+%d, %d, %#o): %s", off, nsems, flags, strerror(errno));
    track(id);
    return id;
}

/* ------------------------------------------------------------- semop */

static int op(const char *name, int id, struct sembuf *s, size_t n)
{
    errno = 0;
    int r = semop(id, s, n);
    int e = errno;
    line("%s: ret=%d errno=%s", name, r, ename(e));
    return r;
}

#define OP(name, id, ...)                                                     \
    do {                                                                      \
        struct sembuf s_[] = { __VA_ARGS__ };                                 \
        op(name, id, s_, sizeof s_ / sizeof s_[0]);                           \
    } while (0)

static double elapsed_since(double t0)
{
    return now_seconds() - t0;
}

/*
 * semtimedop.  With `wait_note`, also says whether it waited at least half
 * the time-out (`waited=yes|no`): only where the time-out is long enough
 * for a round trip to be clearly shorter than half of it.
 */
static int top_note(const char *name, int id, struct sembuf *s, size_t n,
                    const struct timespec *ts, int wait_note)
{
    errno = 0;
    double t0 = now_seconds();
    int r = semtimedop(id, s, n, ts);
    int e = errno;
    double dt = elapsed_since(t0);
    if (wait_note) {
        double half = ((double)ts->tv_sec + (double)ts->tv_nsec * 1e-9) / 2;
        line("%s: ret=%d errno=%s waited=%s", name, r, ename(e), dt >= half ? "yes" : "no");
    } else {
        line("%s: ret=%d errno=%s", name, r, ename(e));
    }
    return r;
}

static int top(const char *name, int id, struct sembuf *s, size_t n, const struct timespec *ts)
{
    return top_note(name, id, s, n, ts, 0);
}

#define TOP(name, id, ts, ...)                                                \
    do {                                                                      \
        struct sembuf s_[] = { __VA_ARGS__ };                                 \
        top(name, id, s_, sizeof s_ / sizeof s_[0], ts);                      \
    } while (0)

/* The same, with the `waited=` note. */
#define TOPW(name, id, ts, ...)                                               \
    do {                                                                      \
        struct sembuf s_[] = { __VA_ARGS__ };                                 \
        top_note(name, id, s_, sizeof s_ / sizeof s_[0], ts, 1);              \
    } while (0)

/* ------------------------------------------------------------- semctl */

/* semctl with an int/pointer argument; prints the result. */
static int ctl(const char *name, int id, int num, int cmd, union semun arg)
{
    errno = 0;
    int r = semctl(id, num, cmd, arg);
    int e = errno;
    if (cmd == GETPID && r >= 0)
        line("%s: ret=pid errno=%s pid=%s", name, ename(e), pid_name(r));
    else if ((cmd == IPC_INFO || cmd == SEM_INFO) && r >= 0)
        line("%s: ret=nonneg errno=%s", name, ename(e));
    else
        line("%s: ret=%d errno=%s", name, r, ename(e));
    return r;
}

static int ctl0(const char *name, int id, int num, int cmd)
{
    union semun a = { .val = 0 };
    return ctl(name, id, num, cmd, a);
}

static int setval(const char *name, int id, int num, int val)
{
    union semun a = { .val = val };
    return ctl(name, id, num, SETVAL, a);
}

static void must_setval(int id, int num, int val)
{
    union semun a = { .val = val };
    if (semctl(id, num, SETVAL, a) != 0)
        die("setup: SETVAL %d[%d]=%d: %s", id, num, val, strerror(errno));
}

static int getval(int id, int num)
{
    int v = semctl(id, num, GETVAL);
    if (v < 0)
        die("setup: GETVAL %d[%d]: %s", id, num, strerror(errno));
    return v;
}

/* GETALL: one line with the values (or the error). */
static int getall(const char *name, int id, int nsems)
{
    unsigned short v[16];
    if (nsems > 16)
        die("setup: getall of %d", nsems);
    memset(v, 0xa5, sizeof v);
    union semun a = { .array = v };
    errno = 0;
    int r = semctl(id, 0, GETALL, a);
    int e = errno;
    if (r != 0) {
        line("%s: ret=%d errno=%s", name, r, ename(e));
        return r;
    }
    char buf[256];
    size_t len = 0;
    for (int i = 0; i < nsems; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%u", i ? "," : "", v[i]);
    line("%s: ret=%d errno=%s vals=%s after=%s", name, r, ename(e), buf,
         v[nsems] == 0xa5a5 ? "untouched" : "written");
    return r;
}

static int setall(const char *name, int id, const unsigned short *vals)
{
    union semun a = { .array = (unsigned short *)vals };
    return ctl(name, id, 0, SETALL, a);
}

static void must_setall(int id, const unsigned short *vals)
{
    union semun a = { .array = (unsigned short *)vals };
    if (semctl(id, 0, SETALL, a) != 0)
        die("setup: SETALL %d: %s", id, strerror(errno));
}

/*
 * IPC_STAT and the fields two correct runs agree on; `rest` says whether
 * the bytes no printed field covers (reserved words, padding) are zero, as
 * the kernel leaves them; the buffer starts filled with 0xa5.
 */
static int stat_case(const char *name, int id)
{
    struct semid_ds ds;
    memset(&ds, 0xa5, sizeof ds);
    union semun a = { .buf = &ds };
    errno = 0;
    int r = semctl(id, 0, IPC_STAT, a);
    int e = errno;
    if (r != 0) {
        line("%s: ret=%d errno=%s", name, r, ename(e));
        return r;
    }
    struct semid_ds rest = ds;
    rest.sem_perm.__key = 0;
    rest.sem_perm.uid = 0;
    rest.sem_perm.gid = 0;
    rest.sem_perm.cuid = 0;
    rest.sem_perm.cgid = 0;
    rest.sem_perm.mode = 0;
    rest.sem_perm.__seq = 0;
    rest.sem_otime = 0;
    rest.sem_ctime = 0;
    rest.sem_nsems = 0;
    static const struct semid_ds zero;
    line("%s: ret=%d errno=%s nsems=%lu mode=%o key=%s uid=%u gid=%u cuid=%u cgid=%u "
         "otime=%s ctime=%s rest=%s",
         name, r, ename(e), (unsigned long)ds.sem_nsems, (unsigned)ds.sem_perm.mode,
         key_name(ds.sem_perm.__key), ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.cuid,
         ds.sem_perm.cgid, time_name(ds.sem_otime), time_name(ds.sem_ctime),
         memcmp(&rest, &zero, sizeof rest) == 0 ? "zero" : "garbage");
    return r;
}

/* IPC_SET of uid, gid and mode, the rest of the buffer as IPC_STAT left it. */
static int set_case(const char *name, int id, uid_t uid, gid_t gid, unsigned mode)
{
    struct semid_ds ds;
    memset(&ds, 0, sizeof ds);
    union semun a = { .buf = &ds };
    semctl(id, 0, IPC_STAT, a); /* may fail (EACCES cases); IPC_SET does not care */
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = (unsigned short)mode;
    return ctl(name, id, 0, IPC_SET, a);
}

static void info_case(const char *name, int cmd)
{
    struct seminfo si;
    memset(&si, 0xa5, sizeof si);
    union semun a = { .__buf = &si };
    errno = 0;
    int r = semctl(0, 0, cmd, a);
    int e = errno;
    if (r < 0) {
        line("%s: ret=%d errno=%s", name, r, ename(e));
        return;
    }
    /* semusz and semaem are counts for SEM_INFO: not compared there. */
    if (cmd == IPC_INFO)
        line("%s: ret=nonneg errno=%s semmap=%d semmni=%d semmns=%d semmnu=%d semmsl=%d "
             "semopm=%d semume=%d semusz=%d semvmx=%d semaem=%d",
             name, ename(e), si.semmap, si.semmni, si.semmns, si.semmnu, si.semmsl, si.semopm,
             si.semume, si.semusz, si.semvmx, si.semaem);
    else
        line("%s: ret=nonneg errno=%s semmap=%d semmni=%d semmns=%d semmnu=%d semmsl=%d "
             "semopm=%d semume=%d semvmx=%d",
             name, ename(e), si.semmap, si.semmni, si.semmns, si.semmnu, si.semmsl, si.semopm,
             si.semume, si.semvmx);
}

static void must_rmid(int id)
{
    if (semctl(id, 0, IPC_RMID) != 0)
        die("setup: IPC_RMID %d: %s", id, strerror(errno));
}

/* ------------------------------------------------------- credentials */

static gid_t saved_groups[64];
static int nsaved_groups = -1;

static void become_nobody(void)
{
    gid_t g = GROUP;
    if (nsaved_groups < 0)
        nsaved_groups = getgroups(64, saved_groups);
    if (nsaved_groups < 0 || setgroups(1, &g) != 0 || setresgid(-1, NOBODY, -1) != 0 ||
        setresuid(-1, NOBODY, -1) != 0)
        die("setup: switching to uid %d: %s", NOBODY, strerror(errno));
}

static void become_root(void)
{
    if (setresuid(-1, 0, -1) != 0 || setresgid(-1, 0, -1) != 0 ||
        setgroups((size_t)nsaved_groups, saved_groups) != 0)
        die("setup: back to root: %s", strerror(errno));
}

/* ------------------------------------------------------------- limits */

static void read_limits(void)
{
    FILE *f = fopen("/proc/sys/kernel/sem", "r");
    long mns, mni;
    if (f == NULL || fscanf(f, "%ld %ld %ld %ld", &semmsl, &mns, &semopm, &mni) != 4)
        die("setup: cannot read /proc/sys/kernel/sem");
    fclose(f);
    if (semopm < 1 || semopm > 100000 || semmsl < 3)
        die("setup: odd limits SEMMSL=%ld SEMOPM=%ld", semmsl, semopm);
}

/* ------------------------------------------------------------- cases */

/* semget: existence, sizes, flags.  Returns a set of 3 (key base+1). */
static int get_cases(void)
{
    get("get-missing", 1, 1, 0600);
    get("get-missing-nsems0", 1, 0, 0);
    int a = get("create", 1, 3, IPC_CREAT | 0600);
    if (a < 0)
        die("setup: cannot create the first set");
    get_cmp("get-existing", 1, 3, 0600, a);
    get_cmp("get-existing-nsems0", 1, 0, 0, a);
    get_cmp("get-existing-fewer", 1, 2, 0600, a);
    get("get-existing-larger", 1, 4, 0600);
    get_cmp("create-existing", 1, 3, IPC_CREAT | 0600, a);
    get_cmp("create-existing-nsems0", 1, 0, IPC_CREAT | 0600, a);
    get("create-existing-larger", 1, 4, IPC_CREAT | 0600);
    get("create-excl-existing", 1, 3, IPC_CREAT | IPC_EXCL | 0600);
    get("create-excl-existing-larger", 1, 4, IPC_CREAT | IPC_EXCL | 0600);
    get("get-existing-negative", 1, -1, 0);
    get("get-existing-too-many", 1, (int)semmsl + 1, 0);
    get("create-negative", 2, -1, IPC_CREAT | 0600);
    get("create-too-many", 2, (int)semmsl + 1, IPC_CREAT | 0600);
    get("create-nsems0", 2, 0, IPC_CREAT | 0600);
    get("get-missing-after-failed-creates", 2, 1, 0600);

    /* The largest set: SEMMSL semaphores. */
    int big = get("create-semmsl", 2, (int)semmsl, IPC_CREAT | IPC_EXCL | 0600);
    if (big >= 0) {
        int last = (int)semmsl - 1;
        ctl0("semmsl-getval-last", big, last, GETVAL);
        setval("semmsl-setval-last", big, last, 7);
        ctl0("semmsl-getval-last-again", big, last, GETVAL);
        ctl0("semmsl-getval-past-end", big, (int)semmsl, GETVAL);
        OP("semmsl-op-last", big, { (unsigned short)last, -7, IPC_NOWAIT });
        OP("semmsl-op-past-end", big, { (unsigned short)semmsl, 1, 0 });
        stat_case("semmsl-stat", big);
        ctl0("semmsl-rmid", big, 0, IPC_RMID);
    }

    get("create-excl-new", 3, 1, IPC_CREAT | IPC_EXCL | 0600);
    int p = get("private", -1, 2, 0600);
    get_cmp("private-again", -1, 2, 0600, p);
    get_cmp("private-creat-excl", -1, 1, IPC_CREAT | IPC_EXCL | 0600, p);
    get("private-nsems0", -1, 0, 0600);
    get("private-negative", -1, -1, 0600);
    get("private-too-many", -1, (int)semmsl + 1, 0600);
    if (p >= 0) {
        stat_case("private-stat", p);
        ctl0("private-rmid", p, 0, IPC_RMID);
    }

    int m = get("create-mode-640-extra-bits", 4, 1, IPC_CREAT | 0640 | 010000);
    if (m >= 0)
        stat_case("mode-640-stat", m);
    int z = get("create-mode-0", 5, 1, IPC_CREAT);
    if (z >= 0) {
        stat_case("mode-0-stat", z);
        ctl0("mode-0-getval-root", z, 0, GETVAL); /* root: CAP_IPC_OWNER */
    }
    get("get-mode-0-with-mode", 5, 1, 0600); /* root: CAP_IPC_OWNER */

    int r = must_get(6, 1, IPC_CREAT | IPC_EXCL | 0600);
    must_rmid(r);
    removed_id = r;
    get("get-after-rmid", 6, 1, 0600);
    return a;
}

/* semop and semtimedop on set `s` (3 semaphores, all 0). */
static void op_cases(int s)
{
    struct sembuf one = { 0, 1, 0 };
    op("op-nsops0", s, &one, 0);
    op("op-negative-id", -1, &one, 1);
    op("op-removed-id", removed_id, &one, 1);
    op("op-never-id", 0x7ffffffe, &one, 1);
    op("op-never-id-bit30", 0x40000000 | 12345, &one, 1);
    op("op-removed-id-nsops0", removed_id, &one, 0);

    size_t nbig = (size_t)semopm + 1;
    struct sembuf *many = calloc(nbig, sizeof *many);
    if (many == NULL)
        die("setup: calloc");
    for (size_t i = 0; i < nbig; i++)
        many[i] = (struct sembuf){ 0, 1, 0 };
    op("op-e2big", s, many, nbig);
    op("op-e2big-negative-id", -1, many, nbig);
    op("op-e2big-removed-id", removed_id, many, nbig);
    ctl0("op-e2big-val", s, 0, GETVAL);
    op("op-semopm-exact", s, many, (size_t)semopm);
    ctl0("op-semopm-exact-val", s, 0, GETVAL);
    many[semopm - 1] = (struct sembuf){ 1, -1, IPC_NOWAIT };
    op("op-semopm-last-blocks", s, many, (size_t)semopm);
    ctl0("op-semopm-last-blocks-val", s, 0, GETVAL);
    free(many);
    must_setval(s, 0, 0);

    OP("op-efbig", s, { 3, 1, 0 });
    OP("op-efbig-65535", s, { 65535, 1, 0 });
    OP("op-efbig-second", s, { 0, 1, 0 }, { 3, 1, 0 });
    OP("op-efbig-removed-id", removed_id, { 3, 1, 0 });
    OP("op-efbig-before-eagain", s, { 0, -1, IPC_NOWAIT }, { 7, 1, 0 });
    getall("op-efbig-vals", s, 3);

    OP("op-nowait-dec", s, { 1, -1, IPC_NOWAIT });
    OP("op-inc", s, { 1, 2, 0 });
    OP("op-nowait-zero-on-nonzero", s, { 1, 0, IPC_NOWAIT });
    OP("op-nowait-dec-too-much", s, { 1, -3, IPC_NOWAIT });
    OP("op-dec-exact", s, { 1, -2, 0 });
    OP("op-zero-on-zero", s, { 1, 0, 0 });
    OP("op-zero-on-zero-nowait", s, { 1, 0, IPC_NOWAIT });
    OP("op-unknown-flag-bits", s, { 1, 1, 0x0100 });
    OP("op-unknown-flag-bits-back", s, { 1, -1, 0x0100 | IPC_NOWAIT });
    getall("op-basic-vals", s, 3);

    must_setval(s, 2, SEMVMX);
    OP("op-erange", s, { 2, 1, 0 });
    OP("op-erange-nowait", s, { 2, 1, IPC_NOWAIT });
    ctl0("op-erange-val", s, 2, GETVAL);
    must_setval(s, 2, SEMVMX - 1);
    OP("op-up-to-semvmx", s, { 2, 1, 0 });
    OP("op-down-by-semvmx", s, { 2, -SEMVMX, 0 });
    ctl0("op-down-by-semvmx-val", s, 2, GETVAL);
    OP("op-up-by-semvmx", s, { 2, SEMVMX, 0 });
    OP("op-up-by-semvmx-again", s, { 2, SEMVMX, 0 });
    OP("op-down-by-min", s, { 2, -32768, IPC_NOWAIT });
    getall("op-semvmx-vals", s, 3);

    /* All or nothing. */
    static const unsigned short v100[] = { 1, 0, 0 };
    must_setall(s, v100);
    OP("aon-second-eagain", s, { 0, -1, IPC_NOWAIT }, { 1, -1, IPC_NOWAIT });
    getall("aon-second-eagain-vals", s, 3);
    OP("aon-nowait-only-on-second", s, { 0, -1, 0 }, { 1, -1, IPC_NOWAIT });
    getall("aon-nowait-only-on-second-vals", s, 3);
    OP("aon-inc-then-eagain", s, { 2, 5, 0 }, { 1, -1, IPC_NOWAIT });
    getall("aon-inc-then-eagain-vals", s, 3);
    OP("aon-zero-then-eagain", s, { 1, 0, 0 }, { 0, -2, IPC_NOWAIT });
    getall("aon-zero-then-eagain-vals", s, 3);
    must_setval(s, 2, 1);
    OP("aon-inc-then-erange", s, { 0, 1, 0 }, { 2, SEMVMX, 0 });
    getall("aon-inc-then-erange-vals", s, 3);
    OP("order-eagain-before-erange", s, { 1, -1, IPC_NOWAIT }, { 2, SEMVMX, 0 });
    OP("order-erange-before-eagain", s, { 2, SEMVMX, 0 }, { 1, -1, IPC_NOWAIT });
    OP("order-erange-before-block", s, { 2, SEMVMX, 0 }, { 1, -1, 0 });
    getall("order-vals", s, 3);
    OP("aon-three-ok", s, { 0, 2, 0 }, { 1, 3, 0 }, { 2, -1, 0 });
    getall("aon-three-ok-vals", s, 3);

    /* The same semaphore twice: applied in array order. */
    static const unsigned short v000[] = { 0, 0, 0 };
    must_setall(s, v000);
    must_setval(s, 0, 1);
    OP("dup-inc-then-dec-more", s, { 0, 1, 0 }, { 0, -2, IPC_NOWAIT });
    ctl0("dup-inc-then-dec-more-val", s, 0, GETVAL);
    OP("dup-inc-dec-zero", s, { 0, 1, 0 }, { 0, -1, 0 }, { 0, 0, IPC_NOWAIT });
    ctl0("dup-inc-dec-zero-val", s, 0, GETVAL);
    OP("dup-inc-then-zero", s, { 0, 1, 0 }, { 0, 0, IPC_NOWAIT });
    ctl0("dup-inc-then-zero-val", s, 0, GETVAL);
    must_setval(s, 0, 1);
    OP("dup-dec-dec", s, { 0, -1, 0 }, { 0, -1, IPC_NOWAIT });
    ctl0("dup-dec-dec-val", s, 0, GETVAL);
    must_setval(s, 0, SEMVMX);
    OP("dup-dec-inc-at-semvmx", s, { 0, -1, 0 }, { 0, 1, 0 });
    OP("dup-inc-dec-at-semvmx", s, { 0, 1, 0 }, { 0, -1, 0 });
    ctl0("dup-at-semvmx-val", s, 0, GETVAL);
    must_setall(s, v000);

    /* semtimedop. */
    struct timespec t10 = { 0, 10 * 1000 * 1000 };
    struct timespec t200 = { 0, 200 * 1000 * 1000 };
    struct timespec t0 = { 0, 0 };
    struct timespec bad_nsec = { 0, 1000000000L };
    struct timespec neg_nsec = { 0, -1 };
    struct timespec neg_sec = { -1, 0 };
    must_setval(s, 0, 1);
    TOP("timedop-ok", s, &t10, { 0, -1, 0 });
    TOP("timedop-null-timeout-ok", s, NULL, { 0, 1, 0 });
    TOPW("timedop-timeout", s, &t10, { 1, -1, 0 });
    TOPW("timedop-timeout-zero-wait", s, &t10, { 0, 0, 0 });
    TOP("timedop-zero-timeout", s, &t0, { 1, -1, 0 });
    TOP("timedop-zero-timeout-ok", s, &t0, { 0, -1, 0 });
    TOPW("timedop-nowait", s, &t200, { 1, -1, IPC_NOWAIT });
    TOPW("timedop-nowait-on-second", s, &t200, { 0, 1, 0 }, { 1, -1, IPC_NOWAIT });
    TOPW("timedop-first-blocks-nowait-on-second", s, &t200, { 1, -1, 0 }, { 0, -5, IPC_NOWAIT });
    must_setval(s, 2, 1);
    TOPW("timedop-block-before-erange", s, &t200, { 1, -1, 0 }, { 2, SEMVMX, 0 });
    getall("timedop-vals", s, 3);
    TOP("timedop-bad-nsec", s, &bad_nsec, { 0, 1, 0 });
    TOP("timedop-negative-nsec", s, &neg_nsec, { 0, 1, 0 });
    TOP("timedop-negative-sec", s, &neg_sec, { 0, 1, 0 });
    TOP("timedop-bad-nsec-efbig", s, &bad_nsec, { 3, 1, 0 });
    TOP("timedop-bad-nsec-nowait-eagain", s, &bad_nsec, { 1, -1, IPC_NOWAIT });
    TOP("timedop-bad-nsec-removed-id", removed_id, &bad_nsec, { 0, 1, 0 });
    {
        struct sembuf x = { 0, 1, 0 };
        top("timedop-nsops0-bad-nsec", s, &x, 0, &bad_nsec);
    }
    getall("timedop-bad-vals", s, 3);
    must_setall(s, v000);
}

/* Threads of this process block; the main thread observes and wakes them. */
struct waiter {
    pthread_t t;
    int id;
    struct sembuf ops[2];
    size_t n;
    const struct timespec *ts;
    int ret, err;
};

static void *waiter_main(void *p)
{
    struct waiter *w = p;
    errno = 0;
    w->ret = w->ts ? semtimedop(w->id, w->ops, w->n, w->ts) : semop(w->id, w->ops, w->n);
    w->err = errno;
    return NULL;
}

static void start(struct waiter *w, int id, int num, int val, const struct timespec *ts)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->ops[0] = (struct sembuf){ (unsigned short)num, (short)val, 0 };
    w->n = 1;
    w->ts = ts;
    if (pthread_create(&w->t, NULL, waiter_main, w) != 0)
        die("setup: pthread_create");
}

static void finish(const char *name, struct waiter *w)
{
    pthread_join(w->t, NULL);
    line("%s: ret=%d errno=%s", name, w->ret, ename(w->err));
}

/* Waits (up to 10 s) until GETNCNT/GETZCNT of semaphore `num` is `want`. */
static void wait_count(int id, int num, int cmd, int want)
{
    double t0 = now_seconds();
    while (semctl(id, num, cmd) != want && elapsed_since(t0) < 10)
        usleep(1000);
    usleep(20 * 1000); /* and let the waiter settle in its wait */
}

static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig)
{
    (void)sig;
    usr1_count++;
}

static void handler(int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        die("setup: sigaction");
}

static void thread_cases(void)
{
    int t = must_get(10, 2, IPC_CREAT | IPC_EXCL | 0600);
    static const unsigned short v01[] = { 0, 1 };
    must_setall(t, v01);
    struct waiter a, b, c;

    start(&a, t, 0, -1, NULL);
    wait_count(t, 0, GETNCNT, 1);
    ctl0("thr-getncnt-one", t, 0, GETNCNT);
    ctl0("thr-getzcnt-none", t, 0, GETZCNT);
    start(&b, t, 1, 0, NULL);
    wait_count(t, 1, GETZCNT, 1);
    ctl0("thr-getzcnt-one", t, 1, GETZCNT);
    ctl0("thr-getncnt-other", t, 1, GETNCNT);
    start(&c, t, 0, -1, NULL);
    wait_count(t, 0, GETNCNT, 2);
    ctl0("thr-getncnt-two", t, 0, GETNCNT);
    setval("thr-setval-wakes-one", t, 0, 1);
    /* One of a and c got it; the other still waits. */
    wait_count(t, 0, GETNCNT, 1);
    ctl0("thr-getncnt-after-wake", t, 0, GETNCNT);
    ctl0("thr-getval-after-wake", t, 0, GETVAL);
    OP("thr-op-wakes-other", t, { 0, 1, 0 });
    finish("thr-waiter-a", &a);
    finish("thr-waiter-c", &c);
    ctl0("thr-getncnt-after-both", t, 0, GETNCNT);
    ctl0("thr-getval-after-both", t, 0, GETVAL);
    ctl0("thr-getpid-after-wake", t, 0, GETPID);
    OP("thr-op-wakes-zero-waiter", t, { 1, -1, 0 });
    finish("thr-waiter-zero", &b);
    ctl0("thr-getzcnt-after", t, 1, GETZCNT);

    /* EINTR: a signal to the waiting thread; semop is never restarted. */
    handler(0);
    start(&a, t, 0, -1, NULL);
    wait_count(t, 0, GETNCNT, 1);
    pthread_kill(a.t, SIGUSR1);
    finish("thr-eintr-no-restart", &a);
    ctl0("thr-eintr-no-restart-ncnt", t, 0, GETNCNT);
    handler(SA_RESTART);
    start(&a, t, 0, -1, NULL);
    wait_count(t, 0, GETNCNT, 1);
    pthread_kill(a.t, SIGUSR1);
    finish("thr-eintr-sa-restart", &a);
    ctl0("thr-eintr-sa-restart-ncnt", t, 0, GETNCNT);
    struct timespec t20 = { 20, 0 };
    must_setval(t, 1, 1);
    start(&a, t, 1, 0, &t20);
    wait_count(t, 1, GETZCNT, 1);
    pthread_kill(a.t, SIGUSR1);
    finish("thr-eintr-timedop", &a);
    ctl0("thr-eintr-timedop-zcnt", t, 1, GETZCNT);
    line("thr-handler-runs: ret=0 errno=0 count=%d", (int)usr1_count);
    /* The interrupted operations are withdrawn: nobody takes this. */
    OP("thr-eintr-withdrawn-inc", t, { 0, 1, 0 });
    usleep(20 * 1000);
    ctl0("thr-eintr-withdrawn-val", t, 0, GETVAL);
    must_setval(t, 0, 0);

    /* IPC_RMID wakes every waiter with EIDRM. */
    must_setval(t, 1, 1);
    start(&a, t, 0, -2, NULL);
    wait_count(t, 0, GETNCNT, 1);
    start(&b, t, 1, 0, NULL);
    wait_count(t, 1, GETZCNT, 1);
    start(&c, t, 0, -1, &t20);
    wait_count(t, 0, GETNCNT, 2);
    ctl0("thr-rmid-with-waiters", t, 0, IPC_RMID);
    finish("thr-eidrm-dec", &a);
    finish("thr-eidrm-zero", &b);
    finish("thr-eidrm-timedop", &c);
    signal(SIGUSR1, SIG_DFL);
}

/* semctl on set `s` (key base+12, 2 semaphores, fresh). */
static void ctl_cases(int s)
{
    ctl0("ctl-getval-fresh", s, 0, GETVAL);
    ctl0("ctl-getpid-fresh", s, 0, GETPID);
    ctl0("ctl-getncnt-fresh", s, 0, GETNCNT);
    ctl0("ctl-getzcnt-fresh", s, 0, GETZCNT);
    stat_case("ctl-stat-fresh", s);
    getall("ctl-getall-fresh", s, 2);
    setval("ctl-setval", s, 0, 5);
    ctl0("ctl-getval", s, 0, GETVAL);
    ctl0("ctl-getpid-after-setval", s, 0, GETPID);
    ctl0("ctl-getpid-other-sem", s, 1, GETPID);
    stat_case("ctl-stat-after-setval", s);
    setval("ctl-setval-semvmx", s, 0, SEMVMX);
    setval("ctl-setval-erange", s, 0, SEMVMX + 1);
    setval("ctl-setval-negative", s, 0, -1);
    setval("ctl-setval-int-min", s, 0, -2147483647 - 1);
    ctl0("ctl-getval-after-erange", s, 0, GETVAL);
    setval("ctl-setval-erange-removed-id", removed_id, 0, SEMVMX + 1);
    setval("ctl-setval-erange-bad-semnum", s, 99, SEMVMX + 1);
    setval("ctl-setval-bad-semnum", s, 2, 1);
    setval("ctl-setval-negative-semnum", s, -1, 1);
    setval("ctl-setval-removed-id", removed_id, 0, 1);
    ctl0("ctl-getval-bad-semnum", s, 2, GETVAL);
    ctl0("ctl-getval-negative-semnum", s, -1, GETVAL);
    ctl0("ctl-getpid-bad-semnum", s, 2, GETPID);
    ctl0("ctl-getncnt-bad-semnum", s, 2, GETNCNT);
    ctl0("ctl-getzcnt-bad-semnum", s, 2, GETZCNT);
    ctl0("ctl-getzcnt-zero-sem", s, 1, GETZCNT);
    getall("ctl-getall", s, 2);
    getall("ctl-getall-removed-id", removed_id, 2);
    static const unsigned short v34[] = { 3, 4 };
    static const unsigned short vbig[] = { 1, SEMVMX + 1 };
    static const unsigned short vneg[] = { 65535, 1 };
    static const unsigned short vmax[] = { SEMVMX, SEMVMX };
    setall("ctl-setall", s, v34);
    getall("ctl-getall-after-setall", s, 2);
    ctl0("ctl-getpid-after-setall", s, 1, GETPID);
    setall("ctl-setall-erange", s, vbig);
    setall("ctl-setall-65535", s, vneg);
    getall("ctl-getall-after-erange", s, 2);
    setall("ctl-setall-semvmx", s, vmax);
    setall("ctl-setall-removed-id", removed_id, v34);
    setall("ctl-setall-back", s, v34);
    stat_case("ctl-stat-before-op", s);
    OP("ctl-op", s, { 0, -1, 0 });
    stat_case("ctl-stat-after-op", s);
    ctl0("ctl-getpid-after-op", s, 0, GETPID);
    OP("ctl-op-zero-nowait-fails", s, { 0, 0, IPC_NOWAIT });

    set_case("ctl-set-mode-640", s, 0, 0, 0640);
    stat_case("ctl-stat-mode-640", s);
    set_case("ctl-set-mode-extra-bits", s, 0, 0, 0177777);
    stat_case("ctl-stat-mode-extra-bits", s);
    set_case("ctl-set-uid-gid", s, 1234, 5678, 0600);
    stat_case("ctl-stat-uid-gid", s);
    set_case("ctl-set-back", s, 0, 0, 0600);
    set_case("ctl-set-removed-id", removed_id, 0, 0, 0600);
    set_case("ctl-set-negative-id", -1, 0, 0, 0600);
    stat_case("ctl-stat-removed-id", removed_id);
    stat_case("ctl-stat-negative-id", -1);
    stat_case("ctl-stat-never-id-bit30", 0x40000000 | 12345);

    ctl0("ctl-bad-cmd", s, 0, 12345);
    ctl0("ctl-bad-cmd-negative", s, 0, -1);
    ctl0("ctl-bad-cmd-removed-id", removed_id, 0, 12345);
    ctl0("ctl-getval-negative-id", -1, 0, GETVAL);
    ctl0("ctl-getval-removed-id", removed_id, 0, GETVAL);
    ctl0("ctl-getval-never-id", 0x7ffffffe, 0, GETVAL);
    ctl0("ctl-getval-never-id-bit30", 0x40000000 | 12345, 0, GETVAL);
    ctl0("ctl-rmid-negative-id", -1, 0, IPC_RMID);
    ctl0("ctl-rmid-removed-id", removed_id, 0, IPC_RMID);
    info_case("ctl-ipc-info", IPC_INFO);
    info_case("ctl-sem-info", SEM_INFO);

    ctl0("ctl-rmid", s, 0, IPC_RMID);
    ctl0("ctl-getval-after-rmid", s, 0, GETVAL);
    setval("ctl-setval-after-rmid", s, 0, 1);
    stat_case("ctl-stat-after-rmid", s);
    OP("ctl-op-after-rmid", s, { 0, 1, 0 });
    ctl0("ctl-rmid-again", s, 0, IPC_RMID);
    get("ctl-get-after-rmid", 12, 2, 0600);
}

static void perm_cases(void)
{
    if (getuid() != 0) {
        line("perm-cases: skip reason=not-root");
        return;
    }
    int p600 = must_get(20, 2, IPC_CREAT | IPC_EXCL | 0600);
    int p604 = must_get(21, 2, IPC_CREAT | IPC_EXCL | 0604);
    int p660 = must_get(22, 2, IPC_CREAT | IPC_EXCL | 0660);
    int pown = must_get(23, 1, IPC_CREAT | IPC_EXCL | 0600);
    static const unsigned short v11[] = { 1, 1 };
    static const unsigned short v10[] = { 1, 0 };
    must_setall(p600, v11);
    must_setall(p604, v10);
    must_setall(p660, v11);
    set_case("perm-root-set-gid-4242", p660, 0, GROUP, 0660);
    set_case("perm-root-give-to-nobody", pown, NOBODY, 0, 0600);
    stat_case("perm-root-stat-given", pown);

    become_nobody();
    get("perm-get-0600-rw", 20, 2, 0600);
    get("perm-get-0600-r", 20, 2, 0400);
    get_cmp("perm-get-0600-no-mode", 20, 2, 0, p600);
    get("perm-get-0600-creat", 20, 2, IPC_CREAT | 0600);
    get("perm-get-0600-creat-excl", 20, 2, IPC_CREAT | IPC_EXCL | 0600);
    get("perm-get-0600-larger", 20, 3, 0600);
    get_cmp("perm-get-0604-r", 21, 2, 0400, p604);
    get("perm-get-0604-rw", 21, 2, 0600);
    get_cmp("perm-get-0660-group-rw", 22, 2, 0660, p660);
    get_cmp("perm-get-own-rw", 23, 1, 0600, pown);

    ctl0("perm-getval-0600", p600, 0, GETVAL);
    ctl0("perm-getval-0600-bad-semnum", p600, 99, GETVAL);
    setval("perm-setval-0600-bad-semnum", p600, 99, 1);
    setval("perm-setval-0600", p600, 0, 1);
    setval("perm-setval-0600-erange", p600, 0, SEMVMX + 1);
    getall("perm-getall-0600", p600, 2);
    setall("perm-setall-0600", p600, v11);
    ctl0("perm-getpid-0600", p600, 0, GETPID);
    ctl0("perm-getncnt-0600", p600, 0, GETNCNT);
    ctl0("perm-getzcnt-0600", p600, 0, GETZCNT);
    stat_case("perm-stat-0600", p600);
    set_case("perm-set-0600", p600, NOBODY, NOBODY, 0666);
    ctl0("perm-rmid-0600", p600, 0, IPC_RMID);
    ctl0("perm-bad-cmd-0600", p600, 0, 12345);
    OP("perm-op-0600-dec", p600, { 0, -1, IPC_NOWAIT });
    OP("perm-op-0600-zero", p600, { 0, 0, IPC_NOWAIT });
    OP("perm-op-0600-efbig", p600, { 5, -1, 0 });
    {
        struct timespec bad = { 0, 1000000000L };
        TOP("perm-timedop-0600-bad-nsec", p600, &bad, { 0, 1, 0 });
    }

    ctl0("perm-getval-0604", p604, 0, GETVAL);
    stat_case("perm-stat-0604", p604);
    getall("perm-getall-0604", p604, 2);
    ctl0("perm-getpid-0604", p604, 0, GETPID);
    setval("perm-setval-0604", p604, 0, 2);
    setall("perm-setall-0604", p604, v11);
    OP("perm-op-0604-zero-ok", p604, { 1, 0, IPC_NOWAIT });
    OP("perm-op-0604-zero-eagain", p604, { 0, 0, IPC_NOWAIT });
    OP("perm-op-0604-dec", p604, { 0, -1, IPC_NOWAIT });
    OP("perm-op-0604-zero-then-dec", p604, { 1, 0, 0 }, { 0, -1, 0 });
    set_case("perm-set-0604", p604, NOBODY, NOBODY, 0666);

    ctl0("perm-getval-0660-group", p660, 0, GETVAL);
    setval("perm-setval-0660-group", p660, 0, 2);
    OP("perm-op-0660-group", p660, { 0, -2, IPC_NOWAIT });
    getall("perm-getall-0660-group", p660, 2);
    ctl0("perm-rmid-0660-group", p660, 0, IPC_RMID);

    ctl0("perm-getval-own", pown, 0, GETVAL);
    set_case("perm-set-own-mode-400", pown, NOBODY, NOBODY, 0400);
    stat_case("perm-stat-own", pown);
    setval("perm-setval-own-400", pown, 0, 3);
    OP("perm-op-own-400", pown, { 0, 1, 0 });
    ctl0("perm-rmid-own", pown, 0, IPC_RMID);
    become_root();

    ctl0("perm-root-getval-0600", p600, 0, GETVAL);
    getall("perm-root-getall-0604", p604, 2);
    ctl0("perm-root-getpid-0660", p660, 0, GETPID);
    ctl0("perm-root-getval-own-removed", pown, 0, GETVAL);
    ctl0("perm-root-rmid-0600", p600, 0, IPC_RMID);
    ctl0("perm-root-rmid-0604", p604, 0, IPC_RMID);
    ctl0("perm-root-rmid-0660", p660, 0, IPC_RMID);
}

/* ---------------------------------------------------------- SEM_UNDO */

/* In the child: the operations of one undo case, then exit (or die). */
static int child_case(const char *what, int id)
{
    if (strcmp(what, "dec") == 0) {
        OP("undo-dec-in-child", id, { 0, -2, SEM_UNDO });
    } else if (strcmp(what, "inc") == 0) {
        OP("undo-inc-in-child", id, { 1, 3, SEM_UNDO });
    } else if (strcmp(what, "setval") == 0) {
        OP("undo-setval-in-child-op", id, { 0, -1, SEM_UNDO });
        setval("undo-setval-in-child", id, 0, 9);
    } else if (strcmp(what, "setall") == 0) {
        static const unsigned short v[] = { 6, 6 };
        OP("undo-setall-in-child-op", id, { 0, -1, SEM_UNDO }, { 1, 2, SEM_UNDO });
        setall("undo-setall-in-child", id, v);
    } else if (strcmp(what, "clamp-low") == 0) {
        OP("undo-clamp-low-in-child-up", id, { 1, 3, SEM_UNDO });
        OP("undo-clamp-low-in-child-down", id, { 1, -3, 0 });
    } else if (strcmp(what, "clamp-high") == 0) {
        OP("undo-clamp-high-in-child-down", id, { 1, -2, SEM_UNDO });
        OP("undo-clamp-high-in-child-up", id, { 1, SEMVMX, 0 });
    } else if (strcmp(what, "semaem") == 0) {
        OP("undo-semaem-in-child-1", id, { 0, SEMVMX, SEM_UNDO });
        OP("undo-semaem-in-child-2", id, { 0, -1, 0 });
        OP("undo-semaem-in-child-3", id, { 0, 1, SEM_UNDO });
        OP("undo-semaem-in-child-4", id, { 0, -1, 0 });
        OP("undo-semaem-in-child-erange", id, { 0, 1, SEM_UNDO });
        ctl0("undo-semaem-in-child-val", id, 0, GETVAL);
        OP("undo-semaem-in-child-down-ok", id, { 0, -1, SEM_UNDO });
    } else if (strcmp(what, "dup") == 0) {
        OP("undo-dup-in-child", id, { 0, -1, SEM_UNDO }, { 0, -1, SEM_UNDO }, { 0, 1, 0 });
    } else if (strcmp(what, "killed") == 0) {
        OP("undo-killed-in-child", id, { 0, -1, SEM_UNDO }, { 1, 1, SEM_UNDO });
        raise(SIGKILL);
    } else if (strcmp(what, "rmid") == 0) {
        OP("undo-rmid-in-child-op", id, { 0, -1, SEM_UNDO });
        ctl0("undo-rmid-in-child", id, 0, IPC_RMID);
    } else {
        die("unknown child case %s", what);
    }
    return 0;
}

/* Runs `sem_errno KEYBASE child WHAT ID` and waits for it. */
static void run_child(const char *what, int id)
{
    char base[32], ids[32];
    snprintf(base, sizeof base, "%#x", (unsigned)kbase);
    snprintf(ids, sizeof ids, "%d", id);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("setup: fork: %s", strerror(errno));
    if (pid == 0) {
        execl("/proc/self/exe", self_argv0, base, "child", what, ids, (char *)NULL);
        perror("setup: exec");
        _exit(EXIT_SETUP);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        die("setup: waitpid: %s", strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SETUP)
        die("setup: child %s failed", what);
    if (WIFEXITED(status))
        line("undo-%s-child: ret=0 errno=0 exit=%d", what, WEXITSTATUS(status));
    else
        line("undo-%s-child: ret=0 errno=0 signal=%d", what, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
}

static void undo_cases(void)
{
    int u = must_get(30, 2, IPC_CREAT | IPC_EXCL | 0600);
    static const unsigned short v50[] = { 5, 0 };
    must_setall(u, v50);
    run_child("dec", u);
    getall("undo-dec-vals", u, 2);
    ctl0("undo-dec-getpid", u, 0, GETPID);
    run_child("inc", u);
    getall("undo-inc-vals", u, 2);
    run_child("setval", u);
    getall("undo-setval-vals", u, 2);
    ctl0("undo-setval-getpid", u, 0, GETPID);
    run_child("setall", u);
    getall("undo-setall-vals", u, 2);
    must_setall(u, v50);
    run_child("clamp-low", u);
    getall("undo-clamp-low-vals", u, 2);
    must_setval(u, 1, 2);
    run_child("clamp-high", u);
    getall("undo-clamp-high-vals", u, 2);
    must_setall(u, v50);
    must_setval(u, 0, 0);
    run_child("semaem", u);
    getall("undo-semaem-vals", u, 2);
    must_setall(u, v50);
    run_child("dup", u);
    getall("undo-dup-vals", u, 2);

    /* A killed process's adjustments: the kernel applies them before the
     * parent learns of the death; a distributed implementation may take a
     * while.  Poll (30 s) and say whether they came. */
    must_setall(u, v50);
    run_child("killed", u);
    double t0 = now_seconds();
    while (!(getval(u, 0) == 5 && getval(u, 1) == 0) && elapsed_since(t0) < 30)
        usleep(5000);
    getall("undo-killed-vals", u, 2);

    int r = must_get(31, 1, IPC_CREAT | IPC_EXCL | 0600);
    must_setval(r, 0, 1);
    run_child("rmid", r);
    get("undo-rmid-get", 31, 1, 0600);
    ctl0("undo-rmid-getval", r, 0, GETVAL);

    /* In this process: adjustments are per process, not visible values. */
    must_setall(u, v50);
    OP("undo-self-op", u, { 0, -1, SEM_UNDO });
    ctl0("undo-self-val", u, 0, GETVAL);
    ctl0("undo-self-rmid", u, 0, IPC_RMID);
}

/* --------------------------------------------------------------- EFAULT */

static void efault_cases(void)
{
    int s = must_get(40, 2, IPC_CREAT | IPC_EXCL | 0600);
    struct sembuf *bad_ops = noaccess;
    struct timespec *bad_ts = noaccess;
    struct sembuf one = { 0, 1, 0 };
    op("efault-op-sops", s, bad_ops, 1);
    op("efault-op-sops-null", s, NULL, 1);
    op("efault-op-sops-removed-id", removed_id, bad_ops, 1);
    op("efault-op-sops-nsops0", s, bad_ops, 0);
    op("efault-op-sops-e2big", s, bad_ops, (size_t)semopm + 1);
    top("efault-timedop-timeout", s, &one, 1, bad_ts);
    top("efault-timedop-timeout-removed-id", removed_id, &one, 1, bad_ts);
    top("efault-timedop-timeout-nsops0", s, &one, 0, bad_ts);
    ctl0("efault-ops-val", s, 0, GETVAL);
    union semun a = { .buf = noaccess };
    ctl("efault-ctl-stat", s, 0, IPC_STAT, a);
    ctl("efault-ctl-stat-removed-id", removed_id, 0, IPC_STAT, a);
    ctl("efault-ctl-set", s, 0, IPC_SET, a);
    ctl("efault-ctl-set-removed-id", removed_id, 0, IPC_SET, a);
    union semun n = { .buf = NULL };
    ctl("efault-ctl-stat-null", s, 0, IPC_STAT, n);
    ctl("efault-ctl-set-null", s, 0, IPC_SET, n);
    union semun arr = { .array = noaccess };
    ctl("efault-ctl-getall", s, 0, GETALL, arr);
    ctl("efault-ctl-setall", s, 0, SETALL, arr);
    ctl("efault-ctl-getall-removed-id", removed_id, 0, GETALL, arr);
    union semun an = { .array = NULL };
    ctl("efault-ctl-getall-null", s, 0, GETALL, an);
    ctl("efault-ctl-setall-null", s, 0, SETALL, an);
    union semun inf = { .__buf = noaccess };
    ctl("efault-ctl-ipc-info", 0, 0, IPC_INFO, inf);
    ctl("efault-ctl-sem-info", 0, 0, SEM_INFO, inf);
    getall("efault-vals", s, 2);
    ctl0("efault-rmid", s, 0, IPC_RMID);
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 5 && strcmp(argv[2], "child") == 0))
        die("usage: %s KEYBASE", argv[0]);
    kbase = (key_t)parse_long("KEYBASE", argv[1]);
    if (kbase <= 0 || kbase > 0x7fffffff - KEYS)
        die("KEYBASE must be positive and leave room for %d keys", KEYS);
    self = getpid();
    self_argv0 = argv[0];
    if (argc == 5)
        return child_case(argv[3], (int)parse_long("ID", argv[4]));
    atexit(cleanup);
    read_limits();
    noaccess = mmap(NULL, PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (noaccess == MAP_FAILED)
        die("setup: mmap");

    int a = get_cases();
    op_cases(a);
    ctl0("op-set-rmid", a, 0, IPC_RMID);
    thread_cases();
    ctl_cases(must_get(12, 2, IPC_CREAT | IPC_EXCL | 0600));
    perm_cases();
    undo_cases();
    efault_cases();
    cleanup();
    line("done: ret=0 errno=0");
    return 0;
}
