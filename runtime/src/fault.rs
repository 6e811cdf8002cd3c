//! The fault path's signal side: the `SIGSEGV` handler, the table of
//! application views it consults, and the slots through which a faulting
//! thread hands its fault to the runtime thread.
//!
//! Everything the handler touches is a fixed-size static of atomics: no
//! allocation, no lock, no log. The handler
//! 1. looks the address up in [`VIEWS`] (a linear scan of atomics);
//! 2. if it is not in a distributed view, or is a write to a read-only
//!    attach, passes the signal to the handler that was installed before
//!    ours, or restores the default action so that the access faults again
//!    and the program dies as it would have natively;
//! 3. otherwise claims a [`SLOTS`] entry, writes the address and whether it
//!    was a write (x86-64: bit 1 of the page-fault error code), wakes the
//!    runtime thread through an `eventfd`, and sleeps on a futex until the
//!    runtime marks the slot done. Returning retries the access.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Most application views (attaches) per process.
pub const MAX_VIEWS: usize = 1024;
/// Most faults outstanding at once per process.
pub const MAX_FAULTS: usize = 256;

pub struct ViewSlot {
    /// 0: free.
    start: AtomicUsize,
    len: AtomicUsize,
    readonly: AtomicBool,
    /// The segment's id (for a forked child, which attaches again).
    seg: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const VIEW_INIT: ViewSlot = ViewSlot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    readonly: AtomicBool::new(false),
    seg: AtomicI32::new(0),
};
static VIEWS: [ViewSlot; MAX_VIEWS] = [VIEW_INIT; MAX_VIEWS];

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const POSTED: u32 = 2;
const TAKEN: u32 = 3;
const DONE: u32 = 4;
const FAILED: u32 = 5;

pub struct FaultSlot {
    state: AtomicU32,
    addr: AtomicUsize,
    write: AtomicBool,
    /// The faulting thread (`pthread_self`).
    thread: AtomicUsize,
    /// The faulting instruction's address (0: not an instruction, a
    /// system call's buffer brought in by [`prefault`]).
    pc: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT_INIT: FaultSlot = FaultSlot {
    state: AtomicU32::new(FREE),
    addr: AtomicUsize::new(0),
    write: AtomicBool::new(false),
    thread: AtomicUsize::new(0),
    pc: AtomicUsize::new(0),
};

/// A fault the runtime took from a slot.
#[derive(Clone, Copy, Debug)]
pub struct Posted {
    pub slot: usize,
    pub addr: usize,
    pub write: bool,
    /// The faulting thread.
    pub thread: usize,
    /// The faulting instruction (0: a system call's buffer).
    pub pc: usize,
}
static SLOTS: [FaultSlot; MAX_FAULTS] = [SLOT_INIT; MAX_FAULTS];

/// Iterations a faulting thread spins before it sleeps.
static SPIN_ITERS: AtomicUsize = AtomicUsize::new(0);

/// Sets how long a faulting thread spins before it sleeps on the futex.
pub fn set_spin(us: u64) {
    // About 30 ns per `pause` on current x86 cores.
    SPIN_ITERS.store((us as usize).saturating_mul(33), Ordering::Relaxed);
}

/// The runtime thread's eventfd.
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// Whether our handler is installed.
static INSTALLED: OnceLock<()> = OnceLock::new();

/// libc's `sigaction`: the shim exports its own, which a call from inside
/// this library would reach.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

type SigactionFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;

/// Calls libc's `sigaction`, whatever this library exports. Async-signal-
/// safe once `resolve_real_sigaction` ran.
///
/// # Safety
/// As for `sigaction(2)`.
pub unsafe fn real_sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    let mut p = REAL_SIGACTION.load(Ordering::Acquire);
    if p == 0 {
        // Not `libc::sigaction`: from inside this library that symbol is
        // the shim's own hook. (dlsym is not async-signal-safe; this runs
        // once, normally long before any handler.)
        resolve_real_sigaction();
        p = REAL_SIGACTION.load(Ordering::Acquire);
        if p == 0 {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            return -1;
        }
    }
    // SAFETY: `p` is libc's sigaction, found by dlsym(RTLD_NEXT).
    unsafe { std::mem::transmute::<usize, SigactionFn>(p)(sig, act, old) }
}

