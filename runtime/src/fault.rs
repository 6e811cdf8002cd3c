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
//!
//! One kind of fault never reaches the runtime thread: a read of a pushed
//! copy that the runtime keeps closed until it is used (a "watched" page,
//! see [`mark_open`]). The handler opens it itself and the runtime learns
//! of the use later ([`take_opened`]).

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
/// fault slots they held are free (else each fork would leak them); the
/// parent's watched pages are not the child's.
pub fn free_slots_after_fork() {
    for s in SLOTS.iter() {
        s.state.store(FREE, Ordering::Release);
    }
    for o in OPEN.iter() {
        o.store(0, Ordering::Release);
    }
}

/// Pages of program views that the handler may open for reading itself: a
/// pushed copy, installed in the segment's memory and kept closed until a
/// thread reads it (`Action::Watch`). The runtime only needs to learn that
/// it was used, not at once: a thread's read of such a page (heat's halo
/// row, once per step) then costs the signal and one `mprotect`, not a
/// round trip through the runtime thread (two context switches, and a
/// wake-up of a thread that preempts the computation on a busy CPU).
///
/// Each entry is 0 (free) or a page address with its state in the low
/// bits: [`MARKED`] by the runtime, [`OPENING`] by a handler that is
/// opening it, [`OPENED`] once it has. Only the runtime frees an entry.
const MAX_OPEN: usize = 64;
#[allow(clippy::declare_interior_mutable_const)]
const OPEN_INIT: AtomicUsize = AtomicUsize::new(0);
static OPEN: [AtomicUsize; MAX_OPEN] = [OPEN_INIT; MAX_OPEN];
const MARKED: usize = 1;
const OPENING: usize = 2;
const OPENED: usize = 3;
const STATE: usize = 3;
/// Most pages the handler opens at once after the one read (a grid row
/// spans pages; the runtime's own touch path opens as many).
const OPEN_AFTER: usize = 3;

/// Runtime side: lets the handler open the page at `addr` (page-aligned,
/// in a registered view, its bytes already in the segment's memory) for
/// reading. Returns false when the table is full (the page's first read
/// then goes through the runtime as before). Marking a page twice keeps
/// one entry.
pub fn mark_open(addr: usize) -> bool {
    if OPEN.iter().any(|o| o.load(Ordering::Acquire) & !STATE == addr) {
        return true;
    }
    OPEN.iter().any(|o| o.compare_exchange(0, addr | MARKED, Ordering::AcqRel, Ordering::Relaxed).is_ok())
}

/// Runtime side, before it changes the protection of the page at `addr`
/// or stops watching it: takes the mark back. Returns whether a handler
/// opened the page (it was used); if one is opening it right now, waits
/// until its `mprotect` is done, so that the runtime's own comes after.
pub fn unmark_open(addr: usize) -> bool {
    let Some(o) = OPEN.iter().find(|o| o.load(Ordering::Acquire) & !STATE == addr) else { return false };
    if o.compare_exchange(addr | MARKED, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        return false;
    }
    while o.load(Ordering::Acquire) == addr | OPENING {
        // A few µs (one `mprotect`), unless the thread was preempted in
        // between: sleep rather than spin (this thread may be real-time,
        // and the handler's thread may need this CPU).
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 20_000 };
        // SAFETY: nanosleep reads the timespec we pass.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
    o.store(0, Ordering::Release);
    true
}

/// Runtime side: the pages the handler opened since the last call (their
/// entries are freed).
pub fn take_opened(out: &mut Vec<usize>) {
    for o in OPEN.iter() {
        let w = o.load(Ordering::Acquire);
        if w & STATE == OPENED && o.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            out.push(w & !STATE);
        }
    }
}

