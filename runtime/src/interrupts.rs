//! Which threads a signal handler interrupted.
//!
//! A distributed `semop` waits in user space; the kernel's returns `EINTR`
//! whenever a handler runs in the waiting thread, even one that ran just
//! before the wait began. To see those, the shim installs the program's
//! handlers behind a trampoline that counts, per thread, the handlers that
//! ran (`handled`), then calls the program's handler as the kernel would.
//! The program still sees its own handler in `sigaction`'s answers.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const NSIG: usize = 65;

#[allow(clippy::declare_interior_mutable_const)]
const NONE: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NO: AtomicBool = AtomicBool::new(false);
/// The program's handler per signal (0: none of ours installed).
static HANDLERS: [AtomicUsize; NSIG] = [NONE; NSIG];
/// Whether the program asked for `SA_SIGINFO`.
static SIGINFO: [AtomicBool; NSIG] = [NO; NSIG];

thread_local! {
    static HANDLED: Cell<u64> = const { Cell::new(0) };
    /// The eventfd this thread sleeps on while it waits, or -1.
    static WAKE: Cell<i32> = const { Cell::new(-1) };
}

/// While this thread waits on eventfd `fd` (-1: no longer), a handler that
/// runs in it also writes `fd`: a handler that runs between the check of
/// `handled` and the sleep still ends the sleep.
pub fn set_wake_fd(fd: i32) {
    WAKE.with(|w| w.set(fd));
}

/// Handlers that ran in this thread so far.
pub fn handled() -> u64 {
    HANDLED.with(Cell::get)
}

extern "C" fn trampoline(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Const-initialized thread-locals: no allocation, no lock.
    HANDLED.with(|c| c.set(c.get() + 1));
    let fd = WAKE.with(Cell::get);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 valid bytes to the
        // waiting thread's own eventfd (a raw system call: `libc::write`
        // from this library would be the shim's hook). errno is saved and
        // restored around it.
        unsafe {
            let e = *libc::__errno_location();
            libc::syscall(libc::SYS_write, fd, &one as *const u64, 8usize);
            *libc::__errno_location() = e;
        }
    }
    let Some(slot) = HANDLERS.get(sig as usize) else { return };
    let h = slot.load(Ordering::Acquire);
    if h == 0 {
        return;
    }
    if SIGINFO[sig as usize].load(Ordering::Acquire) {
        // SAFETY: the program installed this SA_SIGINFO handler for `sig`.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program installed this plain handler for `sig`.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

fn is_handler(h: usize) -> bool {
    h != libc::SIG_DFL && h != libc::SIG_IGN && h != libc::SIG_ERR
}

/// The action to install for the program's `act`: its handler behind the
/// trampoline (same mask and flags).
pub fn wrap(sig: libc::c_int, act: &libc::sigaction) -> libc::sigaction {
    let Some(slot) = HANDLERS.get(sig as usize) else { return *act };
    if !is_handler(act.sa_sigaction) || sig == libc::SIGSEGV {
        return *act;
    }
    SIGINFO[sig as usize].store(act.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    slot.store(act.sa_sigaction, Ordering::Release);
    let mut ours = *act;
    ours.sa_sigaction = trampoline as *const () as usize;
    ours.sa_flags |= libc::SA_SIGINFO;
    ours
}

/// What the program should see of an installed action.
pub fn unwrap(sig: libc::c_int, act: &mut libc::sigaction) {
    if act.sa_sigaction != trampoline as *const () as usize {
        return;
    }
    let Some(slot) = HANDLERS.get(sig as usize) else { return };
    act.sa_sigaction = slot.load(Ordering::Acquire);
    if !SIGINFO[sig as usize].load(Ordering::Acquire) {
        act.sa_flags &= !libc::SA_SIGINFO;
    }
}
