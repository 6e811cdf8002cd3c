//! Signal hooks: a program that installs its own `SIGSEGV` handler, or
//! blocks `SIGSEGV`, keeps working while our fault handler serves the
//! distributed pages.
//!
//! Once the fault path is installed, `sigaction`/`signal` for `SIGSEGV`
//! record the program's disposition (faults that are not ours go there,
//! see `kdipc_runtime::fault`) and report it back, while ours stays
//! installed in front. `sigprocmask`/`pthread_sigmask` never block
//! `SIGSEGV` then: a blocked synchronous fault would kill the program
//! instead of reaching our handler. Before any distributed attach, every
//! call goes to libc unchanged.

use kdipc_runtime::{fault, interrupts};

use crate::ffi::{guard, real_fn};

/// Hook for libc::sigaction.
///
/// # Safety
/// As for libc's `sigaction`: `act` and `oldact` are NULL or valid.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sigaction(
    signum: libc::c_int,
    act: *const libc::sigaction,
    oldact: *mut libc::sigaction,
) -> libc::c_int {
    guard(|| {
        if signum == libc::SIGSEGV && fault::installed() {
            let old = if act.is_null() {
                fault::program_action()
            } else {
                // SAFETY: non-null, the program's sigaction.
                fault::set_program_action(unsafe { &*act })
            };
            if !oldact.is_null() {
                // SAFETY: non-null, the program's buffer.
                unsafe { *oldact = old };
            }
            return 0;
        }
        // Other signals: the program's handler behind the trampoline that
        // lets a distributed semop see it ran (EINTR).
        // SAFETY: non-null, the program's sigaction.
        let ours = (!act.is_null()).then(|| interrupts::wrap(signum, unsafe { &*act }));
        let act = ours.as_ref().map_or(act, |a| a as *const libc::sigaction);
        // SAFETY: libc's sigaction with the program's (or our wrapped) action.
        let r = unsafe { fault::real_sigaction(signum, act, oldact) };
        if r == 0 && !oldact.is_null() {
            // SAFETY: non-null, the program's buffer, just filled.
            interrupts::unwrap(signum, unsafe { &mut *oldact });
        }
        r
    })
}

/// Hook for libc::signal (BSD semantics, as glibc's: `SA_RESTART`).
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn signal(signum: libc::c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    guard(|| {
        // As glibc's signal: sigaction with SA_RESTART and the signal
        // itself masked during its handler (through our hook, so that a
        // SIGSEGV handler is chained and other handlers are counted).
        // SAFETY: a zeroed sigaction is valid to fill in.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: a valid sigset inside `act`.
        unsafe { libc::sigaddset(&mut act.sa_mask, signum) };
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to local structs.
        if unsafe { sigaction(signum, &act, &mut old) } != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    })
}

/// The mask the program asked for, without `SIGSEGV` once our handler
/// serves faults.
///
/// # Safety
/// `set` is NULL or a valid sigset.
unsafe fn without_segv(how: libc::c_int, set: *const libc::sigset_t) -> Option<libc::sigset_t> {
    if set.is_null() || how == libc::SIG_UNBLOCK || !fault::installed() {
        return None;
    }
    // SAFETY: non-null, the program's sigset.
    let mut s = unsafe { *set };
    // SAFETY: `s` is a valid sigset.
    unsafe { libc::sigdelset(&mut s, libc::SIGSEGV) };
    Some(s)
}

/// Hook for libc::sigprocmask.
///
/// # Safety
/// As for libc's `sigprocmask`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    oldset: *mut libc::sigset_t,
) -> libc::c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let own = unsafe { without_segv(how, set) };
        let set = own.as_ref().map_or(set, |s| s as *const libc::sigset_t);
        let f =
            real_fn!(sigprocmask: fn(libc::c_int, *const libc::sigset_t, *mut libc::sigset_t) -> libc::c_int);
        // SAFETY: libc's sigprocmask with the program's arguments.
        unsafe { f(how, set, oldset) }
    })
}

/// Hook for libc::pthread_sigmask (returns an error number, not -1).
///
/// # Safety
/// As for libc's `pthread_sigmask`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    oldset: *mut libc::sigset_t,
) -> libc::c_int {
    let r = guard(|| {
        // SAFETY: the caller's contract.
        let own = unsafe { without_segv(how, set) };
        let set = own.as_ref().map_or(set, |s| s as *const libc::sigset_t);
        let f = real_fn!(pthread_sigmask: fn(libc::c_int, *const libc::sigset_t, *mut libc::sigset_t) -> libc::c_int);
        // SAFETY: libc's pthread_sigmask with the program's arguments.
        unsafe { f(how, set, oldset) }
    });
    if r == -1 {
        // `guard` reported a panic as ENOMEM and -1.
        return libc::ENOMEM;
    }
    r
}