fn resolve_real_sigaction() {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only reads.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) };
    if !p.is_null() {
        REAL_SIGACTION.store(p as usize, Ordering::Release);
    }
}

/// The program's own `SIGSEGV` disposition (the one before ours, or the one
/// it set since through `sigaction`/`signal`, which the shim interposes):
/// faults that are not ours go there. Two slots, so that the handler can
/// read one while the other is written; `ACTIVE` says which is current.
struct ProgramAction {
    slots: [std::cell::UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>; 2],
    active: AtomicUsize,
    writing: AtomicBool,
}

// SAFETY: a slot is written only by the holder of `writing` and only while
// it is not the active one; readers copy the active slot (see `get`).
unsafe impl Sync for ProgramAction {}

static PROGRAM: ProgramAction = ProgramAction {
    slots: [
        std::cell::UnsafeCell::new(std::mem::MaybeUninit::zeroed()),
        std::cell::UnsafeCell::new(std::mem::MaybeUninit::zeroed()),
    ],
    active: AtomicUsize::new(0),
    writing: AtomicBool::new(false),
};

impl ProgramAction {
    /// The current disposition (a copy). Async-signal-safe.
    fn get(&self) -> libc::sigaction {
        let i = self.active.load(Ordering::Acquire);
        // SAFETY: the active slot is initialized (zeroed = SIG_DFL at
        // first) and not being written (writers write the other one).
        unsafe { (*self.slots[i].get()).assume_init() }
    }

    /// Replaces it; returns the previous one.
    fn set(&self, new: &libc::sigaction) -> libc::sigaction {
        while self.writing.swap(true, Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let old = self.get();
        let next = 1 - self.active.load(Ordering::Relaxed);
        // SAFETY: we hold `writing` and `next` is not the active slot.
        unsafe { (*self.slots[next].get()).write(*new) };
        self.active.store(next, Ordering::Release);
        self.writing.store(false, Ordering::Release);
        old
    }
}

/// Whether faults on distributed pages are being served (our handler is
/// installed): the shim then keeps it in front of the program's.
pub fn installed() -> bool {
    INSTALLED.get().is_some()
}

/// The program's `SIGSEGV` disposition, as `sigaction(2)` reports it.
pub fn program_action() -> libc::sigaction {
    PROGRAM.get()
}

/// The program sets its `SIGSEGV` disposition: it takes the faults that
/// are not ours. Returns the previous one.
pub fn set_program_action(new: &libc::sigaction) -> libc::sigaction {
    PROGRAM.set(new)
}

/// Number of registered views: system call hooks skip every check while
/// it is 0.
static NVIEWS: AtomicUsize = AtomicUsize::new(0);
/// One past the highest view slot ever used: scans stop there.
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn views() -> &'static [ViewSlot] {
    &VIEWS[..HIGH.load(Ordering::Acquire)]
}

/// Registers an application view `[start, start+len)`; returns its slot.
/// Callers serialize registrations (the runtime thread does them all).
pub fn register_view(start: usize, len: usize, readonly: bool, seg: i32) -> Option<usize> {
    for (i, v) in VIEWS.iter().enumerate() {
        if v.start.load(Ordering::Acquire) == 0 {
            v.len.store(len, Ordering::Relaxed);
            v.readonly.store(readonly, Ordering::Relaxed);
            v.seg.store(seg, Ordering::Relaxed);
            v.start.store(start, Ordering::Release);
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            NVIEWS.fetch_add(1, Ordering::Release);
            return Some(i);
        }
    }
    None
}

pub fn unregister_view(slot: usize) {
    VIEWS[slot].start.store(0, Ordering::Release);
    NVIEWS.fetch_sub(1, Ordering::Release);
}

