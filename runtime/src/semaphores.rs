//! Distributed System V semaphore sets: `semget`, `semop`/`semtimedop` and
//! `semctl`, executed at the set's owner (the nameserver for now), with the
//! semantics of Linux `ipc/sem.c` (check order and errno included).
//!
//! Sans-IO: no sockets, no clocks, no threads. Times (`sem_otime`,
//! `sem_ctime`) come in as `now`, seconds since the epoch. A `semop` that
//! must wait is queued and answered later through [`SemRegistry::take_completed`];
//! time-outs (`EAGAIN`) and signals (`EINTR`) are decided by the caller,
//! which withdraws the operation with [`SemRegistry::cancel`].
//!
//! # Ids
//!
//! A set's id has bit 30 set (`0x4000_0000 | n`, `n` counting from 1 and
//! never reused), like a distributed segment's (see `crate::registry`). The
//! semaphore counter is separate from the segments' one: a semaphore id and
//! a segment id may be equal, as in Linux, where each kind has its own id
//! space. `SEM_STAT` takes the index `n`; `IPC_INFO`/`SEM_INFO` return the
//! highest `n` in use (0 when there is none); merging these with the
//! kernel's own index space is the caller's business.
//!
//! # Who is who
//!
//! [`Cred`] decides permissions; the [`Waiter`] (node, pid, token) names the
//! process for `sempid` and `SEM_UNDO` (adjustments are kept per set and per
//! (node, pid), and applied by [`SemRegistry::process_exit`] and
//! [`SemRegistry::node_gone`]). `semctl` sets `sempid` from `cred.pid`.
//!
//! # Wake-up order and fairness
//!
//! As in Linux, every blocked operation that can proceed does proceed, after
//! any change of values (`semop`, `SETVAL`, `SETALL`, undo on exit, and also
//! `cancel`, see below):
//!
//! 1. operations that only wait for zero are tried first (Linux's
//!    `wake_const_ops`): they change no value, so they all see every moment a
//!    semaphore is zero;
//! 2. then the operations that change values, in arrival order; the first
//!    that can proceed is applied, and the whole run starts again at 1.
//!
//! Linux lets a newly arriving operation proceed whenever the values allow
//! it, so a large decrement (`-5`) can wait forever while a stream of small
//! ones (`-1`) keeps taking what is added. KDIPC bounds this:
//!
//! * An operation that completes while an earlier-queued operation `A` waits,
//!   and that leaves a semaphore `A` must decrement below what `A` needs on it
//!   (after lowering it), **overtakes** `A`.
//! * Once `A` has been overtaken [`OVERTAKE_LIMIT`] times it is **starving**:
//!   from then on no later operation (newly arriving or queued after `A`) may
//!   lower a semaphore that `A` decrements below the sum of what the starving
//!   operations ahead of it need there. Such an operation waits (or fails
//!   with `EAGAIN` if the operation on that semaphore has `IPC_NOWAIT`), and
//!   counts in `semncnt` of that semaphore.
//!
//! Increments are never held back, so the values `A` waits for accumulate and
//! `A` completes after finitely many increments: a stream of small
//! operations cannot starve a large one forever. What `A` "needs" on a
//! semaphore is the lowest value that lets its decrements there go through
//! (`5` for `-5`; `2` for `+1, -3`). The price: once `A` starves, a program
//! whose only way to raise what `A` waits for is to first take more of a
//! semaphore `A` decrements (e.g. a reader taking a second read slot while a
//! writer wants them all) waits behind `A`, like under a writer-preferring
//! lock; Linux would let it through. Operations that wait for zero are not
//! protected against a stream of increments (Linux neither).
//!
//! Because a starving operation holds others back, withdrawing it
//! (`cancel`, exit) runs the queue again; in Linux a withdrawn operation
//! holds nothing and the queue is not re-run.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::protocol::NodeId;
use crate::registry::{Cred, Errno, CAP_IPC_OWNER, CAP_SYS_ADMIN, ID_BIT};

/// Most semaphores in one set (Linux `SEMMSL`).
pub const SEMMSL: i32 = 32_000;
/// Most sets (Linux `SEMMNI`).
pub const SEMMNI: i32 = 32_000;
/// Most semaphores in all sets (Linux `SEMMNS`).
pub const SEMMNS: i64 = SEMMNI as i64 * SEMMSL as i64;
/// Most operations in one `semop` (Linux `SEMOPM`).
pub const SEMOPM: usize = 500;
/// Largest semaphore value (Linux `SEMVMX`).
pub const SEMVMX: i32 = 32_767;
/// Largest undo adjustment, in absolute value (Linux `SEMAEM`).
pub const SEMAEM: i32 = SEMVMX;
/// How many times a waiting operation may be overtaken before later
/// decrements must wait behind it (see the module documentation).
pub const OVERTAKE_LIMIT: u32 = 8;

/// `SEM_UNDO` in [`SemOp::flg`].
pub const SEM_UNDO: i16 = libc::SEM_UNDO as i16;
/// `IPC_NOWAIT` in [`SemOp::flg`].
pub const IPC_NOWAIT: i16 = libc::IPC_NOWAIT as i16;

/// `semctl` commands, as the kernel numbers them (libc may add `IPC_64`).
mod cmd {
    pub const IPC_RMID: i32 = 0;
    pub const IPC_SET: i32 = 1;
    pub const IPC_STAT: i32 = 2;
    pub const IPC_INFO: i32 = 3;
    pub const GETPID: i32 = 11;
    pub const GETVAL: i32 = 12;
    pub const GETALL: i32 = 13;
    pub const GETNCNT: i32 = 14;
    pub const GETZCNT: i32 = 15;
    pub const SETVAL: i32 = 16;
    pub const SETALL: i32 = 17;
    pub const SEM_STAT: i32 = 18;
    pub const SEM_INFO: i32 = 19;
    pub const SEM_STAT_ANY: i32 = 20;
    /// The "new layout" flag of the old `ipc(2)` entry point; ignored.
    pub const IPC_64: i32 = 0x100;
}

const EINVAL: Errno = Errno(libc::EINVAL);
const EACCES: Errno = Errno(libc::EACCES);
const EAGAIN: Errno = Errno(libc::EAGAIN);
const ERANGE: Errno = Errno(libc::ERANGE);
const EFAULT: Errno = Errno(libc::EFAULT);
const EPERM: Errno = Errno(libc::EPERM);
const EIDRM: Errno = Errno(libc::EIDRM);

/// Semaphore calls (node → the set's owner, the nameserver).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SemCall {
    /// The process exits: its `SEM_UNDO` adjustments apply now, before its
    /// parent can see it gone (answered `Ok`).
    Exit {
        pid: i32,
    },
    Get {
        key: i32,
        nsems: i32,
        flags: i32,
        cred: Cred,
    },
    /// Answered when the operation completes (the answer names this call).
    Op {
        id: i32,
        ops: Vec<SemOp>,
        cred: Cred,
    },
    /// Withdraws the blocked `Op` of call `token` (signal, time-out):
    /// answered `Cancelled(true)`, or `Cancelled(false)` when it had
    /// completed already (its answer went first).
    Cancel {
        token: u64,
        pid: i32,
    },
    Ctl {
        id: i32,
        semnum: i32,
        cmd: i32,
        arg: SemctlArg,
        cred: Cred,
    },
    /// Process `pid`'s `SEM_UNDO` adjustments kept for node `from` go to
    /// node `to` (added to any it has), which applies them when `pid`
    /// exits: across `exec`, the old image's node hands them to a keeper
    /// process, and the new image's node takes them from it. Answered
    /// `Id(n)`, the number of non-zero adjustments moved (0 when `to` is
    /// not a live node: nothing moves).
    MoveUndo {
        from: NodeId,
        to: NodeId,
        pid: i32,
    },
}

/// One `struct sembuf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemOp {
    /// `sem_num`.
    pub num: u16,
    /// `sem_op`.
    pub op: i16,
    /// `sem_flg`: [`IPC_NOWAIT`], [`SEM_UNDO`].
    pub flg: i16,
}

/// The thread that called `semop`: whom to answer once a queued operation
/// completes. `(node, pid)` is the process that `SEM_UNDO` and `sempid`
/// refer to; `token` tells apart the calls of one process's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Waiter {
    pub node: NodeId,
    pub pid: i32,
    pub token: u64,
}

/// What [`SemRegistry::semop`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemopOutcome {
    /// Applied: `semop` returns 0.
    Done,
    /// Queued: the result will come out of [`SemRegistry::take_completed`],
    /// unless the caller withdraws it with [`SemRegistry::cancel`].
    Blocked,
    /// `semop` fails with this errno; nothing was applied.
    Err(Errno),
}

/// The `union semun` argument of `semctl`, for the commands that read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemctlArg {
    /// For commands that read no argument.
    None,
    /// `SETVAL`: `arg.val`.
    Val(i32),
    /// `SETALL`: `arg.array`, exactly `nsems` values.
    Array(Vec<u16>),
    /// `IPC_SET`: the fields of `arg.buf->sem_perm` it reads.
    Perm { uid: u32, gid: u32, mode: u32 },
}

/// `struct semid_ds`, as the owner knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemStat {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits (`0o777`).
    pub mode: u32,
    pub nsems: u32,
    pub otime: i64,
    pub ctime: i64,
}

/// `struct seminfo` (`IPC_INFO`, `SEM_INFO`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemInfo {
    pub semmap: i32,
    pub semmni: i32,
    pub semmns: i32,
    pub semmnu: i32,
    pub semmsl: i32,
    pub semopm: i32,
    pub semume: i32,
    /// `IPC_INFO`: 20 (Linux `SEMUSZ`); `SEM_INFO`: the number of sets.
    pub semusz: i32,
    pub semvmx: i32,
    /// `IPC_INFO`: `SEMAEM`; `SEM_INFO`: the number of semaphores in all sets.
    pub semaem: i32,
}

/// What `semctl` answers. `ret` and `Value` are `semctl`'s return value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemctlReply {
    /// `SETVAL`, `SETALL`, `IPC_SET`, `IPC_RMID`: returns 0.
    Ok,
    /// `GETVAL`, `GETPID`, `GETNCNT`, `GETZCNT`.
    Value(i32),
    /// `GETALL` (returns 0): every value, in order.
    All(Vec<u16>),
    /// `IPC_STAT` (`ret` 0), `SEM_STAT`, `SEM_STAT_ANY` (`ret` is the id).
    Stat { ret: i32, stat: SemStat },
    /// `IPC_INFO`, `SEM_INFO` (`ret` is the highest index in use).
    Info { ret: i32, info: SemInfo },
}

/// A set lent to the node that uses it alone (see the module
/// documentation, "Where a set runs"), as it travels there and back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
    pub otime: i64,
    pub ctime: i64,
    /// `(semval, sempid)` of every semaphore.
    pub sems: Vec<(i32, i32)>,
    /// `SEM_UNDO` adjustments, per process (the borrower's only).
    pub undo: Vec<(Proc, Vec<(u16, i32)>)>,
}

/// The sets' state on disk (see `SemRegistry::snapshot`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SemSnapshot {
    pub next: i32,
    pub sets: Vec<(i32, SetState)>,
}

