/*
 * undoexec - SEM_UNDO adjustments survive exec and apply when the process
 * finally exits (Linux keeps the undo list across execve).
 *
 *   undoexec KEY
 *
 * A set of one semaphore at 1. Three children each take it with SEM_UNDO
 * and exec this program again (through /proc/self/exe):
 *   idle: the new image never touches IPC; after the exec the semaphore
 *         must still be 0 (taken), and once the image exits normally it
 *         must come back to 1;
 *   kill: as idle, but the new image is killed with SIGKILL;
 *   give: the new image gives the semaphore back with SEM_UNDO (its
 *         adjustment and the old image's cancel out, as on Linux); the
 *         parent then takes it without SEM_UNDO, and the image's exit must
 *         leave it at 0.
 * Each new image writes one byte on a pipe inherited through exec when it
 * is ready. Exit 0 when all is right (alarm(60) bounds the run).
 */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

static int val(int sem)
{
    int v = semctl(sem, 0, GETVAL);
    if (v < 0)
        die("GETVAL: %s", strerror(errno));
    return v;
}

/* Waits up to 10 s for the semaphore to reach `want`. */
static void expect_soon(int sem, int want, const char *what)
{
    double t0 = now_seconds();
    while (val(sem) != want) {
        if (now_seconds() - t0 > 10)
            fail("%s: the semaphore is %d, want %d", what, val(sem), want);
        usleep(10000);
    }
    printf("%s: %d after %.3f s\n", what, want, now_seconds() - t0);
}

static void op(int sem, int n, int flg)
{
    struct sembuf b = { 0, (short)n, (short)flg };
    if (semop(sem, &b, 1) != 0)
        die("semop(%d): %s", n, strerror(errno));
}

/* The new image: `mode` with the set id and the pipe's write end. */
static int image(const char *mode, int sem, int fd)
{
    if (strcmp(mode, "give") == 0)
        op(sem, 1, SEM_UNDO);
    if (write(fd, "x", 1) != 1)
        die("image write: %s", strerror(errno));
    char c;
    /* Wait for the parent's word (its end closing) before exiting. */
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

static pid_t start(const char *mode, int sem, int *ctl)
{
    int ready[2], in[2];
    if (pipe(ready) != 0 || pipe(in) != 0)
        die("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        close(in[1]);
        dup2(in[0], 0);
        op(sem, -1, SEM_UNDO);
        char s[16], f[16];
        snprintf(s, sizeof s, "%d", sem);
        snprintf(f, sizeof f, "%d", ready[1]);
        execl("/proc/self/exe", "undoexec", "image", mode, s, f, (char *)NULL);
        die("execl: %s", strerror(errno));
    }
    close(ready[1]);
    close(in[0]);
    char c;
    if (read(ready[0], &c, 1) != 1)
        fail("%s: the new image never got ready", mode);
    close(ready[0]);
    *ctl = in[1];
    return pid;
}

static void reap(pid_t pid, const char *mode)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        die("waitpid: %s", strerror(errno));
    if (strcmp(mode, "kill") == 0 ? !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
                                   : !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fail("%s: image status 0x%x", mode, status);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "image") == 0)
        return image(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc != 2)
        die("usage: undoexec KEY");
    alarm(60);
    key_t key = (key_t)parse_long("KEY", argv[1]);
    int sem = semget(key, 1, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
    if (sem < 0)
        die("semget: %s", strerror(errno));
    if (semctl(sem, 0, SETVAL, 1) != 0)
        die("SETVAL: %s", strerror(errno));
    const char *modes[] = { "idle", "kill" };
    for (int m = 0; m < 2; m++) {
        int ctl;
        pid_t pid = start(modes[m], sem, &ctl);
        usleep(200000);
        if (val(sem) != 0)
            fail("%s: the semaphore is %d after exec: the adjustment applied at exec", modes[m], val(sem));
        if (m == 1)
            kill(pid, SIGKILL);
        close(ctl);
        reap(pid, modes[m]);
        expect_soon(sem, 1, modes[m]);
    }
    int ctl;
    pid_t pid = start("give", sem, &ctl);
    if (val(sem) != 1)
        fail("give: the semaphore is %d after the new image gave it back", val(sem));
    op(sem, -1, 0);
    close(ctl);
    reap(pid, "give");
    usleep(1000000);
    if (val(sem) != 0)
        fail("give: the semaphore is %d after the image's exit, want 0 (the adjustments cancelled out)",
             val(sem));
    printf("give: 0 after the exit\n");
    semctl(sem, 0, IPC_RMID);
    printf("undoexec: ok\n");
    return 0;
}
