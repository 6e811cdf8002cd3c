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

#define IPC_KDIPC 0x00100000

#endif /* KDIPC_H */