/// Consecutive operations by one node, completed at once at the home, after
/// which the set is lent to that node (the default of `KDIPC_SEM_LEND`).
pub const LEND_AFTER: u32 = 3;

#[derive(Clone, Copy, Default)]
struct Sem {
    val: i32,
    /// `sempid`.
    pid: i32,
}

/// A process, as `SEM_UNDO` knows it: (node, pid).
pub type Proc = (NodeId, i32);

/// A queued operation.
struct Pending {
    waiter: Waiter,
    ops: Vec<SemOp>,
    /// Changes some value (else it only waits for zeros).
    alter: bool,
    /// Index in `ops` of the operation it waits on (Linux's `q->blocking`),
    /// as of the last attempt; decides `semncnt`/`semzcnt`.
    blocking: usize,
    /// How many times it was overtaken (see the module documentation).
    overtaken: u32,
    /// Per semaphore it decrements: the lowest value that lets it through.
    needs: Vec<(u16, i32)>,
}

impl Pending {
    fn starving(&self) -> bool {
        self.overtaken >= OVERTAKE_LIMIT
    }
}

struct SemSet {
    key: i32,
    uid: u32,
    gid: u32,
    cuid: u32,
    cgid: u32,
    mode: u32,
    otime: i64,
    ctime: i64,
    sems: Vec<Sem>,
    /// Blocked operations, in arrival order.
    queue: Vec<Pending>,
    /// `SEM_UNDO` adjustments per process, sparse (no zero entries). A
    /// process has an entry from its first `SEM_UNDO` operation on the set
    /// on, as in Linux (where it makes `exit` set `sem_otime`).
    undo: BTreeMap<Proc, BTreeMap<u16, i32>>,
    /// At the home: the node the set is lent to (its values, `otime` and
    /// undo adjustments are there until it comes back).
    lent: Option<NodeId>,
    /// The node of the last operations, and how many in a row.
    streak: (NodeId, u32),
}

impl SemSet {
    fn state(&self) -> SetState {
        SetState {
            key: self.key,
            uid: self.uid,
            gid: self.gid,
            cuid: self.cuid,
            cgid: self.cgid,
            mode: self.mode,
            otime: self.otime,
            ctime: self.ctime,
            sems: self.sems.iter().map(|s| (s.val, s.pid)).collect(),
            undo: self.undo.iter().map(|(&p, m)| (p, m.iter().map(|(&n, &a)| (n, a)).collect())).collect(),
        }
    }

    fn stat(&self) -> SemStat {
        SemStat {
            key: self.key,
            uid: self.uid,
            gid: self.gid,
            cuid: self.cuid,
            cgid: self.cgid,
            mode: self.mode,
            nsems: self.sems.len() as u32,
            otime: self.otime,
            ctime: self.ctime,
        }
    }

    /// `semncnt` (`zero` false) or `semzcnt` (`zero` true) of `num`: the
    /// queued operations whose blocking operation is on `num` (SUS).
    fn count(&self, num: usize, zero: bool) -> i32 {
        let waits = |p: &&Pending| {
            let op = p.ops[p.blocking];
            op.num as usize == num && (op.op == 0) == zero && op.op <= 0
        };
        self.queue.iter().filter(waits).count() as i32
    }
}

/// `ipcperms()`: may `cred` access `set` with `want` (rwx bits in any of the
/// three positions)? Same rule as `crate::registry`'s.
fn allowed(cred: &Cred, set: &SemSet, want: u32) -> bool {
    let in_group = |gid: u32| cred.gid == gid || cred.groups.contains(&gid);
    let requested = (want >> 6 | want >> 3 | want) & 0o7;
    let mut granted = set.mode;
    if cred.uid == set.cuid || cred.uid == set.uid {
        granted >>= 6;
    } else if in_group(set.cgid) || in_group(set.gid) {
        granted >>= 3;
    }
    requested & !granted & 0o7 == 0 || cred.capable(CAP_IPC_OWNER)
}

/// May `cred` change or remove `set` (`IPC_SET`, `IPC_RMID`)?
fn is_owner(cred: &Cred, set: &SemSet) -> bool {
    cred.uid == set.uid || cred.uid == set.cuid || cred.capable(CAP_SYS_ADMIN)
}

/// Read permission.
const READ: u32 = 0o444;
/// Alter permission (the write bits).
const ALTER: u32 = 0o222;

/// The outcome of trying an operation against the current values.
enum Attempt {
    /// It can go: the new (value, undo adjustment) of every semaphore it
    /// names.
    Apply(BTreeMap<u16, (i32, i32)>),
    /// It must wait on `ops[i]`.
    Wait(usize),
    /// It fails.
    Fail(Errno),
}

/// Linux `perform_atomic_semop_slow`: the operations in order, each seeing
/// the effect of the ones before it; the first that cannot go decides.
fn attempt(sems: &[Sem], adj: Option<&BTreeMap<u16, i32>>, ops: &[SemOp]) -> Attempt {
    let mut new: BTreeMap<u16, (i32, i32)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let cur = new.entry(op.num).or_insert_with(|| {
            (sems[op.num as usize].val, adj.and_then(|a| a.get(&op.num)).copied().unwrap_or(0))
        });
        let (val, undo) = *cur;
        let sem_op = i32::from(op.op);
        if sem_op == 0 && val != 0 {
            return wait_on(ops, i);
        }
        let result = val + sem_op;
        if result < 0 {
            return wait_on(ops, i);
        }
        if result > SEMVMX {
            return Attempt::Fail(ERANGE);
        }
        let undo = if op.flg & SEM_UNDO != 0 {
            let u = undo - sem_op;
            if !(-SEMAEM - 1..=SEMAEM).contains(&u) {
                return Attempt::Fail(ERANGE);
            }
            u
        } else {
            undo
        };
        *cur = (result, undo);
    }
    Attempt::Apply(new)
}

/// The operation must wait on `ops[i]`: `EAGAIN` if that one says
/// `IPC_NOWAIT` (Linux looks at the blocking operation's flag only).
fn wait_on(ops: &[SemOp], i: usize) -> Attempt {
    if ops[i].flg & IPC_NOWAIT != 0 {
        Attempt::Fail(EAGAIN)
    } else {
        Attempt::Wait(i)
    }
}

/// The fairness rule: an operation that would leave a semaphore it lowers
/// below what starving operations ahead of it have `reserved` there waits,
/// on its first operation that decrements such a semaphore.
fn held_back(
    sems: &[Sem],
    ops: &[SemOp],
    new: &BTreeMap<u16, (i32, i32)>,
    reserved: &BTreeMap<u16, i32>,
) -> Option<usize> {
    if reserved.is_empty() {
        return None;
    }
    ops.iter().position(|op| {
        op.op < 0
            && reserved.get(&op.num).is_some_and(|&r| {
                let v = new[&op.num].0;
                v < sems[op.num as usize].val && v < r
            })
    })
}

/// Tries `ops` for process `proc`, given what starving operations ahead of
/// it have reserved.
fn try_ops(set: &SemSet, ops: &[SemOp], proc: Proc, reserved: &BTreeMap<u16, i32>) -> Attempt {
    match attempt(&set.sems, set.undo.get(&proc), ops) {
        Attempt::Apply(new) => match held_back(&set.sems, ops, &new, reserved) {
            Some(i) => wait_on(ops, i),
            None => Attempt::Apply(new),
        },
        other => other,
    }
}

/// Per semaphore an operation decrements, the lowest starting value that
/// lets its decrements there through (waits for zero are not counted).
fn needs(ops: &[SemOp]) -> Vec<(u16, i32)> {
    let mut acc: BTreeMap<u16, (i32, i32)> = BTreeMap::new();
    for op in ops {
        let (sum, need) = acc.entry(op.num).or_default();
        *sum += i32::from(op.op);
        *need = (*need).max(-*sum);
    }
    acc.into_iter().filter(|&(_, (_, need))| need > 0).map(|(num, (_, need))| (num, need)).collect()
}

/// Adds what the starving operations in `queue` need to `reserved`.
fn reserve(reserved: &mut BTreeMap<u16, i32>, queue: &[Pending]) {
    for p in queue.iter().filter(|p| p.starving()) {
        for &(num, need) in &p.needs {
            *reserved.entry(num).or_default() += need;
        }
    }
}

/// An operation is about to take `new` effect: count it as overtaking every
/// operation in `earlier` it leaves short on a semaphore it lowered.
fn note_overtakes(earlier: &mut [Pending], sems: &[Sem], new: &BTreeMap<u16, (i32, i32)>) {
    for p in earlier {
        let hurt = p
            .needs
            .iter()
            .any(|&(num, need)| new.get(&num).is_some_and(|&(v, _)| v < sems[num as usize].val && v < need));
        if hurt {
            p.overtaken = p.overtaken.saturating_add(1);
        }
    }
}

/// Writes the effect of a successful operation of process `proc`.
fn apply(set: &mut SemSet, ops: &[SemOp], proc: Proc, new: BTreeMap<u16, (i32, i32)>, now: i64) {
    let undo = ops.iter().any(|op| op.flg & SEM_UNDO != 0);
    for (&num, &(val, _)) in &new {
        set.sems[num as usize] = Sem { val, pid: proc.1 };
    }
    if undo {
        let adj = set.undo.entry(proc).or_default();
        for (num, (_, a)) in new {
            if a == 0 {
                adj.remove(&num);
            } else {
                adj.insert(num, a);
            }
        }
    }
    set.otime = now;
}

/// Linux `do_smart_update`: completes every queued operation that can
/// proceed (see the module documentation for the order).
fn run_queue(
    set: &mut SemSet,
    waiting: &mut HashMap<Waiter, i32>,
    completed: &mut Vec<(Waiter, Result<(), Errno>)>,
    now: i64,
) {
    let none = BTreeMap::new();
    let mut finish = |set: &mut SemSet, i: usize, res: Result<(), Errno>| {
        let p = set.queue.remove(i);
        waiting.remove(&p.waiter);
        completed.push((p.waiter, res));
        p
    };
    loop {
        // Waits for zero: they change no value, so their order is moot.
        let mut i = 0;
        while i < set.queue.len() {
            if set.queue[i].alter {
                i += 1;
                continue;
            }
            let proc = (set.queue[i].waiter.node, set.queue[i].waiter.pid);
            match try_ops(set, &set.queue[i].ops, proc, &none) {
                Attempt::Apply(new) => {
                    let p = finish(set, i, Ok(()));
                    apply(set, &p.ops, proc, new, now);
                }
                Attempt::Fail(e) => {
                    finish(set, i, Err(e));
                }
                Attempt::Wait(b) => {
                    set.queue[i].blocking = b;
                    i += 1;
                }
            }
        }
        // Then the first operation that changes values and can proceed.
        let mut reserved = BTreeMap::new();
        let mut progressed = false;
        for i in 0..set.queue.len() {
            if !set.queue[i].alter {
                continue;
            }
            let proc = (set.queue[i].waiter.node, set.queue[i].waiter.pid);
            match try_ops(set, &set.queue[i].ops, proc, &reserved) {
                Attempt::Apply(new) => {
                    note_overtakes(&mut set.queue[..i], &set.sems, &new);
                    let p = finish(set, i, Ok(()));
                    apply(set, &p.ops, proc, new, now);
                    progressed = true;
                    break;
                }
                Attempt::Fail(e) => {
                    finish(set, i, Err(e));
                    progressed = true;
                    break;
                }
                Attempt::Wait(b) => {
                    set.queue[i].blocking = b;
                    reserve(&mut reserved, &set.queue[i..=i]);
                }
            }
        }
        if !progressed {
            return;
        }
    }
}

