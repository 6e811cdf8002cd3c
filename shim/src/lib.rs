//! `libkdipc.so`: System V shared memory and semaphores across machines,
//! for unmodified programs (`LD_PRELOAD=libkdipc.so ./prog`).
//!
//! Every exported symbol is in the list below. Each hook converts its
//! arguments, decides whether the object is distributed, and either calls
//! the runtime or passes the call to the real libc function unchanged.
//! Nothing panics across the boundary: every hook runs inside
//! [`ffi::guard`], which turns a panic into `ENOMEM` and -1.

mod ffi;
mod io;
mod process;
mod sem;
mod shm;
mod signals;
mod user;

pub use io::{
    __fxstat, __fxstat64, __fxstatat, __fxstatat64, __lxstat, __lxstat64, __open64_2, __open_2, __openat64_2,
    __openat_2, __poll_chk, __xstat, __xstat64, access, clock_gettime, creat, creat64, fread, fstat, fstat64,
    fstatat, fstatat64, fwrite, getcwd, getdents64, getrusage, gettimeofday, lstat, lstat64, open, open64,
    openat, openat64, pipe, pipe2, poll, ppoll, pread, pread64, pselect, pwrite, pwrite64, read, readlink,
    readlinkat, readv, recv, recvfrom, recvmmsg, recvmsg, select, send, sendmmsg, sendmsg, sendto,
    socketpair, stat, stat64, statx, uname, unlink, write, writev,
};
pub use process::{_Exit, _exit, execl, execle, execlp, execv, execve, execvp, execvpe, fexecve, fork};
pub use sem::{semctl, semget, semop, semtimedop};
pub use shm::{shmat, shmctl, shmdt, shmget};
pub use signals::{pthread_sigmask, sigaction, signal, sigprocmask};

/// The flag bit that marks an object as distributed in new code
/// (`IPC_KDIPC` in `c-tests/kdipc.h`); stripped before any kernel call.
pub const IPC_KDIPC: i32 = 0x0010_0000;
