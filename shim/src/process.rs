//! Process hooks: `fork`, `exec`, `_exit`. The child of a process with
//! distributed attaches becomes a node of its own (see
//! `kdipc_runtime::node::after_fork_in_child`). `exec` hands this node's
//! pages back first, as exit does. `vfork` and `posix_spawn` children
//! share the parent's memory, node included, until they `exec` or `_exit`:
//! they must leave it alone (`posix_spawn` calls neither through us).

use std::ffi::CStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use kdipc_runtime::node;

use crate::ffi::{self, guard, real_fn};

/// Hook for libc::fork. The child attaches the parent's distributed
/// segments again as a node of its own; the parent returns once it has
/// (or died), so that, as with the kernel, the child counts in
/// `shm_nattch` when `fork` returns: a parent that detaches and removes a
/// segment right after `fork` must not destroy it under its child
/// (`stress-ng --shm-sysv` does that).
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn fork() -> libc::pid_t {
    guard(|| {
        let f = real_fn!(fork: fn() -> libc::pid_t);
        let done = if kdipc_runtime::fault::has_views() { Pipe::new() } else { None };
        let starting = node::fork_guard();
        // SAFETY: libc's fork.
        let pid = unsafe { f() };
        drop(starting);
        if pid == 0 {
            at_load();
            node::after_fork_in_child();
            if let Some(p) = done {
                p.signal();
            }
        } else if let Some(p) = done {
            p.wait_for(pid);
        }
        pid
    })
}

/// A close-on-exec pipe from a forked child to its parent, through raw
/// system calls (`read`, `write`, `poll` are this library's hooks).
struct Pipe {
    read: libc::c_int,
    write: libc::c_int,
}

impl Pipe {
    fn new() -> Option<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors of `fds`.
        let r = unsafe { libc::syscall(libc::SYS_pipe2, fds.as_mut_ptr(), libc::O_CLOEXEC) };
        (r == 0).then_some(Pipe { read: fds[0], write: fds[1] })
    }

    /// In the child: its attaches are done.
    fn signal(self) {
        // SAFETY: one byte from a local to our own descriptor, then closes
        // of descriptors this process owns.
        unsafe {
            libc::syscall(libc::SYS_close, self.read);
            libc::syscall(libc::SYS_write, self.write, b"1".as_ptr(), 1usize);
            libc::syscall(libc::SYS_close, self.write);
        }
    }

    /// In the parent: until the child signals or exits, or 10 s pass (a
    /// child forked at the same time by another thread may hold the write
    /// end too, so its end alone is no proof; and a child stuck in its
    /// start must not hang its parent).
    /// The program's `errno` is left as `fork` set it.
    fn wait_for(self, pid: libc::pid_t) {
        let errno = ffi::errno();
        // SAFETY: closing our copy of the write end.
        unsafe { libc::syscall(libc::SYS_close, self.write) };
        if pid > 0 {
            let mut pfd = libc::pollfd { fd: self.read, events: libc::POLLIN, revents: 0 };
            for _ in 0..200 {
                // SAFETY: poll of one descriptor we own, 50 ms.
                let n = unsafe { libc::syscall(libc::SYS_poll, &mut pfd as *mut libc::pollfd, 1usize, 50) };
                if n > 0 {
                    break;
                }
                // SAFETY: waitid with WNOWAIT only looks: the child stays
                // for the program to reap.
                let gone = unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let r = libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                    );
                    // Reaped already, or SIGCHLD ignored (ECHILD): its end
                    // of the pipe closing wakes the poll instead.
                    r == 0 && info.si_pid() != 0
                };
                if gone {
                    break;
                }
            }
        }
        // SAFETY: closing the read end we own.
        unsafe { libc::syscall(libc::SYS_close, self.read) };
        ffi::set_errno(errno);
    }
}

/// Hook for libc::_exit: a process that leaves without `exit` still hands
/// the pages only it holds back first (a segment outlives its processes),
/// and its `SEM_UNDO` adjustments apply.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn _exit(status: libc::c_int) -> ! {
    if owns_node() {
        crate::shm::at_exit();
    }
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

/// The process whose node this is: the one the library was loaded in, or
/// the child of our `fork`. A `vfork` child (which shares its parent's
/// memory, node included, until it calls `exec` or `_exit`) is another
/// process: it must leave the parent's node alone.
static OWNER: AtomicI32 = AtomicI32::new(0);

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::Relaxed);
}