/// The semaphore sets this node owns.
pub struct SemRegistry {
    next: i32,
    sets: BTreeMap<i32, SemSet>,
    by_key: HashMap<i32, i32>,
    /// Semaphores in all sets.
    used_sems: i64,
    /// Every queued operation, and its set.
    waiting: HashMap<Waiter, i32>,
    completed: Vec<(Waiter, Result<(), Errno>)>,
    /// See [`LEND_AFTER`]; 0: never lend.
    lend_after: u32,
}

impl Default for SemRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl SemRegistry {
    pub fn new() -> Self {
        SemRegistry {
            next: 1,
            sets: BTreeMap::new(),
            by_key: HashMap::new(),
            used_sems: 0,
            waiting: HashMap::new(),
            completed: Vec::new(),
            lend_after: LEND_AFTER,
        }
    }

    /// Every set as it is at the home (blocked operations are not kept:
    /// their callers ask again), and the next id number.
    pub fn snapshot(&self) -> SemSnapshot {
        SemSnapshot { next: self.next, sets: self.sets.iter().map(|(&id, s)| (id, s.state())).collect() }
    }

    /// The sets as `snapshot` saw them; nothing lent, nothing waiting.
    pub fn restore(snap: SemSnapshot) -> Self {
        let mut r = SemRegistry::new();
        r.next = snap.next;
        for (id, st) in snap.sets {
            r.used_sems += st.sems.len() as i64;
            if st.key != libc::IPC_PRIVATE {
                r.by_key.insert(st.key, id);
            }
            r.adopt(id, st);
        }
        r
    }

    /// Lends a set after `n` consecutive operations of one node (0: never).
    pub fn set_lend_after(&mut self, n: u32) {
        self.lend_after = n;
    }

    /// `semget(key, nsems, flags)`: the set's id.
    pub fn semget(&mut self, key: i32, nsems: i32, flags: i32, cred: &Cred, now: i64) -> Result<i32, Errno> {
        if !(0..=SEMMSL).contains(&nsems) {
            return Err(EINVAL);
        }
        if key != libc::IPC_PRIVATE {
            if let Some(&id) = self.by_key.get(&key) {
                if flags & libc::IPC_CREAT != 0 && flags & libc::IPC_EXCL != 0 {
                    return Err(Errno(libc::EEXIST));
                }
                let set = &self.sets[&id];
                if nsems as usize > set.sems.len() {
                    return Err(EINVAL);
                }
                if !allowed(cred, set, (flags & 0o777) as u32) {
                    return Err(EACCES);
                }
                return Ok(id);
            }
            if flags & libc::IPC_CREAT == 0 {
                return Err(Errno(libc::ENOENT));
            }
        }
        if nsems == 0 {
            return Err(EINVAL);
        }
        if self.used_sems + i64::from(nsems) > SEMMNS
            || self.sets.len() >= SEMMNI as usize
            || self.next >= ID_BIT
        {
            return Err(Errno(libc::ENOSPC));
        }
        let id = ID_BIT | self.next;
        self.next += 1;
        self.used_sems += i64::from(nsems);
        let set = SemSet {
            key,
            uid: cred.uid,
            gid: cred.gid,
            cuid: cred.uid,
            cgid: cred.gid,
            mode: (flags & 0o777) as u32,
            otime: 0,
            ctime: now,
            sems: vec![Sem::default(); nsems as usize],
            queue: Vec::new(),
            undo: BTreeMap::new(),
            lent: None,
            streak: (0, 0),
        };
        self.sets.insert(id, set);
        if key != libc::IPC_PRIVATE {
            self.by_key.insert(key, id);
        }
        Ok(id)
    }

    /// `semop(id, ops)` by `waiter`'s thread. A `waiter` already queued is
    /// refused with `EINVAL` (a caller bug).
    pub fn semop(&mut self, id: i32, ops: &[SemOp], waiter: Waiter, cred: &Cred, now: i64) -> SemopOutcome {
        match self.semop_inner(id, ops, waiter, cred, now) {
            Ok(true) => SemopOutcome::Done,
            Ok(false) => SemopOutcome::Blocked,
            Err(e) => SemopOutcome::Err(e),
        }
    }

    fn semop_inner(
        &mut self,
        id: i32,
        ops: &[SemOp],
        waiter: Waiter,
        cred: &Cred,
        now: i64,
    ) -> Result<bool, Errno> {
        if ops.is_empty() || id < 0 {
            return Err(EINVAL);
        }
        if ops.len() > SEMOPM {
            return Err(Errno(libc::E2BIG));
        }
        if self.waiting.contains_key(&waiter) {
            return Err(EINVAL);
        }
        let set = self.sets.get_mut(&id).ok_or(EINVAL)?;
        if set.lent.is_some() {
            // The caller must get the set back first (`lent_to`).
            return Err(EINVAL);
        }
        set.streak = match set.streak {
            (n, k) if n == waiter.node => (n, k.saturating_add(1)),
            _ => (waiter.node, 1),
        };
        let proc = (waiter.node, waiter.pid);
        if ops.iter().any(|op| op.flg & SEM_UNDO != 0) {
            set.undo.entry(proc).or_default(); // Linux's find_alloc_undo
        }
        if ops.iter().any(|op| op.num as usize >= set.sems.len()) {
            return Err(Errno(libc::EFBIG));
        }
        let alter = ops.iter().any(|op| op.op != 0);
        if !allowed(cred, set, if alter { ALTER } else { READ }) {
            return Err(EACCES);
        }
        let mut reserved = BTreeMap::new();
        reserve(&mut reserved, &set.queue);
        match try_ops(set, ops, proc, &reserved) {
            Attempt::Apply(new) => {
                note_overtakes(&mut set.queue, &set.sems, &new);
                apply(set, ops, proc, new, now);
                if alter {
                    run_queue(set, &mut self.waiting, &mut self.completed, now);
                }
                Ok(true)
            }
            Attempt::Wait(blocking) => {
                set.queue.push(Pending {
                    waiter,
                    ops: ops.to_vec(),
                    alter,
                    blocking,
                    overtaken: 0,
                    needs: needs(ops),
                });
                self.waiting.insert(waiter, id);
                Ok(false)
            }
            Attempt::Fail(e) => Err(e),
        }
    }

    /// Queued operations that completed (`Ok`) or failed (`EIDRM` when the
    /// set was removed; `EAGAIN` or `ERANGE` met on a later attempt, as in
    /// Linux) since the last call, in order.
    pub fn take_completed(&mut self) -> Vec<(Waiter, Result<(), Errno>)> {
        std::mem::take(&mut self.completed)
    }

    /// Withdraws `waiter`'s queued operation (signal: the caller answers
    /// `EINTR`; time-out: `EAGAIN`). Nothing of it was applied. False when it
    /// is not queued (it may have completed: see `take_completed`).
    pub fn cancel(&mut self, waiter: &Waiter, now: i64) -> bool {
        let Some(id) = self.waiting.remove(waiter) else {
            return false;
        };
        if let Some(set) = self.sets.get_mut(&id) {
            set.queue.retain(|p| p.waiter != *waiter);
            run_queue(set, &mut self.waiting, &mut self.completed, now);
        }
        true
    }

    /// The process `(node, pid)` exited: withdraws its queued operations
    /// (returned, not reported by `take_completed`) and applies its
    /// `SEM_UNDO` adjustments on every set, clamped to `0..=SEMVMX` (Linux
    /// `exit_sem`).
    pub fn process_exit(&mut self, node: NodeId, pid: i32, now: i64) -> Vec<Waiter> {
        self.processes_gone(|p| p == (node, pid), now)
    }

    /// Moves the `SEM_UNDO` adjustments of `(from, pid)` to `(to, pid)`,
    /// adding them to any there, on every set at home (a set lent to
    /// `from` must come back first). Returns how many are not zero.
    pub fn move_undo(&mut self, from: NodeId, to: NodeId, pid: i32) -> usize {
        let mut moved = 0;
        for set in self.sets.values_mut().filter(|s| s.lent.is_none()) {
            let Some(adj) = set.undo.remove(&(from, pid)) else { continue };
            let dst = set.undo.entry((to, pid)).or_default();
            for (num, a) in adj {
                moved += usize::from(a != 0);
                *dst.entry(num).or_default() += a;
            }
        }
        moved
    }

    /// Every process of `node` is gone: as `process_exit` for each.
    pub fn node_gone(&mut self, node: NodeId, now: i64) -> Vec<Waiter> {
        self.processes_gone(|p| p.0 == node, now)
    }

    fn processes_gone(&mut self, gone: impl Fn(Proc) -> bool, now: i64) -> Vec<Waiter> {
        let mut withdrawn = Vec::new();
        for set in self.sets.values_mut().filter(|s| s.lent.is_none()) {
            let queued = set.queue.len();
            set.queue.retain(|p| {
                let keep = !gone((p.waiter.node, p.waiter.pid));
                if !keep {
                    withdrawn.push(p.waiter);
                }
                keep
            });
            let mut changed = set.queue.len() != queued;
            let procs: Vec<Proc> = set.undo.keys().copied().filter(|&p| gone(p)).collect();
            for proc in procs {
                for (num, adj) in set.undo.remove(&proc).unwrap_or_default() {
                    let sem = &mut set.sems[num as usize];
                    sem.val = (sem.val + adj).clamp(0, SEMVMX);
                    sem.pid = proc.1;
                }
                set.otime = now;
                changed = true;
            }
            if changed {
                run_queue(set, &mut self.waiting, &mut self.completed, now);
            }
        }
        for w in &withdrawn {
            self.waiting.remove(w);
        }
        withdrawn
    }

    /// The node set `id` is lent to.
    pub fn lent_to(&self, id: i32) -> Option<NodeId> {
        self.sets.get(&id).and_then(|s| s.lent)
    }

    /// At the home, after an operation by `node` completed: lends the set
    /// to `node` when the last [`LEND_AFTER`] (or as set) operations were all its own,
    /// nothing waits, and no other process has undo adjustments on it
    /// (nothing but the borrower then needs the set while it is away).
    pub fn lend(&mut self, id: i32, node: NodeId) -> Option<SetState> {
        let set = self.sets.get_mut(&id)?;
        let alone = self.lend_after > 0 && set.streak.0 == node && set.streak.1 >= self.lend_after;
        if !alone || set.lent.is_some() || !set.queue.is_empty() || set.undo.keys().any(|p| p.0 != node) {
            return None;
        }
        set.lent = Some(node);
        Some(set.state())
    }

