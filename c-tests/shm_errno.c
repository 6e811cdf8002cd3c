/*
 * shm_errno.c - return values and errno of shmget/shmat/shmdt/shmctl, case
 * by case, in a form that can be compared between the kernel and KDIPC.
 *
 *   shm_errno KEYBASE
 *
 * Every case prints one line
 *
 *   case-name: ret=<0|-1|id|addr|...> errno=<NAME> [field=value ...]
 *
 * with nothing that differs between two correct runs (no id numbers, no
 * addresses, no pids, no times): ids print as `id` (and whether they equal
 * an earlier one), addresses as `addr` (and where they landed relative to
 * the address asked for), times as `0` or `set`.  errno is cleared before
 * every call and printed after it, also after a success.
 *
 * The shim test (shim/tests/errno.rs) runs this once on the kernel
 * (KDIPC_NATIVE=1, no shim) and once with every segment distributed, and
 * requires the two outputs to be identical.  The expected values are those
 * of the Linux man pages shmget(2), shmop(2) and shmctl(2) and, where
 * several errors apply, the order of the checks in ipc/shm.c.
 *
 * The permission cases switch the effective uid to 65534 (and egid to
 * 65534, supplementary groups to {4242}) and back, and run a child as root
 * without the capabilities that override System V permissions (this
 * program again: `shm_errno KEYBASE nocap ID ID`); they need root.  Without root
 * they print one `skip` line instead.
 *
 * All keys are KEYBASE + 0 .. 63.  Everything created is removed at
 * exit, also after a failure.  The last cases run in an atexit handler;
 * the last line is `exit-done`.  Exit status 0, or 2 on a setup error.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#ifndef SHM_EXEC
#define SHM_EXEC 0100000
#endif
#ifndef SHM_DEST
#define SHM_DEST 01000
#endif
#ifndef SHM_LOCKED
#define SHM_LOCKED 02000
#endif
#ifndef SHM_NORESERVE
#define SHM_NORESERVE 010000
#endif

/* Keys used: KEYBASE .. KEYBASE + KEYS - 1. */
#define KEYS 64

#define NOBODY 65534
#define GROUP 4242

static key_t kbase;
static pid_t self;
static int removed_id = -1; /* an id that existed: positive, no longer valid */

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
        E(E2BIG) E(EOVERFLOW) E(ERANGE)
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
    /* Back to root (if we left it) so that every segment can be removed. */
    if (getuid() == 0) {
        if (setresuid(-1, 0, -1) != 0 || setresgid(-1, 0, -1) != 0)
            perror("cleanup: back to root");
    }
    for (int i = 0; i < ncreated; i++)
        shmctl(created[i], IPC_RMID, NULL); /* most are gone already */
}

/* ------------------------------------------------------------- shmget */

