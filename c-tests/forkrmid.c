/*
 * forkrmid - a child of fork keeps the segments it inherited even when the
 * parent detaches and removes them right after fork returns.
 *
 *   forkrmid KEY [ROUNDS=20]
 *
 * Each round: create a 4-page segment (IPC_KDIPC), fill it with the round's
 * pattern, fork; the parent at once detaches and marks it IPC_RMID, then
 * waits for the child; the child (its attach inherited, as the kernel
 * counts it in shm_nattch at fork) sleeps 20 ms, checks every byte of the
 * pattern and checks that shm_nattch counts it, then exits. Prints
 * "forkrmid: N rounds ok"; exit status 0, 1 on a wrong byte or a child
 * that failed, 2 on a setup error.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define PAGES 4

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        die("usage: forkrmid KEY [ROUNDS]");
    key_t key = (key_t)parse_long("KEY", argv[1]);
    long rounds = argc == 3 ? parse_long("ROUNDS", argv[2]) : 20;
    size_t len = PAGES * PAGE_SIZE;
    for (long r = 0; r < rounds; r++) {
        int id = shmget(key + (key_t)r, len, IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC);
        if (id < 0)
            die("shmget: %s", strerror(errno));
        unsigned char *p = shmat(id, NULL, 0);
        if (p == (void *)-1)
            die("shmat: %s", strerror(errno));
        memset(p, (int)(r + 1), len);
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            usleep(20000);
            for (size_t i = 0; i < len; i++)
                if (p[i] != (unsigned char)(r + 1)) {
                    fprintf(stderr, "round %ld: child read %d at %zu, expected %ld\n", r, p[i], i, r + 1);
                    _exit(1);
                }
            struct shmid_ds ds;
            if (shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_nattch < 1) {
                fprintf(stderr, "round %ld: child: IPC_STAT %s, nattch %lu\n", r, strerror(errno),
                        (unsigned long)ds.shm_nattch);
                _exit(1);
            }
            shmdt(p);
            _exit(0);
        }
        if (shmdt(p) != 0 || shmctl(id, IPC_RMID, NULL) != 0)
            die("shmdt/IPC_RMID: %s", strerror(errno));
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "round %ld: child failed (status %d)\n", r, st);
            return 1;
        }
    }
    printf("forkrmid: %ld rounds ok\n", rounds);
    return 0;
}
