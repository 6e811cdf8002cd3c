//! Semaphore hooks. Distributed semaphores are not implemented yet: every
//! call goes to the kernel, with `IPC_KDIPC` stripped.

use crate::ffi::{guard, real_fn};
use crate::IPC_KDIPC;

/// Hook for libc::semget.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn semget(key: libc::key_t, nsems: libc::c_int, semflg: libc::c_int) -> libc::c_int {
    guard(|| {
        let f = real_fn!(semget: fn(libc::key_t, libc::c_int, libc::c_int) -> libc::c_int);
        // SAFETY: the real semget with the program's arguments.
        unsafe { f(key, nsems, semflg & !IPC_KDIPC) }
    })
}

/// Hook for libc::semop.
///
/// # Safety
/// `sops` points to `nsops` operations, as for libc's `semop`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn semop(
    semid: libc::c_int,
    sops: *mut libc::sembuf,
    nsops: libc::size_t,
) -> libc::c_int {
    guard(|| {
        let f = real_fn!(semop: fn(libc::c_int, *mut libc::sembuf, libc::size_t) -> libc::c_int);
        // SAFETY: the real semop with the program's arguments.
        unsafe { f(semid, sops, nsops) }
    })
}

/// Hook for libc::semtimedop.
///
/// # Safety
/// As for libc's `semtimedop`: `sops` holds `nsops` operations, `timeout`
/// is NULL or valid.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn semtimedop(
    semid: libc::c_int,
    sops: *mut libc::sembuf,
    nsops: libc::size_t,
    timeout: *const libc::timespec,
) -> libc::c_int {
    guard(|| {
        let f = real_fn!(semtimedop: fn(libc::c_int, *mut libc::sembuf, libc::size_t, *const libc::timespec) -> libc::c_int);
        // SAFETY: the real semtimedop with the program's arguments.
        unsafe { f(semid, sops, nsops, timeout) }
    })
}

/// Hook for libc::semctl. The fourth argument is variadic in C; on x86-64
/// and aarch64 a `union semun` is passed like one pointer-sized integer, so
/// we take it as one and pass it on.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn semctl(
    semid: libc::c_int,
    semnum: libc::c_int,
    cmd: libc::c_int,
    arg: usize,
) -> libc::c_int {
    guard(|| {
        let f = real_fn!(semctl: fn(libc::c_int, libc::c_int, libc::c_int, usize) -> libc::c_int);
        // SAFETY: the real semctl with the program's arguments.
        unsafe { f(semid, semnum, cmd, arg) }
    })
}
