/*
 * dgram - datagrams received straight into distributed pages another node
 * has just written (so not present here): none may be lost.
 *
 *   dgram KEY [N=40]
 *
 * The parent creates a segment of N pages and a unix datagram socketpair,
 * and forks the sender (a node of its own). For each i the parent says
 * "ready" on a pipe and blocks receiving into page i; the sender waits
 * 3 ms (the receiver is then inside the call), writes a mark at the end of
 * page i (taking the page away from the receiver) and sends datagram i
 * (100 bytes of i + 1). The kernel dequeues a datagram before it copies it
 * out, and drops it when the copy fails. Receives rotate through recv,
 * recvfrom (with an address buffer in the page), recvmsg (two iovecs and
 * the msghdr itself in the page), MSG_PEEK then recv, and MSG_TRUNC into
 * 50 bytes (returns 100). Every datagram must arrive whole and in order
 * (SO_RCVTIMEO 5 s: a lost one is a time-out), and the sender's marks must
 * be there. Exit 0 when all is right.
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define LEN 100
#define MARK 4000

static void check(const uint8_t *p, long i, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] != (uint8_t)(i + 1))
            fail("datagram %ld: byte %zu is %u, want %u", i, k, p[k], (unsigned)(uint8_t)(i + 1));
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        die("usage: dgram KEY [N=40]");
    key_t key = (key_t)parse_long("KEY", argv[1]);
    long n = argc > 2 ? parse_long("N", argv[2]) : 40;
    if (n < 1 || n > 250)
        die("need 1 <= N <= 250");
    int id = shmget(key, (size_t)n * PAGE_SIZE, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (id < 0)
        die("shmget: %s", strerror(errno));
    uint8_t *seg = shmat(id, NULL, 0);
    if (seg == (void *)-1)
        die("shmat: %s", strerror(errno));
    int sv[2], ready[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || pipe(ready) != 0)
        die("socketpair/pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        alarm(60);
        close(sv[0]);
        close(ready[1]); /* the parent's exit ends the read below */
        uint8_t msg[LEN];
        for (long i = 0; i < n; i++) {
            char c;
            if (read(ready[0], &c, 1) != 1)
                _exit(1); /* the receiver is gone */
            usleep(3000);
            ((volatile uint8_t *)seg)[(size_t)i * PAGE_SIZE + MARK] = (uint8_t)(0x80 + i);
            memset(msg, (int)(i + 1), LEN);
            if (send(sv[1], msg, LEN, 0) != LEN)
                die("sender: send: %s", strerror(errno));
        }
        _exit(0);
    }
    close(sv[1]);
    struct timeval tv = { .tv_sec = 5 };
    if (setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
        die("SO_RCVTIMEO: %s", strerror(errno));
    const char *how[] = { "recv", "recvfrom", "recvmsg", "peek+recv", "trunc" };
    for (long i = 0; i < n; i++) {
        uint8_t *p = seg + (size_t)i * PAGE_SIZE;
        if (write(ready[1], "r", 1) != 1)
            die("write: %s", strerror(errno));
        ssize_t r = -1;
        size_t want = LEN;
        switch (i % 5) {
        case 0:
            r = recv(sv[0], p, LEN, 0);
            break;
        case 1: {
            struct sockaddr *sa = (struct sockaddr *)(p + 2048);
            socklen_t *salen = (socklen_t *)(p + 2040);
            *salen = 64;
            memset(sa, 0x55, 64);
            r = recvfrom(sv[0], p, LEN, 0, sa, salen);
            /* The sender is unbound: an empty address (unix(7)). */
            if (r >= 0 && *salen != 0)
                fail("datagram %ld: recvfrom address length %u", i, *salen);
            break;
        }
        case 2: {
            struct iovec *iov = (struct iovec *)(p + 3000);
            struct msghdr *m = (struct msghdr *)(p + 3200);
            iov[0] = (struct iovec){ p, 30 };
            iov[1] = (struct iovec){ p + 30, 200 };
            *m = (struct msghdr){ .msg_iov = iov, .msg_iovlen = 2 };
            r = recvmsg(sv[0], m, 0);
            if (r >= 0 && m->msg_flags != 0)
                fail("datagram %ld: recvmsg flags 0x%x", i, m->msg_flags);
            break;
        }
        case 3:
            r = recv(sv[0], p, LEN, MSG_PEEK);
            if (r != LEN)
                fail("datagram %ld: peek returned %zd (%s)", i, r, r < 0 ? strerror(errno) : "");
            check(p, i, LEN);
            memset(p, 0, LEN);
            r = recv(sv[0], p, LEN, 0);
            break;
        case 4:
            r = recv(sv[0], p, 50, MSG_TRUNC);
            want = 50;
            if (r == LEN)
                r = 50;
            else if (r >= 0)
                fail("datagram %ld: MSG_TRUNC returned %zd, want %d", i, r, LEN);
            break;
        }
        if (r < 0)
            fail("datagram %ld (%s): %s%s", i, how[i % 5], strerror(errno),
                 errno == EAGAIN ? " (lost: nothing arrived in 5 s)" : "");
        if ((size_t)r != want)
            fail("datagram %ld (%s): %zd bytes, want %zu", i, how[i % 5], r, want);
        check(p, i, want);
        if (i % 5 == 4 && p[50] != 0)
            fail("datagram %ld: MSG_TRUNC wrote past the buffer", i);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("sender failed (status 0x%x)", status);
    for (long i = 0; i < n; i++)
        if (seg[(size_t)i * PAGE_SIZE + MARK] != (uint8_t)(0x80 + i))
            fail("page %ld: the sender's mark is %u", i, seg[(size_t)i * PAGE_SIZE + MARK]);
    printf("dgram: %ld datagrams received into pages another node had just written: ok\n", n);
    shmdt(seg);
    shmctl(id, IPC_RMID, NULL);
    return 0;
}
