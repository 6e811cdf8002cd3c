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

pub use io::{pread, pread64, pwrite, pwrite64, read, readv, recv, recvfrom, send, sendto, write, writev};
pub use process::{_Exit, _exit, fork};
pub use sem::{semctl, semget, semop, semtimedop};
pub use shm::{shmat, shmctl, shmdt, shmget};
pub use signals::{pthread_sigmask, sigaction, signal, sigprocmask};

/// The flag bit that marks an object as distributed in new code
/// (`IPC_KDIPC` in `c-tests/kdipc.h`); stripped before any kernel call.
pub const IPC_KDIPC: i32 = 0x0010_0000;