/// In a forked child: the parent's other threads do not exist here, so the
/// fault slots they held are free (else each fork would leak them).
pub fn free_slots_after_fork() {
    for s in SLOTS.iter() {
        s.state.store(FREE, Ordering::Release);
    }
}

/// Whether any distributed view is registered (attached).
pub fn has_views() -> bool {
    views().iter().any(|v| v.start.load(Ordering::Acquire) != 0)
}

/// Every registered view (segment, start, length, read-only), forgotten:
/// a forked child takes them over and attaches them again.
pub fn take_views() -> Vec<(i32, usize, usize, bool)> {
    let mut out = Vec::new();
    for v in views() {
        let start = v.start.swap(0, Ordering::AcqRel);
        if start != 0 {
            out.push((
                v.seg.load(Ordering::Relaxed),
                start,
                v.len.load(Ordering::Relaxed),
                v.readonly.load(Ordering::Relaxed),
            ));
        }
    }
    NVIEWS.store(0, Ordering::Release);
    out
}

/// Brings in every distributed page of `[addr, addr+len)` (for `write`
/// access, or read), so that a system call can copy to or from it: the
/// kernel does not fault on our behalf and would return `EFAULT`. Returns
/// whether any page of the range is distributed. Not for signal handlers.
pub fn prefault(addr: usize, len: usize, write: bool) -> bool {
    if len == 0 || NVIEWS.load(Ordering::Acquire) == 0 {
        return false;
    }
    let end = addr.saturating_add(len);
    let mut any = false;
    for v in views() {
        let start = v.start.load(Ordering::Acquire);
        if start == 0 {
            continue;
        }
        let vend = start + v.len.load(Ordering::Relaxed);
        let (lo, hi) = (addr.max(start), end.min(vend));
        if lo >= hi || (write && v.readonly.load(Ordering::Relaxed)) {
            continue;
        }
        any = true;
        let seg = v.seg.load(Ordering::Relaxed);
        let mut page = lo & !(PAGE_SIZE - 1);
        while page < hi {
            wait_for_page(page, write, seg, 0);
            page += PAGE_SIZE;
        }
    }
    any
}

const PAGE_SIZE: usize = crate::protocol::PAGE_SIZE;

/// The view containing `addr`: (start, readonly).
pub fn find_view(addr: usize) -> Option<(usize, bool)> {
    lookup(addr).map(|(start, readonly, _)| (start, readonly))
}

/// Whether `[addr, addr + len)` meets any distributed view: one check per
/// view, so that the system-call hooks pass the buffers of everything else
/// (the runtime's own 64 KiB socket buffers, say) through at once.
pub fn meets_view(addr: usize, len: usize) -> bool {
    let end = addr.saturating_add(len);
    views().iter().any(|v| {
        let start = v.start.load(Ordering::Acquire);
        start != 0 && start < end && addr < start.saturating_add(v.len.load(Ordering::Relaxed))
    })
}

/// The view containing `addr`: (start, readonly, segment).
fn lookup(addr: usize) -> Option<(usize, bool, i32)> {
    for v in views() {
        let start = v.start.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr - start < v.len.load(Ordering::Relaxed) {
            return Some((start, v.readonly.load(Ordering::Relaxed), v.seg.load(Ordering::Relaxed)));
        }
    }
    None
}