static int kd(int flags)
{
    return kdipc_flags(flags | IPC_KDIPC);
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

/* shmget; `same`, if >= 0, is an id the result is compared with. */
static int get_cmp(const char *name, int off, size_t size, int flags, int same)
{
    key_t key = off < 0 ? IPC_PRIVATE : kbase + off;
    errno = 0;
    int id = shmget(key, size, kd(flags));
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

static int get(const char *name, int off, size_t size, int flags)
{
    return get_cmp(name, off, size, flags, -1);
}

/* A segment the cases need: a setup error if it cannot be made. */
static int must_get(int off, size_t size, int flags)
{
    key_t key = off < 0 ? IPC_PRIVATE : kbase + off;
    int id = shmget(key, size, kd(flags));
    if (id < 0)
        die("setup: shmget(base+%d, %zu, %#o): %s", off, size, flags, strerror(errno));
    track(id);
    return id;
}

/* ------------------------------------------------------------- shmat */

#define FAILED ((void *)-1)

/* shmat; `want` is the address it should land at (NULL: anywhere). */
static void *at(const char *name, int id, const void *addr, int flags, const void *want)
{
    errno = 0;
    void *p = shmat(id, addr, flags);
    int e = errno;
    if (p == FAILED)
        line("%s: ret=-1 errno=%s", name, ename(e));
    else if (want != NULL)
        line("%s: ret=addr errno=%s at=%s", name, ename(e), p == want ? "wanted" : "elsewhere");
    else
        line("%s: ret=addr errno=%s", name, ename(e));
    return p;
}

static void *must_at(int id, const void *addr, int flags)
{
    void *p = shmat(id, addr, flags);
    if (p == FAILED)
        die("setup: shmat(%d): %s", id, strerror(errno));
    return p;
}

/* ------------------------------------------------------------- shmdt */

static int dt(const char *name, const void *addr)
{
    errno = 0;
    int r = shmdt(addr);
    int e = errno;
    line("%s: ret=%d errno=%s", name, r, ename(e));
    return r;
}

/* ------------------------------------------------------------- shmctl */

static const char *pid_name(pid_t p)
{
    return p == 0 ? "0" : p == self ? "self" : "other";
}

static const char *time_name(time_t t)
{
    return t == 0 ? "0" : "set";
}

/*
 * IPC_STAT and the fields two correct runs agree on.  Not compared (yet):
 * the SHM_LOCKED bit of the mode, which KDIPC does not keep (SHM_LOCK and
 * SHM_UNLOCK themselves are compared).  `rest` says whether
 * every byte the fields printed do not cover (padding, reserved words) is
 * zero, as the kernel leaves them; the buffer starts filled with 0xa5.
 */
static int stat_case(const char *name, int id)
{
    struct shmid_ds ds;
    memset(&ds, 0xa5, sizeof ds);
    errno = 0;
    int r = shmctl(id, IPC_STAT, &ds);
    int e = errno;
    if (r != 0) {
        line("%s: ret=%d errno=%s", name, r, ename(e));
        return r;
    }
    struct shmid_ds rest = ds;
    rest.shm_perm.__key = 0;
    rest.shm_perm.uid = 0;
    rest.shm_perm.gid = 0;
    rest.shm_perm.cuid = 0;
    rest.shm_perm.cgid = 0;
    rest.shm_perm.mode = 0;
    rest.shm_perm.__seq = 0;
    rest.shm_segsz = 0;
    rest.shm_atime = 0;
    rest.shm_dtime = 0;
    rest.shm_ctime = 0;
    rest.shm_cpid = 0;
    rest.shm_lpid = 0;
    rest.shm_nattch = 0;
    static const struct shmid_ds zero;
    line("%s: ret=%d errno=%s segsz=%zu nattch=%lu mode=%03o dest=%d other_mode_bits=%#o "
         "key=%s uid=%u gid=%u cuid=%u cgid=%u cpid=%s lpid=%s atime=%s dtime=%s ctime=%s rest=%s",
         name, r, ename(e), ds.shm_segsz, (unsigned long)ds.shm_nattch, ds.shm_perm.mode & 0777,
         !!(ds.shm_perm.mode & SHM_DEST),
         ds.shm_perm.mode & ~(0777 | SHM_DEST | SHM_LOCKED), key_name(ds.shm_perm.__key),
         ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.cuid, ds.shm_perm.cgid, pid_name(ds.shm_cpid),
         pid_name(ds.shm_lpid), time_name(ds.shm_atime), time_name(ds.shm_dtime),
         time_name(ds.shm_ctime), memcmp(&rest, &zero, sizeof rest) == 0 ? "zero" : "garbage");
    return r;
}

/* shmctl with any cmd and buffer; only the return value and errno. */
static int ctl(const char *name, int id, int cmd, void *buf)
{
    errno = 0;
    int r = shmctl(id, cmd, buf);
    int e = errno;
    line("%s: ret=%s errno=%s", name, r > 0 ? "positive" : r == 0 ? "0" : "-1", ename(e));
    return r;
}

/* IPC_SET of uid, gid and mode, the rest of the buffer as IPC_STAT left it. */
static int set_case(const char *name, int id, uid_t uid, gid_t gid, unsigned mode)
{
    struct shmid_ds ds;
    memset(&ds, 0, sizeof ds);
    shmctl(id, IPC_STAT, &ds); /* may fail (EACCES cases); IPC_SET does not care */
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (unsigned short)mode;
    return ctl(name, id, IPC_SET, &ds);
}

static int must_rmid(int id)
{
    if (shmctl(id, IPC_RMID, NULL) != 0)
        die("setup: IPC_RMID %d: %s", id, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------- memory */

/*
 * A range of free address space for attaches at given addresses, away from
 * where the kernel puts mappings of its choice (so that no allocation of
 * the runtime can land there meanwhile).
 */
#define AREA_PAGES 256
static char *area;

static void find_area(void)
{
    for (uintptr_t a = 0x200000000000UL; a < 0x300000000000UL; a += 0x40000000UL) {
        void *p = mmap((void *)a, AREA_PAGES * PAGE_SIZE, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED)
            continue;
        munmap(p, AREA_PAGES * PAGE_SIZE);
        if (p == (void *)a) {
            area = p;
            return;
        }
    }
    die("setup: no free address range for fixed attaches");
}

/* Page `n` of the area. */
static char *page(int n)
{
    return area + (size_t)n * PAGE_SIZE;
}

/* An ordinary (not shared memory) mapping at page `n` of the area. */
static char *anon_at(int n, int npages)
{
    void *p = mmap(page(n), (size_t)npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != page(n))
        die("setup: mmap at area page %d: %s", n, strerror(errno));
    return p;
}

/* ------------------------------------------------------- credentials */

static gid_t saved_groups[64];
static int nsaved_groups = -1;

/* Effective uid/gid NOBODY, supplementary groups {GROUP}. */
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

static char *self_argv0;

/*
 * Runs the `nocap` cases in a child: this program again, exec'ed with
 * CAP_IPC_OWNER, CAP_SYS_ADMIN and CAP_IPC_LOCK dropped from its bounding
 * set, so that it is root (uid 0) without them, in every thread, as root
 * in a container often is.
 */
static void run_nocap_child(int user_id, int root_id)
{
    char base[32], u[32], r[32];
    snprintf(base, sizeof base, "%#x", (unsigned)kbase);
    snprintf(u, sizeof u, "%d", user_id);
    snprintf(r, sizeof r, "%d", root_id);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("setup: fork: %s", strerror(errno));
    if (pid == 0) {
        static const int caps[] = { CAP_IPC_OWNER, CAP_SYS_ADMIN, CAP_IPC_LOCK };
        for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
            if (prctl(PR_CAPBSET_DROP, caps[i], 0, 0, 0) != 0) {
                perror("setup: PR_CAPBSET_DROP");
                _exit(EXIT_SETUP);
            }
        }
        execl("/proc/self/exe", self_argv0, base, "nocap", u, r, (char *)NULL);
        perror("setup: exec");
        _exit(EXIT_SETUP);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        die("setup: the nocap child failed (status %#x)", status);
}

/* ------------------------------------------------------------- cases */

/* shmget: existence, sizes, flags. */
static int get_cases(void)
{
    get("get-missing", 1, 4096, 0600);
    get("get-missing-size0", 1, 0, 0);
    get("get-missing-excl-only", 1, 4096, IPC_EXCL | 0600);
    get("create-size0", 1, 0, IPC_CREAT | 0600);
    get("create-size-max", 1, (size_t)-1, IPC_CREAT | 0600);
    get("create-excl-size0", 1, 0, IPC_CREAT | IPC_EXCL | 0600);
    get("create-huge", 1, (size_t)1 << 50, IPC_CREAT | 0600);
    int id = get("create", 1, 10000, IPC_CREAT | 0640);
    if (id < 0)
        die("cannot go on without a segment");
    stat_case("create-stat", id);
    get_cmp("create-again", 1, 10000, IPC_CREAT | 0600, id);
    get_cmp("get-same-size", 1, 10000, 0, id);
    get("get-bigger", 1, 10001, 0);
    get("get-bigger-creat", 1, 20000, IPC_CREAT | 0600);
    get("get-bigger-max", 1, (size_t)-1, 0);
    get_cmp("get-smaller", 1, 100, 0, id);
    get_cmp("get-size0", 1, 0, 0, id);
    get_cmp("get-excl-only", 1, 100, IPC_EXCL, id);
    get_cmp("get-mode-ignored", 1, 100, 0777, id);
    get("create-excl-existing", 1, 100, IPC_CREAT | IPC_EXCL | 0600);
    get("create-excl-existing-bigger", 1, 99999, IPC_CREAT | IPC_EXCL | 0600);
    get("create-excl-existing-size0", 1, 0, IPC_CREAT | IPC_EXCL | 0600);
    stat_case("create-stat-again", id);

    int p1 = get("private-1", -1, 4096, 0600);
    int p2 = get("private-2", -1, 4096, IPC_CREAT | IPC_EXCL | 0600);
    line("private-distinct: ret=0 errno=0 distinct=%s", p1 != p2 ? "yes" : "no");
    stat_case("private-stat", p2);
    get("private-size0", -1, 0, 0600);
    get("private-size-max", -1, (size_t)-1, 0600);
    get("private-huge", -1, (size_t)1 << 50, 0600);
    ctl("private-1-rmid", p1, IPC_RMID, NULL);
    ctl("private-2-rmid", p2, IPC_RMID, NULL);

    int m = get("create-mode-bits", 2, 1, IPC_CREAT | 01777);
    stat_case("create-mode-bits-stat", m);
    ctl("create-mode-bits-rmid", m, IPC_RMID, NULL);
    int nr = get("create-noreserve", 3, 4096, IPC_CREAT | SHM_NORESERVE | 0600);
    stat_case("create-noreserve-stat", nr);
    ctl("create-noreserve-rmid", nr, IPC_RMID, NULL);
    get("get-after-rmid", 3, 4096, 0600);
    int again = get("create-after-rmid", 3, 4096, IPC_CREAT | IPC_EXCL | 0600);
    line("create-after-rmid-new-id: ret=0 errno=0 distinct=%s", again != nr ? "yes" : "no");
    ctl("create-after-rmid-rmid", again, IPC_RMID, NULL);
    return id;
}

/* shmat and shmdt: addresses, flags, counting. */
static void at_cases(int id)
{
    char *a = at("at-null", id, NULL, 0, NULL);
    if (a == FAILED)
        die("cannot go on without an attach");
    stat_case("at-null-stat", id);
    char *b = at("at-null-second", id, NULL, 0, NULL);
    if (b == FAILED)
        die("cannot go on without a second attach");
    line("at-two-views-distinct: ret=0 errno=0 distinct=%s", a != b ? "yes" : "no");
    strcpy(a + 5000, "hello");
    line("at-two-views-share: ret=0 errno=0 data=%s", strcmp(b + 5000, "hello") == 0 ? "shared" : "differs");
    stat_case("at-two-stat", id);

    char *r = at("at-rdonly", id, NULL, SHM_RDONLY, NULL);
    line("at-rdonly-reads: ret=0 errno=0 data=%s",
         r != FAILED && strcmp(r + 5000, "hello") == 0 ? "shared" : "differs");
    stat_case("at-rdonly-stat", id);
    dt("dt-rdonly", r);

    char *x = at("at-exec", id, NULL, SHM_EXEC, NULL);
    dt("dt-exec", x);

    /* Given addresses. */
    at("at-unaligned", id, page(0) + 1, 0, NULL);
    at("at-unaligned-rdonly", id, page(0) + 100, SHM_RDONLY, NULL);
    char *rnd = at("at-unaligned-rnd", id, page(0) + 1, SHM_RND, page(0));
    line("at-unaligned-rnd-data: ret=0 errno=0 data=%s",
         rnd != FAILED && strcmp(rnd + 5000, "hello") == 0 ? "shared" : "differs");
    char *fix = at("at-fixed", id, page(16), 0, page(16));
    at("at-fixed-taken", id, page(16), 0, NULL);
    at("at-fixed-overlap-next", id, page(15), 0, NULL);
    at("at-fixed-overlap-prev", id, page(17), SHM_RND, NULL);
    at("at-null-remap", id, NULL, SHM_REMAP, NULL);
    at("at-null-remap-rdonly", id, NULL, SHM_REMAP | SHM_RDONLY, NULL);
    at("at-low-rnd-remap", id, (void *)100, SHM_RND | SHM_REMAP, NULL);
    at("at-unaligned-remap", id, page(32) + 8, SHM_REMAP, NULL);
    at("at-wraps-around", id, (void *)(uintptr_t)-PAGE_SIZE, 0, NULL);
    at("at-wraps-around-rnd", id, (void *)((uintptr_t)-PAGE_SIZE + 1), SHM_RND, NULL);
    at("at-above-user-space", id, (void *)0x800000000000UL, 0, NULL);
    stat_case("at-fixed-stat", id);

    /* Over an ordinary mapping. */
    char *anon = anon_at(40, 3);
    at("at-over-anon", id, anon, 0, NULL);
    at("at-over-anon-tail", id, page(38), 0, NULL);
    char *re = at("at-over-anon-remap", id, anon, SHM_REMAP, anon);
    line("at-over-anon-remap-data: ret=0 errno=0 data=%s",
         re != FAILED && strcmp(re + 5000, "hello") == 0 ? "shared" : "differs");
    stat_case("at-over-anon-remap-stat", id);
    dt("dt-over-anon-remap", re);
    dt("dt-over-anon-remap-again", re);
    munmap(page(42), PAGE_SIZE); /* the third page of the anonymous mapping */

    /* Over another attach of the same size (its attach goes away). */
    int other = must_get(4, 10000, IPC_CREAT | 0600);
    char *o = must_at(other, page(50), 0);
    strcpy(o, "other");
    at("at-over-attach", id, page(50), 0, NULL);
    char *ov = at("at-over-attach-remap", id, page(50), SHM_REMAP, page(50));
    line("at-over-attach-remap-data: ret=0 errno=0 data=%s",
         ov != FAILED && strcmp(ov + 5000, "hello") == 0 ? "new" : "old");
    stat_case("at-over-attach-remap-old-stat", other);
    stat_case("at-over-attach-remap-new-stat", id);
    dt("dt-over-attach-remap", ov);
    stat_case("dt-over-attach-remap-old-stat", other);
    dt("dt-over-attach-remap-again", ov);
    ctl("at-over-attach-old-rmid", other, IPC_RMID, NULL);
    stat_case("at-over-attach-old-gone", other);

    /* Bad ids. */
    at("at-id-minus-1", -1, NULL, 0, NULL);
    at("at-id-minus-1-unaligned", -1, page(0) + 1, 0, NULL);
    at("at-id-int-min", (int)0x80000000u, NULL, 0, NULL);
    int gone = must_get(5, 4096, IPC_CREAT | 0600);
    must_rmid(gone);
    removed_id = gone;
    at("at-removed-id", gone, NULL, 0, NULL);
    at("at-removed-id-unaligned", gone, page(0) + 1, 0, NULL);
    at("at-removed-id-null-remap", gone, NULL, SHM_REMAP, NULL);

    /* shmdt. */
    dt("dt-unaligned", a + 1);
    dt("dt-middle", a + PAGE_SIZE);
    dt("dt-null", NULL);
    dt("dt-not-shm", &kbase);
    dt("dt-unmapped", page(100));
    dt("dt-anon", anon);
    stat_case("dt-errors-stat", id);
    dt("dt-first", a);
    dt("dt-first-again", a);
    dt("dt-second", b);
    dt("dt-rnd", rnd);
    stat_case("dt-three-stat", id);
    dt("dt-fixed", fix);
    stat_case("dt-all-stat", id);
    munmap(anon, 2 * PAGE_SIZE);
}

/* shmctl: IPC_STAT, IPC_SET, commands. */
static void ctl_cases(int id)
{
    stat_case("stat", id);
    ctl("stat-null", id, IPC_STAT, NULL);
    ctl("stat-bad-buf", id, IPC_STAT, (void *)1);
    char *none = mmap(NULL, PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *ro = mmap(NULL, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (none == MAP_FAILED || ro == MAP_FAILED)
        die("setup: mmap: %s", strerror(errno));
    ctl("stat-prot-none-buf", id, IPC_STAT, none);
    ctl("stat-readonly-buf", id, IPC_STAT, ro);
    ctl("stat-bad-id-null", -1, IPC_STAT, NULL);
    ctl("stat-bad-id", -1, IPC_STAT, &(struct shmid_ds){ 0 });
    ctl("stat-int-min", (int)0x80000000u, IPC_STAT, &(struct shmid_ds){ 0 });

    set_case("set-mode", id, 0, 0, 0604);
    stat_case("set-mode-stat", id);
    set_case("set-mode-extra-bits", id, 0, 0, 0177777);
    stat_case("set-mode-extra-bits-stat", id);
    set_case("set-owner", id, NOBODY, GROUP, 0640);
    stat_case("set-owner-stat", id);
    set_case("set-uid-invalid", id, (uid_t)-1, 0, 0600);
    set_case("set-gid-invalid", id, 0, (gid_t)-1, 0600);
    stat_case("set-invalid-stat", id);
    set_case("set-back", id, 0, 0, 0640);
    stat_case("set-back-stat", id);
    ctl("set-null", id, IPC_SET, NULL);
    ctl("set-bad-buf", id, IPC_SET, (void *)1);
    ctl("set-prot-none-buf", id, IPC_SET, none);
    ctl("set-null-bad-id", -1, IPC_SET, NULL);
    ctl("set-null-removed-id", removed_id, IPC_SET, NULL);
    set_case("set-removed-id", removed_id, 0, 0, 0600);
    ctl("stat-null-removed-id", removed_id, IPC_STAT, NULL);
    ctl("set-bad-id", -1, IPC_SET, &(struct shmid_ds){ 0 });
    munmap(none, PAGE_SIZE);
    munmap(ro, PAGE_SIZE);

    ctl("cmd-invalid", id, 12345, &(struct shmid_ds){ 0 });
    ctl("cmd-invalid-null", id, 12345, NULL);
    ctl("cmd-negative", id, -1, &(struct shmid_ds){ 0 });
    ctl("cmd-ipc64-flag", id, IPC_STAT | 0x100, &(struct shmid_ds){ 0 });
    ctl("cmd-invalid-bad-id", -1, 12345, NULL);

    /* These return the kernel's highest index in use: only its sign. */
    struct shminfo info;
    errno = 0;
    int r = shmctl(id, IPC_INFO, (struct shmid_ds *)(void *)&info);
    line("ipc-info: ret=%s errno=%s", r >= 0 ? "nonneg" : "-1", ename(errno));
    struct shm_info sinfo;
    errno = 0;
    r = shmctl(id, SHM_INFO, (struct shmid_ds *)(void *)&sinfo);
    line("shm-info: ret=%s errno=%s", r >= 0 ? "nonneg" : "-1", ename(errno));

    ctl("lock", id, SHM_LOCK, NULL);
    stat_case("lock-stat", id);
    ctl("lock-again", id, SHM_LOCK, NULL);
    ctl("unlock", id, SHM_UNLOCK, NULL);
    stat_case("unlock-stat", id);
    ctl("unlock-again", id, SHM_UNLOCK, NULL);
    ctl("lock-bad-id", -1, SHM_LOCK, NULL);
    ctl("rmid-bad-id", -1, IPC_RMID, NULL);
}

/* IPC_RMID while attached, and after. */
static void rmid_cases(void)
{
    int id = must_get(30, 8192, IPC_CREAT | 0600);
    char *a = at("rmid-at-1", id, NULL, 0, NULL);
    char *b = at("rmid-at-2", id, NULL, 0, NULL);
    if (a == FAILED || b == FAILED)
        die("cannot go on without attaches");
    strcpy(a, "kept");
    ctl("rmid-attached", id, IPC_RMID, NULL);
    stat_case("rmid-attached-stat", id);
    get("rmid-get-old-key", 30, 0, 0);
    int fresh = get("rmid-create-old-key", 30, 4096, IPC_CREAT | IPC_EXCL | 0600);
    line("rmid-create-old-key-new-id: ret=0 errno=0 distinct=%s", fresh != id ? "yes" : "no");
    stat_case("rmid-create-old-key-stat", fresh);
    ctl("rmid-create-old-key-rmid", fresh, IPC_RMID, NULL);
    stat_case("rmid-create-old-key-gone", fresh);
    char *c = at("rmid-at-after", id, NULL, 0, NULL);
    line("rmid-at-after-data: ret=0 errno=0 data=%s",
         c != FAILED && strcmp(c, "kept") == 0 ? "kept" : "lost");
    stat_case("rmid-at-after-stat", id);
    set_case("rmid-set", id, 0, 0, 0644);
    stat_case("rmid-set-stat", id);
    ctl("rmid-again", id, IPC_RMID, NULL);
    stat_case("rmid-again-stat", id);
    dt("rmid-dt-1", a);
    stat_case("rmid-dt-1-stat", id);
    dt("rmid-dt-2", b);
    stat_case("rmid-dt-2-stat", id);
    dt("rmid-dt-last", c);
    stat_case("rmid-gone-stat", id);
    at("rmid-gone-at", id, NULL, 0, NULL);
    ctl("rmid-gone-rmid", id, IPC_RMID, NULL);
    set_case("rmid-gone-set", id, 0, 0, 0600);
    ctl("rmid-gone-lock", id, SHM_LOCK, NULL);
    dt("rmid-gone-dt", c);

    int lone = must_get(31, 4096, IPC_CREAT | 0600);
    ctl("rmid-unattached", lone, IPC_RMID, NULL);
    stat_case("rmid-unattached-stat", lone);
    at("rmid-unattached-at", lone, NULL, 0, NULL);
    get("rmid-unattached-get", 31, 0, 0);
}

/*
 * In the child of run_nocap_child: root without CAP_IPC_OWNER,
 * CAP_SYS_ADMIN and CAP_IPC_LOCK, on `u` (the user's segment, mode 0640,
 * group NOBODY) and `s` (root's, mode 0600).
 */
static void nocap_cases(int u, int s)
{
    get("nocap-get-rw", 21, 0, 0600);
    get_cmp("nocap-get-no-mode", 21, 0, 0, u);
    at("nocap-at", u, NULL, 0, NULL);
    char *nv = at("nocap-at-rdonly", u, NULL, SHM_RDONLY, NULL);
    stat_case("nocap-stat", u);
    set_case("nocap-set", u, 0, 0, 0600);
    ctl("nocap-rmid", u, IPC_RMID, NULL);
    ctl("nocap-lock", u, SHM_LOCK, NULL);
    ctl("nocap-unlock", u, SHM_UNLOCK, NULL);
    stat_case("nocap-stat-own", s);
    char *ov = at("nocap-at-own", s, NULL, 0, NULL);
    ctl("nocap-lock-own", s, SHM_LOCK, NULL);
    ctl("nocap-unlock-own", s, SHM_UNLOCK, NULL);
    dt("nocap-dt", nv);
    dt("nocap-dt-own", ov);
}

/* Permissions: another user, groups, capabilities. Needs root. */
static void perm_cases(void)
{
    if (geteuid() != 0) {
        line("perm-cases: skip reason=not-root");
        return;
    }
    int s = must_get(20, 8192, IPC_CREAT | 0600);     /* root's, private */
    int w = must_get(22, 4096, IPC_CREAT | 0666);     /* everyone rw */
    int g = must_get(23, 4096, IPC_CREAT | 0640);     /* root's, group GROUP r */
    int wo = must_get(24, 4096, IPC_CREAT | 0602);    /* others write-only */
    struct shmid_ds ds;
    if (shmctl(g, IPC_STAT, &ds) != 0)
        die("setup: IPC_STAT: %s", strerror(errno));
    ds.shm_perm.gid = GROUP;
    if (shmctl(g, IPC_SET, &ds) != 0)
        die("setup: IPC_SET: %s", strerror(errno));
    char *mapped = anon_at(60, 2);

    become_nobody();
    get("user-get-rw", 20, 0, 0600);
    get("user-get-r", 20, 0, 0400);
    get("user-get-x", 20, 0, 0100);
    get_cmp("user-get-no-mode", 20, 0, 0, s);
    get("user-get-creat", 20, 0, IPC_CREAT | 0600);
    get("user-get-excl", 20, 0, IPC_CREAT | IPC_EXCL | 0600);
    get("user-get-bigger", 20, 99999, 0600);
    at("user-at", s, NULL, 0, NULL);
    at("user-at-rdonly", s, NULL, SHM_RDONLY, NULL);
    at("user-at-unaligned", s, page(0) + 1, 0, NULL);
    at("user-at-null-remap", s, NULL, SHM_REMAP, NULL);
    at("user-at-mapped", s, mapped, 0, NULL);
    stat_case("user-stat", s);
    ctl("user-stat-null", s, IPC_STAT, NULL);
    set_case("user-set", s, NOBODY, NOBODY, 0666);
    ctl("user-set-null", s, IPC_SET, NULL);
    ctl("user-rmid", s, IPC_RMID, NULL);
    ctl("user-lock", s, SHM_LOCK, NULL);
    ctl("user-unlock", s, SHM_UNLOCK, NULL);
    ctl("user-cmd-invalid", s, 12345, NULL);
    stat_case("user-stat-bad-id", -1);

    char *wv = at("user-at-world", w, NULL, 0, NULL);
    at("user-at-world-exec", w, NULL, SHM_EXEC, NULL);
    stat_case("user-stat-world", w);
    ctl("user-lock-world", w, SHM_LOCK, NULL);
    dt("user-dt-world", wv);

    get_cmp("user-get-group-r", 23, 0, 0440, g);
    get("user-get-group-rw", 23, 0, 0660);
    char *gv = at("user-at-group-rdonly", g, NULL, SHM_RDONLY, NULL);
    at("user-at-group-rw", g, NULL, 0, NULL);
    stat_case("user-stat-group", g);
    dt("user-dt-group", gv);

    get_cmp("user-get-writeonly-w", 24, 0, 0002, wo);
    get("user-get-writeonly-r", 24, 0, 0004);
    at("user-at-writeonly", wo, NULL, 0, NULL);
    at("user-at-writeonly-rdonly", wo, NULL, SHM_RDONLY, NULL);
    stat_case("user-stat-writeonly", wo);

    /* The user's own segment. */
    int u = get("user-create", 21, 4096, IPC_CREAT | 0600);
    stat_case("user-create-stat", u);
    char *uv = at("user-at-own", u, NULL, 0, NULL);
    at("user-at-own-rnd-to-zero", u, (void *)100, SHM_RND, NULL);
    ctl("user-lock-own", u, SHM_LOCK, NULL);
    ctl("user-unlock-own", u, SHM_UNLOCK, NULL);
    set_case("user-set-own", u, NOBODY, NOBODY, 0640);
    stat_case("user-set-own-stat", u);
    dt("user-dt-own", uv);
    become_root();

    /* Root without the capabilities that override System V permissions. */
    run_nocap_child(u, s);

    ctl("root-rmid-user", u, IPC_RMID, NULL);
    stat_case("root-rmid-user-stat", u);
    ctl("root-rmid-1", s, IPC_RMID, NULL);
    ctl("root-rmid-2", w, IPC_RMID, NULL);
    ctl("root-rmid-3", g, IPC_RMID, NULL);
    ctl("root-rmid-4", wo, IPC_RMID, NULL);
    munmap(mapped, 2 * PAGE_SIZE);
}

/*
 * At exit, in an atexit handler registered before the first shmget (so it
 * runs after any handler registered later): the program's attaches are
 * still there, and the calls still work.
 */
static int exit_id = -1;
static char *exit_addr;

static void exit_cases(void)
{
    if (exit_id >= 0) {
        strcpy(exit_addr, "bye");
        line("exit-write: ret=0 errno=0 data=%s", strcmp(exit_addr, "bye") == 0 ? "written" : "lost");
        stat_case("exit-stat", exit_id);
        dt("exit-dt", exit_addr);
        ctl("exit-rmid", exit_id, IPC_RMID, NULL);
        stat_case("exit-stat-gone", exit_id);
        line("exit-done: ret=0 errno=0");
    }
    cleanup();
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 5 && strcmp(argv[2], "nocap") == 0))
        die("usage: %s KEYBASE", argv[0]);
    kbase = (key_t)parse_long("KEYBASE", argv[1]);
    if (kbase <= 0 || kbase > 0x7fffffff - KEYS)
        die("KEYBASE must be positive and leave room for %d keys", KEYS);
    self = getpid();
    self_argv0 = argv[0];
    atexit(exit_cases);
    if (argc == 5) {
        nocap_cases((int)parse_long("ID", argv[3]), (int)parse_long("ID", argv[4]));
        return 0;
    }
    find_area();

    int id = get_cases();
    at_cases(id);
    ctl_cases(id);
    rmid_cases();
    perm_cases();
    ctl("final-rmid", id, IPC_RMID, NULL);
    stat_case("final-stat", id);
    exit_id = must_get(40, 4096, IPC_CREAT | 0600);
    exit_addr = must_at(exit_id, NULL, 0);
    line("done: ret=0 errno=0");
    return 0; /* exit_cases follows */
}