    /// At the home: news of the set lent to `from`: its values now (the
    /// borrower sends them every few milliseconds while it holds it), or,
    /// `returned`, as it comes back. False (nothing changed) when it is
    /// not lent to `from` or `state` does not fit it.
    pub fn update(&mut self, id: i32, from: NodeId, state: SetState, returned: bool) -> bool {
        let Some(set) = self.sets.get_mut(&id) else { return false };
        let fits = state.sems.len() == set.sems.len()
            && state.sems.iter().all(|&(v, _)| (0..=SEMVMX).contains(&v))
            && state
                .undo
                .iter()
                .all(|(p, adj)| p.0 == from && adj.iter().all(|&(n, _)| (n as usize) < set.sems.len()));
        if set.lent != Some(from) || !fits {
            return false;
        }
        if returned {
            set.lent = None;
            set.streak = (from, 0);
        }
        set.otime = state.otime;
        set.sems = state.sems.iter().map(|&(val, pid)| Sem { val, pid }).collect();
        set.undo = state.undo.into_iter().map(|(p, adj)| (p, adj.into_iter().collect())).collect();
        true
    }

    /// At the home: `node`, which held the sets returned here, died. They
    /// come home as last reported (the operations it ran after that were
    /// its own: it is as if it died that much earlier), before its undo
    /// adjustments apply (`node_gone`).
    pub fn reclaim(&mut self, node: NodeId) -> Vec<i32> {
        let mut ids = Vec::new();
        for (&id, set) in self.sets.iter_mut().filter(|(_, s)| s.lent == Some(node)) {
            set.lent = None;
            set.streak = (node, 0);
            ids.push(id);
        }
        ids
    }

    /// At the borrower: takes set `id` in, as lent by the home.
    pub fn adopt(&mut self, id: i32, st: SetState) {
        let set = SemSet {
            key: st.key,
            uid: st.uid,
            gid: st.gid,
            cuid: st.cuid,
            cgid: st.cgid,
            mode: st.mode,
            otime: st.otime,
            ctime: st.ctime,
            sems: st.sems.iter().map(|&(val, pid)| Sem { val, pid }).collect(),
            queue: Vec::new(),
            undo: st.undo.into_iter().map(|(p, adj)| (p, adj.into_iter().collect())).collect(),
            lent: None,
            streak: (0, 0),
        };
        self.sets.insert(id, set);
    }

    /// At the borrower: whether it holds set `id`.
    pub fn holds(&self, id: i32) -> bool {
        self.sets.contains_key(&id)
    }

    /// At the borrower: gives set `id` back (nothing may wait on it).
    pub fn give_back(&mut self, id: i32) -> Option<SetState> {
        let set = self.sets.remove(&id)?;
        debug_assert!(set.queue.is_empty());
        Some(set.state())
    }

    /// At the borrower: the values of set `id` now (see `update`).
    pub fn state_of(&self, id: i32) -> Option<SetState> {
        self.sets.get(&id).map(SemSet::state)
    }

    /// Whether there is no set here.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// At the borrower: the ids of the sets it holds.
    pub fn ids(&self) -> Vec<i32> {
        self.sets.keys().copied().collect()
    }

    /// The key of set `id`, if it exists.
    pub fn key_of(&self, id: i32) -> Option<i32> {
        self.sets.get(&id).map(|s| s.key)
    }

    /// Every set, by id (for `kdipc ipcs`).
    pub fn list(&self) -> Vec<(i32, SemStat)> {
        self.sets.iter().map(|(&id, s)| (id, s.stat())).collect()
    }

    fn set(&self, id: i32) -> Result<&SemSet, Errno> {
        self.sets.get(&id).ok_or(EINVAL)
    }

    /// `semctl(id, semnum, cmd, arg)`. `cmd` is the program's; `IPC_64` in
    /// it is ignored. An `arg` of the wrong kind for `cmd`, or a `SETALL`
    /// array whose length is not `nsems`, fails with `EFAULT` (as reading a
    /// bad `union semun` would).
    pub fn semctl(
        &mut self,
        id: i32,
        semnum: i32,
        cmd: i32,
        arg: SemctlArg,
        cred: &Cred,
        now: i64,
    ) -> Result<SemctlReply, Errno> {
        if id < 0 {
            return Err(EINVAL);
        }
        match cmd & !cmd::IPC_64 {
            c @ (cmd::IPC_INFO | cmd::SEM_INFO) => Ok(self.info(c == cmd::SEM_INFO)),
            cmd::IPC_STAT => {
                let set = self.set(id)?;
                if !allowed(cred, set, READ) {
                    return Err(EACCES);
                }
                Ok(SemctlReply::Stat { ret: 0, stat: set.stat() })
            }
            c @ (cmd::SEM_STAT | cmd::SEM_STAT_ANY) => {
                let id = if id < ID_BIT { ID_BIT | id } else { -1 };
                let set = self.set(id)?;
                if c == cmd::SEM_STAT && !allowed(cred, set, READ) {
                    return Err(EACCES);
                }
                Ok(SemctlReply::Stat { ret: id, stat: set.stat() })
            }
            c @ (cmd::GETALL | cmd::GETVAL | cmd::GETPID | cmd::GETNCNT | cmd::GETZCNT | cmd::SETALL) => {
                self.semctl_main(id, semnum, c, arg, cred, now)
            }
            cmd::SETVAL => {
                let SemctlArg::Val(val) = arg else {
                    return Err(EFAULT);
                };
                self.setval(id, semnum, val, cred, now)
            }
            c @ (cmd::IPC_SET | cmd::IPC_RMID) => {
                let perm = match (c, arg) {
                    (cmd::IPC_SET, SemctlArg::Perm { uid, gid, mode }) => Some((uid, gid, mode)),
                    (cmd::IPC_SET, _) => return Err(EFAULT),
                    _ => None,
                };
                let set = self.sets.get_mut(&id).ok_or(EINVAL)?;
                if !is_owner(cred, set) {
                    return Err(EPERM);
                }
                match perm {
                    Some((uid, gid, mode)) => {
                        if uid == u32::MAX || gid == u32::MAX {
                            return Err(EINVAL);
                        }
                        set.uid = uid;
                        set.gid = gid;
                        set.mode = (set.mode & !0o777) | (mode & 0o777);
                        set.ctime = now;
                    }
                    None => self.remove(id),
                }
                Ok(SemctlReply::Ok)
            }
            _ => Err(EINVAL),
        }
    }

    fn info(&self, usage: bool) -> SemctlReply {
        let (semusz, semaem) =
            if usage { (self.sets.len() as i32, self.used_sems as i32) } else { (20, SEMAEM) };
        let info = SemInfo {
            semmap: SEMMNS as i32,
            semmni: SEMMNI,
            semmns: SEMMNS as i32,
            semmnu: SEMMNS as i32,
            semmsl: SEMMSL,
            semopm: SEMOPM as i32,
            semume: SEMOPM as i32,
            semusz,
            semvmx: SEMVMX,
            semaem,
        };
        let ret = self.sets.keys().next_back().map_or(0, |&id| id & !ID_BIT);
        SemctlReply::Info { ret, info }
    }

    /// Linux `semctl_main`: `GETALL`, `SETALL`, `GETVAL`, `GETPID`,
    /// `GETNCNT`, `GETZCNT`.
    fn semctl_main(
        &mut self,
        id: i32,
        semnum: i32,
        c: i32,
        arg: SemctlArg,
        cred: &Cred,
        now: i64,
    ) -> Result<SemctlReply, Errno> {
        let set = self.sets.get_mut(&id).ok_or(EINVAL)?;
        if !allowed(cred, set, if c == cmd::SETALL { ALTER } else { READ }) {
            return Err(EACCES);
        }
        match c {
            cmd::GETALL => return Ok(SemctlReply::All(set.sems.iter().map(|s| s.val as u16).collect())),
            cmd::SETALL => {
                let SemctlArg::Array(vals) = arg else {
                    return Err(EFAULT);
                };
                if vals.len() != set.sems.len() {
                    return Err(EFAULT);
                }
                if vals.iter().any(|&v| i32::from(v) > SEMVMX) {
                    return Err(ERANGE);
                }
                for (sem, &v) in set.sems.iter_mut().zip(&vals) {
                    *sem = Sem { val: i32::from(v), pid: cred.pid };
                }
                for adj in set.undo.values_mut() {
                    adj.clear();
                }
                set.ctime = now;
                run_queue(set, &mut self.waiting, &mut self.completed, now);
                return Ok(SemctlReply::Ok);
            }
            _ => {}
        }
        let num = usize::try_from(semnum).ok().filter(|&n| n < set.sems.len()).ok_or(EINVAL)?;
        Ok(SemctlReply::Value(match c {
            cmd::GETVAL => set.sems[num].val,
            cmd::GETPID => set.sems[num].pid,
            cmd::GETNCNT => set.count(num, false),
            _ => set.count(num, true),
        }))
    }

    /// Linux `semctl_setval`: `ERANGE` comes before the id is looked up, and
    /// a bad `semnum` before permissions.
    fn setval(
        &mut self,
        id: i32,
        semnum: i32,
        val: i32,
        cred: &Cred,
        now: i64,
    ) -> Result<SemctlReply, Errno> {
        if !(0..=SEMVMX).contains(&val) {
            return Err(ERANGE);
        }
        let set = self.sets.get_mut(&id).ok_or(EINVAL)?;
        let num = usize::try_from(semnum).ok().filter(|&n| n < set.sems.len()).ok_or(EINVAL)?;
        if !allowed(cred, set, ALTER) {
            return Err(EACCES);
        }
        for adj in set.undo.values_mut() {
            adj.remove(&(num as u16));
        }
        set.sems[num] = Sem { val, pid: cred.pid };
        set.ctime = now;
        run_queue(set, &mut self.waiting, &mut self.completed, now);
        Ok(SemctlReply::Ok)
    }

