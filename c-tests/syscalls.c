/*
 * syscalls - system calls that copy to or from distributed pages.
 *
 *   syscalls RANK NPROCS KEY [PAGES=8]     (NPROCS must be 2)
 *
 * The kernel does not fault on a program's behalf: without help, read()
 * into a distributed page that is not present returns EFAULT. Rank 0
 * writes a pattern into region A. Rank 1 then, on pages it never touched:
 *   - write()s region A (held by rank 0) into a pipe and reads it back
 *     into private memory: the bytes must be rank 0's pattern;
 *   - read()s a temporary file into region B and recv()s from a socket
 *     pair into region C, readv()s into region D (pages not present here);
 * and rank 0 checks regions B, C, D. Then, while a thread of rank 0 keeps
 * writing into every page of region E, rank 1 makes each other call that
 * hands the kernel a buffer (fstat/stat/lstat/fstatat/statx and the
 * pre-2.33 __xstat names, getdents64, pipe/pipe2, socketpair, readlink,
 * getcwd, clock_gettime, gettimeofday, uname, getrusage, sendmsg/recvmsg
 * with the msghdr, iovecs, data, name and control buffer all there (on a
 * stream and a datagram socket), sendmmsg/recvmmsg, poll/ppoll/select/
 * pselect with their arrays, sets and time-outs there, and
 * fread/fwrite larger than stdio's buffer; open/openat/creat/access/unlink
 * of paths there) with
 * its buffers (and paths) in those pages, and compares with the same call
 * on private memory. Any EFAULT or wrong byte fails.
 */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/select.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

/* The names programs built against glibc < 2.33 call for stat/fstat. */
extern int __xstat(int ver, const char *path, struct stat *buf);
extern int __fxstat(int ver, int fd, struct stat *buf);

#define EPAGES 16

/* Region E: rank 0's thread writes the first word of every page. */
struct noise {
    uint8_t *e;
    volatile int stop;
};

static void *noise_main(void *arg)
{
    struct noise *n = arg;
    uint64_t k = 0;
    while (!n->stop) {
        for (int p = 0; p < EPAGES; p++)
            __atomic_store_n((uint64_t *)(n->e + (size_t)p * PAGE_SIZE), ++k, __ATOMIC_RELAXED);
        usleep(300);
    }
    return NULL;
}

/* The next buffer in region E: 64 bytes into the next page, away from the
 * word rank 0 writes, in a page rank 1 does not hold. */
static uint8_t *next_buf(uint8_t *e)
{
    static int next;
    return e + (size_t)(next++ % EPAGES) * PAGE_SIZE + 64;
}

#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        if (!(cond))                                                                                   \
            fail(__VA_ARGS__);                                                                         \
    } while (0)

static void same_file(const struct stat *a, const struct stat *b, const char *what)
{
    CHECK(a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_mode == b->st_mode
              && a->st_size == b->st_size,
          "%s into a distributed page: a different file (ino %lu vs %lu)", what, (unsigned long)a->st_ino,
          (unsigned long)b->st_ino);
}

/* Whether `dist` (in region E) holds `priv`'s bytes, except the words
 * rank 0 keeps writing at the start of every page. */
static int same_but_noise(const uint8_t *dist, const uint8_t *priv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((uintptr_t)(dist + i) % PAGE_SIZE >= 8 && dist[i] != priv[i])
            return 0;
    return 1;
}

