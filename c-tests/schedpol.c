/*
 * schedpol - which scheduling policy each of this process's threads has.
 *
 *   schedpol KEY
 *
 * Creates (IPC_KDIPC) and attaches a one-page segment (so that, under the shim, the
 * runtime thread is running), touches it, then prints one line per thread
 * of the process:
 *
 *   thread NAME policy POLICY priority PRIO
 *
 * with POLICY the number sched_getscheduler returns (0 SCHED_OTHER, 1
 * SCHED_FIFO, 2 SCHED_RR; the SCHED_RESET_ON_FORK flag masked off) and
 * NAME from /proc/self/task/TID/comm. The segment is removed at the end.
 * Exit status: 0, or 2 on a setup error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include "common.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: schedpol KEY\n");
        return 2;
    }
    key_t key = (key_t)strtol(argv[1], NULL, 0);
    int id = shmget(key, 4096, IPC_CREAT | 0600 | IPC_KDIPC);
    if (id < 0) {
        perror("shmget");
        return 2;
    }
    volatile char *p = shmat(id, NULL, 0);
    if (p == (void *)-1) {
        perror("shmat");
        return 2;
    }
    p[0] = 1;
    DIR *d = opendir("/proc/self/task");
    if (!d) {
        perror("/proc/self/task");
        return 2;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], name[32] = "?";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(name, sizeof name, f))
                name[strcspn(name, "\n")] = 0;
            fclose(f);
        }
        pid_t tid = (pid_t)atoi(e->d_name);
        struct sched_param sp = {0};
        int pol = sched_getscheduler(tid);
        sched_getparam(tid, &sp);
        printf("thread %s policy %d priority %d\n", name, pol & ~SCHED_RESET_ON_FORK, sp.sched_priority);
    }
    closedir(d);
    shmdt((const void *)p);
    shmctl(id, IPC_RMID, NULL);
    return 0;
}
