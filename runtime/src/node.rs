//! An application node: the runtime thread beside the program's threads.
//!
//! The thread runs a current-thread tokio runtime (measured faster than the
//! multi-threaded one for this work) that owns all state: the protocol
//! instance, the transport, the segments' memory. The program's threads
//! reach it in two ways: the shim's calls (`shmget`, `shmat`, …) through a
//! command channel, and faults through `fault`'s slots and an eventfd.
//!
//! Each segment is one `memfd` mapped twice: a private read-write runtime
//! view, through which bytes arrive and leave, and the program's views
//! (one per `shmat`), whose protection follows this node's access.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicPtr, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::fault;
use crate::protocol::{
    Access, Action, CoherenceMsg, NodeId, NodeProtocol, PageIdx, Payload, SegId, MANAGER, PAGE_SIZE,
};
use crate::registry::{now_secs, Call, Cred, Errno, Reply, ShmStat};
use crate::semaphores::{
    SemCall, SemOp, SemRegistry, SemctlArg, SemctlReply, SemopOutcome, SetState, Waiter,
};
use crate::stats;
use crate::transport::{Goodbye, Inbound, Transport};
use crate::wire::Msg;

const EINVAL: Errno = Errno(libc::EINVAL);
const ENOMEM: Errno = Errno(libc::ENOMEM);

/// Ids of calls to the nameserver (0 is the registration).
static NEXT_CALL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_call_id() -> u64 {
    NEXT_CALL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Commands from the program's threads.
enum Command {
    Call(Call, crossbeam::channel::Sender<Reply>),
    /// A call whose answer may take long (a blocking `semop`): answered
    /// through `reply`, and `notify` (an eventfd) is written then.
    Waitable {
        id: u64,
        call: Call,
        reply: crossbeam::channel::Sender<Reply>,
        notify: i32,
        /// The calling thread (`pthread_self`): whatever it faulted for
        /// last has run (see `State::moved_on`).
        thread: usize,
    },
    Attach {
        id: i32,
        addr: usize,
        flags: i32,
        reply: crossbeam::channel::Sender<Result<usize, Errno>>,
    },
    Detach {
        addr: usize,
        reply: crossbeam::channel::Sender<Result<(), Errno>>,
    },
    /// A lent semaphore set goes back to the nameserver.
    SemReturn {
        id: i32,
        state: SetState,
    },
    Shutdown(crossbeam::channel::Sender<()>),
}

/// How often a node tells the nameserver the values of the semaphore sets
/// lent to it.
const SEM_SYNC: Duration = Duration::from_millis(5);

/// This process's pid, cached (0: not yet known; a forked child resets it).
static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Runs `f` with the calling thread's credentials. They are cached per
/// thread and taken again when the effective uid or gid or the process
/// changes (two system calls instead of five: a `semop` on a set lent here
/// costs a few of them in all). A change of supplementary groups or
/// capabilities alone is seen at the next change of uid or gid.
fn with_cred<R>(f: impl FnOnce(&Cred) -> R) -> R {
    thread_local! {
        static CRED: RefCell<Option<Cred>> = const { RefCell::new(None) };
    }
    // SAFETY: these calls have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut pid = PID.load(Ordering::Relaxed);
    if pid == 0 {
        // SAFETY: as above.
        pid = unsafe { libc::getpid() };
        PID.store(pid, Ordering::Relaxed);
    }
    CRED.with(|c| {
        let mut c = c.borrow_mut();
        if !c.as_ref().is_some_and(|k| k.uid == uid && k.gid == gid && k.pid == pid) {
            *c = Some(Cred::current());
        }
        f(c.as_ref().expect("just set"))
    })
}

/// The semaphore sets lent to this node, shared by the program's threads
/// (which run their operations here, without the runtime thread) and the
/// runtime thread (which takes them in and gives them back).
type LocalSems = std::sync::Arc<std::sync::Mutex<SemRegistry>>;

fn lock_sems(sems: &LocalSems) -> std::sync::MutexGuard<'_, SemRegistry> {
    // A panic while holding it left no half-applied operation (the
    // registry changes nothing before it has decided).
    sems.lock().unwrap_or_else(|e| e.into_inner())
}

/// The program's side of the node.
pub struct NodeHandle {
    cmds: mpsc::UnboundedSender<Command>,
    pub config: Config,
    /// This node's id.
    me: NodeId,
    sems: LocalSems,
}

thread_local! {
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this thread holds [`NODE_INIT`] (it is starting the node).
    static STARTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is this process's runtime thread: the shim's
/// system-call hooks pass its calls (quinn's `recvmmsg` and `sendmsg` on
/// its own buffers) straight through.
pub fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.get()
}

/// The node of this process (leaked; a forked child replaces it).
static NODE: AtomicPtr<Result<NodeHandle, String>> = AtomicPtr::new(std::ptr::null_mut());
static NODE_INIT: InitLock = InitLock(std::sync::atomic::AtomicI32::new(0));

/// The lock that serializes node start-up. Not a `std::sync::Mutex`: a
/// thread of the parent may hold it (while it starts the node) when another
/// thread calls `fork`, and in the child, where that thread does not exist,
/// it would stay held for ever; [`after_fork_in_child`] resets it. A futex
/// word: 0 free, 1 held. `fork` itself waits for a start-up under way in
/// another thread ([`fork_guard`]): the start-up initialises libraries
/// (logging, TLS, the async runtime) whose one-time initialisations,
/// inherited half done, would never finish in the child.
struct InitLock(std::sync::atomic::AtomicI32);

/// Holds [`InitLock`] until dropped.
struct InitGuard(&'static InitLock);

impl InitLock {
    fn lock(&'static self) -> InitGuard {
        while self.0.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            // Start-up takes milliseconds (seconds when a nameserver is
            // started): sleep until woken, or 10 ms at most.
            let t = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
            // SAFETY: FUTEX_WAIT on our own aligned word, with a valid
            // timeout; returns at once if the word is no longer 1.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    1,
                    &t as *const _,
                )
            };
        }
        STARTING.set(true);
        InitGuard(self)
    }

    /// In the child of `fork`: whoever held it is not here.
    fn reset(&self) {
        STARTING.set(false);
        self.0.store(0, Ordering::Release);
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        STARTING.set(false);
        self.0 .0.store(0, Ordering::Release);
        // SAFETY: FUTEX_WAKE on our own word.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0 .0.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }
}

fn current() -> Option<&'static Result<NodeHandle, String>> {
    let p = NODE.load(Ordering::Acquire);
    // SAFETY: a non-null NODE was leaked from a Box and is never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The node of this process, started on first use.
pub fn node() -> Result<&'static NodeHandle, Errno> {
    let n = match current() {
        Some(n) => n,
        None => {
            let _g = NODE_INIT.lock();
            match current() {
                Some(n) => n,
                None => {
                    crate::config::init_logging();
                    let r = Config::from_env().and_then(start);
                    if let Ok(h) = &r {
                        // SEM_UNDO adjustments an earlier image of this
                        // process left with a keeper come back.
                        crate::undo::adopt(h);
                    }
                    let leaked: &'static mut Result<NodeHandle, String> = Box::leak(Box::new(r));
                    NODE.store(leaked, Ordering::Release);
                    leaked
                }
            }
        }
    };
    n.as_ref().map_err(|e| {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("kdipc: cannot start: {e}"));
        ENOMEM
    })
}

/// The node, if it was started.
pub fn started() -> Option<&'static NodeHandle> {
    current().and_then(|r| r.as_ref().ok())
}

/// Taken by the `fork` hook around the real `fork`: waits until no other
/// thread is starting the node (milliseconds). `None` when the calling
/// thread is the one starting it (a `fork` from within the start-up).
pub fn fork_guard() -> Option<impl Drop> {
    (!STARTING.get()).then(|| NODE_INIT.lock())
}

/// In the child of `fork`: the parent's runtime thread does not exist
/// here. The child becomes a node of its own: its distributed views are
/// replaced, at the same addresses, by views of its own that start
/// `PROT_NONE` and fetch pages like any node's, and it attaches every
/// segment again (the child counts in `shm_nattch`, as with the kernel).
pub fn after_fork_in_child() {
    // Another thread of the parent may have been starting the node: the
    // child starts its own on first use.
    NODE_INIT.reset();
    if current().is_none() {
        return;
    }
    fault::free_slots_after_fork();
    // The child is a node of its own: its figures start from zero.
    stats::reset();
    // The child has no SEM_UNDO adjustments (as on Linux).
    crate::undo::HAS_UNDO.store(false, Ordering::Relaxed);
    let views = fault::take_views();
    for &(_, start, len, _) in &views {
        // SAFETY: replacing our own mapping of the parent's memory with an
        // inaccessible one, so that nothing the parent writes is seen here
        // without the protocol.
        unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
    }
    // The parent's handle leaks: its channel leads to a thread that is not
    // here.
    NODE.store(std::ptr::null_mut(), Ordering::Release);
    PID.store(0, Ordering::Relaxed);
    if views.is_empty() {
        return; // Started again on the next distributed call.
    }
    let Ok(n) = node() else {
        eprintln!("kdipc: the child of fork could not start its node; its distributed memory is gone");
        return;
    };
    for (seg, start, _, readonly) in views {
        let flags = libc::SHM_REMAP | if readonly { libc::SHM_RDONLY } else { 0 };
        if let Err(e) = n.shmat(seg, start, flags) {
            eprintln!("kdipc: the child of fork could not attach segment {seg} again (errno {})", e.0);
        }
    }
}

fn start(config: Config) -> Result<NodeHandle, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = crossbeam::channel::bounded(1);
    let cfg = config.clone();
    let sems = LocalSems::default();
    let rt_sems = sems.clone();
    std::thread::Builder::new()
        .name("kdipc-runtime".into())
        .spawn(move || {
            RUNTIME_THREAD.set(true);
            block_signals();
            // Before the thread sleeps, every reply is sent: wake the
            // threads whose faults were served (see `fault::complete`).
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(fault::wake_completed)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(cfg, rx, ready_tx, rt_sems));
        })
        .map_err(|e| e.to_string())?;
    let me = ready_rx.recv().map_err(|_| "runtime thread died".to_string())??;
    Ok(NodeHandle { cmds: tx, config, me, sems })
}

/// Empties the eventfd. The program's `errno` is left as it was (an empty
/// eventfd answers `EAGAIN`), and the read is a raw system call (`read`
/// from this library would be the shim's hook).
fn drain_eventfd(fd: i32) {
    let mut buf = [0u8; 8];
    // SAFETY: reading 8 bytes from our non-blocking eventfd into 8 bytes;
    // errno is thread-local and restored.
    unsafe {
        let e = *libc::__errno_location();
        libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), 8usize);
        *libc::__errno_location() = e;
    }
}