/* Every other call that hands the kernel a buffer, buffers in region E. */
static void other_calls(uint8_t *e)
{
    struct stat mine, *st;
    char dir[] = "/tmp/kdipc-syscalls-dir-XXXXXX";
    if (mkdtemp(dir) == NULL)
        die("mkdtemp: %s", strerror(errno));
    char file[64];
    snprintf(file, sizeof file, "%s/a-file", dir);
    int fd = open(file, O_CREAT | O_RDWR, 0600);
    if (fd < 0 || write(fd, "0123456789", 10) != 10)
        die("%s: %s", file, strerror(errno));
    if (stat(file, &mine) != 0)
        die("stat: %s", strerror(errno));
    char *path = (char *)next_buf(e); /* the path itself in a distributed page */
    strcpy(path, file);

    st = (struct stat *)next_buf(e);
    CHECK(fstat(fd, st) == 0, "fstat: %s", strerror(errno));
    same_file(st, &mine, "fstat");
    st = (struct stat *)next_buf(e);
    CHECK(stat(path, st) == 0, "stat: %s", strerror(errno));
    same_file(st, &mine, "stat");
    st = (struct stat *)next_buf(e);
    CHECK(lstat(path, st) == 0, "lstat: %s", strerror(errno));
    same_file(st, &mine, "lstat");
    st = (struct stat *)next_buf(e);
    CHECK(fstatat(AT_FDCWD, path, st, 0) == 0, "fstatat: %s", strerror(errno));
    same_file(st, &mine, "fstatat");
    st = (struct stat *)next_buf(e);
    CHECK(__xstat(1, path, st) == 0, "__xstat: %s", strerror(errno));
    same_file(st, &mine, "__xstat");
    st = (struct stat *)next_buf(e);
    CHECK(__fxstat(1, fd, st) == 0, "__fxstat: %s", strerror(errno));
    same_file(st, &mine, "__fxstat");
    struct statx *sx = (struct statx *)next_buf(e);
    CHECK(statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, sx) == 0, "statx: %s", strerror(errno));
    CHECK(sx->stx_ino == mine.st_ino && sx->stx_size == 10, "statx: ino %llu size %llu",
          (unsigned long long)sx->stx_ino, (unsigned long long)sx->stx_size);

    /* getdents64: the same bytes as into private memory. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    char priv[1024];
    ssize_t n1 = getdents64(dfd, priv, sizeof priv);
    lseek(dfd, 0, SEEK_SET);
    char *dents = (char *)next_buf(e);
    ssize_t n2 = getdents64(dfd, dents, sizeof priv);
    CHECK(n1 > 0 && n2 == n1, "getdents64: %zd bytes vs %zd (%s)", n2, n1, strerror(errno));
    for (ssize_t off = 0; off < n1;) { /* entries alike (padding bytes are not set) */
        struct dirent64 *x = (struct dirent64 *)(priv + off), *y = (struct dirent64 *)(dents + off);
        CHECK(x->d_ino == y->d_ino && x->d_reclen == y->d_reclen && strcmp(x->d_name, y->d_name) == 0,
              "getdents64: entry at %zd is %s, expected %s", off, y->d_name, x->d_name);
        off += x->d_reclen;
    }
    close(dfd);

    /* pipe, pipe2, socketpair: descriptors that work. */
    int *fds = (int *)next_buf(e);
    CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
    char c = 0;
    CHECK(write(fds[1], "x", 1) == 1 && read(fds[0], &c, 1) == 1 && c == 'x', "pipe: descriptors do not work");
    close(fds[0]);
    close(fds[1]);
    fds = (int *)next_buf(e);
    CHECK(pipe2(fds, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    CHECK(fcntl(fds[0], F_GETFD) == FD_CLOEXEC && write(fds[1], "y", 1) == 1 && read(fds[0], &c, 1) == 1
              && c == 'y',
          "pipe2: descriptors do not work");
    close(fds[0]);
    close(fds[1]);
    int *sv = (int *)next_buf(e);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %s", strerror(errno));

    /* sendmsg/recvmsg: the msghdr, its iovec array, the data and the
     * control buffer (a descriptor passed with SCM_RIGHTS) all in region E. */
    struct msghdr *m = (struct msghdr *)next_buf(e);
    struct iovec *iov = (struct iovec *)next_buf(e);
    char *d1 = (char *)next_buf(e), *d2 = (char *)next_buf(e);
    char *ctl = (char *)next_buf(e);
    strcpy(d1, "hello, ");
    strcpy(d2, "world");
    iov[0] = (struct iovec){ d1, 7 };
    iov[1] = (struct iovec){ d2, 5 };
    memset(m, 0, sizeof *m);
    m->msg_iov = iov;
    m->msg_iovlen = 2;
    m->msg_control = ctl;
    m->msg_controllen = CMSG_SPACE(sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    CHECK(sendmsg(sv[0], m, 0) == 12, "sendmsg: %s", strerror(errno));
    m = (struct msghdr *)next_buf(e);
    iov = (struct iovec *)next_buf(e);
    char *in = (char *)next_buf(e);
    ctl = (char *)next_buf(e);
    memset(m, 0, sizeof *m);
    iov[0] = (struct iovec){ in, 64 };
    m->msg_iov = iov;
    m->msg_iovlen = 1;
    m->msg_control = ctl;
    m->msg_controllen = CMSG_SPACE(sizeof(int));
    ssize_t got = recvmsg(sv[1], m, 0);
    CHECK(got == 12 && memcmp(in, "hello, world", 12) == 0, "recvmsg: %zd (%s)", got, strerror(errno));
    cm = CMSG_FIRSTHDR(m);
    CHECK(cm != NULL && cm->cmsg_type == SCM_RIGHTS, "recvmsg: no descriptor came");
    int passed;
    memcpy(&passed, CMSG_DATA(cm), sizeof passed);
    struct stat ps;
    CHECK(fstat(passed, &ps) == 0 && ps.st_ino == mine.st_ino, "recvmsg: the passed descriptor is wrong");
    close(passed);
    close(sv[0]);
    close(sv[1]);

    /* A datagram with a descriptor (SCM_RIGHTS) received by recvmsg into
     * region E: the shim's bounce buffer copies the control data back. */
    int dsv[2]; /* private: region E's buffers are reused below */
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dsv) == 0, "socketpair(DGRAM): %s", strerror(errno));
    {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec v = { "datagram", 8 };
        struct msghdr sm = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
        struct cmsghdr *c0 = CMSG_FIRSTHDR(&sm);
        c0->cmsg_level = SOL_SOCKET;
        c0->cmsg_type = SCM_RIGHTS;
        c0->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c0), &fd, sizeof(int));
        CHECK(sendmsg(dsv[0], &sm, 0) == 8, "sendmsg(DGRAM): %s", strerror(errno));
    }
    m = (struct msghdr *)next_buf(e);
    iov = (struct iovec *)next_buf(e);
    in = (char *)next_buf(e);
    ctl = (char *)next_buf(e);
    memset(m, 0, sizeof *m);
    iov[0] = (struct iovec){ in, 64 };
    m->msg_iov = iov;
    m->msg_iovlen = 1;
    m->msg_control = ctl;
    m->msg_controllen = CMSG_SPACE(sizeof(int));
    got = recvmsg(dsv[1], m, 0);
    CHECK(got == 8 && memcmp(in, "datagram", 8) == 0 && m->msg_controllen == CMSG_SPACE(sizeof(int)),
          "recvmsg(DGRAM): %zd (%s)", got, strerror(errno));
    cm = CMSG_FIRSTHDR(m);
    CHECK(cm != NULL && cm->cmsg_type == SCM_RIGHTS, "recvmsg(DGRAM): no descriptor came");
    memcpy(&passed, CMSG_DATA(cm), sizeof passed);
    CHECK(fstat(passed, &ps) == 0 && ps.st_ino == mine.st_ino, "recvmsg(DGRAM): the passed descriptor is wrong");
    close(passed);

    /* sendmmsg/recvmmsg: the mmsghdr arrays, iovecs and data in region E. */
    struct mmsghdr *mm = (struct mmsghdr *)next_buf(e);
    struct iovec *mv = (struct iovec *)next_buf(e);
    char *m1 = (char *)next_buf(e), *m2 = (char *)next_buf(e);
    strcpy(m1, "first");
    strcpy(m2, "second!");
    mv[0] = (struct iovec){ m1, 5 };
    mv[1] = (struct iovec){ m2, 7 };
    memset(mm, 0, 2 * sizeof *mm);
    mm[0].msg_hdr.msg_iov = &mv[0];
    mm[0].msg_hdr.msg_iovlen = 1;
    mm[1].msg_hdr.msg_iov = &mv[1];
    mm[1].msg_hdr.msg_iovlen = 1;
    int sent = sendmmsg(dsv[0], mm, 2, 0);
    CHECK(sent == 2 && mm[0].msg_len == 5 && mm[1].msg_len == 7, "sendmmsg: %d (%s)", sent, strerror(errno));
    mm = (struct mmsghdr *)next_buf(e);
    mv = (struct iovec *)next_buf(e);
    m1 = (char *)next_buf(e);
    m2 = (char *)next_buf(e);
    mv[0] = (struct iovec){ m1, 64 };
    mv[1] = (struct iovec){ m2, 64 };
    memset(mm, 0, 2 * sizeof *mm);
    mm[0].msg_hdr.msg_iov = &mv[0];
    mm[0].msg_hdr.msg_iovlen = 1;
    mm[1].msg_hdr.msg_iov = &mv[1];
    mm[1].msg_hdr.msg_iovlen = 1;
    int rcvd = recvmmsg(dsv[1], mm, 2, MSG_DONTWAIT, NULL);
    CHECK(rcvd == 2 && mm[0].msg_len == 5 && mm[1].msg_len == 7 && memcmp(m1, "first", 5) == 0
              && memcmp(m2, "second!", 7) == 0,
          "recvmmsg: %d (%s) msg_len %u %u data '%.5s' '%.7s'", rcvd, strerror(errno), mm[0].msg_len,
          mm[1].msg_len, m1, m2);

    /* poll, ppoll, select, pselect: arrays and sets in region E, on a
     * socket with a datagram waiting (readable) and one that is not. */
    CHECK(send(dsv[0], "x", 1, 0) == 1, "send: %s", strerror(errno));
    struct pollfd *pf = (struct pollfd *)next_buf(e);
    pf[0] = (struct pollfd){ .fd = dsv[1], .events = POLLIN };
    pf[1] = (struct pollfd){ .fd = dsv[0], .events = POLLIN };
    int pr = poll(pf, 2, 1000);
    CHECK(pr == 1 && pf[0].revents == POLLIN && pf[1].revents == 0, "poll: %d (%s) revents %d %d", pr,
          strerror(errno), pf[0].revents, pf[1].revents);
    pf = (struct pollfd *)next_buf(e);
    pf[0] = (struct pollfd){ .fd = dsv[1], .events = POLLIN };
    struct timespec *pt = (struct timespec *)next_buf(e);
    *pt = (struct timespec){ .tv_sec = 1 };
    pr = ppoll(pf, 1, pt, NULL);
    CHECK(pr == 1 && pf[0].revents == POLLIN, "ppoll: %d (%s)", pr, strerror(errno));
    fd_set *rs = (fd_set *)next_buf(e);
    struct timeval *stv = (struct timeval *)next_buf(e);
    FD_ZERO(rs);
    FD_SET(dsv[1], rs);
    FD_SET(dsv[0], rs);
    *stv = (struct timeval){ .tv_sec = 1 };
    int nfd = (dsv[0] > dsv[1] ? dsv[0] : dsv[1]) + 1;
    pr = select(nfd, rs, NULL, NULL, stv);
    CHECK(pr == 1 && FD_ISSET(dsv[1], rs) && !FD_ISSET(dsv[0], rs), "select: %d (%s)", pr, strerror(errno));
    rs = (fd_set *)next_buf(e);
    pt = (struct timespec *)next_buf(e);
    FD_ZERO(rs);
    FD_SET(dsv[1], rs);
    *pt = (struct timespec){ .tv_sec = 1 };
    pr = pselect(nfd, rs, NULL, NULL, pt, NULL);
    CHECK(pr == 1 && FD_ISSET(dsv[1], rs), "pselect: %d (%s)", pr, strerror(errno));
    close(dsv[0]);
    close(dsv[1]);

    /* readlink, getcwd: the same strings as into private memory. */
    char want[256];
    ssize_t wl = readlink("/proc/self/exe", want, sizeof want);
    char *link = (char *)next_buf(e);
    strcpy(link + 512, "/proc/self/exe");
    ssize_t gl = readlink(link + 512, link, sizeof want);
    CHECK(wl > 0 && gl == wl && memcmp(want, link, (size_t)wl) == 0, "readlink: %zd (%s)", gl, strerror(errno));
    char *cwd = (char *)next_buf(e);
    CHECK(getcwd(cwd, 256) == cwd && getcwd(want, sizeof want) && strcmp(cwd, want) == 0, "getcwd: %s",
          strerror(errno));

    /* Clocks: the vDSO ones and one the kernel serves. */
    struct timespec before;
    clock_gettime(CLOCK_MONOTONIC, &before);
    struct timespec *ts = (struct timespec *)next_buf(e);
    CHECK(clock_gettime(CLOCK_MONOTONIC, ts) == 0 && ts->tv_nsec < 1000000000L
              && (ts->tv_sec > before.tv_sec || (ts->tv_sec == before.tv_sec && ts->tv_nsec >= before.tv_nsec)),
          "clock_gettime(CLOCK_MONOTONIC): %s", strerror(errno));
    ts = (struct timespec *)next_buf(e);
    CHECK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, ts) == 0 && ts->tv_nsec < 1000000000L,
          "clock_gettime(CLOCK_PROCESS_CPUTIME_ID): %s", strerror(errno));
    struct timeval *gtv = (struct timeval *)next_buf(e);
    CHECK(gettimeofday(gtv, NULL) == 0 && gtv->tv_sec >= before.tv_sec / 2 && gtv->tv_usec < 1000000,
          "gettimeofday: %s", strerror(errno));
    struct utsname un, *u = (struct utsname *)next_buf(e);
    CHECK(uname(u) == 0 && uname(&un) == 0 && strcmp(u->release, un.release) == 0, "uname: %s",
          strerror(errno));
    struct rusage *ru = (struct rusage *)next_buf(e);
    CHECK(getrusage(RUSAGE_SELF, ru) == 0 && ru->ru_maxrss > 0, "getrusage: %s", strerror(errno));

    /* fread/fwrite of more than stdio's buffer: libc passes the buffer
     * straight to read/write (internal calls the shim does not see). */
    size_t big = 3 * PAGE_SIZE;
    uint8_t *src = malloc(big), *blk = e + 9 * PAGE_SIZE + 100; /* spans 4 pages */
    for (size_t i = 0; i < big; i++)
        src[i] = (uint8_t)(mix64(5000003u + i) | 1);
    FILE *fp = fopen(file, "w+");
    CHECK(fp && fwrite(src, 1, big, fp) == big && fflush(fp) == 0, "fwrite: %s", strerror(errno));
    rewind(fp);
    setvbuf(fp, NULL, _IOFBF, 512);
    CHECK(fread(blk, 1, big, fp) == big && same_but_noise(blk, src, big), "fread into distributed pages: %s",
          strerror(errno));
    fclose(fp);
    fp = fopen(file, "w+");
    setvbuf(fp, NULL, _IOFBF, 512);
    blk = e + 5 * PAGE_SIZE + 100;
    memcpy(blk, src, big);
    CHECK(fp && fwrite(blk, 1, big, fp) == big && fflush(fp) == 0, "fwrite from distributed pages: %s",
          strerror(errno));
    rewind(fp);
    uint8_t *back = malloc(big);
    CHECK(fread(back, 1, big, fp) == big && same_but_noise(blk, back, big), "fwrite wrote other bytes");
    free(back);
    fclose(fp);
    free(src);

    /* Paths in distributed pages: open, openat, creat, access, unlink. */
    char *p2 = (char *)next_buf(e);
    snprintf(p2, 64, "%s/b-file", dir);
    int f2 = creat(p2, 0600);
    CHECK(f2 >= 0 && access(p2, R_OK) == 0, "creat/access of a path in a distributed page: %s", strerror(errno));
    close(f2);
    p2 = (char *)next_buf(e);
    snprintf(p2, 64, "%s/b-file", dir);
    f2 = open(p2, O_RDWR | O_CREAT, 0600);
    CHECK(f2 >= 0 && fstat(f2, &mine) == 0, "open of a path in a distributed page: %s", strerror(errno));
    close(f2);
    p2 = (char *)next_buf(e);
    snprintf(p2, 64, "%s/b-file", dir);
    f2 = openat(AT_FDCWD, p2, O_RDONLY);
    CHECK(f2 >= 0, "openat of a path in a distributed page: %s", strerror(errno));
    close(f2);
    p2 = (char *)next_buf(e);
    snprintf(p2, 64, "%s/b-file", dir);
    CHECK(unlink(p2) == 0 && access(file, F_OK) == 0, "unlink of a path in a distributed page: %s",
          strerror(errno));

    close(fd);
    unlink(file);
    rmdir(dir);
}