/// Installs the handler (once per process) and sets the runtime's eventfd.
pub fn install(eventfd: i32) -> std::io::Result<()> {
    EVENT_FD.store(eventfd, Ordering::Release);
    if installed() {
        return Ok(());
    }
    resolve_real_sigaction();
    // SAFETY: an all-zero sigaction is a valid value to be filled in.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler as *const () as usize;
    // SA_SIGINFO: we need the fault address and the ucontext.
    // SA_ONSTACK: run on the thread's alternate stack when it has one.
    // SA_NODEFER: a fault inside a chained handler must still reach us.
    // SA_RESTART: interrupted system calls resume, as without us.
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
    // SAFETY: `new.sa_mask` is a valid sigset to initialize.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: both pointers are to valid sigaction structs; reading the old
    // disposition first so that it is kept before our handler can run.
    if unsafe { real_sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    PROGRAM.set(&old);
    let _ = INSTALLED.set(());
    // SAFETY: as above; `handler` is async-signal-safe (see module doc).
    if unsafe { real_sigaction(libc::SIGSEGV, &new, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the calling thread an alternate signal stack if it has none, so
/// that our handler runs even when the fault is a stack overflow.
pub fn ensure_altstack() {
    const SIZE: usize = 64 * 1024;
    // SAFETY: querying the current alternate stack has no preconditions.
    unsafe {
        let mut cur: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(std::ptr::null(), &mut cur) != 0 || cur.ss_flags & libc::SS_DISABLE == 0 {
            return;
        }
        // One guard page below the stack.
        let base = libc::mmap(
            std::ptr::null_mut(),
            SIZE + 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return;
        }
        libc::mprotect(base, 4096, libc::PROT_NONE);
        let st = libc::stack_t { ss_sp: base.add(4096), ss_flags: 0, ss_size: SIZE };
        libc::sigaltstack(&st, std::ptr::null_mut());
        // The stack lives as long as the thread; a thread's exit leaks 68 KiB
        // of address space only for threads that faulted on our pages.
    }
}

/// Runtime side: takes every posted fault.
pub fn take_posted(out: &mut Vec<Posted>) {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.state.load(Ordering::Acquire) == POSTED
            && s.state.compare_exchange(POSTED, TAKEN, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            out.push(Posted {
                slot: i,
                addr: s.addr.load(Ordering::Relaxed),
                write: s.write.load(Ordering::Relaxed),
                thread: s.thread.load(Ordering::Relaxed),
                pc: s.pc.load(Ordering::Relaxed),
            });
        }
    }
}

/// Runtime side: the fault in `slot` is served (`ok`) or the page is lost.
/// The thread sees it at once if it is spinning; a sleeping one is woken
/// by the next [`wake_completed`], which the runtime calls once the
/// messages it queued meanwhile are sent: a woken thread often preempts
/// the runtime thread, and a reply still queued behind it then waited for
/// the end of the thread's time slice (≈ 1 ms) while its requester stood.
pub fn complete(slot: usize, ok: bool) {
    SLOTS[slot].state.store(if ok { DONE } else { FAILED }, Ordering::Release);
    TO_WAKE[slot].store(true, Ordering::Relaxed);
    ANY_TO_WAKE.store(true, Ordering::Release);
}

/// Slots completed whose thread has not been woken yet.
#[allow(clippy::declare_interior_mutable_const)]
const NO_WAKE: AtomicBool = AtomicBool::new(false);
static TO_WAKE: [AtomicBool; MAX_FAULTS] = [NO_WAKE; MAX_FAULTS];
static ANY_TO_WAKE: AtomicBool = AtomicBool::new(false);

/// Whether [`wake_completed`] has threads to wake.
pub fn completed_pending() -> bool {
    ANY_TO_WAKE.load(Ordering::Acquire)
}

/// Wakes the threads of the faults completed since the last call. (A
/// thread that already left, and a new fault in its slot, only see a
/// spurious wake-up, which `wait_for_page` absorbs.)
pub fn wake_completed() {
    if !ANY_TO_WAKE.swap(false, Ordering::AcqRel) {
        return;
    }
    for (slot, w) in SLOTS.iter().zip(&TO_WAKE) {
        if w.swap(false, Ordering::Relaxed) {
            futex_wake(&slot.state);
        }
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 that lives forever (static).
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, i32::MAX);
    }
}

fn futex_wait(word: &AtomicU32, val: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that lives forever; a
    // spurious return is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Asks the kernel to make every store of every thread visible before we
/// read a page we just revoked (needed on weakly ordered CPUs; on x86 the
/// `mprotect` TLB shoot-down already does it, and this costs one IPI).
pub fn membarrier() {
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the command takes no pointers; failure only means the
    // registration was refused and the fallback below applies.
    unsafe {
        const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
        if libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) != 0 {
            const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
            libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0);
        }
    }
}

/// Registers the process for expedited private membarriers.
pub fn membarrier_register() {
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: registration takes no pointers.
    unsafe {
        const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
        libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0);
    }
}

