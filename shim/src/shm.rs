//! Shared-memory hooks: `shmget shmat shmdt shmctl`.
//!
//! Distributed: a `shmget` with `IPC_KDIPC` or a key in `KDIPC_KEYS`; ids
//! with the distributed bit (see `kdipc_runtime::registry`); addresses of a
//! distributed view. Everything else goes to the kernel unchanged, and a
//! program that never uses a distributed object never starts the runtime.

use kdipc_runtime::config::KeySet;
use kdipc_runtime::fault;
use kdipc_runtime::node::{self, NodeHandle};
use kdipc_runtime::registry::{is_distributed_id, Errno};
use once_cell::sync::Lazy;

use crate::ffi::{fail, guard, real_fn};
use crate::IPC_KDIPC;

/// `KDIPC_KEYS`, read without starting the runtime.
static KEYS: Lazy<KeySet> = Lazy::new(|| match std::env::var("KDIPC_KEYS") {
    Ok(v) => KeySet::parse(&v).unwrap_or_else(|e| {
        eprintln!("kdipc: {e}; no key is distributed");
        KeySet::None
    }),
    Err(_) => KeySet::None,
});

/// The node, started on first use; hands its pages back at `exit`.
fn the_node() -> Result<&'static NodeHandle, Errno> {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    let n = node::node()?;
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };
    });
    Ok(n)
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
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

/// `shmctl` on a distributed id.
fn ctl(n: &NodeHandle, id: i32, cmd: i32, buf: *mut libc::shmid_ds) -> Result<libc::c_int, Errno> {
    let efault = Errno(libc::EFAULT);
    match cmd {
        libc::IPC_STAT => {
            let s = n.stat(id)?;
            if buf.is_null() {
                return Err(efault);
            }
            // SAFETY: the program passed a pointer to its shmid_ds; we
            // write only its public fields, as the kernel would.
            unsafe {
                let b = &mut *buf;
                b.shm_perm.__key = s.key;
                b.shm_perm.uid = s.uid;
                b.shm_perm.gid = s.gid;
                b.shm_perm.cuid = s.cuid;
                b.shm_perm.cgid = s.cgid;
                b.shm_perm.mode = s.mode as libc::c_ushort;
                b.shm_perm.__seq = ((id & !kdipc_runtime::registry::ID_BIT) >> 15) as libc::c_ushort;
                b.shm_segsz = s.size as libc::size_t;
                b.shm_atime = s.atime;
                b.shm_dtime = s.dtime;
                b.shm_ctime = s.ctime;
                b.shm_cpid = s.cpid;
                b.shm_lpid = s.lpid;
                b.shm_nattch = s.nattch;
            }
            Ok(0)
        }
        libc::IPC_SET => {
            if buf.is_null() {
                return Err(efault);
            }
            // SAFETY: reading the program's shmid_ds.
            let (uid, gid, mode) =
                unsafe { ((*buf).shm_perm.uid, (*buf).shm_perm.gid, (*buf).shm_perm.mode) };
            n.set(id, uid, gid, mode as u32).map(|()| 0)
        }
        libc::IPC_RMID => n.remove(id).map(|()| 0),
        libc::SHM_LOCK | libc::SHM_UNLOCK => {
            // Pages of a distributed segment are never swapped by us;
            // only the permission check remains.
            let s = n.stat(id)?;
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if uid != 0 && uid != s.uid && uid != s.cuid {
                return Err(Errno(libc::EPERM));
            }
            Ok(0)
        }
        _ => Err(Errno(libc::EINVAL)),
    }
}
