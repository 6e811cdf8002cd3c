/*
 * kdipc.h - public header for programs written for KDIPC.
 *
 * KDIPC makes System V shared memory segments and semaphore sets
 * distributed across processes and hosts.  Existing binaries choose which
 * objects are distributed through configuration (KDIPC_KEYS); new code can
 * ask for it explicitly per object by or-ing IPC_KDIPC into the flags of
 * shmget(2) or semget(2):
 *
 *     int id = shmget(key, size, IPC_CREAT | 0600 | IPC_KDIPC);
 *
 * The shim (libkdipc.so, loaded with LD_PRELOAD) strips the bit before any
 * call reaches the real libc, so the kernel never sees it.  Linux uses this
 * bit for neither shmget (IPC_CREAT 0x200, IPC_EXCL 0x400, SHM_HUGETLB
 * 0x800, SHM_NORESERVE 0x1000, huge page size in bits 26-31) nor semget;
 * without the shim, shmget with this bit set creates an ordinary local
 * segment only because the kernel ignores unknown bits - do not rely on
 * that.
 */
#ifndef KDIPC_H
#define KDIPC_H

#include <stdlib.h>

#define IPC_KDIPC 0x00100000

/*
 * This process's rank and the number of ranks, as the launcher gave them:
 * KDIPC_RANK / KDIPC_NPROCS (kdipc run), else OMPI_COMM_WORLD_RANK /
 * OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), SLURM_PROCID / SLURM_NTASKS
 * (srun), PMI_RANK / PMI_SIZE (MPICH's and Intel MPI's launchers), the first
 * one set.  -1 when no launcher set one (or its value is not a number).
 * The program need not call MPI: only the launcher's environment is read.
 */
static inline int kdipc_launcher_var_(const char *const names[4])
{
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(names[i]);
        if (v != NULL && *v != '\0') {
            char *end;
            long n = strtol(v, &end, 10);
            return *end == '\0' && n >= 0 && n <= 0x7fffffff ? (int)n : -1;
        }
    }
    return -1;
}

static inline int kdipc_rank(void)
{
    static const char *const names[4] = {
        "KDIPC_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK"};
    return kdipc_launcher_var_(names);
}

static inline int kdipc_nprocs(void)
{
    static const char *const names[4] = {
        "KDIPC_NPROCS", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMI_SIZE"};
    return kdipc_launcher_var_(names);
}

#endif /* KDIPC_H */
