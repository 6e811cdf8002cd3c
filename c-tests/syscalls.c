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
 * and rank 0 checks regions B, C, D. Any EFAULT or wrong byte fails.
 */
#include "common.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static unsigned char pat(long region, size_t i)
{
    return (unsigned char)(mix64((uint64_t)region * 1000003u + i) | 1);
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 2, 8);
    size_t len = (size_t)a.iters * PAGE_SIZE;
    int id;
    uint8_t *seg = attach_segment_id(a.key, PAGE_SIZE + 4 * len, &id);
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
    if (a.rank == 0) {
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