/// Handler side: a read fault at `addr` in the view `[start, end)`. If the
/// runtime marked its page, opens it (and the marked pages right after it,
/// within the view) for reading and returns true: the access can be
/// retried. Async-signal-safe: atomics and one system call.
fn try_open(addr: usize, end: usize) -> bool {
    let page = addr & !(PAGE_SIZE - 1);
    let claim = |p: usize| {
        OPEN.iter().find(|o| {
            o.compare_exchange(p | MARKED, p | OPENING, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        })
    };
    let Some(first) = claim(page) else { return false };
    let mut claimed: [Option<&AtomicUsize>; OPEN_AFTER] = [None; OPEN_AFTER];
    let mut n = 1;
    while n <= OPEN_AFTER && page + (n + 1) * PAGE_SIZE <= end {
        match claim(page + n * PAGE_SIZE) {
            Some(o) => claimed[n - 1] = Some(o),
            None => break,
        }
        n += 1;
    }
    // SAFETY: the pages lie in a registered view (mapped by the runtime,
    // which does not unmap it before taking these marks back, and waits
    // for this call to end when it does); a raw system call, not a hook.
    unsafe { libc::syscall(libc::SYS_mprotect, page, n * PAGE_SIZE, libc::PROT_READ) };
    first.store(page | OPENED, Ordering::Release);
    for (k, o) in claimed.iter().enumerate().take(n - 1) {
        if let Some(o) = o {
            o.store((page + (k + 1) * PAGE_SIZE) | OPENED, Ordering::Release);
        }
    }
    true
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
    lookup_len(addr).map(|(start, _, readonly, seg)| (start, readonly, seg))
}

/// The view containing `addr`: (start, length, readonly, segment).
fn lookup_len(addr: usize) -> Option<(usize, usize, bool, i32)> {
    for v in views() {
        let start = v.start.load(Ordering::Acquire);
        let len = v.len.load(Ordering::Relaxed);
        if start != 0 && addr >= start && addr - start < len {
            return Some((start, len, v.readonly.load(Ordering::Relaxed), v.seg.load(Ordering::Relaxed)));
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
    let view = if code > 0 { lookup_len(addr) } else { None };
    match view {
        Some((start, len, _, _)) if !is_write(ctx) && try_open(addr, start + len) => {}
        Some((_, _, readonly, seg)) if !(readonly && is_write(ctx)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// The permissions of the mapping holding `addr`, from /proc/self/maps
    /// ("r---", "----", ...).
    fn perms(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for l in maps.lines() {
            let mut f = l.split_whitespace();
            let range = f.next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
            if (a..b).contains(&addr) {
                return f.next().unwrap()[..3].to_string();
            }
        }
        panic!("{addr:#x} not mapped");
    }

    /// A handler racing the runtime for a marked page: exactly one of them
    /// wins each time, and when the handler won, its `mprotect` is done by
    /// the time the runtime hears of it (so the runtime's own comes after).
    #[test]
    fn the_handler_or_the_runtime_takes_a_marked_page_never_both() {
        const PAGES: usize = 4;
        // SAFETY: a private anonymous mapping of our own, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGES * PAGE_SIZE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as usize;
        assert_ne!(base, libc::MAP_FAILED as usize);
        let end = base + PAGES * PAGE_SIZE;

        // Marked with the page after it: both open together; the runtime
        // then learns of both, once.
        assert!(mark_open(base) && mark_open(base + PAGE_SIZE) && mark_open(base));
        assert!(try_open(base + 8, end));
        assert_eq!(perms(base), "r--");
        assert_eq!(perms(base + PAGE_SIZE), "r--");
        assert_eq!(perms(base + 2 * PAGE_SIZE), "---");
        let mut opened = Vec::new();
        take_opened(&mut opened);
        opened.sort();
        assert_eq!(opened, vec![base, base + PAGE_SIZE]);
        take_opened(&mut opened);
        assert_eq!(opened.len(), 2);
        // Not marked (any more): the handler leaves it to the runtime.
        assert!(!try_open(base + 2 * PAGE_SIZE, end));
        // Taken back before any read: the handler does not open it.
        assert!(mark_open(base + 2 * PAGE_SIZE));
        assert!(!unmark_open(base + 2 * PAGE_SIZE));
        assert!(!try_open(base + 2 * PAGE_SIZE, end));
        assert_eq!(perms(base + 2 * PAGE_SIZE), "---");

        let page = base + 3 * PAGE_SIZE;
        let bar = Barrier::new(2);
        let mut handler_won = 0;
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut won = Vec::new();
                for _ in 0..300 {
                    bar.wait();
                    won.push(try_open(page, end));
                    bar.wait();
                }
                won
            });
            let mut runtime_saw = Vec::new();
            for _ in 0..300 {
                // SAFETY: closing a page of our own mapping again.
                unsafe { libc::mprotect(page as *mut libc::c_void, PAGE_SIZE, libc::PROT_NONE) };
                assert!(mark_open(page));
                bar.wait();
                let opened = unmark_open(page);
                if opened {
                    assert_eq!(perms(page), "r--", "the handler's mprotect is done");
                }
                runtime_saw.push(opened);
                bar.wait();
            }
            let won = h.join().unwrap();
            assert_eq!(won, runtime_saw, "the runtime hears of exactly the handler's wins");
            handler_won = won.iter().filter(|&&w| w).count();
        });
        // Nothing left behind for the next user of the table.
        let mut left = Vec::new();
        take_opened(&mut left);
        assert!(left.is_empty() && OPEN.iter().all(|o| o.load(Ordering::Acquire) == 0));
        eprintln!("handler won {handler_won} of 300 races");
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, PAGES * PAGE_SIZE) };
    }
}