/// Waits until `fd` is readable: `Err(EINTR)` when a signal handler ran,
/// `Err(EAGAIN)` after `timeout`.
fn wait_readable(fd: i32, timeout: Option<Duration>) -> Result<(), Errno> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ts = timeout
        .map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; `tsp` is null or points to a live timespec.
    // The raw system call: `ppoll` from this library is the shim's hook.
    let r =
        unsafe { libc::syscall(libc::SYS_ppoll, &mut pfd, 1, tsp, std::ptr::null::<libc::sigset_t>(), 8) };
    if r > 0 {
        return Ok(());
    }
    if r == 0 {
        return Err(Errno(libc::EAGAIN));
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EINTR) => Err(Errno(libc::EINTR)),
        _ => Err(ENOMEM),
    }
}

/// The runtime thread takes no asynchronous signal meant for the program.
fn block_signals() {
    // SAFETY: sigset operations on a local, valid sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Makes the calling (runtime) thread real-time (`SCHED_FIFO` at `prio`, reset in
/// forked children) when the process may (`CAP_SYS_NICE`, or
/// `RLIMIT_RTPRIO` ≥ `prio`); otherwise it stays as it was.
///
/// Why: the program's threads keep every CPU busy (a heat rank computes or
/// polls its neighbour's flag), and a peer's invalidation or page request
/// waits until the scheduler lets this thread preempt one of them: with an
/// ordinary policy that wake-up took 100–300 µs under load, several times
/// the round trip itself, on every round trip of the critical path. A
/// real-time thread runs at once. It sleeps in `epoll_wait` whenever it
/// has nothing to do, and the kernel's real-time throttling keeps 5 % of
/// every CPU for ordinary threads even if it did not.
pub(crate) fn raise_priority(prio: i32) {
    if prio == 0 {
        return;
    }
    let param = libc::sched_param { sched_priority: prio };
    // SAFETY: changes the calling thread's own policy, with a valid param.
    let r = unsafe {
        libc::pthread_setschedparam(
            libc::pthread_self(),
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &param,
        )
    };
    if r == 0 {
        debug!(prio, "thread runs SCHED_FIFO");
    } else {
        debug!(prio, "thread stays SCHED_OTHER: {}", std::io::Error::from_raw_os_error(r));
    }
}

impl NodeHandle {
    fn call(&self, call: Call) -> Result<Reply, Errno> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.cmds.send(Command::Call(call, tx)).map_err(|_| ENOMEM)?;
        match rx.recv() {
            Ok(Reply::Err(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(_) => Err(ENOMEM),
        }
    }

    pub fn shmget(&self, key: i32, size: u64, flags: i32) -> Result<i32, Errno> {
        match self.call(Call::ShmGet { key, size, flags, cred: Cred::current() })? {
            Reply::Id(id) => Ok(id),
            _ => Err(EINVAL),
        }
    }

    pub fn shmat(&self, id: i32, addr: usize, flags: i32) -> Result<usize, Errno> {
        fault::ensure_altstack();
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.cmds.send(Command::Attach { id, addr, flags, reply: tx }).map_err(|_| ENOMEM)?;
        rx.recv().unwrap_or(Err(ENOMEM))
    }

    pub fn shmdt(&self, addr: usize) -> Result<(), Errno> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.cmds.send(Command::Detach { addr, reply: tx }).map_err(|_| ENOMEM)?;
        rx.recv().unwrap_or(Err(ENOMEM))
    }

    pub fn stat(&self, id: i32) -> Result<ShmStat, Errno> {
        match self.call(Call::ShmStat { id, cred: Cred::current() })? {
            Reply::Stat(s) => Ok(s),
            _ => Err(EINVAL),
        }
    }

    pub fn set(&self, id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
        self.call(Call::ShmSet { id, uid, gid, mode, cred: Cred::current() }).map(|_| ())
    }

    pub fn remove(&self, id: i32) -> Result<(), Errno> {
        self.call(Call::ShmRemove { id, cred: Cred::current() }).map(|_| ())
    }

    /// (segments, pages) in the cluster.
    pub fn totals(&self) -> Result<(u64, u64), Errno> {
        match self.call(Call::ShmTotals)? {
            Reply::Totals { segments, pages } => Ok((segments, pages)),
            _ => Err(EINVAL),
        }
    }

    pub fn list(&self) -> Result<Vec<(i32, ShmStat)>, Errno> {
        match self.call(Call::ShmList)? {
            Reply::List(v) => Ok(v),
            _ => Err(EINVAL),
        }
    }

    /// A node of its own for `config`, outside the process's `node()` (the
    /// `kdipc` command: no nameserver is started unless `config.auto`).
    pub fn connect(config: Config) -> Result<NodeHandle, String> {
        start(config)
    }

    /// Every distributed segment (with the pages a node other than the home
    /// owns, and the nodes that hold at least one of its pages) and
    /// semaphore set (with the node that holds it; 0: the nameserver), by
    /// id.
    #[allow(clippy::type_complexity)]
    pub fn ipc_list(
        &self,
    ) -> Result<(Vec<(i32, ShmStat, u32, u32)>, Vec<(i32, crate::semaphores::SemStat, NodeId)>), Errno> {
        match self.call(Call::IpcList)? {
            Reply::IpcList { shm, sem } => Ok((shm, sem)),
            _ => Err(EINVAL),
        }
    }

    /// Every node's figures, as the nameserver last heard them: (node,
    /// pid, still there, figures); and every object's, summed over nodes.
    #[allow(clippy::type_complexity)]
    pub fn stats(&self) -> Result<(Vec<(NodeId, i32, bool, stats::Stats)>, Vec<stats::ObjReport>), Errno> {
        match self.call(Call::Stats)? {
            Reply::Stats { nodes, objects } => Ok((nodes, objects)),
            _ => Err(EINVAL),
        }
    }

    pub fn semget(&self, key: i32, nsems: i32, flags: i32) -> Result<i32, Errno> {
        match self.call(Call::Sem(SemCall::Get { key, nsems, flags, cred: Cred::current() }))? {
            Reply::Id(id) => Ok(id),
            _ => Err(EINVAL),
        }
    }

    pub fn semctl(&self, id: i32, semnum: i32, cmd: i32, arg: SemctlArg) -> Result<SemctlReply, Errno> {
        match self.call(Call::Sem(SemCall::Ctl { id, semnum, cmd, arg, cred: Cred::current() }))? {
            Reply::SemCtl(r) => Ok(r),
            _ => Err(EINVAL),
        }
    }

    /// `semop`/`semtimedop`: waits until the operation completes, the
    /// time-out passes (`EAGAIN`) or a signal handler runs (`EINTR`; like
    /// the kernel's, never restarted). A withdrawn operation applied
    /// nothing; one that completed while being withdrawn counts as done.
    pub fn semop(&self, id: i32, ops: Vec<SemOp>, timeout: Option<Duration>) -> Result<(), Errno> {
        if ops.iter().any(|o| o.flg & crate::semaphores::SEM_UNDO != 0) {
            crate::undo::HAS_UNDO.store(true, Ordering::Relaxed);
        }
        thread_local! {
            // SAFETY: eventfd with valid flags; checked below.
            static WAKE: i32 = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        }
        let fd = WAKE.with(|f| *f);
        if fd < 0 {
            return Err(ENOMEM);
        }
        // A handler that runs in this thread from here on interrupts the
        // wait, even one that runs before the wait begins.
        let handled = crate::interrupts::handled();
        let id_call = next_call_id();
        if let Some(r) = self.local_semop(id, &ops, id_call) {
            return r;
        }
        let t0 = Instant::now();
        let r = self.remote_semop(id, ops, timeout, fd, handled, id_call);
        stats::semop_remote(id, t0.elapsed().as_nanos() as u64);
        r
    }

    /// `semop` at the set's home: sends it and waits for the answer, a
    /// signal handler or the time-out.
    fn remote_semop(
        &self,
        id: i32,
        ops: Vec<SemOp>,
        timeout: Option<Duration>,
        fd: i32,
        handled: u64,
        id_call: u64,
    ) -> Result<(), Errno> {
        // The cached credentials: two system calls instead of six.
        let cred = with_cred(Cred::clone);
        let pid = cred.pid;
        let (tx, rx) = crossbeam::channel::bounded(1);
        let call = Call::Sem(SemCall::Op { id, ops, cred });
        // SAFETY: pthread_self only reads the thread pointer.
        let thread = unsafe { libc::pthread_self() } as usize;
        let waitable = Command::Waitable { id: id_call, call, reply: tx, notify: fd, thread };
        self.cmds.send(waitable).map_err(|_| ENOMEM)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let answer = |r: Reply| match r {
            Reply::Err(e) => Err(e),
            _ => Ok(()),
        };
        // A handler that runs from here on also wakes the sleep below.
        crate::interrupts::set_wake_fd(fd);
        let result = (|| loop {
            if let Ok(r) = rx.try_recv() {
                return answer(r);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let interrupted = match left {
                Some(l) if l.is_zero() => Some(Errno(libc::EAGAIN)),
                _ if crate::interrupts::handled() != handled => Some(Errno(libc::EINTR)),
                _ => match wait_readable(fd, left) {
                    // The answer, or a handler: look again.
                    Ok(()) => {
                        drain_eventfd(fd);
                        None
                    }
                    Err(e) => Some(e),
                },
            };
            let Some(why) = interrupted else { continue };
            // Withdraw it at the owner, unless it completed meanwhile.
            return match self.call(Call::Sem(SemCall::Cancel { token: id_call, pid }))? {
                Reply::Cancelled(true) => Err(why),
                _ => answer(rx.recv().map_err(|_| ENOMEM)?),
            };
        })();
        crate::interrupts::set_wake_fd(-1);
        drain_eventfd(fd);
        result
    }

    /// `semop` on a set lent to this node, run here in the calling thread;
    /// `None` when the set is not here (any more: an operation that would
    /// wait sends it home, where other nodes' operations can complete it).
    fn local_semop(&self, id: i32, ops: &[SemOp], token: u64) -> Option<Result<(), Errno>> {
        let mut local = lock_sems(&self.sems);
        if !local.holds(id) {
            return None;
        }
        let now = now_secs();
        let outcome = with_cred(|cred| {
            let waiter = Waiter { node: self.me, pid: cred.pid, token };
            let r = local.semop(id, ops, waiter, cred, now);
            if r == SemopOutcome::Blocked {
                local.cancel(&waiter, now);
            }
            r
        });
        if outcome != SemopOutcome::Blocked {
            stats::semop_local(id);
        }
        match outcome {
            SemopOutcome::Done => Some(Ok(())),
            SemopOutcome::Err(e) => Some(Err(e)),
            SemopOutcome::Blocked => {
                let state = local.give_back(id)?;
                match self.cmds.send(Command::SemReturn { id, state }) {
                    Ok(()) => None,
                    Err(_) => Some(Err(ENOMEM)),
                }
            }
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Moves process `pid`'s `SEM_UNDO` adjustments from node `from` to
    /// node `to` (see `crate::undo`); returns how many are not zero.
    pub fn move_undo(&self, from: NodeId, to: NodeId, pid: i32) -> Result<usize, Errno> {
        match self.call(Call::Sem(SemCall::MoveUndo { from, to, pid }))? {
            Reply::Id(n) => Ok(n as usize),
            _ => Err(EINVAL),
        }
    }

    /// Process `pid` exited: its adjustments held by this node apply.
    pub fn sem_exit(&self, pid: i32) -> Result<(), Errno> {
        self.call(Call::Sem(SemCall::Exit { pid })).map(|_| ())
    }

    /// Before `exec`: this process's adjustments go to node `keeper`. The
    /// sets lent here go home first (with the adjustments on them; the
    /// run loop sends them before any later call).
    pub fn hand_undo_over(&self, keeper: NodeId) -> Result<usize, Errno> {
        {
            let mut local = lock_sems(&self.sems);
            for id in local.ids() {
                if let Some(state) = local.give_back(id) {
                    self.cmds.send(Command::SemReturn { id, state }).map_err(|_| ENOMEM)?;
                }
            }
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        self.move_undo(self.me, keeper, pid)
    }

    /// Detaches everything, handing this node's pages back (process exit).
    pub fn shutdown(&self, timeout: Duration) {
        let (tx, rx) = crossbeam::channel::bounded(1);
        if self.cmds.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

/// One `shmat` of a segment.
struct View {
    addr: usize,
    readonly: bool,
    slot: usize,
}

/// A segment attached at this node.
struct Segment {
    npages: u32,
    maplen: usize,
    _fd: OwnedFd,
    /// The runtime view.
    rt: *mut u8,
    views: Vec<View>,
    ra: ReadAhead,
    /// Read-ahead marks: pages fetched ahead that stay closed in the
    /// program's views after they arrive (see [`State::read_ahead`]).
    marks: HashSet<PageIdx>,
    /// Pushed copies that stay closed in the program's views until a
    /// thread touches them (`Action::Watch`, `NodeProtocol::touched`).
    watch: HashSet<PageIdx>,
    /// One bit per page: the memfd's page may hold non-zero bytes (bytes
    /// were installed, or a view let the program write it). A clear page is
    /// a hole of the memfd, which reads as zeros: installing a zero page
    /// there costs nothing, and bytes go in with `pwrite` (see
    /// [`Segment::write_page`]).
    dirty: Vec<Cell<u64>>,
}

/// Detects runs of faults on neighbouring pages, like the kernel's file
/// read-ahead, in up to [`STREAMS`] interleaved streams per segment (a
/// program reading one matrix while writing another, or walking two at
/// once): after three faults in a run, each new one also asks for the next
/// pages, a window that doubles with the run up to `KDIPC_READAHEAD` pages
/// (reads: requested each; writes: claimed in one message). Faults then
/// keep several pages in flight instead of one round trip per page. A fault
/// no stream expects starts a new stream in place of the least recent one.
#[derive(Default)]
struct ReadAhead {
    streams: [Stream; STREAMS],
    /// Faults seen, to find the least recent stream.
    tick: u64,
}

const STREAMS: usize = 4;

/// The smallest read-ahead window that gets marks (see `State::read_ahead`).
const MARK_MIN: u32 = 8;

/// Most pages in one `pwritev` (two iovecs each, within `IOV_MAX`).
const MAX_WRITE_RUN: usize = 256;

/// Most messages taken from the inbound queue before their actions are
/// applied together.
const INBOUND_BATCH: usize = 128;

/// The most pages asked for together with a faulting one because they left
/// this node with it (see `NodeProtocol::group`): a grid row of up to 16 KiB.
/// `KDIPC_READAHEAD=0` turns groups off too (one page per fault).
const GROUP: u32 = 3;

#[derive(Default, Clone, Copy)]
struct Stream {
    /// The last fault of the stream: page and mode.
    last: Option<(PageIdx, bool)>,
    /// Faults in the run, after the first.
    run: u32,
    used: u64,
}

impl ReadAhead {
    /// Records a fault; returns how many pages after it to ask for too.
    fn next(&mut self, page: PageIdx, write: bool, max: u32) -> u32 {
        let window = |run: u32| if run < 2 { 0 } else { (1u32 << run.min(16)).min(max) };
        self.tick += 1;
        // Forward, within the window already asked for plus a small stride
        // (a column walk touches every other page).
        let follows = |s: &Stream| {
            s.last.is_some_and(|(last, w)| w == write && page > last && page - last <= window(s.run) + 4)
        };
        let s = match self.streams.iter_mut().find(|s| follows(s)) {
            Some(s) => {
                s.run += 1;
                s
            }
            None => {
                let s = self.streams.iter_mut().min_by_key(|s| s.used).expect("STREAMS > 0");
                s.run = 0;
                s
            }
        };
        s.last = Some((page, write));
        s.used = self.tick;
        window(s.run)
    }
}

impl Segment {
    fn page_ptr(&self, page: PageIdx) -> *mut u8 {
        // SAFETY: callers pass a page the protocol checked to be < npages,
        // so the offset stays inside the runtime view.
        unsafe { self.rt.add(page as usize * PAGE_SIZE) }
    }

    /// Sets the program's access to a page in every view.
    fn protect(&self, page: PageIdx, access: Access) {
        self.protect_range(page, 1, access);
    }

    /// Forgets the read-ahead marks of `count` pages from `page` on (their
    /// protection is set otherwise).
    fn unmark(&mut self, page: PageIdx, count: u32) {
        if !self.marks.is_empty() || !self.watch.is_empty() {
            for p in page..page.saturating_add(count) {
                self.marks.remove(&p);
                if self.watch.remove(&p) {
                    self.unmark_open(p, 1);
                }
            }
        }
    }

    /// Lets the fault handler open watched page `page`, kept closed, in
    /// every view, when a thread reads it (see `fault::mark_open`).
    fn mark_open(&self, page: PageIdx) {
        for v in &self.views {
            fault::mark_open(v.addr + page as usize * PAGE_SIZE);
        }
    }

    /// Takes back what [`Self::mark_open`] allowed for `count` pages from
    /// `page` on, before the runtime sets their protection itself; returns
    /// whether the handler opened any of them (a thread read it).
    fn unmark_open(&self, page: PageIdx, count: u32) -> bool {
        let mut opened = false;
        for v in &self.views {
            for p in page..page + count {
                opened |= fault::unmark_open(v.addr + p as usize * PAGE_SIZE);
            }
        }
        opened
    }

    /// Sets the program's access to `count` pages from `page` on, in every
    /// view, with one `mprotect` per view.
    fn protect_range(&self, page: PageIdx, count: u32, access: Access) {
        if count == 0 {
            return;
        }
        if access == Access::Write {
            (page..page + count).for_each(|p| self.set_dirty(p));
        }
        for v in &self.views {
            protect_view(v, page, count, access);
        }
    }

    fn read_page(&self, page: PageIdx) -> Payload {
        // SAFETY: the runtime view is mapped read-write for `maplen` bytes
        // and the page lies inside it; no one else writes through it while
        // the runtime thread (the only user) reads.
        Payload::from_page(unsafe { std::slice::from_raw_parts(self.page_ptr(page), PAGE_SIZE) })
    }

    fn is_dirty(&self, page: PageIdx) -> bool {
        self.dirty[page as usize / 64].get() & (1 << (page % 64)) != 0
    }

    fn set_dirty(&self, page: PageIdx) {
        let w = &self.dirty[page as usize / 64];
        w.set(w.get() | 1 << (page % 64));
    }

    /// Puts a page's bytes into the memfd. A page never written here is a
    /// hole: a zero page needs nothing, and its bytes are returned, to go
    /// in with [`Self::write_run`] (called before the page opens or is
    /// read); otherwise they are copied in now.
    fn write_page(&self, page: PageIdx, payload: Payload) -> Option<Vec<u8>> {
        if !self.is_dirty(page) {
            let Payload::Bytes(b) = payload else { return None };
            self.set_dirty(page);
            return Some(b);
        }
        // SAFETY: as in `read_page`; the program cannot access the page
        // (its views are PROT_NONE while a request is outstanding).
        payload.fill(unsafe { std::slice::from_raw_parts_mut(self.page_ptr(page), PAGE_SIZE) });
        None
    }

    /// Writes the bytes of neighbouring pages `first..` (holes, see
    /// [`Self::write_page`]) with one `pwritev`: the kernel allocates each
    /// page without the runtime taking a page fault on its view or zeroing
    /// it first, and one system call serves a read-ahead's batch.
    fn write_run(&self, first: PageIdx, pages: &[Vec<u8>]) {
        static ZERO: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        let mut iov = Vec::with_capacity(pages.len() * 2);
        for (i, b) in pages.iter().enumerate() {
            iov.push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
            // Up to the next page; the last page's tail stays a hole's zeros.
            if i + 1 < pages.len() && b.len() < PAGE_SIZE {
                iov.push(libc::iovec {
                    iov_base: ZERO.as_ptr() as *mut libc::c_void,
                    iov_len: PAGE_SIZE - b.len(),
                });
            }
        }
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // SAFETY: the iovecs point into `pages` and ZERO, alive for the
        // call, with their lengths; the range lies inside our memfd (the
        // protocol checked the pages).
        let n = unsafe {
            libc::pwritev(
                self._fd.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                (first as usize * PAGE_SIZE) as libc::off_t,
            )
        };
        if n != total as isize {
            // Short or failed (out of memory): copy through the mapping,
            // which reports it the way every other access to it would.
            for (i, b) in pages.iter().enumerate() {
                let page = first + i as PageIdx;
                // SAFETY: as in `write_page`.
                let dst = unsafe { std::slice::from_raw_parts_mut(self.page_ptr(page), PAGE_SIZE) };
                dst[..b.len()].copy_from_slice(b);
                dst[b.len()..].fill(0);
            }
        }
    }
}

fn protect_view(v: &View, page: PageIdx, count: u32, access: Access) {
    let prot = match access {
        Access::Invalid => libc::PROT_NONE,
        Access::Read => libc::PROT_READ,
        Access::Write if v.readonly => libc::PROT_READ,
        Access::Write => libc::PROT_READ | libc::PROT_WRITE,
    };
    let (addr, len) = (v.addr + page as usize * PAGE_SIZE, count as usize * PAGE_SIZE);
    // SAFETY: the view is mapped (it is in the table) and the pages are
    // inside it (the protocol checked them against the segment's size);
    // changing their protection affects only our mapping.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    if r != 0 {
        error!("mprotect failed: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for &p in &self.watch {
            self.unmark_open(p, 1);
        }
        // SAFETY: `rt` was returned by mmap for `maplen` bytes and nothing
        // refers to it any more.
        unsafe { libc::munmap(self.rt as *mut libc::c_void, self.maplen) };
    }
}

struct State {
    me: NodeId,
    started: Instant,
    protocol: NodeProtocol,
    /// Bytes of pages never written at this node, waiting to go into the
    /// memfd in runs (`Segment::write_run`); written before any page
    /// opens or is read, so empty outside [`State::apply`].
    writes: Vec<(SegId, PageIdx, Vec<u8>)>,
    /// Most pages requested ahead of a run of faults (`KDIPC_READAHEAD`).
    readahead: u32,
    /// `KDIPC_STATS=1`: print the figures at exit.
    print_stats: bool,
    /// Semaphore sets lent to this node.
    sems: LocalSems,
    /// Their values as the nameserver last heard them.
    synced: HashMap<i32, SetState>,
    /// The figures the nameserver last heard: the node's and per object.
    reported: (stats::Stats, Vec<stats::ObjStats>),
    transport: Transport,
    segs: HashMap<SegId, Segment>,
    /// Calls to the nameserver waiting for its answer (asked again of a
    /// restarted nameserver).
    calls: HashMap<u64, (Call, oneshot::Sender<Reply>)>,
    /// Connections to a nameserver that restarted since: whatever still
    /// comes on them is from the past.
    stale_ns: Vec<usize>,
    /// Faulting threads per page: (slot, wants write).
    waiters: HashMap<(SegId, PageIdx), Vec<(usize, bool)>>,
    /// Each program thread's last fault (see [`State::moved_on`]).
    last_faults: Vec<LastFault>,
    /// The instruction of the last write fault (see `NodeProtocol::tick`).
    last_write_pc: usize,
    /// Releases outstanding per segment, and who waits for them.
    releasing: HashMap<SegId, (usize, Vec<oneshot::Sender<()>>)>,
    wake_at: Option<u64>,
    /// The process is exiting: connections close on purpose.
    closing: bool,
    /// A detach did not complete (pages may still be here): the exit is
    /// not a clean one (see [`Goodbye`]).
    unclean: bool,
    /// Cut off from the nameserver for longer than the lease: this node
    /// was declared dead. Its pages are closed (accesses get `SIGBUS`),
    /// every call fails with `EIDRM`, peers' messages are ignored.
    fenced: bool,
}

type Shared = Rc<RefCell<State>>;

/// A program thread's last fault: the pages it asked for together.
#[derive(Clone, Copy, Debug)]
struct LastFault {
    thread: usize,
    pc: usize,
    seg: SegId,
    first: PageIdx,
    count: u32,
}

impl LastFault {
    fn covers(&self, seg: SegId, page: PageIdx) -> bool {
        self.seg == seg && page >= self.first && page - self.first < self.count
    }
}

/// More threads than this remembered: the list starts again.
const MAX_LAST_FAULTS: usize = 1024;

/// Neighbouring pages to open together (see [`State::apply`]): `first..=last`.
struct OpenRun {
    seg: SegId,
    first: PageIdx,
    last: PageIdx,
    access: Access,
}

impl State {
    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn call(&mut self, call: Call) -> oneshot::Receiver<Reply> {
        self.call_as(next_call_id(), call)
    }

    fn call_as(&mut self, id: u64, call: Call) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        if self.fenced {
            let _ = tx.send(Reply::Err(Errno(libc::EIDRM)));
            return rx;
        }
        if self.closing {
            // The node has shut down: the caller gets an error at once.
            return rx;
        }
        self.calls.insert(id, (call.clone(), tx));
        self.transport.send(MANAGER, Msg::Call { id, call });
        rx
    }

    /// Carries out the protocol's actions, in order, except that the
    /// `mprotect`s of neighbouring pages are made in one call: a run of
    /// openings (`SetAccess` to read or write, interleaved with the
    /// `Install`s of other pages, as a batch of `Data` gives them) is
    /// opened at once before its threads wake; a run of revocations, or of
    /// `SendPage`s (an owner serving a read-ahead), is revoked at once
    /// before any of its pages is read or anything is sent. Each call
    /// changes the protection of one range, so the program's threads take
    /// one TLB shoot-down per run instead of one per page. Opening later
    /// or revoking earlier than the protocol did is safe: the protocol's
    /// state is already the one after the actions, a thread that faults
    /// meanwhile is served from it after this returns, and a page never
    /// appears twice in a run (runs are strictly ascending).
    fn apply(&mut self, actions: &mut Vec<Action>) {
        let mut it = std::mem::take(actions).into_iter().peekable();
        let mut open: Option<OpenRun> = None;
        while let Some(a) = it.next() {
            match a {
                Action::Send { to, msg } => {
                    tracing::trace!(to, ?msg, "send");
                    self.transport.send(to, Msg::Coherence(msg))
                }
                Action::SetAccess { seg, page, access: Access::Invalid } => {
                    self.flush_open(&mut open);
                    // The run may span messages sent between its pages (each
                    // invalidation's InvAck): they go after the whole run is
                    // revoked, which only delays them.
                    let mut last = page;
                    let mut sends = Vec::new();
                    loop {
                        match it.peek() {
                            Some(Action::SetAccess { seg: s, page: p, access: Access::Invalid })
                                if *s == seg && Some(*p) == last.checked_add(1) =>
                            {
                                last = *p;
                                it.next();
                            }
                            Some(Action::Send { .. }) => sends.extend(it.next()),
                            _ => break,
                        }
                    }
                    if let Some(s) = self.segs.get_mut(&seg) {
                        s.unmark(page, last - page + 1);
                        s.protect_range(page, last - page + 1, Access::Invalid);
                        fault::membarrier();
                    }
                    for a in sends {
                        if let Action::Send { to, msg } = a {
                            tracing::trace!(to, ?msg, "send");
                            self.transport.send(to, Msg::Coherence(msg));
                        }
                    }
                }
                Action::SetAccess { seg, page, access } => {
                    if let Some(r) = open.as_mut() {
                        if r.seg == seg && r.access == access && Some(page) == r.last.checked_add(1) {
                            r.last = page;
                            continue;
                        }
                    }
                    self.flush_open(&mut open);
                    open = Some(OpenRun { seg, first: page, last: page, access });
                }
                Action::Install { seg, page, payload } => {
                    if open.as_ref().is_some_and(|r| r.seg == seg && (r.first..=r.last).contains(&page)) {
                        self.flush_open(&mut open);
                    }
                    stats::page_in(seg, if let Payload::Bytes(b) = &payload { b.len() } else { 0 });
                    if self.segs.get(&seg).is_some_and(|s| s.is_dirty(page)) {
                        // Its bytes may be among those waiting: they go first.
                        self.flush_writes();
                    }
                    if let Some(b) = self.segs.get(&seg).and_then(|s| s.write_page(page, payload)) {
                        self.writes.push((seg, page, b));
                    }
                }
                Action::SendPage { seg, page, to, acks, version, keep } => {
                    self.flush_open(&mut open);
                    let mut run = vec![(page, to, acks, version)];
                    while let Some(Action::SendPage { seg: s, page: p, keep: k, .. }) = it.peek() {
                        if *s != seg || *k != keep || Some(*p) != run.last().and_then(|r| r.0.checked_add(1))
                        {
                            break;
                        }
                        let Some(Action::SendPage { page, to, acks, version, .. }) = it.next() else { break };
                        run.push((page, to, acks, version));
                    }
                    let Some(s) = self.segs.get_mut(&seg) else {
                        warn!(seg, page, pages = run.len(), "pages to send of a segment no longer attached");
                        continue;
                    };
                    s.unmark(page, run.len() as u32);
                    s.protect_range(page, run.len() as u32, keep);
                    fault::membarrier();
                    for (page, to, acks, version) in run {
                        let payload = s.read_page(page);
                        stats::page_out(seg, if let Payload::Bytes(b) = &payload { b.len() } else { 0 });
                        // An owner keeps a read copy when it serves a read,
                        // none when it hands the page to a writer.
                        let write = keep == Access::Invalid;
                        let data = CoherenceMsg::Data { seg, page, write, acks, version, payload };
                        tracing::trace!(to, msg = ?data, "send");
                        self.transport.send(to, Msg::Coherence(data));
                    }
                }
                Action::ReleasePage { seg, page, copyset, version } => {
                    self.flush_open(&mut open);
                    let Some(s) = self.segs.get(&seg) else { continue };
                    let bytes = s.read_page(page);
                    stats::page_out(seg, if let Payload::Bytes(b) = &bytes { b.len() } else { 0 });
                    let owned = Some((bytes, copyset, version));
                    self.transport.send(MANAGER, Msg::Coherence(CoherenceMsg::Release { seg, page, owned }));
                }
                Action::Released { seg, .. } => {
                    if let Some(r) = self.releasing.get_mut(&seg) {
                        r.0 -= 1;
                        if r.0 == 0 {
                            let (_, waiters) = self.releasing.remove(&seg).unwrap_or_default();
                            for w in waiters {
                                let _ = w.send(());
                            }
                        }
                    }
                }
                Action::Lost { seg, page } => {
                    self.flush_open(&mut open);
                    error!(seg, page, "page lost: its only current copy died; faulting threads get SIGBUS");
                    for (slot, _) in self.waiters.remove(&(seg, page)).unwrap_or_default() {
                        fault::complete(slot, false);
                    }
                }
                Action::WakeAt(t) => {
                    self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
                }
                Action::Watch { seg, page } => {
                    if let Some(s) = self.segs.get_mut(&seg) {
                        s.watch.insert(page);
                    }
                }
            }
        }
        self.flush_open(&mut open);
    }

    /// Opens a run of pages (see [`Self::apply`]) and wakes their threads.
    /// Read-ahead marks nobody waits for stay closed (see
    /// [`Self::read_ahead`]); the rest opens in as few calls as possible.
    fn flush_open(&mut self, open: &mut Option<OpenRun>) {
        self.flush_writes();
        let Some(r) = open.take() else { return };
        let Some(s) = self.segs.get_mut(&r.seg) else { return };
        let mut start = r.first;
        for page in r.first..=r.last {
            if s.marks.contains(&page) || s.watch.contains(&page) {
                if !self.waiters.contains_key(&(r.seg, page)) {
                    s.protect_range(start, page - start, r.access);
                    start = page + 1;
                    // A watched copy (not a read-ahead mark): the first read
                    // opens it in the fault handler.
                    if r.access == Access::Read && !s.marks.contains(&page) {
                        s.mark_open(page);
                    }
                    continue;
                }
                s.marks.remove(&page);
                if s.watch.remove(&page) {
                    s.unmark_open(page, 1);
                    self.protocol.touched(r.seg, page);
                }
            }
        }
        s.protect_range(start, r.last + 1 - start, r.access);
        for page in r.first..=r.last {
            self.wake(r.seg, page, r.access);
        }
    }

    /// Writes the bytes waiting in `writes`, one `pwritev` per run of
    /// neighbouring pages.
    fn flush_writes(&mut self) {
        let mut writes = std::mem::take(&mut self.writes);
        let mut rest = writes.as_mut_slice();
        while let Some(&(seg, first, _)) = rest.first() {
            let n = 1 + rest
                .windows(2)
                .take(MAX_WRITE_RUN - 1)
                .take_while(|w| w[1].0 == seg && Some(w[1].1) == w[0].1.checked_add(1))
                .count();
            let (run, tail) = rest.split_at_mut(n);
            if let Some(s) = self.segs.get(&seg) {
                let pages: Vec<Vec<u8>> = run.iter_mut().map(|w| std::mem::take(&mut w.2)).collect();
                s.write_run(first, &pages);
            }
            rest = tail;
        }
    }

    /// Wakes the threads the new access satisfies; asks again for the
    /// others (they want write and got read).
    fn wake(&mut self, seg: SegId, page: PageIdx, access: Access) {
        let Some(list) = self.waiters.remove(&(seg, page)) else { return };
        let mut rest = Vec::new();
        for (slot, write) in list {
            if !write || access == Access::Write {
                fault::complete(slot, true);
            } else {
                rest.push((slot, write));
            }
        }
        if !rest.is_empty() {
            let mut out = Vec::new();
            let now = self.now();
            let present = self.protocol.fault(seg, page, true, now, &mut out);
            if let Ok(false) = present {
                self.waiters.insert((seg, page), rest.clone());
            }
            // Open the page (apply) before waking anyone on it.
            self.apply(&mut out);
            match present {
                Ok(false) => {}
                Ok(true) => rest.iter().for_each(|&(slot, _)| fault::complete(slot, true)),
                Err(e) => {
                    error!("fault: {e}");
                    rest.iter().for_each(|&(slot, _)| fault::complete(slot, true));
                }
            }
        }
    }

    /// Faults posted by the program's threads.
    fn faults(&mut self) {
        let mut posted = Vec::new();
        fault::take_posted(&mut posted);
        let mut out = Vec::new();
        if self.fenced {
            for fault::Posted { slot, .. } in posted {
                fault::complete(slot, false);
            }
            return;
        }
        // Before any epoch begins here: the watched copies the handler
        // opened were read before these faults.
        self.reconcile_opened();
        for fault::Posted { slot, addr, write, thread, pc } in posted {
            let found = self.segs.iter().find_map(|(&id, s)| {
                s.views
                    .iter()
                    .find(|v| addr >= v.addr && addr < v.addr + s.npages as usize * PAGE_SIZE)
                    .map(|v| (id, ((addr - v.addr) / PAGE_SIZE) as PageIdx))
            });
            let Some((seg, page)) = found else {
                // Detached meanwhile: the retried access is not ours.
                fault::complete(slot, true);
                continue;
            };
            let now = self.now();
            // A write at another instruction than the last write fault (or
            // the first after a `semop`) begins an epoch: a loop storing
            // through pages faults at one instruction, a progress flag's
            // store at another.
            if write && pc != self.last_write_pc {
                self.last_write_pc = pc;
                self.protocol.tick(Some(seg), now, &mut out);
            }
            // A watched push: it opens here, with the watched pages after
            // it (a row spans pages), and counts as used.
            let watched = self.segs.get_mut(&seg).is_some_and(|s| s.watch.remove(&page));
            if watched {
                let mut n = 1;
                while n <= GROUP && self.segs.get_mut(&seg).is_some_and(|s| s.watch.remove(&(page + n))) {
                    n += 1;
                }
                for p in page..page + n {
                    self.protocol.touched(seg, p);
                }
                if let Some(s) = self.segs.get(&seg) {
                    s.unmark_open(page, n);
                    s.protect_range(page, n, self.protocol.access(seg, page));
                }
            }
            // A read-ahead mark: the page (if it arrived) opens here, and
            // the stream's next window is asked for while the program
            // still has the rest of this one to work through.
            // Its twin opens too (one local fault per window, not two).
            let marked = self.segs.get_mut(&seg).is_some_and(|s| s.marks.remove(&page));
            if marked {
                for p in [page.wrapping_sub(1), page, page + 1] {
                    let Some(s) = self.segs.get_mut(&seg) else { break };
                    if p != page && !s.marks.remove(&p) {
                        continue;
                    }
                    let access = self.protocol.access(seg, p);
                    if access != Access::Invalid {
                        s.protect(p, access);
                    }
                }
            }
            let group = self.protocol.group(seg, page, write, GROUP.min(self.readahead));
            tracing::trace!(seg, page, write, pc, group, "fault");
            // Not a watched push's first touch: a thread that writes a
            // page, reads its neighbour's pushed row, and writes the page
            // again (two rows to a page) has not moved on from the page,
            // and pushing it now would send it half written.
            if !watched {
                self.moved_on(LastFault { thread, pc, seg, first: page, count: 1 + group }, now, &mut out);
            }
            let present = self.protocol.fault(seg, page, write, now, &mut out);
            if let Ok(false) = present {
                self.waiters.entry((seg, page)).or_default().push((slot, write));
                for p in page + 1..=page + group {
                    // Errors (a page being released) only mean: not this one.
                    let _ = self.protocol.fault(seg, p, write, now, &mut out);
                }
                self.read_ahead(seg, page + group, write, now, &mut out);
            } else if marked {
                self.read_ahead(seg, page, write, now, &mut out);
            } else if present.is_ok() {
                // Upgraded here (pages given back together open together).
                for p in page + 1..=page + group {
                    let _ = self.protocol.fault(seg, p, write, now, &mut out);
                }
            }
            // Open the page (apply) before waking the thread.
            self.apply(&mut out);
            match present {
                Ok(false) => {}
                Ok(true) => fault::complete(slot, true),
                Err(e) => {
                    error!("fault: {e}");
                    fault::complete(slot, true);
                }
            }
        }
    }

    /// The watched copies the fault handler opened since the last call
    /// (see `fault::mark_open`) were used: as if touched here.
    fn reconcile_opened(&mut self) {
        let mut opened = Vec::new();
        fault::take_opened(&mut opened);
        for addr in opened {
            let found = self.segs.iter_mut().find_map(|(&id, s)| {
                let view = s
                    .views
                    .iter()
                    .find(|v| addr >= v.addr && addr < v.addr + s.npages as usize * PAGE_SIZE)?;
                Some((id, ((addr - view.addr) / PAGE_SIZE) as PageIdx, s))
            });
            let Some((seg, page, s)) = found else { continue };
            if !s.watch.remove(&page) {
                continue;
            }
            if s.views.len() > 1 {
                // Opened in the view read: the others open too.
                s.unmark_open(page, 1);
                s.protect_range(page, 1, Access::Read);
            }
            self.protocol.touched(seg, page);
        }
    }

    /// A program thread faults again. If its previous fault was at another
    /// instruction, the instruction that faulted then has run (a faulting
    /// instruction restarts at the same address), so the hold of the pages
    /// it was granted (`KDIPC_HOLD_US`, there so that it gets to run) ends
    /// now, unless another thread's last fault was on them too: what waits
    /// for them is served, and a page it wrote is pushed at once. A program
    /// that writes a progress flag and then waits for its neighbour's does
    /// not keep the neighbour waiting for the rest of the hold.
    fn moved_on(&mut self, f: LastFault, now: u64, out: &mut Vec<Action>) {
        if self.last_faults.len() >= MAX_LAST_FAULTS {
            self.last_faults.clear();
        }
        let prev = match self.last_faults.iter_mut().find(|l| l.thread == f.thread) {
            Some(l) => std::mem::replace(l, f),
            None => {
                self.last_faults.push(f);
                return;
            }
        };
        // pc 0: a system call's buffer, brought in page by page before the
        // call runs: its holds run out.
        if prev.pc == 0 || f.pc == 0 || prev.pc == f.pc || prev.covers(f.seg, f.first) {
            return;
        }
        for page in prev.first..prev.first + prev.count {
            if self.last_faults.iter().any(|l| l.covers(prev.seg, page)) {
                continue;
            }
            // Errors (a segment detached meanwhile) only mean: nothing held.
            let _ = self.protocol.end_hold(prev.seg, page, now, out);
        }
    }

    /// A program thread entered a call (a `semop`): the instruction it
    /// last faulted on has run, as when it faults elsewhere (see
    /// [`Self::moved_on`]).
    fn left_fault(&mut self, thread: usize, now: u64, out: &mut Vec<Action>) {
        let Some(i) = self.last_faults.iter().position(|l| l.thread == thread) else { return };
        let prev = self.last_faults.swap_remove(i);
        if prev.pc == 0 {
            return;
        }
        for page in prev.first..prev.first + prev.count {
            if self.last_faults.iter().any(|l| l.covers(prev.seg, page)) {
                continue;
            }
            // Errors (a segment detached meanwhile) only mean: nothing held.
            let _ = self.protocol.end_hold(prev.seg, page, now, out);
        }
    }

    /// Asks for the pages after a fault in a run (see [`ReadAhead`]); no
    /// thread waits for them, they open when they arrive. Reads request
    /// each page from its owner. Writes only claim pages nobody has
    /// written (zero pages at home, in one message): taking pages ahead
    /// from other writers made this node the designated owner of pages its
    /// neighbours were writing, and exits racing those designations
    /// stranded pages.
    fn read_ahead(&mut self, seg: SegId, page: PageIdx, write: bool, now: u64, out: &mut Vec<Action>) {
        let Some(s) = self.segs.get_mut(&seg) else { return };
        let n = s.ra.next(page, write, self.readahead);
        let end = page.saturating_add(n).min(s.npages - 1);
        if n == 0 || end == page {
            return;
        }
        let (first, count) = if write {
            (page + 1, self.protocol.claim(seg, page + 1, end - page, out))
        } else {
            let mut asked = Vec::new();
            for p in page + 1..=end {
                if self.protocol.read_ahead(seg, p, now, out) {
                    asked.push(p);
                }
            }
            // Normally one run (the pages after the previous window).
            let first = asked.first().copied().unwrap_or(0);
            let run = asked.iter().enumerate().take_while(|&(i, &p)| p == first + i as u32).count();
            (first, run as u32)
        };
        // Like the kernel's PG_readahead: two pages in the middle of the
        // new window stay closed when they arrive; the program's first
        // access to either (two, so that a walk with a stride of two pages
        // meets one) faults locally, opens it and asks for the next window
        // while the program works through the rest of this one, so that a
        // stream that keeps up with its pages never waits for a round trip.
        if count >= MARK_MIN {
            let Some(s) = self.segs.get_mut(&seg) else { return };
            let mid = first + count / 2;
            s.marks.insert(mid);
            s.marks.insert(mid + 1);
        }
    }

    /// A message from a peer. A coherence message's actions are added to
    /// `out`, for the caller to apply together with those of the messages
    /// that arrived with it (see [`Self::apply`]); any other message applies
    /// `out` first.
    fn inbound(&mut self, from: Option<NodeId>, msg: Msg, conn: &quinn::Connection, out: &mut Vec<Action>) {
        if self.fenced || (from == Some(MANAGER) && self.stale_ns.contains(&conn.stable_id())) {
            return;
        }
        if !matches!(msg, Msg::Coherence(_)) {
            self.apply(out);
        }
        match msg {
            Msg::Restarted { epoch } if from == Some(MANAGER) => self.rejoin(conn, epoch),
            Msg::Coherence(m) => {
                if let CoherenceMsg::Invalidate { seg, .. } = m {
                    stats::invalidation(seg);
                }
                let Some(from) = from else {
                    return crate::transport::bad(conn, "coherence message before Hello with an id");
                };
                let now = self.now();
                tracing::trace!(from, msg = ?m, "received");
                if let Err(e) = self.protocol.handle(from, m, now, out) {
                    crate::transport::bad(conn, &format!("protocol: {e}"));
                }
            }
            Msg::Reply { id, reply } => {
                if let Some((_, tx)) = self.calls.remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            Msg::PeerAddr { node, addr } => {
                if node != self.me {
                    self.transport.set_addr(node, addr);
                }
            }
            Msg::NodeGone { node, left } if from == Some(MANAGER) => {
                self.peer_dead(node, left);
                // What this node holds of the pages the dead node held or
                // was handing over, for the manager to recover them.
                let mut report = self.protocol.report(node);
                for (seg, page, _, payload) in report.copies.iter_mut() {
                    if let Some(s) = self.segs.get(seg) {
                        *payload = s.read_page(*page);
                    }
                }
                self.transport.send(MANAGER, Msg::Recovery { dead: node, report });
            }
            Msg::SemLend { id, state } if from == Some(MANAGER) => {
                self.synced.insert(id, state.clone());
                lock_sems(&self.sems).adopt(id, state);
            }
            Msg::HeldQuery { query } if from == Some(MANAGER) => {
                let segs = self.held_pages();
                self.transport.send(MANAGER, Msg::Held { query, segs });
            }
            Msg::SemRecall { id } if from == Some(MANAGER) => {
                // Not held: it came back already (would have blocked here).
                if let Some(state) = lock_sems(&self.sems).give_back(id) {
                    self.transport.send(MANAGER, Msg::SemReturn { id, state });
                }
            }
            Msg::Call { .. }
            | Msg::Hello { .. }
            | Msg::Stats { .. }
            | Msg::Held { .. }
            | Msg::HeldQuery { .. }
            | Msg::NodeGone { .. }
            | Msg::Recovery { .. }
            | Msg::SemLend { .. }
            | Msg::SemRecall { .. }
            | Msg::SemReturn { .. }
            | Msg::Restarted { .. }
            | Msg::Rejoin { .. }
            | Msg::SemSync { .. } => crate::transport::bad(conn, "unexpected message at a node"),
        }
    }

    /// Sends this node's figures to the nameserver when they changed.
    fn report_stats(&mut self) {
        let now = (stats::snapshot(), stats::objects());
        if now != self.reported {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            let msg = Msg::Stats { pid, stats: now.0.clone(), objects: now.1.clone() };
            self.transport.send(MANAGER, msg);
            self.reported = now;
        }
    }

    /// How many pages of each attached segment this node can read or
    /// write now (`kdipc ipcs`' copies column asks).
    fn held_pages(&self) -> Vec<(SegId, u32)> {
        let mut v: Vec<(SegId, u32)> = self
            .segs
            .iter()
            .map(|(&id, s)| {
                (id, (0..s.npages).filter(|&p| self.protocol.access(id, p) != Access::Invalid).count() as u32)
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Tells the nameserver the values of the sets lent here that changed
    /// since it last heard: if this node dies, they go home as reported.
    fn sync_sems(&mut self) {
        let sems = self.sems.clone();
        let local = lock_sems(&sems);
        let ids = local.ids();
        self.synced.retain(|id, _| ids.contains(id));
        for id in ids {
            let Some(now) = local.state_of(id) else { continue };
            if self.synced.get(&id) != Some(&now) {
                self.transport.send(MANAGER, Msg::SemSync { id, state: now.clone() });
                self.synced.insert(id, now);
            }
        }
    }

    /// The nameserver restarted (from its state on disk) and reached this
    /// node on `conn`: the old connection and whatever was on its way on it
    /// are gone. Tells it what this node holds and waits for of every page
    /// (the messages to the manager lost with it are covered by that) and
    /// asks again every call not answered (the nameserver answers a call it
    /// had done from its record, without doing it twice).
    fn rejoin(&mut self, conn: &quinn::Connection, epoch: u64) {
        if let Some(old) = self.transport.rebind(MANAGER, conn.clone()) {
            if old.stable_id() != conn.stable_id() {
                self.stale_ns.push(old.stable_id());
                old.close(0u32.into(), b"nameserver restarted");
            }
        }
        warn!(epoch, "the nameserver restarted: rejoining");
        let mut pages = self.protocol.rejoin();
        for r in pages.iter_mut() {
            if let (Some((payload, _, _)), Some(s)) = (r.releasing.as_mut(), self.segs.get(&r.seg)) {
                *payload = s.read_page(r.page);
            }
        }
        self.transport.send(MANAGER, Msg::Rejoin { pages });
        let mut ids: Vec<u64> = self.calls.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let call = self.calls[&id].0.clone();
            self.transport.send(MANAGER, Msg::Call { id, call });
        }
        self.reported = Default::default();
    }

    /// A connection was lost or a node could not be reached.
    fn peer_lost(&mut self, node: Option<NodeId>, conn: Option<&quinn::Connection>) {
        if node == Some(MANAGER) && conn.is_some_and(|c| self.stale_ns.contains(&c.stable_id())) {
            return; // The connection to a nameserver that restarted since.
        }
        match node {
            Some(MANAGER) => {
                if self.closing {
                    // Calls waiting for it fail now rather than never.
                    self.calls.clear();
                } else {
                    self.fence();
                }
            }
            // A connection to a peer ended: the next message dials again.
            // Only the nameserver declares a peer dead (`NodeGone`): a
            // connection can fail while the peer lives (a dial during a cut
            // shorter than the lease), and a peer taken for dead here but
            // not by the manager would wait for ever for what this node
            // then refuses to send it.
            Some(n) => self.transport.forget(n),
            None => {}
        }
    }

    /// The nameserver declared `n` dead.
    fn peer_dead(&mut self, n: NodeId, left: bool) {
        self.transport.forget(n);
        let mut out = Vec::new();
        let now = self.now();
        if let Err(e) = self.protocol.peer_gone(n, left, now, &mut out) {
            error!("peer gone: {e}");
        }
        self.apply(&mut out);
    }

    /// The nameserver is unreachable for longer than the lease: it declared
    /// this node dead, gave its pages up and applied its undo adjustments.
    /// Nothing held here can be trusted any more: every page closes (an
    /// access raises `SIGBUS`), calls fail with `EIDRM` (a set or segment
    /// this node can no longer reach is, for it, removed), the sets lent
    /// here are dropped. The process must start again to rejoin.
    fn fence(&mut self) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        error!(
            lease_ms = crate::config::lease().as_millis() as u64,
            "cut off from the nameserver for longer than the lease: this node is out of the cluster; \
             its pages are no longer trusted (accesses get SIGBUS) and calls fail with EIDRM"
        );
        for (&id, s) in &self.segs {
            for page in 0..s.npages {
                if self.protocol.access(id, page) != Access::Invalid {
                    s.protect(page, Access::Invalid);
                }
            }
        }
        for (_, list) in self.waiters.drain() {
            for (slot, _) in list {
                fault::complete(slot, false);
            }
        }
        for (_, (_, tx)) in self.calls.drain() {
            let _ = tx.send(Reply::Err(Errno(libc::EIDRM)));
        }
        for (_, (_, waiters)) in self.releasing.drain() {
            for w in waiters {
                let _ = w.send(());
            }
        }
        let sems = self.sems.clone();
        let mut local = lock_sems(&sems);
        for id in local.ids() {
            let _ = local.give_back(id);
        }
    }

    fn timeout(&mut self) {
        let now = self.now();
        self.wake_at = None;
        let mut out = Vec::new();
        if let Err(e) = self.protocol.handle_timeout(now, &mut out) {
            error!("timeout: {e}");
        }
        self.apply(&mut out);
    }
}

/// The timer of protocol holds, with microsecond precision: tokio's timer
/// wheel rounds a sleep up to whole milliseconds, so a request that
/// reached a page in its 100 µs hold waited 1–2 ms.
struct HoldTimer {
    fd: AsyncFd<OwnedFd>,
    /// The protocol time it is armed for.
    armed: Option<u64>,
}

impl HoldTimer {
    fn new() -> std::io::Result<Self> {
        // SAFETY: timerfd_create with valid flags; the result is checked.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor until it is dropped, and
        // nothing else closes it.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(HoldTimer { fd, armed: None })
    }

    /// Fires after `delay` µs (at once for 0), or never (`None`).
    fn arm(&self, delay: Option<u64>) {
        let value = match delay {
            // A zero value disarms: fire after 1 ns instead.
            Some(us) => libc::timespec {
                tv_sec: (us / 1_000_000) as _,
                tv_nsec: ((us % 1_000_000) * 1000).max(1) as _,
            },
            None => libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        let spec =
            libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: a valid timerfd and a valid itimerspec; the old value is
        // not asked for.
        let r = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r != 0 {
            error!("timerfd_settime: {}", std::io::Error::last_os_error());
        }
    }

    /// Reads the expiration count (a raw system call: the shim hooks `read`).
    fn consume(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer.
        unsafe { libc::syscall(libc::SYS_read, self.fd.as_raw_fd(), buf.as_mut_ptr(), 8usize) };
    }
}

/// Starts the nameserver on this machine if none answers (auto mode).
fn ensure_nameserver(config: &Config) -> Result<(), String> {
    if crate::certs::exists(&config.cert_dir) && udp_port_in_use(config.nameserver) {
        return Ok(());
    }
    let bin = kdipc_binary();
    debug!(?bin, "starting a nameserver");
    let status = std::process::Command::new(&bin)
        .args(["nameserver", "--daemon", "--listen", &config.nameserver.to_string()])
        .arg("--cert-dir")
        .arg(&config.cert_dir)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot start the nameserver {}: {e} (set KDIPC_BIN)", bin.display()))?;
    if !status.success() {
        return Err(format!("the nameserver {} failed to start ({status})", bin.display()));
    }
    Ok(())
}

/// Whether something is bound to this UDP address on this machine.
pub fn udp_port_in_use(addr: std::net::SocketAddr) -> bool {
    matches!(std::net::UdpSocket::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// `kdipc` beside the library that contains this code, or `KDIPC_BIN`.
pub(crate) fn kdipc_binary() -> std::path::PathBuf {
    if let Some(b) = std::env::var_os("KDIPC_BIN") {
        return b.into();
    }
    // SAFETY: dladdr only reads; the address is a function of this library.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(kdipc_binary as *const libc::c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            let lib = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy().into_owned();
            if let Some(dir) = std::path::Path::new(&lib).parent() {
                let cand = dir.join("kdipc");
                if cand.is_file() {
                    return cand;
                }
            }
        }
    }
    "kdipc".into()
}

async fn run(
    config: Config,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    ready: crossbeam::channel::Sender<Result<NodeId, String>>,
    sems: LocalSems,
) {
    let state = match connect(&config, sems).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let (state, mut inbound) = state;
    // After `connect`: a nameserver it started must not inherit the policy.
    raise_priority(config.rt_prio);
    // SAFETY: eventfd with valid flags; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        let _ = ready.send(Err(format!("eventfd: {}", std::io::Error::last_os_error())));
        return;
    }
    // SAFETY: `efd` is a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    if let Err(e) = fault::install(efd.as_raw_fd()) {
        let _ = ready.send(Err(format!("installing the SIGSEGV handler: {e}")));
        return;
    }
    fault::membarrier_register();
    fault::set_spin(config.spin_us);
    // Readable only: an eventfd is always writable, and each read of it
    // signalled that (`EPOLLOUT`): an event for nothing.
    // SAFETY: the AsyncFd owns the descriptor until it is dropped, and
    // nothing else closes it.
    let efd = match unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) } {
        Ok(f) => f,
        Err(e) => {
            let _ = ready.send(Err(format!("eventfd: {e:?}")));
            return;
        }
    };
    let _ = ready.send(Ok(state.me));
    let state: Shared = Rc::new(RefCell::new(state));
    let attach_lock = Rc::new(tokio::sync::Mutex::new(()));
    let mut sync = tokio::time::interval(SEM_SYNC);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timer = match HoldTimer::new() {
        Ok(t) => t,
        Err(e) => {
            error!("timerfd: {e}; the node stops");
            return;
        }
    };
    // Messages queued when the loop last let the writer tasks run.
    let mut sent = 0;
    loop {
        // Faults served and not yet woken (the runtime stayed busy): let
        // the tasks that send the replies queued meanwhile run first, if
        // any were.
        if fault::completed_pending() {
            if state.borrow().transport.queued() != sent {
                tokio::task::yield_now().await;
            }
            fault::wake_completed();
        }
        sent = state.borrow().transport.queued();
        let lent = !lock_sems(&state.borrow().sems).is_empty();
        let wake = state.borrow().wake_at;
        if wake != timer.armed {
            let now = state.borrow().now();
            if wake.is_some_and(|t| t <= now) {
                // Due already: no timer round trip through the kernel.
                state.borrow_mut().timeout();
                continue;
            }
            timer.arm(wake.map(|t| t.saturating_sub(now)));
            timer.armed = wake;
        }
        tokio::select! {
            biased;
            r = efd.readable() => {
                let Ok(mut guard) = r else { break };
                let mut buf = [0u8; 8];
                // A read empties the counter: clear the readiness at once
                // (it only clears what was seen before this guard, so a
                // fault posted after the read still wakes the loop) rather
                // than reading again to hear EAGAIN.
                // SAFETY: reading 8 bytes into an 8-byte buffer.
                unsafe { libc::syscall(libc::SYS_read, efd.as_raw_fd(), buf.as_mut_ptr(), 8usize) };
                guard.clear_ready();
                state.borrow_mut().faults();
            }
            Some(m) = inbound.recv() => {
                // Take what else has arrived too (up to INBOUND_BATCH) and
                // apply the actions of all of it together: a read-ahead's
                // requests or pages then cost one `mprotect` per run.
                let mut st = state.borrow_mut();
                let mut out = Vec::new();
                let mut next = Some(m);
                let mut n = 0;
                while let Some(m) = next {
                    match m {
                        Inbound::Msg { from, conn, msg } => st.inbound(from, msg, &conn, &mut out),
                        Inbound::Lost { node, conn } => {
                            st.apply(&mut out);
                            st.peer_lost(node, Some(&conn))
                        }
                        Inbound::Gone { node } => {
                            st.apply(&mut out);
                            st.peer_lost(Some(node), None)
                        }
                    }
                    n += 1;
                    next = if n < INBOUND_BATCH { inbound.try_recv().ok() } else { None };
                }
                st.apply(&mut out);
            }
            c = cmds.recv() => {
                match c {
                    None => break,
                    Some(Command::SemReturn { id, state: set }) => {
                        state.borrow_mut().transport.send(MANAGER, Msg::SemReturn { id, state: set })
                    }
                    Some(c) => {
                        tokio::task::spawn_local(command(state.clone(), attach_lock.clone(), c));
                    }
                }
            }
            r = timer.fd.readable() => {
                let Ok(mut guard) = r else { break };
                timer.consume();
                guard.clear_ready();
                timer.armed = None;
                state.borrow_mut().timeout();
            }
            _ = sync.tick(), if lent => state.borrow_mut().sync_sems(),
            _ = report.tick() => state.borrow_mut().report_stats(),
        }
    }
    fault::wake_completed();
}

async fn connect(
    config: &Config,
    sems: LocalSems,
) -> Result<(State, mpsc::UnboundedReceiver<Inbound>), String> {
    if config.auto {
        // Blocking here is fine: nothing else runs on this thread yet.
        ensure_nameserver(config)?;
    }
    let tls = crate::certs::load(&config.cert_dir).map_err(|e| e.to_string())?;
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut transport =
        Transport::bind(config.bind, tls, itx).map_err(|e| format!("binding {}: {e}", config.bind))?;
    transport.set_addr(MANAGER, config.nameserver);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    transport.send(MANAGER, Msg::Call { id: 0, call: Call::Register { pid } });
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut early = Vec::new();
    let me = loop {
        tokio::select! {
            m = irx.recv() => match m {
                Some(Inbound::Msg { msg: Msg::Reply { id: 0, reply: Reply::Registered { node } }, .. }) => break node,
                Some(Inbound::Msg { from, conn, msg }) => early.push((from, conn, msg)),
                Some(Inbound::Lost { .. } | Inbound::Gone { .. }) | None => {
                    return Err(format!(
                        "the nameserver at {} closed the connection or cannot be reached \
                         (another KDIPC version, or other credentials? see its log{})",
                        config.nameserver,
                        if config.auto {
                            "; a nameserver started by an older build is stopped with \
                             `pkill -f 'kdipc nameserver'`"
                        } else {
                            ""
                        }
                    ))
                }
            },
            _ = &mut deadline => return Err(format!("no answer from the nameserver at {}", config.nameserver)),
        }
    };
    info!(node = me, "registered");
    transport.set_me(me);
    let mut state = State {
        me,
        started: Instant::now(),
        protocol: NodeProtocol::new(me, config.hold_us),
        readahead: config.readahead,
        print_stats: config.stats,
        sems,
        synced: HashMap::new(),
        reported: Default::default(),
        transport,
        segs: HashMap::new(),
        calls: HashMap::new(),
        stale_ns: Vec::new(),
        waiters: HashMap::new(),
        writes: Vec::new(),
        last_faults: Vec::new(),
        last_write_pc: 0,
        releasing: HashMap::new(),
        wake_at: None,
        closing: false,
        unclean: false,
        fenced: false,
    };
    let mut out = Vec::new();
    for (from, conn, msg) in early {
        state.inbound(from, msg, &conn, &mut out);
    }
    state.apply(&mut out);
    Ok((state, irx))
}

async fn command(state: Shared, lock: Rc<tokio::sync::Mutex<()>>, c: Command) {
    match c {
        Command::Call(call, reply) => {
            let cancel = match &call {
                Call::Sem(SemCall::Cancel { token, .. }) => Some(*token),
                _ => None,
            };
            let rx = state.borrow_mut().call(call);
            let answer = rx.await.unwrap_or(Reply::Err(ENOMEM));
            if let (Some(token), Reply::Cancelled(true)) = (cancel, &answer) {
                // Withdrawn: no answer will come for it.
                state.borrow_mut().calls.remove(&token);
            }
            let _ = reply.send(answer);
        }
        Command::Waitable { id, call, reply, notify, thread } => {
            let rx = {
                let mut st = state.borrow_mut();
                // A `semop` synchronises like a progress flag's store: an
                // epoch begins (see `NodeProtocol::tick`), and what it gives
                // back leaves before the operation does. The calling thread
                // has moved on from its last fault: those pages' holds end,
                // and what they were written for is pushed now.
                let (now, mut out) = (st.now(), Vec::new());
                st.reconcile_opened();
                st.left_fault(thread, now, &mut out);
                st.protocol.tick(None, now, &mut out);
                st.last_write_pc = usize::MAX;
                st.apply(&mut out);
                st.call_as(id, call)
            };
            if let Ok(answer) = rx.await {
                let _ = reply.send(answer);
                let one: u64 = 1;
                // SAFETY: writing 8 bytes to the caller's eventfd, which
                // lives as long as its thread (thread-local, never closed
                // while a call is outstanding).
                unsafe { libc::write(notify, &one as *const u64 as *const libc::c_void, 8) };
            }
        }
        Command::Attach { id, addr, flags, reply } => {
            let _g = lock.lock().await;
            let _ = reply.send(attach(&state, id, addr, flags).await);
        }
        Command::Detach { addr, reply } => {
            let _g = lock.lock().await;
            let _ = reply.send(detach(&state, addr).await);
        }
        // Sent at once by the run loop, before any later command.
        Command::SemReturn { .. } => {}
        Command::Shutdown(reply) => {
            let _g = lock.lock().await;
            let addrs: Vec<usize> =
                state.borrow().segs.values().flat_map(|s| s.views.iter().map(|v| v.addr)).collect();
            let ids: Vec<SegId> = state.borrow().segs.keys().copied().collect();
            serve_held(&state, &ids).await;
            for a in addrs {
                if let Err(e) = detach(&state, a).await {
                    warn!("detaching at exit: {e:?}");
                }
            }
            // SEM_UNDO applies before the process is gone (its parent's
            // waitpid must see it applied, as with the kernel).
            let pid = Cred::current().pid;
            {
                // Undo on the sets lent here, which then go home.
                let mut st = state.borrow_mut();
                let sems = st.sems.clone();
                let mut local = lock_sems(&sems);
                local.process_exit(st.me, pid, now_secs());
                for id in local.ids() {
                    if let Some(set) = local.give_back(id) {
                        st.transport.send(MANAGER, Msg::SemReturn { id, state: set });
                    }
                }
            }
            // The figures go first: the answer to `Exit` shows they arrived.
            state.borrow_mut().report_stats();
            let rx = state.borrow_mut().call(Call::Sem(SemCall::Exit { pid }));
            debug!("exit: waiting for the nameserver");
            let _ = rx.await;
            debug!("exit: done");
            if state.borrow().print_stats {
                let me = state.borrow().me;
                let line: Vec<String> =
                    stats::snapshot().fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
                eprintln!("kdipc stats: node={me} pid={pid} {}", line.join(" "));
                // Then one line per object this node counted.
                for o in stats::objects() {
                    let line: Vec<String> = o.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
                    eprintln!(
                        "kdipc stats: node={me} pid={pid} {}={} {}",
                        o.kind.name(),
                        o.id,
                        line.join(" ")
                    );
                }
            }
            // Peers learn at once that this node is gone (a read request
            // sent here by a stale hint then goes to the manager), and the
            // nameserver whether it left anything behind.
            let (closing, why) = {
                let mut st = state.borrow_mut();
                st.closing = true;
                let why = if st.unclean || st.fenced { Goodbye::Unclean } else { Goodbye::Clean };
                (st.transport.closing(), why)
            };
            debug!(?why, "exit: closing");
            closing.finish(why, Duration::from_secs(2)).await;
            let _ = reply.send(());
        }
    }
}

/// `shmat` of a distributed segment; `addr` and `flags` as the program gave
/// them. The checks and their order are the kernel's (`do_shmat`).
async fn attach(state: &Shared, id: i32, addr: usize, flags: i32) -> Result<usize, Errno> {
    const SHMLBA: usize = PAGE_SIZE;
    const SHM_EXEC: i32 = 0o100000;
    // A given address is MAP_FIXED even when SHM_RND rounds it down to 0.
    let fixed = addr != 0;
    let remap = flags & libc::SHM_REMAP != 0;
    let mut addr = addr;
    if addr != 0 {
        if !addr.is_multiple_of(SHMLBA) {
            if flags & libc::SHM_RND == 0 {
                return Err(EINVAL);
            }
            addr &= !(SHMLBA - 1);
            if addr == 0 && remap {
                return Err(EINVAL);
            }
        }
    } else if remap {
        return Err(EINVAL);
    }
    let readonly = flags & libc::SHM_RDONLY != 0;
    let exec = flags & SHM_EXEC != 0;
    let rx = state.borrow_mut().call(Call::ShmAttach { id, readonly, exec, cred: Cred::current() });
    let size = match rx.await {
        Ok(Reply::Attached { size }) => size,
        Ok(Reply::Err(e)) => return Err(e),
        _ => return Err(ENOMEM),
    };
    if fixed && remap {
        // mmap(MAP_FIXED) unmaps what was there: distributed views in the
        // range are detached (whole, also one the range covers in part).
        let end = addr.saturating_add(size.div_ceil(PAGE_SIZE as u64) as usize * PAGE_SIZE);
        let covered: Vec<usize> = state
            .borrow()
            .segs
            .values()
            .flat_map(|s| s.views.iter().filter(|v| v.addr < end && addr < v.addr + s.maplen).map(|v| v.addr))
            .collect();
        for a in covered {
            if let Err(e) = detach(state, a).await {
                warn!("detaching a view SHM_REMAP replaces: {e:?}");
            }
        }
    }
    let res = map_view(state, id, size, fixed.then_some(addr), flags, readonly);
    if res.is_err() {
        let rx = state.borrow_mut().call(Call::ShmDetach {
            id,
            failed_attach: true,
            only_if_destroyed: false,
            cred: Cred::current(),
        });
        let _ = rx.await;
    }
    res
}

/// Maps a view of segment `id` at `addr` (`None`: where the kernel likes).
fn map_view(
    state: &Shared,
    id: i32,
    size: u64,
    addr: Option<usize>,
    flags: i32,
    readonly: bool,
) -> Result<usize, Errno> {
    let mut guard = state.borrow_mut();
    let st = &mut *guard;
    let npages = size.div_ceil(PAGE_SIZE as u64) as u32;
    let maplen = npages as usize * PAGE_SIZE;
    let remap = flags & libc::SHM_REMAP != 0;
    if addr.is_some_and(|a| a != 0 && !remap && a.checked_add(size as usize).is_none()) {
        return Err(EINVAL); // do_shmat: addr + size < addr
    }
    if let std::collections::hash_map::Entry::Vacant(e) = st.segs.entry(id) {
        e.insert(new_segment(npages, maplen)?);
        st.protocol.attach(id, npages);
    }
    let fd = st.segs[&id]._fd.as_raw_fd();
    let mut mflags = libc::MAP_SHARED;
    if addr.is_some() {
        mflags |= if remap { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    }
    let addr = addr.unwrap_or(0);
    // SAFETY: mapping our own memfd; MAP_FIXED only when the program asked
    // to replace what is there (SHM_REMAP), as the kernel's shmat does.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, maplen, libc::PROT_NONE, mflags, fd, 0) };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOMEM);
        drop_if_unused(st, id);
        // Taken (MAP_FIXED_NOREPLACE) is the kernel's EINVAL; the rest of
        // mmap's errors are do_shmat's too.
        return Err(if e == libc::EEXIST { EINVAL } else { Errno(e) });
    }
    let at = p as usize;
    if mflags & libc::MAP_FIXED_NOREPLACE != 0 && at != addr {
        // An old kernel ignoring MAP_FIXED_NOREPLACE: the range was taken.
        // SAFETY: unmapping what we just mapped.
        unsafe { libc::munmap(p, maplen) };
        drop_if_unused(st, id);
        return Err(EINVAL);
    }
    let Some(slot) = fault::register_view(at, maplen, readonly, id) else {
        // SAFETY: as above.
        unsafe { libc::munmap(p, maplen) };
        drop_if_unused(st, id);
        return Err(Errno(libc::EMFILE));
    };
    let view = View { addr: at, readonly, slot };
    for page in 0..npages {
        let a = st.protocol.access(id, page);
        if a == Access::Write {
            st.segs[&id].set_dirty(page);
        }
        if a != Access::Invalid {
            protect_view(&view, page, 1, a);
        }
    }
    if let Some(s) = st.segs.get_mut(&id) {
        s.views.push(view);
    }
    Ok(at)
}

fn drop_if_unused(st: &mut State, id: SegId) {
    if st.segs.get(&id).is_some_and(|s| s.views.is_empty()) {
        st.segs.remove(&id);
        st.protocol.forget(id);
    }
}

fn new_segment(npages: u32, maplen: usize) -> Result<Segment, Errno> {
    // SAFETY: memfd_create with a valid C string; result checked.
    let fd = unsafe { libc::memfd_create(c"kdipc-segment".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ENOMEM);
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: resizing our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), maplen as libc::off_t) } != 0 {
        return Err(ENOMEM);
    }
    // SAFETY: mapping our own memfd read-write at an address of the kernel's
    // choice.
    let rt = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            maplen,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if rt == libc::MAP_FAILED {
        return Err(ENOMEM);
    }
    Ok(Segment {
        npages,
        maplen,
        _fd: fd,
        rt: rt as *mut u8,
        views: Vec::new(),
        ra: ReadAhead::default(),
        marks: HashSet::new(),
        watch: HashSet::new(),
        dirty: vec![Cell::new(0); npages.div_ceil(64) as usize],
    })
}

/// Serves what waits at this node for pages of `ids`, which it is giving
/// up (see `NodeProtocol::serve_held`), and lets the answers leave before
/// the releases start.
async fn serve_held(state: &Shared, ids: &[SegId]) {
    {
        let mut st = state.borrow_mut();
        let mut out = Vec::new();
        for &id in ids {
            if let Err(e) = st.protocol.serve_held(id, &mut out) {
                warn!(seg = id, "serving before a release: {e}");
            }
        }
        if out.is_empty() {
            return;
        }
        st.apply(&mut out);
    }
    // The writer tasks run, then the connections' drivers they wake.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

/// `shmdt` of a distributed view starting at `addr`.
async fn detach(state: &Shared, addr: usize) -> Result<(), Errno> {
    let (id, last) = {
        let mut st = state.borrow_mut();
        let Some((&id, seg)) = st.segs.iter_mut().find(|(_, s)| s.views.iter().any(|v| v.addr == addr))
        else {
            return Err(EINVAL);
        };
        let i = seg.views.iter().position(|v| v.addr == addr).ok_or(EINVAL)?;
        for &p in &seg.watch {
            fault::unmark_open(seg.views[i].addr + p as usize * PAGE_SIZE);
        }
        let v = seg.views.remove(i);
        fault::unregister_view(v.slot);
        // SAFETY: unmapping the program's view we mapped in `map_view`.
        unsafe { libc::munmap(v.addr as *mut libc::c_void, seg.maplen) };
        (id, seg.views.is_empty())
    };
    if last && state.borrow().fenced {
        let mut st = state.borrow_mut();
        st.protocol.forget(id);
        st.segs.remove(&id);
    } else if last {
        serve_held(state, &[id]).await;
        // Requests still on their way (read-ahead, another thread's fault
        // that raced the detach) complete first: a page granted here after
        // the release would be stranded.
        for _ in 0..10_000 {
            if !state.borrow().protocol.any_pending(id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if state.borrow().protocol.any_pending(id) {
            warn!(seg = id, pending = ?state.borrow().protocol.pending(id), "detach: requests still unanswered after 10 s");
            state.borrow_mut().unclean = true;
        } else {
            // The last attachment of a segment marked for removal (a
            // program that removes its segment, then exits): the detach
            // destroys it, so its pages need not travel back first (matmul
            // n = 1000: 24 MB, a fifth of a second at the end of the run).
            let cred = Cred::current();
            let rx = state.borrow_mut().call(Call::ShmDetach {
                id,
                failed_attach: false,
                only_if_destroyed: true,
                cred,
            });
            if let Ok(Reply::Ok) = rx.await {
                debug!(seg = id, "detach: destroyed with its pages");
                let mut st = state.borrow_mut();
                st.protocol.forget(id);
                st.segs.remove(&id);
                return Ok(());
            }
        }
        // Hand the pages back before the nameserver counts the detach, so
        // that a segment destroyed by it has nothing in flight.
        let done = {
            let mut st = state.borrow_mut();
            let mut out = Vec::new();
            let r = st.protocol.release(id, &mut out);
            debug!(seg = id, released = ?r, actions = out.len(), "detach: release");
            match r {
                Ok(0) => {
                    st.apply(&mut out);
                    None
                }
                Ok(n) => {
                    let (tx, rx) = oneshot::channel();
                    st.releasing.insert(id, (n, vec![tx]));
                    st.apply(&mut out);
                    Some(rx)
                }
                Err(e) => {
                    warn!(seg = id, "release: {e}");
                    st.unclean = true;
                    st.apply(&mut out);
                    None
                }
            }
        };
        if let Some(rx) = done {
            debug!(seg = id, "detach: waiting for the releases");
            let _ = rx.await;
            debug!(seg = id, "detach: released");
        }
        let mut st = state.borrow_mut();
        st.protocol.forget(id);
        st.segs.remove(&id);
    }
    let rx = state.borrow_mut().call(Call::ShmDetach {
        id,
        failed_attach: false,
        only_if_destroyed: false,
        cred: Cred::current(),
    });
    match rx.await {
        Ok(Reply::Err(e)) => Err(e),
        _ => Ok(()),
    }
}
