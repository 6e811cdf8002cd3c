//! Process hooks: `fork`. The child of a process with distributed
//! attaches becomes a node of its own (see
//! `kdipc_runtime::node::after_fork_in_child`). `vfork` and `posix_spawn`
//! children share the parent's memory until they `exec`, and need nothing.

use kdipc_runtime::node;

use crate::ffi::{guard, real_fn};

/// Hook for libc::fork.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn fork() -> libc::pid_t {
    guard(|| {
        let f = real_fn!(fork: fn() -> libc::pid_t);
        // SAFETY: libc's fork.
        let pid = unsafe { f() };
        if pid == 0 {
            node::after_fork_in_child();
        }
        pid
    })
}

/// Hook for libc::_exit: a process that leaves without `exit` still hands
/// the pages only it holds back first (a segment outlives its processes),
/// and its `SEM_UNDO` adjustments apply.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _exit(status: libc::c_int) -> ! {
    crate::shm::at_exit();
    let f = real_fn!(_exit: fn(libc::c_int) -> ());
    // SAFETY: libc's _exit, which does not return.
    unsafe { f(status) };
    // SAFETY: not reached; the raw system call, in case it were.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    unreachable!("_exit returned")
}

/// Hook for libc::_Exit (the C99 name of `_exit`).
#[cfg_attr(not(test), no_mangle)]
#[allow(non_snake_case)]
pub extern "C" fn _Exit(status: libc::c_int) -> ! {
    _exit(status)
}