static unsigned char pat(long region, size_t i)
{
    return (unsigned char)(mix64((uint64_t)region * 1000003u + i) | 1);
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 8);
    size_t len = (size_t)a.iters * PAGE_SIZE;
    int id;
    uint8_t *seg = attach_segment_id(a.key, PAGE_SIZE + 4 * len + EPAGES * PAGE_SIZE, &id);
    struct barrier b = barrier_join((struct barrier_shared *)seg, 2);
    uint8_t *region[4];
    for (int r = 0; r < 4; r++)
        region[r] = seg + PAGE_SIZE + (size_t)r * len;

    if (a.rank == 0)
        for (size_t i = 0; i < len; i++)
            region[0][i] = pat(0, i);
    barrier_wait(&b);
    if (a.rank == 1) {
        /* write() from pages held by rank 0. */
        int p[2];
        if (pipe(p) != 0)
            die("pipe: %s", strerror(errno));
        uint8_t *priv = malloc(len);
        size_t done = 0;
        while (done < len) {
            size_t chunk = len - done < 4096 ? len - done : 4096;
            ssize_t w = write(p[1], region[0] + done, chunk);
            if (w < 0)
                fail("write from a distributed page: %s", strerror(errno));
            ssize_t got = 0;
            while (got < w) {
                ssize_t r = read(p[0], priv + done + got, (size_t)(w - got));
                if (r <= 0)
                    die("pipe read: %s", strerror(errno));
                got += r;
            }
            done += (size_t)w;
        }
        for (size_t i = 0; i < len; i++)
            if (priv[i] != pat(0, i))
                fail("write() sent byte %zu = %u, expected %u", i, priv[i], pat(0, i));
        /* read() from a file into pages not present. */
        char path[] = "/tmp/kdipc-syscalls-XXXXXX";
        int fd = mkstemp(path);
        if (fd < 0)
            die("mkstemp: %s", strerror(errno));
        unlink(path);
        for (size_t i = 0; i < len; i++)
            priv[i] = pat(1, i);
        if (write(fd, priv, len) != (ssize_t)len)
            die("file write: %s", strerror(errno));
        lseek(fd, 0, SEEK_SET);
        for (size_t got = 0; got < len;) {
            ssize_t r = read(fd, region[1] + got, len - got);
            if (r < 0)
                fail("read into a distributed page: %s", strerror(errno));
            if (r == 0)
                die("short file");
            got += (size_t)r;
        }
        /* recv() from a socket pair into pages not present. */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
            die("socketpair: %s", strerror(errno));
        for (size_t i = 0; i < len; i++)
            priv[i] = pat(2, i);
        for (size_t off = 0; off < len; off += 4096) {
            if (send(sv[0], priv + off, 4096, 0) != 4096)
                die("send: %s", strerror(errno));
            for (size_t got = 0; got < 4096;) {
                ssize_t r = recv(sv[1], region[2] + off + got, 4096 - got, 0);
                if (r <= 0)
                    fail("recv into a distributed page: %s", strerror(errno));
                got += (size_t)r;
            }
        }
        /* readv() into two halves of region D. */
        for (size_t i = 0; i < len; i++)
            priv[i] = pat(3, i);
        lseek(fd, 0, SEEK_SET);
        if (ftruncate(fd, 0) != 0 || write(fd, priv, len) != (ssize_t)len)
            die("file rewrite: %s", strerror(errno));
        lseek(fd, 0, SEEK_SET);
        struct iovec iov[2] = { { region[3], len / 2 }, { region[3] + len / 2, len - len / 2 } };
        ssize_t r = readv(fd, iov, 2);
        if (r != (ssize_t)len)
            fail("readv into distributed pages: %zd (%s)", r, r < 0 ? strerror(errno) : "short");
        close(fd);
        free(priv);
    }
    barrier_wait(&b);
    /* Region E: every other call, on pages rank 0 keeps writing. */
    uint8_t *e = seg + PAGE_SIZE + 4 * len;
    struct noise n = { e, 0 };
    pthread_t t;
    if (a.rank == 0)
        for (int p = 0; p < EPAGES; p++)
            e[(size_t)p * PAGE_SIZE] = 1;
    barrier_wait(&b);
    if (a.rank == 0 && pthread_create(&t, NULL, noise_main, &n) != 0)
        die("pthread_create");
    if (a.rank == 1)
        other_calls(e);
    barrier_wait(&b);
    if (a.rank == 0) {
        n.stop = 1;
        pthread_join(t, NULL);
        for (int r = 1; r < 4; r++)
            for (size_t i = 0; i < len; i++)
                if (region[r][i] != pat(r, i))
                    fail("region %d byte %zu = %u, expected %u", r, i, region[r][i], pat(r, i));
        remove_segment(id);
    }
    barrier_wait(&b);
    printf("syscalls rank %d: pages=%ld ok\n", a.rank, a.iters);
    return 0;
}