    /// `IPC_RMID`: the set goes at once; its waiters fail with `EIDRM`.
    fn remove(&mut self, id: i32) {
        let Some(set) = self.sets.remove(&id) else {
            return;
        };
        if set.key != libc::IPC_PRIVATE {
            self.by_key.remove(&set.key);
        }
        self.used_sems -= set.sems.len() as i64;
        for p in set.queue {
            self.waiting.remove(&p.waiter);
            self.completed.push((p.waiter, Err(EIDRM)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1000;

    fn user(uid: u32) -> Cred {
        Cred { uid, gid: uid, groups: vec![], pid: 42, caps: if uid == 0 { u64::MAX } else { 0 } }
    }

    fn w(pid: i32, token: u64) -> Waiter {
        Waiter { node: 1, pid, token }
    }

    fn op(num: u16, op: i16, flg: i16) -> SemOp {
        SemOp { num, op, flg }
    }

    fn new_set(r: &mut SemRegistry, nsems: i32) -> i32 {
        r.semget(libc::IPC_PRIVATE, nsems, libc::IPC_CREAT | 0o600, &user(1000), NOW).unwrap()
    }

    fn ctl(r: &mut SemRegistry, id: i32, num: i32, c: i32, arg: SemctlArg) -> Result<SemctlReply, Errno> {
        r.semctl(id, num, c, arg, &user(1000), NOW)
    }

    fn getval(r: &mut SemRegistry, id: i32, num: i32) -> i32 {
        match ctl(r, id, num, libc::GETVAL, SemctlArg::None) {
            Ok(SemctlReply::Value(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn getall(r: &mut SemRegistry, id: i32) -> Vec<u16> {
        match ctl(r, id, 0, libc::GETALL, SemctlArg::None) {
            Ok(SemctlReply::All(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn setval(r: &mut SemRegistry, id: i32, num: i32, v: i32) {
        assert_eq!(ctl(r, id, num, libc::SETVAL, SemctlArg::Val(v)), Ok(SemctlReply::Ok));
    }

    fn value(r: &mut SemRegistry, id: i32, num: i32, c: i32) -> i32 {
        match ctl(r, id, num, c, SemctlArg::None) {
            Ok(SemctlReply::Value(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn stat(r: &mut SemRegistry, id: i32) -> SemStat {
        match ctl(r, id, 0, cmd::IPC_STAT, SemctlArg::None) {
            Ok(SemctlReply::Stat { ret: 0, stat }) => stat,
            other => panic!("{other:?}"),
        }
    }

    /// `semop` by process `pid` (node 1), thread `token`, as uid 1000.
    fn semop(r: &mut SemRegistry, id: i32, pid: i32, token: u64, ops: &[SemOp]) -> SemopOutcome {
        r.semop(id, ops, w(pid, token), &user(1000), NOW)
    }

    fn errno(e: i32) -> SemopOutcome {
        SemopOutcome::Err(Errno(e))
    }

    #[test]
    fn semget_creates_and_finds() {
        let mut r = SemRegistry::new();
        let u = user(1000);
        let id = r.semget(7, 3, libc::IPC_CREAT | 0o640, &u, NOW).unwrap();
        assert_eq!(id & ID_BIT, ID_BIT);
        assert_eq!(r.semget(7, 2, 0, &u, NOW), Ok(id));
        assert_eq!(r.semget(7, 0, libc::IPC_CREAT, &u, NOW), Ok(id), "nsems 0 is fine for an existing set");
        let p1 = r.semget(libc::IPC_PRIVATE, 1, 0o600, &u, NOW).unwrap();
        let p2 = r.semget(libc::IPC_PRIVATE, 1, 0o600, &u, NOW).unwrap();
        assert!(p1 != p2 && p1 != id);
        let s = stat(&mut r, id);
        assert_eq!(
            s,
            SemStat {
                key: 7,
                uid: 1000,
                gid: 1000,
                cuid: 1000,
                cgid: 1000,
                mode: 0o640,
                nsems: 3,
                otime: 0,
                ctime: NOW
            }
        );
        assert_eq!(getall(&mut r, id), vec![0, 0, 0]);
    }

    #[test]
    fn semget_errors() {
        let mut r = SemRegistry::new();
        let u = user(1000);
        let creat = libc::IPC_CREAT | 0o600;
        assert_eq!(r.semget(5, 1, 0o600, &u, NOW), Err(Errno(libc::ENOENT)));
        assert_eq!(r.semget(5, 0, creat, &u, NOW), Err(EINVAL));
        assert_eq!(r.semget(libc::IPC_PRIVATE, 0, creat, &u, NOW), Err(EINVAL));
        assert_eq!(r.semget(5, -1, creat, &u, NOW), Err(EINVAL));
        assert_eq!(r.semget(5, SEMMSL + 1, creat, &u, NOW), Err(EINVAL));
        let id = r.semget(5, SEMMSL, creat, &u, NOW).unwrap();
        assert_eq!(r.semget(5, 1, creat | libc::IPC_EXCL, &u, NOW), Err(Errno(libc::EEXIST)));
        // Fewer semaphores than asked for: EINVAL, checked before permissions.
        let id2 = r.semget(6, 2, creat, &u, NOW).unwrap();
        assert_eq!(r.semget(6, 3, 0, &u, NOW), Err(EINVAL));
        assert_eq!(r.semget(6, 3, 0, &user(1001), NOW), Err(EINVAL));
        assert_eq!(r.semget(6, 2, 0o400, &user(1001), NOW), Err(EACCES));
        assert_eq!(r.semget(6, 2, 0o600, &user(0), NOW), Ok(id2));
        assert_eq!(r.semget(5, 1, 0, &user(1001), NOW), Ok(id), "asking for no permission");
    }

    #[test]
    fn semget_runs_out_of_sets() {
        let mut r = SemRegistry::new();
        for _ in 0..SEMMNI {
            new_set(&mut r, 1);
        }
        assert_eq!(r.semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT, &user(1), NOW), Err(Errno(libc::ENOSPC)));
    }

    #[test]
    fn semop_applies_and_records_pid_and_otime() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        assert_eq!(r.semop(id, &[op(0, 3, 0)], w(7, 1), &user(1000), 2000), SemopOutcome::Done);
        assert_eq!(r.semop(id, &[op(0, -2, 0), op(1, 0, 0)], w(8, 1), &user(1000), 2001), SemopOutcome::Done);
        assert_eq!(getall(&mut r, id), vec![1, 0]);
        assert_eq!(value(&mut r, id, 0, libc::GETPID), 8);
        assert_eq!(value(&mut r, id, 1, libc::GETPID), 8, "a wait-for-zero sets sempid too");
        assert_eq!(stat(&mut r, id).otime, 2001);
        assert!(r.take_completed().is_empty());
    }

    #[test]
    fn semop_errors_in_linux_order() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        assert_eq!(semop(&mut r, id, 1, 1, &[]), errno(libc::EINVAL));
        assert_eq!(semop(&mut r, -1, 1, 1, &[op(0, 1, 0)]), errno(libc::EINVAL));
        let many = vec![op(5, 1, 0); SEMOPM + 1];
        assert_eq!(semop(&mut r, id, 1, 1, &many), errno(libc::E2BIG));
        assert_eq!(semop(&mut r, id + 1, 1, 1, &many[..SEMOPM]), errno(libc::EINVAL), "id before EFBIG");
        assert_eq!(semop(&mut r, id + 1, 1, 1, &[op(0, 1, 0)]), errno(libc::EINVAL));
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0), op(2, 1, 0)]), errno(libc::EFBIG));
        assert_eq!(r.semop(id, &[op(2, 1, 0)], w(1, 1), &user(1001), NOW), errno(libc::EFBIG));
        assert_eq!(r.semop(id, &[op(0, 1, 0)], w(1, 1), &user(1001), NOW), errno(libc::EACCES));
        assert_eq!(getall(&mut r, id), vec![0, 0]);
    }

    #[test]
    fn semop_needs_read_to_wait_for_zero_and_alter_to_change() {
        let mut r = SemRegistry::new();
        let id = r.semget(1, 1, libc::IPC_CREAT | 0o644, &user(1000), NOW).unwrap();
        let other = user(1001);
        assert_eq!(r.semop(id, &[op(0, 0, 0)], w(1, 1), &other, NOW), SemopOutcome::Done);
        assert_eq!(r.semop(id, &[op(0, 1, 0)], w(1, 1), &other, NOW), errno(libc::EACCES));
        assert_eq!(r.semop(id, &[op(0, 0, 0), op(0, 1, 0)], w(1, 1), &other, NOW), errno(libc::EACCES));
        assert_eq!(r.semop(id, &[op(0, 1, 0)], w(1, 1), &user(0), NOW), SemopOutcome::Done);
        assert_eq!(
            r.semop(id, &[op(0, 1, 0)], w(1, 1), &Cred { groups: vec![1000], ..other }, NOW),
            errno(libc::EACCES),
            "group may only read"
        );
    }

    #[test]
    fn all_or_nothing() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 3);
        setval(&mut r, id, 0, 1);
        setval(&mut r, id, 2, 5);
        let ops = [op(0, -1, 0), op(2, 1, 0), op(1, -1, 0)];
        assert_eq!(semop(&mut r, id, 1, 1, &ops), SemopOutcome::Blocked);
        assert_eq!(getall(&mut r, id), vec![1, 0, 5], "nothing applied while waiting");
        let nowait = [op(0, -1, 0), op(2, 1, 0), op(1, -1, IPC_NOWAIT)];
        assert_eq!(semop(&mut r, id, 2, 1, &nowait), errno(libc::EAGAIN));
        assert_eq!(getall(&mut r, id), vec![1, 0, 5]);
        let overflow = [op(0, -1, 0), op(2, SEMVMX as i16, 0)];
        assert_eq!(semop(&mut r, id, 2, 1, &overflow), errno(libc::ERANGE));
        assert_eq!(getall(&mut r, id), vec![1, 0, 5]);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(1, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![0, 0, 6]);
        assert_eq!(value(&mut r, id, 2, libc::GETPID), 1);
    }

    #[test]
    fn operations_on_one_semaphore_apply_in_order() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        setval(&mut r, id, 0, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0), op(0, -2, 0)]), SemopOutcome::Done);
        assert_eq!(getval(&mut r, id, 0), 0);
        // +1 then wait for zero can never go.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0), op(0, 0, IPC_NOWAIT)]), errno(libc::EAGAIN));
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 0, 0), op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(getval(&mut r, id, 0), 1);
    }

    #[test]
    fn nowait_of_the_blocking_operation_decides() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        // The IPC_NOWAIT operation could go: the other one blocks, so it waits.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, IPC_NOWAIT), op(1, -1, 0)]), SemopOutcome::Blocked);
        // Later the wait moves to an IPC_NOWAIT operation: EAGAIN then.
        assert_eq!(semop(&mut r, id, 2, 1, &[op(1, -1, 0), op(0, -5, IPC_NOWAIT)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(1, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(()))]);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(1, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(2, 1), Err(EAGAIN))]);
        assert_eq!(getall(&mut r, id), vec![1, 1]);
    }