/// Whether this process runs the node it sees (false in a `vfork` child).
pub(crate) fn owns_node() -> bool {
    // SAFETY: getpid has no preconditions.
    OWNER.load(Ordering::Relaxed) == unsafe { libc::getpid() }
}

/// The `exec` functions, in the order of `EXEC_NAMES`. What their first
/// argument is decides how we tell beforehand whether they will succeed.
const EXECL: usize = 0;
const EXECLE: usize = 1;
const EXECLP: usize = 2;
const EXECV: usize = 3;
const EXECVE: usize = 4;
const EXECVP: usize = 5;
const EXECVPE: usize = 6;
const FEXECVE: usize = 7;
const EXEC_NAMES: [&CStr; 8] =
    [c"execl", c"execle", c"execlp", c"execv", c"execve", c"execvp", c"execvpe", c"fexecve"];
static EXEC_REAL: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Called by the `exec` trampolines before the real function: a process
/// whose `exec` will succeed hands the pages only it holds back and
/// detaches, as at exit (the new image has no attaches and may attach
/// again). Returns the real function's address.
extern "C" fn before_exec(which: usize, first: usize) -> usize {
    let _ = std::panic::catch_unwind(|| {
        if owns_node() && will_exec(which, first) {
            if let Some(n) = node::started() {
                // SEM_UNDO outlives exec (Linux applies it at exit).
                kdipc_runtime::undo::before_exec(n);
                crate::shm::at_exit();
            }
        }
    });
    let mut p = EXEC_REAL[which].load(Ordering::Acquire);
    if p == 0 {
        p = ffi::real(EXEC_NAMES[which]) as usize;
        EXEC_REAL[which].store(p, Ordering::Release);
    }
    if p == 0 {
        // No such function in libc (cannot happen with glibc): fail as a
        // missing file would, through the raw system call.
        return bad_exec as *const () as usize;
    }
    p
}

extern "C" fn bad_exec() -> libc::c_int {
    ffi::set_errno(libc::ENOSYS);
    -1
}

/// Whether the kernel will find an executable to run (`exec` returns only
/// when it fails, and then the program must still have its attaches).
fn will_exec(which: usize, first: usize) -> bool {
    let executable = |p: &CStr| {
        // SAFETY: a NUL-terminated path; access only reads it.
        unsafe { libc::access(p.as_ptr(), libc::X_OK) == 0 }
    };
    if which == FEXECVE || first == 0 {
        return which == FEXECVE;
    }
    // SAFETY: the program's path argument, a NUL-terminated string.
    let file = unsafe { CStr::from_ptr(first as *const libc::c_char) };
    let search = matches!(which, EXECLP | EXECVP | EXECVPE);
    if !search || file.to_bytes().contains(&b'/') {
        return executable(file);
    }
    if file.is_empty() {
        return false;
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&path).any(|dir| {
        let dir = if dir.as_os_str().is_empty() { ".".into() } else { dir };
        let full = dir.join(std::ffi::OsStr::from_bytes(file.to_bytes()));
        std::ffi::CString::new(full.into_os_string().into_vec()).is_ok_and(|c| executable(&c))
    })
}

/// A trampoline for one `exec` function: it keeps every argument register
/// (and the variadic ones on the stack) untouched, calls `before_exec`,
/// then jumps to the real function as if called directly.
macro_rules! exec_hook {
    ($name:ident, $which:expr) => {
        /// Hook for libc's function of this name (see `before_exec`).
        ///
        /// # Safety
        /// As for libc's function; the arguments pass through unchanged.
        #[unsafe(naked)]
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                // 7 pushes after the return address: the stack is 16-byte
                // aligned for the call.
                "push rdi",
                "push rsi",
                "push rdx",
                "push rcx",
                "push r8",
                "push r9",
                "push rax",
                "mov rsi, rdi",
                "mov edi, {which}",
                "call {before}",
                "mov r11, rax",
                "pop rax",
                "pop r9",
                "pop r8",
                "pop rcx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "jmp r11",
                which = const $which,
                before = sym before_exec,
            )
        }
    };
}

exec_hook!(execl, EXECL);
exec_hook!(execle, EXECLE);
exec_hook!(execlp, EXECLP);
exec_hook!(execv, EXECV);
exec_hook!(execve, EXECVE);
exec_hook!(execvp, EXECVP);
exec_hook!(execvpe, EXECVPE);
exec_hook!(fexecve, FEXECVE);
