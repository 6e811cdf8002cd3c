//! Shared-memory hooks: `shmget shmat shmdt shmctl`.
//!
//! Distributed: a `shmget` with `IPC_KDIPC` or a key in `KDIPC_KEYS`; ids
//! with the distributed bit (see `kdipc_runtime::registry`); addresses of a
//! distributed view. Everything else goes to the kernel unchanged, and a
//! program that never uses a distributed object never starts the runtime.

use kdipc_runtime::config::KeySet;
use kdipc_runtime::fault;
use kdipc_runtime::node::{self, NodeHandle};
use kdipc_runtime::protocol::PAGE_SIZE;
use kdipc_runtime::registry::{is_distributed_id, Cred, Errno, CAP_IPC_LOCK};
use once_cell::sync::Lazy;

use crate::ffi::{fail, guard, real_fn};
use crate::user::{copy_in, copy_out, ipc_perm};
use crate::IPC_KDIPC;

/// `KDIPC_KEYS`, read without starting the runtime.
pub(crate) static KEYS: Lazy<KeySet> = Lazy::new(|| match std::env::var("KDIPC_KEYS") {
    Ok(v) => KeySet::parse(&v).unwrap_or_else(|e| {
        eprintln!("kdipc: {e}; no key is distributed");
        KeySet::None
    }),
    Err(_) => KeySet::None,
});

/// The node, started on first use; hands its pages back at `exit`.
pub(crate) fn the_node() -> Result<&'static NodeHandle, Errno> {
    node::node()
}

/// Runs `at_exit` when the library is finalized: at `exit`, after every
/// `atexit` handler of the program. An `atexit` registration would run
/// before the handlers the program registered before its first
/// distributed call, which then (as on Linux) still expect their attaches
/// mapped and their `shmdt`/`shmctl` calls to work.
#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;

pub(crate) extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // A `vfork` child that calls `exit` shares its parent's node: that
        // node is not its to shut down.
        if !crate::process::owns_node() {
            return;
        }
        if let Some(n) = node::started() {
            n.shutdown(std::time::Duration::from_secs(10));
        }
    });
}

/// Hook for libc::shmget.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn shmget(key: libc::key_t, size: libc::size_t, shmflg: libc::c_int) -> libc::c_int {
    guard(|| {
        if shmflg & IPC_KDIPC != 0 || KEYS.contains(key) {
            let flags = shmflg & !IPC_KDIPC;
            return the_node().and_then(|n| n.shmget(key, size as u64, flags)).unwrap_or_else(fail);
        }
        let f = real_fn!(shmget: fn(libc::key_t, libc::size_t, libc::c_int) -> libc::c_int);
        // SAFETY: the real shmget with the program's arguments.
        unsafe { f(key, size, shmflg) }
    })
}

/// Hook for libc::shmat.
#[cfg_attr(not(test), no_mangle)]
// The signature is libc's: the pointer goes to the kernel, which checks it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn shmat(
    shmid: libc::c_int,
    shmaddr: *const libc::c_void,
    shmflg: libc::c_int,
) -> *mut libc::c_void {
    guard(|| {
        if is_distributed_id(shmid) {
            return the_node()
                .and_then(|n| n.shmat(shmid, shmaddr as usize, shmflg))
                .map(|a| a as *mut libc::c_void)
                .unwrap_or_else(fail);
        }
        let f = real_fn!(shmat: fn(libc::c_int, *const libc::c_void, libc::c_int) -> *mut libc::c_void);
        // SAFETY: the real shmat with the program's arguments.
        unsafe { f(shmid, shmaddr, shmflg) }
    })
}

/// Hook for libc::shmdt.
#[cfg_attr(not(test), no_mangle)]
// The signature is libc's: the pointer goes to the kernel, which checks it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn shmdt(shmaddr: *const libc::c_void) -> libc::c_int {
    guard(|| {
        let addr = shmaddr as usize;
        if fault::find_view(addr).is_some_and(|(start, _)| start == addr) {
            return the_node().and_then(|n| n.shmdt(addr)).map(|()| 0).unwrap_or_else(fail);
        }
        let f = real_fn!(shmdt: fn(*const libc::c_void) -> libc::c_int);
        // SAFETY: the real shmdt with the program's argument.
        unsafe { f(shmaddr) }
    })
}

/// Hook for libc::shmctl.
#[cfg_attr(not(test), no_mangle)]
// The signature is libc's: the pointer goes to the kernel, which checks it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn shmctl(shmid: libc::c_int, cmd: libc::c_int, buf: *mut libc::shmid_ds) -> libc::c_int {
    guard(|| {
        if is_distributed_id(shmid) && !matches!(cmd, libc::IPC_INFO | SHM_INFO) {
            return the_node().and_then(|n| ctl(n, shmid, cmd, buf)).unwrap_or_else(fail);
        }
        let f = real_fn!(shmctl: fn(libc::c_int, libc::c_int, *mut libc::shmid_ds) -> libc::c_int);
        // SAFETY: the real shmctl with the program's arguments.
        let r = unsafe { f(shmid, cmd, buf) };
        if r >= 0 && cmd == SHM_INFO && !buf.is_null() {
            add_distributed_totals(buf as *mut ShmInfo);
        }
        r
    })
}