    #[test]
    fn erange_past_semvmx() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, SEMVMX as i16, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0)]), errno(libc::ERANGE));
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, IPC_NOWAIT)]), errno(libc::ERANGE));
        assert_eq!(getval(&mut r, id, 0), SEMVMX);
    }

    #[test]
    fn erange_when_the_undo_adjustment_overflows() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        let max = SEMVMX as i16;
        // semadj -= sem_op: +32767 with SEM_UNDO makes it -32767.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, max, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -max, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, SEM_UNDO)]), SemopOutcome::Done, "-32768 fits");
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, SEM_UNDO)]), errno(libc::ERANGE));
        assert_eq!(getval(&mut r, id, 0), 0);
        // Another process has its own adjustments.
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, 1, SEM_UNDO)]), SemopOutcome::Done);
        // Decrements raise semadj: +32767 is the top.
        let id = new_set(&mut r, 1);
        setval(&mut r, id, 0, SEMVMX);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -max, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, SEM_UNDO)]), errno(libc::ERANGE));
    }

    #[test]
    fn decrement_blocks_until_an_increment() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -2, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, -1, IPC_NOWAIT)]), errno(libc::EAGAIN));
        assert_eq!(semop(&mut r, id, 3, 1, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert!(r.take_completed().is_empty());
        assert_eq!(r.semop(id, &[op(0, 1, 0)], w(3, 1), &user(1000), 3000), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(()))]);
        assert_eq!(getval(&mut r, id, 0), 0);
        assert_eq!(value(&mut r, id, 0, libc::GETPID), 1, "sempid is the waiter's");
        assert_eq!(stat(&mut r, id).otime, 3000);
    }

    #[test]
    fn wait_for_zero_wakes_when_the_value_reaches_zero() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        setval(&mut r, id, 0, 2);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 0, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 1, 2, &[op(0, 0, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, 0, IPC_NOWAIT)]), errno(libc::EAGAIN));
        assert_eq!(semop(&mut r, id, 3, 1, &[op(0, -1, 0)]), SemopOutcome::Done);
        assert!(r.take_completed().is_empty());
        assert_eq!(semop(&mut r, id, 3, 1, &[op(0, -1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(())), (w(1, 2), Ok(()))]);
        // SETVAL to zero wakes them as well.
        setval(&mut r, id, 0, 1);
        assert_eq!(semop(&mut r, id, 1, 3, &[op(0, 0, 0)]), SemopOutcome::Blocked);
        setval(&mut r, id, 0, 0);
        assert_eq!(r.take_completed(), vec![(w(1, 3), Ok(()))]);
    }

    #[test]
    fn wait_for_zero_sees_the_zero_before_queued_increments() {
        // As Linux: waits for zero are woken before queued alter operations run.
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        setval(&mut r, id, 0, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(1, -1, 0), op(0, 1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, 0, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(0, -1, 0), op(1, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(2, 1), Ok(())), (w(1, 1), Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![1, 0]);
    }

    #[test]
    fn every_waiter_that_can_go_goes_in_arrival_order() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        for pid in 1..=3 {
            assert_eq!(semop(&mut r, id, pid, 1, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        }
        assert_eq!(semop(&mut r, id, 9, 1, &[op(0, 2, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(())), (w(2, 1), Ok(()))]);
        assert_eq!(value(&mut r, id, 0, libc::GETNCNT), 1);
        assert_eq!(semop(&mut r, id, 9, 1, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(3, 1), Ok(()))]);
        // A waiter that cannot go does not hold back a smaller one (Linux),
        // until it has been overtaken OVERTAKE_LIMIT times.
        assert_eq!(semop(&mut r, id, 4, 1, &[op(0, -3, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 9, 1, &[op(0, 2, 0)]), SemopOutcome::Done);
        assert!(r.take_completed().is_empty());
        assert_eq!(semop(&mut r, id, 5, 1, &[op(0, -1, 0)]), SemopOutcome::Done);
        assert_eq!(getval(&mut r, id, 0), 1);
        assert_eq!(semop(&mut r, id, 9, 1, &[op(0, 2, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(4, 1), Ok(()))]);
        assert_eq!(getval(&mut r, id, 0), 0);
    }

    #[test]
    fn small_operations_cannot_starve_a_large_one() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        let large = w(100, 1);
        assert_eq!(r.semop(id, &[op(0, -5, 0)], large, &user(1000), NOW), SemopOutcome::Blocked);
        // A stream: someone adds 1, someone takes 1. Linux would let this go
        // on forever with the large one waiting.
        let mut overtakes = 0;
        let mut held = Vec::new();
        for i in 0..100u64 {
            assert_eq!(semop(&mut r, id, 1, i, &[op(0, 1, 0)]), SemopOutcome::Done);
            match semop(&mut r, id, 2, i, &[op(0, -1, 0)]) {
                SemopOutcome::Done => overtakes += 1,
                SemopOutcome::Blocked => held.push(w(2, i)),
                other => panic!("{other:?}"),
            }
            let done = r.take_completed();
            if done.iter().any(|(w, _)| *w == large) {
                assert_eq!(overtakes, OVERTAKE_LIMIT, "the first overtakes are allowed, as in Linux");
                // The large one went after exactly 5 increments no one could take.
                assert_eq!(held.len(), 5);
                assert_eq!(done, vec![(large, Ok(()))]);
                // Those held back are served as values come.
                assert_eq!(value(&mut r, id, 0, libc::GETNCNT), 5);
                assert_eq!(semop(&mut r, id, 1, 999, &[op(0, 5, 0)]), SemopOutcome::Done);
                let done: Vec<Waiter> = r.take_completed().into_iter().map(|(w, _)| w).collect();
                assert_eq!(done, held, "in arrival order");
                return;
            }
        }
        panic!("the large operation starved");
    }

    #[test]
    fn a_starving_operation_reserves_only_what_it_needs() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        let large = w(100, 1);
        assert_eq!(
            r.semop(id, &[op(0, -5, 0), op(1, -1, 0)], large, &user(1000), NOW),
            SemopOutcome::Blocked
        );
        for i in 0..OVERTAKE_LIMIT as u64 {
            assert_eq!(semop(&mut r, id, 1, i, &[op(0, 1, 0)]), SemopOutcome::Done);
            assert_eq!(semop(&mut r, id, 2, i, &[op(0, -1, 0)]), SemopOutcome::Done);
        }
        // Starving now. Taking what it does not need is still fine.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 7, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 2, 100, &[op(0, -2, 0)]), SemopOutcome::Done);
        // Going below 5 is not: wait, or EAGAIN with IPC_NOWAIT.
        assert_eq!(semop(&mut r, id, 2, 101, &[op(0, -1, IPC_NOWAIT)]), errno(libc::EAGAIN));
        assert_eq!(semop(&mut r, id, 2, 101, &[op(1, 1, 0), op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(value(&mut r, id, 0, libc::GETNCNT), 1);
        assert_eq!(value(&mut r, id, 1, libc::GETNCNT), 1, "the large one waits on sem 1");
        // Sem 1 comes: the large one goes, then the held one.
        assert_eq!(semop(&mut r, id, 1, 2, &[op(1, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(large, Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![0, 0]);
        assert_eq!(semop(&mut r, id, 1, 3, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(2, 101), Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![0, 1]);
    }

    #[test]
    fn cancel_withdraws_without_applying_anything() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        setval(&mut r, id, 0, 3);
        let ops = [op(0, -2, SEM_UNDO), op(1, -1, 0)];
        assert_eq!(semop(&mut r, id, 1, 1, &ops), SemopOutcome::Blocked);
        assert_eq!(value(&mut r, id, 1, libc::GETNCNT), 1);
        assert!(r.cancel(&w(1, 1), NOW));
        assert!(!r.cancel(&w(1, 1), NOW), "only once");
        assert!(!r.cancel(&w(5, 5), NOW));
        assert_eq!(getall(&mut r, id), vec![3, 0]);
        assert_eq!(value(&mut r, id, 1, libc::GETNCNT), 0);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(1, 1, 0)]), SemopOutcome::Done);
        assert!(r.take_completed().is_empty());
        assert_eq!(getall(&mut r, id), vec![3, 1]);
        // Nothing to undo: the adjustment was never applied.
        r.process_exit(1, 1, NOW);
        assert_eq!(getall(&mut r, id), vec![3, 1]);
        // The same token can wait again.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(1, -2, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(1, -2, 0)]), errno(libc::EINVAL), "already queued");
    }

    #[test]
    fn cancelling_a_starving_operation_releases_those_behind_it() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        let large = w(100, 1);
        assert_eq!(r.semop(id, &[op(0, -5, 0)], large, &user(1000), NOW), SemopOutcome::Blocked);
        for i in 0..OVERTAKE_LIMIT as u64 {
            assert_eq!(semop(&mut r, id, 1, i, &[op(0, 1, 0)]), SemopOutcome::Done);
            assert_eq!(semop(&mut r, id, 2, i, &[op(0, -1, 0)]), SemopOutcome::Done);
        }
        assert_eq!(semop(&mut r, id, 1, 99, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 2, 99, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert!(r.cancel(&large, NOW));
        assert_eq!(r.take_completed(), vec![(w(2, 99), Ok(()))]);
        assert_eq!(getval(&mut r, id, 0), 0);
    }

    #[test]
    fn rmid_wakes_waiters_with_eidrm() {
        let mut r = SemRegistry::new();
        let u = user(1000);
        let id = r.semget(3, 2, libc::IPC_CREAT | 0o666, &u, NOW).unwrap();
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(1, 0, 0), op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(r.semctl(id, 0, cmd::IPC_RMID, SemctlArg::None, &user(1001), NOW), Err(EPERM));
        assert_eq!(r.semctl(id, 0, cmd::IPC_RMID, SemctlArg::None, &u, NOW), Ok(SemctlReply::Ok));
        assert_eq!(r.take_completed(), vec![(w(1, 1), Err(EIDRM)), (w(2, 1), Err(EIDRM))]);
        assert!(!r.cancel(&w(1, 1), NOW));
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 1, 0)]), errno(libc::EINVAL));
        assert_eq!(ctl(&mut r, id, 0, libc::GETVAL, SemctlArg::None), Err(EINVAL));
        assert_eq!(ctl(&mut r, id, 0, cmd::IPC_RMID, SemctlArg::None), Err(EINVAL));
        assert_eq!(r.semget(3, 1, 0, &u, NOW), Err(Errno(libc::ENOENT)), "the key is free");
        let id2 = r.semget(3, 1, libc::IPC_CREAT | 0o600, &u, NOW).unwrap();
        assert_ne!(id2, id, "ids are not reused");
        // Root may remove too.
        assert_eq!(r.semctl(id2, 0, cmd::IPC_RMID, SemctlArg::None, &user(0), NOW), Ok(SemctlReply::Ok));
    }

    #[test]
    fn exit_undoes_and_unblocks_a_waiter() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        setval(&mut r, id, 0, 1);
        // Process 1 holds the "mutex" with SEM_UNDO; process 2 waits.
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Blocked);
        assert_eq!(r.process_exit(1, 1, 5000), vec![]);
        assert_eq!(r.take_completed(), vec![(w(2, 1), Ok(()))]);
        assert_eq!(getval(&mut r, id, 0), 0);
        assert_eq!(stat(&mut r, id).otime, 5000);
        // A second exit of the same process changes nothing.
        r.process_exit(1, 1, NOW);
        assert_eq!(getval(&mut r, id, 0), 0);
        // Process 2 exits: its hold is released too.
        r.process_exit(1, 2, NOW);
        assert_eq!(getval(&mut r, id, 0), 1);
        assert_eq!(value(&mut r, id, 0, libc::GETPID), 2);
    }

    #[test]
    fn exit_clamps_at_zero_and_semvmx() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        setval(&mut r, id, 1, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, 5, SEM_UNDO), op(1, -1, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, -4, 0), op(1, SEMVMX as i16, 0)]), SemopOutcome::Done);
        r.process_exit(1, 1, NOW);
        assert_eq!(getall(&mut r, id), vec![0, SEMVMX as u16]);
    }

    #[test]
    fn exit_withdraws_queued_operations() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 1, 2, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(r.process_exit(1, 1, NOW), vec![w(1, 1), w(1, 2)]);
        assert_eq!(value(&mut r, id, 0, libc::GETNCNT), 1);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(0, 1, 0)]), SemopOutcome::Done);
        assert_eq!(r.take_completed(), vec![(w(2, 1), Ok(()))]);
    }

    #[test]
    fn moved_undo_applies_when_the_new_node_goes_and_merges() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        setval(&mut r, id, 0, 1);
        assert_eq!(semop(&mut r, id, 7, 1, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(r.move_undo(1, 9, 7), 1);
        r.process_exit(1, 7, NOW);
        assert_eq!(getval(&mut r, id, 0), 0, "the old node's exit no longer undoes it");
        // The new image (node 3, same pid) takes it and gives the
        // semaphore back itself: nothing is left to undo.
        assert_eq!(r.move_undo(9, 3, 7), 1);
        let w = Waiter { node: 3, pid: 7, token: 2 };
        assert_eq!(r.semop(id, &[op(0, 1, SEM_UNDO)], w, &user(1000), NOW), SemopOutcome::Done);
        assert_eq!(r.move_undo(3, 5, 7), 0, "the adjustments cancelled out");
        r.node_gone(3, NOW);
        assert_eq!(getval(&mut r, id, 0), 1);
        r.node_gone(9, NOW);
        assert_eq!(getval(&mut r, id, 0), 1);
    }

    #[test]
    fn node_gone_undoes_every_process_of_the_node() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        setval(&mut r, id, 0, 2);
        let on = |node, pid| Waiter { node, pid, token: 1 };
        let u = user(1000);
        assert_eq!(r.semop(id, &[op(0, -1, SEM_UNDO)], on(4, 10), &u, NOW), SemopOutcome::Done);
        assert_eq!(r.semop(id, &[op(0, -1, SEM_UNDO)], on(4, 11), &u, NOW), SemopOutcome::Done);
        assert_eq!(r.semop(id, &[op(1, -1, 0)], on(4, 12), &u, NOW), SemopOutcome::Blocked);
        assert_eq!(r.semop(id, &[op(0, -2, 0)], on(5, 10), &u, NOW), SemopOutcome::Blocked);
        assert_eq!(r.node_gone(4, NOW), vec![on(4, 12)]);
        assert_eq!(r.take_completed(), vec![(on(5, 10), Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![0, 0]);
        assert_eq!(value(&mut r, id, 1, libc::GETNCNT), 0);
    }

    #[test]
    fn getval_setval_getall_setall_getpid() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 3);
        let u = Cred { pid: 77, ..user(1000) };
        assert_eq!(r.semctl(id, 1, libc::SETVAL, SemctlArg::Val(9), &u, 3000), Ok(SemctlReply::Ok));
        assert_eq!(getval(&mut r, id, 1), 9);
        assert_eq!(value(&mut r, id, 1, libc::GETPID), 77);
        assert_eq!(value(&mut r, id, 0, libc::GETPID), 0);
        assert_eq!(stat(&mut r, id).ctime, 3000);
        assert_eq!(stat(&mut r, id).otime, 0, "semctl is not an operation");
        let all = SemctlArg::Array(vec![1, 2, SEMVMX as u16]);
        assert_eq!(r.semctl(id, 0, libc::SETALL, all, &u, 4000), Ok(SemctlReply::Ok));
        assert_eq!(getall(&mut r, id), vec![1, 2, SEMVMX as u16]);
        assert_eq!(value(&mut r, id, 0, libc::GETPID), 77);
        assert_eq!(stat(&mut r, id).ctime, 4000);
        // Range and argument checks.
        assert_eq!(ctl(&mut r, id, 0, libc::SETVAL, SemctlArg::Val(SEMVMX + 1)), Err(ERANGE));
        assert_eq!(ctl(&mut r, id, 0, libc::SETVAL, SemctlArg::Val(-1)), Err(ERANGE));
        assert_eq!(ctl(&mut r, id + 9, 0, libc::SETVAL, SemctlArg::Val(-1)), Err(ERANGE), "before the id");
        assert_eq!(ctl(&mut r, id, 0, libc::SETALL, SemctlArg::Array(vec![0, 0, 32768])), Err(ERANGE));
        assert_eq!(ctl(&mut r, id, 0, libc::SETALL, SemctlArg::Array(vec![0, 0])), Err(EFAULT));
        assert_eq!(ctl(&mut r, id, 0, libc::SETALL, SemctlArg::None), Err(EFAULT));
        assert_eq!(ctl(&mut r, id, 0, libc::SETVAL, SemctlArg::None), Err(EFAULT));
        assert_eq!(getall(&mut r, id), vec![1, 2, SEMVMX as u16]);
        for c in [libc::GETVAL, libc::GETPID, libc::GETNCNT, libc::GETZCNT, libc::SETVAL] {
            assert_eq!(ctl(&mut r, id, 3, c, SemctlArg::Val(0)), Err(EINVAL), "semnum out of range: {c}");
            assert_eq!(ctl(&mut r, id, -1, c, SemctlArg::Val(0)), Err(EINVAL));
        }
        assert_eq!(ctl(&mut r, id, 99, libc::GETALL, SemctlArg::None).map(|_| ()), Ok(()));
        assert_eq!(ctl(&mut r, id, 0, 99, SemctlArg::None), Err(EINVAL), "bad command");
        assert_eq!(ctl(&mut r, -1, 0, libc::GETVAL, SemctlArg::None), Err(EINVAL));
        assert_eq!(
            ctl(&mut r, id, 1, libc::GETVAL | cmd::IPC_64, SemctlArg::None),
            Ok(SemctlReply::Value(2))
        );
    }

    #[test]
    fn semctl_permissions_in_linux_order() {
        let mut r = SemRegistry::new();
        let id = r.semget(1, 2, libc::IPC_CREAT | 0o604, &user(1000), NOW).unwrap();
        let reader = user(1001);
        let nobody = Cred { groups: vec![1000], ..user(1002) }; // group bits: none
        let call = |r: &mut SemRegistry, c: &Cred, num, cmd, arg| r.semctl(id, num, cmd, arg, c, NOW);
        assert_eq!(call(&mut r, &reader, 0, libc::GETVAL, SemctlArg::None), Ok(SemctlReply::Value(0)));
        assert_eq!(call(&mut r, &nobody, 0, libc::GETVAL, SemctlArg::None), Err(EACCES));
        // GET*: permission before semnum; SETVAL: semnum before permission.
        assert_eq!(call(&mut r, &nobody, 9, libc::GETNCNT, SemctlArg::None), Err(EACCES));
        assert_eq!(call(&mut r, &reader, 9, libc::SETVAL, SemctlArg::Val(1)), Err(EINVAL));
        assert_eq!(call(&mut r, &reader, 0, libc::SETVAL, SemctlArg::Val(1)), Err(EACCES));
        assert_eq!(call(&mut r, &reader, 0, libc::SETALL, SemctlArg::Array(vec![1, 1])), Err(EACCES));
        assert_eq!(call(&mut r, &nobody, 0, libc::GETALL, SemctlArg::None), Err(EACCES));
        assert_eq!(call(&mut r, &nobody, 0, cmd::IPC_STAT, SemctlArg::None), Err(EACCES));
        assert!(call(&mut r, &reader, 0, cmd::IPC_STAT, SemctlArg::None).is_ok());
        assert_eq!(call(&mut r, &user(0), 0, libc::SETVAL, SemctlArg::Val(1)), Ok(SemctlReply::Ok));
        // Root without CAP_IPC_OWNER is held to the permission bits, and
        // without CAP_SYS_ADMIN may not remove another's set.
        let weak_root = Cred { caps: 0, ..user(0) };
        assert_eq!(call(&mut r, &weak_root, 0, libc::GETVAL, SemctlArg::Val(1)), Ok(SemctlReply::Value(1)));
        assert_eq!(call(&mut r, &weak_root, 0, libc::SETVAL, SemctlArg::Val(1)), Err(EACCES));
        assert_eq!(r.semop(id, &[op(0, 1, 0)], w(1, 1), &weak_root, NOW), errno(libc::EACCES));
        assert_eq!(call(&mut r, &weak_root, 0, cmd::IPC_RMID, SemctlArg::None), Err(EPERM));
        let admin = Cred { caps: 1 << CAP_SYS_ADMIN, ..user(1002) };
        assert_eq!(call(&mut r, &admin, 0, libc::SETVAL, SemctlArg::Val(1)), Err(EACCES));
        assert_eq!(call(&mut r, &admin, 0, cmd::IPC_RMID, SemctlArg::None), Ok(SemctlReply::Ok));
    }

    #[test]
    fn setval_and_setall_clear_undo_adjustments() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        let ops = [op(0, 2, SEM_UNDO), op(1, 3, SEM_UNDO)];
        assert_eq!(semop(&mut r, id, 1, 1, &ops), SemopOutcome::Done);
        assert_eq!(semop(&mut r, id, 2, 1, &ops), SemopOutcome::Done);
        setval(&mut r, id, 0, 10);
        r.process_exit(1, 1, NOW);
        assert_eq!(getall(&mut r, id), vec![10, 3], "only sem 1 was undone");
        assert_eq!(ctl(&mut r, id, 0, libc::SETALL, SemctlArg::Array(vec![7, 7])), Ok(SemctlReply::Ok));
        r.process_exit(1, 2, NOW);
        assert_eq!(getall(&mut r, id), vec![7, 7], "nothing left to undo");
    }

    #[test]
    fn setall_wakes_waiters() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0), op(1, -2, 0)]), SemopOutcome::Blocked);
        assert_eq!(ctl(&mut r, id, 0, libc::SETALL, SemctlArg::Array(vec![1, 3])), Ok(SemctlReply::Ok));
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(()))]);
        assert_eq!(getall(&mut r, id), vec![0, 1]);
        assert_eq!(stat(&mut r, id).otime, NOW, "a woken operation sets otime");
    }

    #[test]
    fn ncnt_and_zcnt_count_the_blocking_operation() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 3);
        setval(&mut r, id, 2, 1);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 2, 1, &[op(0, -1, 0), op(1, -1, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 3, 1, &[op(2, 0, 0)]), SemopOutcome::Blocked);
        assert_eq!(semop(&mut r, id, 4, 1, &[op(2, 0, 0), op(0, -1, 0)]), SemopOutcome::Blocked);
        let counts = |r: &mut SemRegistry| {
            (0..3)
                .map(|n| (value(r, id, n, libc::GETNCNT), value(r, id, n, libc::GETZCNT)))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&mut r), vec![(2, 0), (0, 0), (0, 2)]);
        // Sem 2 reaches zero: process 3 goes; process 4 now waits on sem 0.
        setval(&mut r, id, 2, 0);
        assert_eq!(r.take_completed(), vec![(w(3, 1), Ok(()))]);
        assert_eq!(counts(&mut r), vec![(3, 0), (0, 0), (0, 0)]);
        // Sem 0 gets 1: process 1 takes it.
        setval(&mut r, id, 0, 1);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Ok(()))]);
        assert_eq!(counts(&mut r), vec![(2, 0), (0, 0), (0, 0)]);
        // Again: process 2 gets past sem 0 but not sem 1; process 4 goes,
        // after which process 2 waits on sem 0 again.
        setval(&mut r, id, 0, 1);
        assert_eq!(r.take_completed(), vec![(w(4, 1), Ok(()))]);
        assert_eq!(counts(&mut r), vec![(1, 0), (0, 0), (0, 0)]);
        setval(&mut r, id, 0, 1);
        assert!(r.take_completed().is_empty());
        assert_eq!(counts(&mut r), vec![(0, 0), (1, 0), (0, 0)]);
    }

    #[test]
    fn queued_operation_can_fail_with_erange_later() {
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 2);
        assert_eq!(semop(&mut r, id, 1, 1, &[op(0, -1, 0), op(1, 10, 0)]), SemopOutcome::Blocked);
        setval(&mut r, id, 1, SEMVMX - 5);
        setval(&mut r, id, 0, 1);
        assert_eq!(r.take_completed(), vec![(w(1, 1), Err(ERANGE))]);
        assert_eq!(getall(&mut r, id), vec![1, (SEMVMX - 5) as u16]);
    }

    #[test]
    fn ipc_set_changes_owner_and_mode() {
        let mut r = SemRegistry::new();
        let id = r.semget(1, 1, libc::IPC_CREAT | 0o600, &user(1000), NOW).unwrap();
        let perm = |uid, gid, mode| SemctlArg::Perm { uid, gid, mode };
        assert_eq!(r.semctl(id, 0, cmd::IPC_SET, perm(1001, 5, 0o640), &user(1001), NOW), Err(EPERM));
        assert_eq!(r.semctl(id, 0, cmd::IPC_SET, perm(u32::MAX, 5, 0), &user(1000), NOW), Err(EINVAL));
        assert_eq!(r.semctl(id, 0, cmd::IPC_SET, SemctlArg::None, &user(1000), NOW), Err(EFAULT));
        assert_eq!(
            r.semctl(id, 0, cmd::IPC_SET, perm(1001, 5, 0o7640), &user(1000), 6000),
            Ok(SemctlReply::Ok)
        );
        let s = stat(&mut r, id);
        assert_eq!((s.uid, s.gid, s.cuid, s.cgid, s.mode, s.ctime), (1001, 5, 1000, 1000, 0o640, 6000));
        // The new owner may now change it; the creator still may.
        assert_eq!(
            r.semctl(id, 0, cmd::IPC_SET, perm(1001, 5, 0o600), &user(1001), NOW),
            Ok(SemctlReply::Ok)
        );
        assert_eq!(
            r.semctl(id, 0, cmd::IPC_SET, perm(1000, 5, 0o600), &user(1000), NOW),
            Ok(SemctlReply::Ok)
        );
        assert_eq!(r.semctl(id, 0, cmd::IPC_SET, perm(1000, 5, 0o600), &user(0), NOW), Ok(SemctlReply::Ok));
    }

    #[test]
    fn info_and_sem_stat() {
        let mut r = SemRegistry::new();
        let u = user(1000);
        let Ok(SemctlReply::Info { ret: 0, info }) = r.semctl(0, 0, cmd::IPC_INFO, SemctlArg::None, &u, NOW)
        else {
            panic!()
        };
        assert_eq!(
            (info.semmsl, info.semopm, info.semvmx, info.semusz, info.semaem),
            (SEMMSL, 500, SEMVMX, 20, SEMAEM)
        );
        let a = new_set(&mut r, 3);
        let b = r.semget(9, 4, libc::IPC_CREAT | 0o600, &user(1001), NOW).unwrap();
        let Ok(SemctlReply::Info { ret, info }) = r.semctl(0, 0, cmd::SEM_INFO, SemctlArg::None, &u, NOW)
        else {
            panic!()
        };
        assert_eq!((ret, info.semusz, info.semaem), (b & !ID_BIT, 2, 7));
        let stat_of = |r: &mut SemRegistry, c, idx| r.semctl(idx, 0, c, SemctlArg::None, &u, NOW);
        match stat_of(&mut r, cmd::SEM_STAT, a & !ID_BIT) {
            Ok(SemctlReply::Stat { ret, stat }) => assert_eq!((ret, stat.nsems), (a, 3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(stat_of(&mut r, cmd::SEM_STAT, b & !ID_BIT), Err(EACCES));
        match stat_of(&mut r, cmd::SEM_STAT_ANY, b & !ID_BIT) {
            Ok(SemctlReply::Stat { ret, stat }) => assert_eq!((ret, stat.key, stat.uid), (b, 9, 1001)),
            other => panic!("{other:?}"),
        }
        assert_eq!(stat_of(&mut r, cmd::SEM_STAT, 0), Err(EINVAL));
        assert_eq!(stat_of(&mut r, cmd::SEM_STAT, a), Err(EINVAL), "an index, not an id");
        assert_eq!(stat_of(&mut r, cmd::IPC_INFO, -1), Err(EINVAL));
        assert_eq!(r.list().iter().map(|e| e.0).collect::<Vec<_>>(), vec![a, b]);
        // Removing gives the semaphores back.
        assert_eq!(ctl(&mut r, a, 0, cmd::IPC_RMID, SemctlArg::None), Ok(SemctlReply::Ok));
        let Ok(SemctlReply::Info { info, .. }) = r.semctl(0, 0, cmd::SEM_INFO, SemctlArg::None, &u, NOW)
        else {
            panic!()
        };
        assert_eq!((info.semusz, info.semaem), (1, 4));
    }

    #[test]
    fn messages_round_trip_through_postcard() {
        let ops = vec![op(3, -2, SEM_UNDO | IPC_NOWAIT)];
        let bytes = postcard::to_allocvec(&ops).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<SemOp>>(&bytes).unwrap(), ops);
        for arg in [
            SemctlArg::None,
            SemctlArg::Val(4),
            SemctlArg::Array(vec![1, 2]),
            SemctlArg::Perm { uid: 1, gid: 2, mode: 0o600 },
        ] {
            let bytes = postcard::to_allocvec(&arg).unwrap();
            assert_eq!(postcard::from_bytes::<SemctlArg>(&bytes).unwrap(), arg);
        }
        let mut r = SemRegistry::new();
        let id = new_set(&mut r, 1);
        let reply = ctl(&mut r, id, 0, cmd::IPC_STAT, SemctlArg::None).unwrap();
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(postcard::from_bytes::<SemctlReply>(&bytes).unwrap(), reply);
        let out = SemopOutcome::Err(EIDRM);
        let bytes = postcard::to_allocvec(&(w(1, 2), out)).unwrap();
        assert_eq!(postcard::from_bytes::<(Waiter, SemopOutcome)>(&bytes).unwrap(), (w(1, 2), out));
    }

    #[test]
    fn a_set_is_lent_to_its_only_user_and_comes_back() {
        let mut home = SemRegistry::new();
        let id = new_set(&mut home, 2);
        setval(&mut home, id, 0, 5);
        let other = Waiter { node: 2, pid: 7, token: 1 };
        // Node 2 then node 1 three times: lent after the third of node 1.
        assert_eq!(home.semop(id, &[op(0, -1, 0)], other, &user(1000), NOW), SemopOutcome::Done);
        for t in 0..2 {
            assert_eq!(semop(&mut home, id, 42, t, &[op(0, -1, 0)]), SemopOutcome::Done);
            assert_eq!(home.lend(id, 1), None);
        }
        assert_eq!(semop(&mut home, id, 42, 3, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Done);
        assert_eq!(home.lend(id, 2), None, "node 2 was not the last user");
        let state = home.lend(id, 1).expect("lent to node 1");
        assert_eq!(state.sems[0].0, 1);
        assert_eq!(home.lent_to(id), Some(1));
        // The home runs nothing on a lent set.
        assert_eq!(home.semop(id, &[op(0, 1, 0)], other, &user(1000), NOW), SemopOutcome::Err(EINVAL));

        let mut borrower = SemRegistry::new();
        borrower.adopt(id, state);
        assert_eq!(semop(&mut borrower, id, 42, 4, &[op(0, 1, SEM_UNDO), op(1, 2, 0)]), SemopOutcome::Done);
        assert_eq!(
            semop(&mut borrower, id, 42, 5, &[op(0, -9, IPC_NOWAIT)]),
            SemopOutcome::Err(Errno(libc::EAGAIN))
        );
        let now = borrower.state_of(id).unwrap();
        assert!(!home.update(id, 2, now.clone(), false), "only the borrower reports");
        let mut bad = now.clone();
        bad.sems.pop();
        assert!(!home.update(id, 1, bad, false), "a report that does not fit the set");
        assert!(home.update(id, 1, now, false));
        assert_eq!(home.lent_to(id), Some(1));
        let back = borrower.give_back(id).unwrap();
        assert!(!borrower.holds(id));
        assert!(home.update(id, 1, back, true));
        assert_eq!(home.lent_to(id), None);
        assert_eq!(getall(&mut home, id), vec![2, 2]);
        // The undo adjustments came back with it: -1 then +1 = none.
        home.process_exit(1, 42, NOW);
        assert_eq!(getall(&mut home, id), vec![2, 2]);
    }

    #[test]
    fn a_lent_set_whose_borrower_dies_comes_home_as_reported() {
        let mut home = SemRegistry::new();
        let id = new_set(&mut home, 1);
        setval(&mut home, id, 0, 1);
        for t in 0..3 {
            assert_eq!(semop(&mut home, id, 42, t, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Done);
            assert_eq!(semop(&mut home, id, 42, 10 + t, &[op(0, 1, SEM_UNDO)]), SemopOutcome::Done);
        }
        let mut borrower = SemRegistry::new();
        borrower.adopt(id, home.lend(id, 1).unwrap());
        // It takes the semaphore, reports, and dies holding it.
        assert_eq!(semop(&mut borrower, id, 42, 20, &[op(0, -1, SEM_UNDO)]), SemopOutcome::Done);
        assert!(home.update(id, 1, borrower.state_of(id).unwrap(), false));
        assert_eq!(home.reclaim(1), vec![id]);
        assert_eq!(home.lent_to(id), None);
        home.node_gone(1, NOW);
        assert_eq!(getval(&mut home, id, 0), 1, "its undo gave the semaphore back");
    }

    #[test]
    fn no_lending_while_others_wait_or_hold_undo() {
        let mut home = SemRegistry::new();
        let id = new_set(&mut home, 1);
        let other = Waiter { node: 2, pid: 7, token: 1 };
        // Another process's undo adjustment keeps the set at home.
        assert_eq!(home.semop(id, &[op(0, 1, SEM_UNDO)], other, &user(1000), NOW), SemopOutcome::Done);
        for t in 0..4 {
            assert_eq!(
                semop(&mut home, id, 42, t, &[op(0, 0, IPC_NOWAIT), op(0, 1, 0)]),
                SemopOutcome::Err(Errno(libc::EAGAIN))
            );
        }
        assert_eq!(home.lend(id, 1), None);
        // A waiter keeps it at home too.
        let id2 = new_set(&mut home, 1);
        assert_eq!(home.semop(id2, &[op(0, -1, 0)], other, &user(1000), NOW), SemopOutcome::Blocked);
        for t in 10..14 {
            assert_eq!(semop(&mut home, id2, 42, t, &[op(0, 0, IPC_NOWAIT)]), SemopOutcome::Done);
        }
        assert_eq!(home.lend(id2, 1), None);
        // And KDIPC_SEM_LEND=0 never lends.
        let mut never = SemRegistry::new();
        never.set_lend_after(0);
        let id3 = new_set(&mut never, 1);
        for t in 0..5 {
            assert_eq!(semop(&mut never, id3, 42, t, &[op(0, 1, 0)]), SemopOutcome::Done);
        }
        assert_eq!(never.lend(id3, 1), None);
    }
}