#[cfg(target_arch = "x86_64")]
fn is_write(ctx: *mut libc::c_void) -> bool {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
}

/// The address of the faulting instruction.
#[cfg(target_arch = "x86_64")]
fn fault_pc(ctx: *mut libc::c_void) -> usize {
    // SAFETY: as in `is_write`.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // sees no change.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let view = if code > 0 { lookup(addr) } else { None };
    match view {
        Some((_, readonly, seg)) if !(readonly && is_write(ctx)) => {
            if !wait_for_page(addr, is_write(ctx), seg, fault_pc(ctx)) {
                // The page is lost: no current copy exists anywhere.
                // SAFETY: raise is async-signal-safe.
                unsafe { libc::raise(libc::SIGBUS) };
            }
        }
        _ => chain(sig, info, ctx),
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// Posts the fault and sleeps until the runtime has served it (`seg`: the
/// view's segment, for the figures; `pc`: the faulting instruction, 0 for
/// none).
fn wait_for_page(addr: usize, write: bool, seg: i32, pc: usize) -> bool {
    let slot = loop {
        if let Some(s) = SLOTS
            .iter()
            .find(|s| s.state.compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed).is_ok())
        {
            break s;
        }
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
    };
    let t0 = monotonic_ns();
    slot.addr.store(addr, Ordering::Relaxed);
    slot.write.store(write, Ordering::Relaxed);
    // SAFETY: pthread_self reads the thread pointer: no lock, no
    // allocation, no system call (async-signal-safe in practice).
    slot.thread.store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    slot.pc.store(pc, Ordering::Relaxed);
    slot.state.store(POSTED, Ordering::Release);
    let one: u64 = 1;
    // SAFETY: the write(2) system call is async-signal-safe; the buffer is
    // 8 valid bytes. (A raw system call: `libc::write` from inside this
    // library would be the shim's own hook.)
    unsafe {
        libc::syscall(libc::SYS_write, EVENT_FD.load(Ordering::Acquire), &one as *const u64, 8usize);
    }
    // Spin a little first (`KDIPC_SPIN_US`): a page that comes back
    // quickly then costs no futex wake-up.
    let mut spins = SPIN_ITERS.load(Ordering::Relaxed);
    let result = loop {
        let s = slot.state.load(Ordering::Acquire);
        if s == DONE || s == FAILED {
            break s;
        }
        if spins > 0 {
            spins -= 1;
            std::hint::spin_loop();
            continue;
        }
        futex_wait(&slot.state, s);
    };
    slot.state.store(FREE, Ordering::Release);
    crate::stats::fault(seg, write, monotonic_ns().saturating_sub(t0));
    result == DONE
}

/// `CLOCK_MONOTONIC` in ns. A raw system call: async-signal-safe, and not
/// the shim's own `clock_gettime` hook (which this library exports).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts as *mut libc::timespec) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A fault that is not ours: to the previous handler, or the default.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let p = PROGRAM.get();
    match p {
        p if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the program installed this SA_SIGINFO handler for
                // SIGSEGV; we call it as the kernel would have.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: as above, a plain handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Restore the default action; returning re-executes the access,
            // which faults again and kills the program as natively. A
            // signal sent with kill(2) is raised again instead.
            // SAFETY: a zeroed sigaction with SIG_DFL is valid; `info` is
            // the kernel's; raise is async-signal-safe.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                real_sigaction(sig, &dfl, std::ptr::null_mut());
                if (*info).si_code <= 0 {
                    libc::raise(sig);
                }
            }
        }
    }
}