/// `SHM_INFO` (linux/shm.h), which libc does not define.
const SHM_INFO: libc::c_int = 14;

/// `struct shm_info` (linux/shm.h), which libc does not define.
#[repr(C)]
struct ShmInfo {
    used_ids: libc::c_int,
    shm_tot: libc::c_ulong,
    shm_rss: libc::c_ulong,
    shm_swp: libc::c_ulong,
    swap_attempts: libc::c_ulong,
    swap_successes: libc::c_ulong,
}

/// `SHM_INFO` counts the distributed segments too, when this process has
/// a node (a program that uses none pays nothing).
fn add_distributed_totals(info: *mut ShmInfo) {
    if let Some(n) = node::started() {
        if let Ok((segs, pages)) = n.totals() {
            // SAFETY: the kernel just filled this struct at the program's
            // pointer, so it is valid for writes.
            unsafe {
                (*info).used_ids += segs as libc::c_int;
                (*info).shm_tot += pages as libc::c_ulong;
            }
        }
    }
}

/// `shmctl` on a distributed id. The checks and their order are the
/// kernel's (`ksys_shmctl`): the id first, then permission, then the
/// buffer, except that `IPC_SET` reads the buffer before anything else.
fn ctl(n: &NodeHandle, id: i32, cmd: i32, buf: *mut libc::shmid_ds) -> Result<libc::c_int, Errno> {
    match cmd {
        libc::IPC_STAT => {
            let s = n.stat(id)?;
            // The kernel fills a zeroed struct and copies all of it.
            // SAFETY: shmid_ds is plain data; all zeroes is a valid value.
            let mut b: libc::shmid_ds = unsafe { std::mem::zeroed() };
            b.shm_perm = ipc_perm(id, s.key, (s.uid, s.gid), (s.cuid, s.cgid), s.mode);
            b.shm_segsz = s.size as libc::size_t;
            b.shm_atime = s.atime;
            b.shm_dtime = s.dtime;
            b.shm_ctime = s.ctime;
            b.shm_cpid = s.cpid;
            b.shm_lpid = s.lpid;
            b.shm_nattch = s.nattch;
            copy_out(buf, &b)?;
            Ok(0)
        }
        libc::IPC_SET => {
            let b = copy_in(buf)?;
            let uid = if id_mapped("uid_map", b.shm_perm.uid) { b.shm_perm.uid } else { u32::MAX };
            let gid = if id_mapped("gid_map", b.shm_perm.gid) { b.shm_perm.gid } else { u32::MAX };
            n.set(id, uid, gid, b.shm_perm.mode as u32 & 0o777).map(|()| 0)
        }
        libc::IPC_RMID => n.remove(id).map(|()| 0),
        libc::SHM_LOCK | libc::SHM_UNLOCK => lock(n, id, cmd == libc::SHM_LOCK).map(|()| 0),
        _ => Err(Errno(libc::EINVAL)),
    }
}

/// `SHM_LOCK`/`SHM_UNLOCK` (`shmctl_do_lock`). Pages of a distributed
/// segment are never swapped by us, so only the checks remain; they need
/// no read permission, hence the segment list rather than `IPC_STAT`.
/// (`SHM_LOCKED` in `shm_perm.mode` is not kept: the registry has no call
/// for it.)
fn lock(n: &NodeHandle, id: i32, lock: bool) -> Result<(), Errno> {
    let s = n.list()?.into_iter().find(|(i, _)| *i == id).map(|(_, s)| s).ok_or(Errno(libc::EINVAL))?;
    let cred = Cred::current();
    if cred.capable(CAP_IPC_LOCK) {
        return Ok(());
    }
    if cred.uid != s.uid && cred.uid != s.cuid {
        return Err(Errno(libc::EPERM));
    }
    if lock {
        // SAFETY: an all-zero rlimit is valid; getrlimit fills it.
        let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a valid resource and a pointer to our rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0 {
            if r.rlim_cur == 0 {
                return Err(Errno(libc::EPERM));
            }
            let page = PAGE_SIZE as u64;
            if r.rlim_cur != libc::RLIM_INFINITY && s.size.div_ceil(page) > r.rlim_cur / page {
                return Err(Errno(libc::ENOMEM)); // user_shm_lock
            }
        }
    }
    Ok(())
}

/// Whether this process's user namespace maps `id` (`make_kuid` +
/// `uid_valid`); `map` is `uid_map` or `gid_map`.
fn id_mapped(map: &str, id: u32) -> bool {
    if id == u32::MAX {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/{map}")) else { return true };
    text.lines().any(|l| {
        let mut f = l.split_whitespace().map(|w| w.parse::<u64>().ok());
        match (f.next().flatten(), f.next().flatten(), f.next().flatten()) {
            (Some(first), Some(_), Some(count)) => (first..first + count).contains(&(id as u64)),
            _ => false,
        }
    })
}
