/*
 * forkinit - fork while another thread starts the node: the child must
 * not inherit the start-up lock held nor a start-up half done.
 *
 *   forkinit KEY [ROUNDS=5]
 *
 * Each round forks a fresh process S (no node yet). In S a second thread
 * makes the first distributed call (shmget of KEY, which starts the node:
 * a connection to the nameserver, milliseconds) while S's main thread
 * forks children every 300 us until that call returns. Every child
 * (bounded by alarm(10): a hang is a SIGALRM death) makes its own
 * distributed shmget of KEY and exits 0. Prints how many children were
 * forked while the start-up was under way; exit 0 when none hung or
 * failed.
 */
#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static key_t key;
static volatile int started, done;

static int get(void)
{
    return shmget(key, PAGE_SIZE, kdipc_flags(IPC_CREAT | 0600 | IPC_KDIPC));
}

static void *starter(void *arg)
{
    (void)arg;
    started = 1;
    if (get() < 0)
        fail("starter: shmget: %s", strerror(errno));
    done = 1;
    return NULL;
}

/* One round in a fresh process; returns the children forked during the
 * start-up. */
static int round_in_fresh_process(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, starter, NULL) != 0)
        die("pthread_create");
    while (!started)
        sched_yield();
    pid_t kids[64];
    int n = 0, during = 0;
    while (!done && n < 64) {
        int was_starting = !done;
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            alarm(10);
            if (get() < 0)
                fail("child: shmget: %s", strerror(errno));
            _exit(0);
        }
        kids[n++] = pid;
        during += was_starting;
        usleep(300);
    }
    pthread_join(t, NULL);
    for (int i = 0; i < n; i++) {
        int status;
        if (waitpid(kids[i], &status, 0) != kids[i])
            die("waitpid: %s", strerror(errno));
        if (WIFSIGNALED(status))
            fail("child %d died of signal %d%s", i, WTERMSIG(status),
                 WTERMSIG(status) == SIGALRM ? " (it hung for 10 s)" : "");
        if (WEXITSTATUS(status) != 0)
            fail("child %d exited %d", i, WEXITSTATUS(status));
    }
    return during;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        die("usage: forkinit KEY [ROUNDS=5]");
    key = (key_t)parse_long("KEY", argv[1]);
    long rounds = argc > 2 ? parse_long("ROUNDS", argv[2]) : 5;
    int fds[2];
    if (pipe(fds) != 0)
        die("pipe: %s", strerror(errno));
    long during = 0;
    for (long r = 0; r < rounds; r++) {
        pid_t s = fork();
        if (s < 0)
            die("fork: %s", strerror(errno));
        if (s == 0) {
            int d = round_in_fresh_process();
            if (write(fds[1], &d, sizeof d) != sizeof d)
                die("write: %s", strerror(errno));
            exit(0);
        }
        int status, d = 0;
        if (waitpid(s, &status, 0) != s)
            die("waitpid: %s", strerror(errno));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("round %ld failed (status 0x%x)", r, status);
        if (read(fds[0], &d, sizeof d) != sizeof d)
            die("read: %s", strerror(errno));
        during += d;
    }
    printf("forkinit: %ld rounds, %ld forks during node start-up: ok\n", rounds, during);
    int id = get();
    if (id >= 0)
        shmctl(id, IPC_RMID, NULL);
    return 0;
}
