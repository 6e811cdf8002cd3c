//! Semaphore hooks: `semget semop semtimedop semctl`.
//!
//! Distributed: a `semget` with `IPC_KDIPC` or a key in `KDIPC_KEYS`, and
//! ids with the distributed bit. Their operations run at the set's owner
//! (the nameserver); everything else goes to the kernel, with `IPC_KDIPC`
//! stripped.

use std::time::Duration;

use kdipc_runtime::registry::{is_distributed_id, Errno};
use kdipc_runtime::semaphores::{SemOp, SemStat, SemctlArg, SemctlReply};

use crate::ffi::{fail, guard, real_fn};
use crate::shm::{the_node, KEYS};
use crate::user::{copy_in, copy_in_slice, copy_out, copy_out_slice, ipc_perm};
use crate::IPC_KDIPC;

const EINVAL: Errno = Errno(libc::EINVAL);

/// Hook for libc::semget.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn semget(key: libc::key_t, nsems: libc::c_int, semflg: libc::c_int) -> libc::c_int {
    guard(|| {
        if semflg & IPC_KDIPC != 0 || KEYS.contains(key) {
            let flags = semflg & !IPC_KDIPC;
            return the_node().and_then(|n| n.semget(key, nsems, flags)).unwrap_or_else(fail);
        }
        let f = real_fn!(semget: fn(libc::key_t, libc::c_int, libc::c_int) -> libc::c_int);
        // SAFETY: the real semget with the program's arguments.
        unsafe { f(key, nsems, semflg) }
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
        if is_distributed_id(semid) {
            // SAFETY: the caller's contract.
            return unsafe { distributed_semop(semid, sops, nsops, std::ptr::null()) };
        }
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
        if is_distributed_id(semid) {
            // SAFETY: the caller's contract.
            return unsafe { distributed_semop(semid, sops, nsops, timeout) };
        }
        let f = real_fn!(semtimedop: fn(libc::c_int, *mut libc::sembuf, libc::size_t, *const libc::timespec) -> libc::c_int);
        // SAFETY: the real semtimedop with the program's arguments.
        unsafe { f(semid, sops, nsops, timeout) }
    })
}

/// `semop`/`semtimedop` on a distributed set.
///
/// # Safety
/// `sops` holds `nsops` entries when `nsops` is in range; `timeout` is NULL
/// or valid.
unsafe fn distributed_semop(
    semid: libc::c_int,
    sops: *mut libc::sembuf,
    nsops: libc::size_t,
    timeout: *const libc::timespec,
) -> libc::c_int {
    let run = || -> Result<(), Errno> {
        // The kernel's order: the time-out is copied first (EFAULT), then
        // nsops < 1 → EINVAL, > SEMOPM → E2BIG (checked at the owner too),
        // the array is copied (EFAULT), then the time-out is checked
        // (EINVAL).
        let t = if timeout.is_null() { None } else { Some(copy_in(timeout)?) };
        if nsops < 1 {
            return Err(EINVAL);
        }
        if nsops > kdipc_runtime::semaphores::SEMOPM {
            return Err(Errno(libc::E2BIG));
        }
        let raw = copy_in_slice(sops as *const libc::sembuf, nsops)?;
        let ops = raw.iter().map(|b| SemOp { num: b.sem_num, op: b.sem_op, flg: b.sem_flg }).collect();
        let timeout = match t {
            None => None,
            Some(t) if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) => return Err(EINVAL),
            Some(t) => Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)),
        };
        the_node()?.semop(semid, ops, timeout)
    };
    run().map(|()| 0).unwrap_or_else(fail)
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
        if is_distributed_id(semid) && !matches!(cmd, libc::IPC_INFO | SEM_INFO) {
            return distributed_semctl(semid, semnum, cmd, arg).unwrap_or_else(fail);
        }
        let f = real_fn!(semctl: fn(libc::c_int, libc::c_int, libc::c_int, usize) -> libc::c_int);
        // SAFETY: the real semctl with the program's arguments.
        unsafe { f(semid, semnum, cmd, arg) }
    })
}

/// `SEM_INFO` (linux/sem.h), which libc does not define.
const SEM_INFO: libc::c_int = 19;

fn distributed_semctl(id: i32, semnum: i32, cmd: i32, arg: usize) -> Result<libc::c_int, Errno> {
    let n = the_node()?;
    let arg_val = arg as u32 as i32;
    let sem_arg = match cmd {
        libc::SETVAL => SemctlArg::Val(arg_val),
        libc::SETALL => {
            let nsems = match n.semctl(id, 0, libc::IPC_STAT, SemctlArg::None)? {
                SemctlReply::Stat { stat, .. } => stat.nsems as usize,
                _ => return Err(EINVAL),
            };
            SemctlArg::Array(copy_in_slice(arg as *const u16, nsems)?)
        }
        libc::IPC_SET => {
            let p = copy_in(arg as *const libc::semid_ds)?.sem_perm;
            SemctlArg::Perm { uid: p.uid, gid: p.gid, mode: p.mode as u32 }
        }
        _ => SemctlArg::None,
    };
    match n.semctl(id, semnum, cmd, sem_arg)? {
        SemctlReply::Ok => Ok(0),
        SemctlReply::Value(v) => Ok(v),
        SemctlReply::All(vals) => {
            copy_out_slice(arg as *mut u16, &vals)?;
            Ok(0)
        }
        SemctlReply::Stat { ret, stat } => {
            copy_out(arg as *mut libc::semid_ds, &semid_ds(id, &stat))?;
            Ok(ret)
        }
        SemctlReply::Info { ret, .. } => Ok(ret),
    }
}

/// A `semid_ds` as the kernel fills it: every other byte zero.
fn semid_ds(id: i32, s: &SemStat) -> libc::semid_ds {
    // SAFETY: all-zero bytes are a valid semid_ds.
    let mut b: libc::semid_ds = unsafe { std::mem::zeroed() };
    b.sem_perm = ipc_perm(id, s.key, (s.uid, s.gid), (s.cuid, s.cgid), s.mode);
    b.sem_otime = s.otime;
    b.sem_ctime = s.ctime;
    b.sem_nsems = s.nsems as _;
    b
}
