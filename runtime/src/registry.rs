//! The nameserver's registry of distributed segments: System V `shmget`,
//! `shmat`, `shmdt` and `shmctl` semantics, decided once for the cluster.
//!
//! Ids: a distributed id has bit 30 set (`0x4000_0000 | n`, `n` counting
//! from 1, never reused by one nameserver), so the shim tells it from a
//! kernel id without asking anyone. The kernel's ids reach that range only
//! after 32 768 create/remove cycles of one kind (its sequence counter is
//! shifted left by 15); such a kernel id is still passed to the kernel when
//! the nameserver does not know it.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::protocol::{NodeId, PAGE_SIZE};

/// Marks a distributed id.
pub const ID_BIT: i32 = 0x4000_0000;
/// `SHM_DEST` in `shm_perm.mode`.
pub const SHM_DEST: u32 = 0o1000;

pub fn is_distributed_id(id: i32) -> bool {
    id > 0 && id & ID_BIT != 0
}

/// An errno value to hand back to the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errno(pub i32);

/// `CAP_IPC_LOCK`: `SHM_LOCK` of any segment, beyond `RLIMIT_MEMLOCK`.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_IPC_OWNER`: bypasses the permission bits.
pub const CAP_IPC_OWNER: u32 = 15;
/// `CAP_SYS_ADMIN`: `IPC_SET` and `IPC_RMID` of any segment.
pub const CAP_SYS_ADMIN: u32 = 21;

/// Who makes a call: the credentials System V checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub pid: i32,
    /// Effective capabilities (bit `CAP_*`): root is not enough, as in the
    /// kernel (a container's root often lacks `CAP_IPC_OWNER`).
    pub caps: u64,
}

impl Cred {
    /// The calling thread's effective credentials.
    pub fn current() -> Cred {
        // SAFETY: these calls have no preconditions and cannot fail.
        let (uid, gid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
        // Every supplementary group (a user may have up to NGROUPS_MAX):
        // a group left out would refuse what the kernel allows.
        // SAFETY: a size of 0 only asks for the count.
        let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut groups = vec![0 as libc::gid_t; count.max(0) as usize];
        // SAFETY: the buffer holds `groups.len()` entries and we pass that size.
        let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
        groups.truncate(n.max(0) as usize);
        let caps = effective_caps().unwrap_or(if uid == 0 { u64::MAX } else { 0 });
        Cred { uid, gid, groups, pid, caps }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    pub fn capable(&self, cap: u32) -> bool {
        self.caps & (1 << cap) != 0
    }
}

/// The calling thread's effective capability set (`capget`).
fn effective_caps() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a version-3 header and the two data words that
    // version writes; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    (r == 0).then(|| data[0].effective as u64 | (data[1].effective as u64) << 32)
}

/// `struct shmid_ds`, as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmStat {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits plus `SHM_DEST`.
    pub mode: u32,
    pub size: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
}

/// Registry calls (node → nameserver).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Call {
    /// Semaphores (executed by `crate::semaphores::SemRegistry`).
    Sem(crate::semaphores::SemCall),
    /// The node joins the cluster.
    Register {
        pid: i32,
    },
    ShmGet {
        key: i32,
        size: u64,
        flags: i32,
        cred: Cred,
    },
    ShmAttach {
        id: i32,
        readonly: bool,
        /// `SHM_EXEC`: execute permission is needed too.
        exec: bool,
        cred: Cred,
    },
    ShmDetach {
        id: i32,
        /// Undoes this node's last `ShmAttach`, whose mapping failed: as in
        /// the kernel, a failed `shmat` leaves the times and pid unchanged.
        failed_attach: bool,
        /// The node kept its pages: detach only if this destroys the
        /// segment (the last attachment of one marked for removal, whose
        /// pages nobody can read any more); otherwise change nothing and
        /// answer `EAGAIN`, and the node gives its pages back first.
        only_if_destroyed: bool,
        cred: Cred,
    },
    ShmStat {
        id: i32,
        cred: Cred,
    },
    /// `IPC_SET`; `uid`/`gid` are `u32::MAX` when the caller's user
    /// namespace does not map them (the kernel's `EINVAL`).
    ShmSet {
        id: i32,
        uid: u32,
        gid: u32,
        mode: u32,
        cred: Cred,
    },
    ShmRemove {
        id: i32,
        cred: Cred,
    },
    /// Number of segments and of their pages (for `SHM_INFO`).
    ShmTotals,
    /// Every segment (for `kdipc ipcs`).
    ShmList,
    /// Every segment and semaphore set, with what the manager knows (for
    /// `kdipc ipcs`; answered by the nameserver, not the registry).
    IpcList,
    /// Every node's figures (`kdipc stats`; answered by the nameserver).
    Stats,
}

/// Registry answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// `semctl`'s answer.
    SemCtl(crate::semaphores::SemctlReply),
    /// Whether a blocked semaphore operation was withdrawn.
    Cancelled(bool),
    Registered {
        node: NodeId,
    },
    Id(i32),
    /// Attached: the segment's size.
    Attached {
        size: u64,
    },
    Stat(ShmStat),
    Totals {
        segments: u64,
        pages: u64,
    },
    List(Vec<(i32, ShmStat)>),
    Ok,
    Err(Errno),
    /// `IpcList`: segments (id, stat, pages owned by a node other than the
    /// home, nodes that hold at least one of its pages) and semaphore sets
    /// (id, stat, the node that holds it: 0 for the nameserver, else the
    /// node it is lent to), by id.
    IpcList {
        shm: Vec<(i32, ShmStat, u32, u32)>,
        sem: Vec<(i32, crate::semaphores::SemStat, NodeId)>,
    },
    /// `Stats`: (node, pid, still there, figures), by node, and every
    /// object's figures summed over the nodes, by kind and id.
    Stats {
        nodes: Vec<(NodeId, i32, bool, crate::stats::Stats)>,
        objects: Vec<crate::stats::ObjReport>,
    },
}

struct Segment {
    stat: ShmStat,
    /// Attaches per node.
    attaches: BTreeMap<NodeId, u64>,
    /// The node of the latest attach, and `shm_atime`, `shm_lpid` before it.
    before_attach: Option<(NodeId, i64, i32)>,
}

/// What a registry call did to the set of segments, for the manager.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    Created { id: i32, npages: u32 },
    Destroyed { id: i32 },
}

/// The registry's state on disk: the next id number and every segment
/// (id, `shmid_ds`, attaches per node).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    pub next: i32,
    pub segs: Vec<SegmentSnapshot>,
}

/// A segment on disk: id, `shmid_ds`, attaches per node.
pub type SegmentSnapshot = (i32, ShmStat, Vec<(NodeId, u64)>);

/// The registry of distributed segments.
pub struct Registry {
    next: i32,
    by_id: HashMap<i32, Segment>,
    by_key: HashMap<i32, i32>,
    shmmax: u64,
    clock: fn() -> i64,
    enough_memory: fn(u64) -> bool,
}

/// Seconds since the epoch (`shm_ctime`, `sem_otime`, …).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn shmmax() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/shmmax")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX >> 8)
}

/// `SHM_NORESERVE`: no memory is charged for the segment.
const SHM_NORESERVE: i32 = 0o10000;

/// The kernel's `__vm_enough_memory()` for a new segment of `pages` pages,
/// on this (the nameserver's) host: a segment's memory is charged when it
/// is created, so an impossible size is `ENOMEM` at `shmget`.
fn enough_memory(pages: u64) -> bool {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |name: &str| {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let want = pages.saturating_mul(PAGE_SIZE as u64 / 1024);
    match mode {
        1 => true, // OVERCOMMIT_ALWAYS
        2 => match (kib("CommitLimit"), kib("Committed_AS")) {
            (Some(limit), Some(used)) => want <= limit.saturating_sub(used),
            _ => true,
        },
        _ => match (kib("MemTotal"), kib("SwapTotal")) {
            (Some(ram), Some(swap)) => want <= ram.saturating_add(swap),
            _ => true,
        },
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// `ipcperms()`: may `cred` access an object with `want` (rwx bits in any
/// of the three positions)?
fn allowed(cred: &Cred, stat: &ShmStat, want: u32) -> bool {
    let requested = (want >> 6 | want >> 3 | want) & 0o7;
    let mut granted = stat.mode;
    if cred.uid == stat.cuid || cred.uid == stat.uid {
        granted >>= 6;
    } else if cred.in_group(stat.cgid) || cred.in_group(stat.gid) {
        granted >>= 3;
    }
    requested & !granted & 0o7 == 0 || cred.capable(CAP_IPC_OWNER)
}

/// May `cred` change or remove the object (`IPC_SET`, `IPC_RMID`)?
fn is_owner(cred: &Cred, stat: &ShmStat) -> bool {
    cred.uid == stat.uid || cred.uid == stat.cuid || cred.capable(CAP_SYS_ADMIN)
}

const EINVAL: Errno = Errno(libc::EINVAL);

impl Registry {
    pub fn new() -> Self {
        Registry {
            next: 1,
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            shmmax: shmmax(),
            clock: now_secs,
            enough_memory,
        }
    }

    /// Answers a call from `node`.
    pub fn call(&mut self, node: NodeId, call: Call) -> (Reply, Effect) {
        let res = match call {
            Call::Register { .. } | Call::Sem(_) | Call::IpcList | Call::Stats => {
                return (Reply::Err(EINVAL), Effect::None)
            }
            Call::ShmGet { key, size, flags, cred } => self.get(key, size, flags, &cred),
            Call::ShmAttach { id, readonly, exec, cred } => self.attach(node, id, readonly, exec, &cred),
            Call::ShmDetach { id, failed_attach, only_if_destroyed, cred } => {
                self.detach(node, id, failed_attach, only_if_destroyed, &cred)
            }
            Call::ShmStat { id, cred } => self.seg(id).and_then(|s| {
                if allowed(&cred, &s.stat, 0o444) {
                    Ok((Reply::Stat(s.stat.clone()), Effect::None))
                } else {
                    Err(Errno(libc::EACCES))
                }
            }),
            Call::ShmSet { id, uid, gid, mode, cred } => {
                let now = (self.clock)();
                self.seg_mut(id).and_then(|s| {
                    if !is_owner(&cred, &s.stat) {
                        return Err(Errno(libc::EPERM));
                    }
                    if uid == u32::MAX || gid == u32::MAX {
                        return Err(EINVAL); // ipc_update_perm: !uid_valid
                    }
                    s.stat.uid = uid;
                    s.stat.gid = gid;
                    s.stat.mode = (s.stat.mode & !0o777) | (mode & 0o777);
                    s.stat.ctime = now;
                    Ok((Reply::Ok, Effect::None))
                })
            }
            Call::ShmRemove { id, cred } => self.remove(id, &cred),
            Call::ShmTotals => {
                let pages = self.by_id.values().map(|s| s.stat.size.div_ceil(PAGE_SIZE as u64)).sum();
                Ok((Reply::Totals { segments: self.by_id.len() as u64, pages }, Effect::None))
            }
            Call::ShmList => {
                let mut v: Vec<_> = self.by_id.iter().map(|(&id, s)| (id, s.stat.clone())).collect();
                v.sort_by_key(|e| e.0);
                Ok((Reply::List(v), Effect::None))
            }
        };
        res.unwrap_or_else(|e| (Reply::Err(e), Effect::None))
    }

    /// Every segment with its attaches per node, and the next id number
    /// (for `kdipc nameserver --state`).
    pub fn snapshot(&self) -> RegistrySnapshot {
        let mut segs: Vec<_> = self
            .by_id
            .iter()
            .map(|(&id, s)| (id, s.stat.clone(), s.attaches.iter().map(|(&n, &c)| (n, c)).collect()))
            .collect();
        segs.sort_by_key(|s: &SegmentSnapshot| s.0);
        RegistrySnapshot { next: self.next, segs }
    }

    /// The registry as `snapshot` saw it.
    pub fn restore(snap: RegistrySnapshot) -> Self {
        let mut r = Registry::new();
        r.next = snap.next;
        for (id, stat, attaches) in snap.segs {
            if stat.key != libc::IPC_PRIVATE {
                r.by_key.insert(stat.key, id);
            }
            r.by_id
                .insert(id, Segment { stat, attaches: attaches.into_iter().collect(), before_attach: None });
        }
        r
    }

    /// The key of segment `id`, if it exists.
    pub fn key_of(&self, id: i32) -> Option<i32> {
        self.by_id.get(&id).map(|s| s.stat.key)
    }

    /// The segment's size in pages, if it exists.
    pub fn npages(&self, id: i32) -> Option<u32> {
        self.by_id.get(&id).map(|s| s.stat.size.div_ceil(PAGE_SIZE as u64) as u32)
    }

    /// The node is gone: its attaches go with it.
    pub fn node_gone(&mut self, node: NodeId) -> Vec<Effect> {
        let ids: Vec<i32> = self.by_id.keys().copied().collect();
        let mut effects = Vec::new();
        for id in ids {
            if let Some(s) = self.by_id.get_mut(&id) {
                if let Some(n) = s.attaches.remove(&node) {
                    s.stat.nattch -= n;
                    if let Some(e) = self.maybe_destroy(id) {
                        effects.push(e);
                    }
                }
            }
        }
        effects
    }

    fn seg(&self, id: i32) -> Result<&Segment, Errno> {
        self.by_id.get(&id).ok_or(EINVAL)
    }

    fn seg_mut(&mut self, id: i32) -> Result<&mut Segment, Errno> {
        self.by_id.get_mut(&id).ok_or(EINVAL)
    }

    fn get(&mut self, key: i32, size: u64, flags: i32, cred: &Cred) -> Result<(Reply, Effect), Errno> {
        if key != libc::IPC_PRIVATE {
            if let Some(&id) = self.by_key.get(&key) {
                if flags & libc::IPC_CREAT != 0 && flags & libc::IPC_EXCL != 0 {
                    return Err(Errno(libc::EEXIST));
                }
                let s = &self.by_id[&id];
                if s.stat.size < size {
                    return Err(EINVAL);
                }
                if !allowed(cred, &s.stat, (flags & 0o777) as u32) {
                    return Err(Errno(libc::EACCES));
                }
                return Ok((Reply::Id(id), Effect::None));
            }
            if flags & libc::IPC_CREAT == 0 {
                return Err(Errno(libc::ENOENT));
            }
        }
        if size < 1 || size > self.shmmax {
            return Err(EINVAL);
        }
        let npages = size.div_ceil(PAGE_SIZE as u64);
        if flags & SHM_NORESERVE == 0 && !(self.enough_memory)(npages) {
            return Err(Errno(libc::ENOMEM));
        }
        let npages = u32::try_from(npages).map_err(|_| Errno(libc::ENOSPC))?;
        if self.next >= ID_BIT {
            return Err(Errno(libc::ENOSPC));
        }
        let id = ID_BIT | self.next;
        self.next += 1;
        let stat = ShmStat {
            key,
            uid: cred.uid,
            gid: cred.gid,
            cuid: cred.uid,
            cgid: cred.gid,
            mode: (flags & 0o777) as u32,
            size,
            atime: 0,
            dtime: 0,
            ctime: (self.clock)(),
            cpid: cred.pid,
            lpid: 0,
            nattch: 0,
        };
        self.by_id.insert(id, Segment { stat, attaches: BTreeMap::new(), before_attach: None });
        if key != libc::IPC_PRIVATE {
            self.by_key.insert(key, id);
        }
        Ok((Reply::Id(id), Effect::Created { id, npages }))
    }

    fn attach(
        &mut self,
        node: NodeId,
        id: i32,
        readonly: bool,
        exec: bool,
        cred: &Cred,
    ) -> Result<(Reply, Effect), Errno> {
        let now = (self.clock)();
        let s = self.seg_mut(id)?;
        let want = if readonly { 0o444 } else { 0o666 } | if exec { 0o111 } else { 0 };
        if !allowed(cred, &s.stat, want) {
            return Err(Errno(libc::EACCES));
        }
        *s.attaches.entry(node).or_default() += 1;
        s.stat.nattch += 1;
        s.before_attach = Some((node, s.stat.atime, s.stat.lpid));
        s.stat.atime = now;
        s.stat.lpid = cred.pid;
        Ok((Reply::Attached { size: s.stat.size }, Effect::None))
    }

    fn detach(
        &mut self,
        node: NodeId,
        id: i32,
        failed_attach: bool,
        only_if_destroyed: bool,
        cred: &Cred,
    ) -> Result<(Reply, Effect), Errno> {
        let now = (self.clock)();
        let s = self.seg_mut(id)?;
        let mine = *s.attaches.get(&node).ok_or(EINVAL)?;
        if only_if_destroyed && !(s.stat.mode & SHM_DEST != 0 && s.stat.nattch == 1 && mine == 1) {
            return Err(Errno(libc::EAGAIN));
        }
        let n = s.attaches.get_mut(&node).ok_or(EINVAL)?;
        *n -= 1;
        if *n == 0 {
            s.attaches.remove(&node);
        }
        s.stat.nattch -= 1;
        if !failed_attach {
            s.stat.dtime = now;
            s.stat.lpid = cred.pid;
        } else if let Some((_, atime, lpid)) = s.before_attach.take().filter(|b| b.0 == node) {
            // No other attach since: as if this one never happened.
            s.stat.atime = atime;
            s.stat.lpid = lpid;
        }
        Ok((Reply::Ok, self.maybe_destroy(id).unwrap_or(Effect::None)))
    }

    fn remove(&mut self, id: i32, cred: &Cred) -> Result<(Reply, Effect), Errno> {
        let s = self.seg_mut(id)?;
        if !is_owner(cred, &s.stat) {
            return Err(Errno(libc::EPERM));
        }
        s.stat.mode |= SHM_DEST;
        let key = std::mem::replace(&mut s.stat.key, libc::IPC_PRIVATE);
        if key != libc::IPC_PRIVATE {
            self.by_key.remove(&key);
        }
        Ok((Reply::Ok, self.maybe_destroy(id).unwrap_or(Effect::None)))
    }

    fn maybe_destroy(&mut self, id: i32) -> Option<Effect> {
        let s = self.by_id.get(&id)?;
        if s.stat.nattch == 0 && s.stat.mode & SHM_DEST != 0 {
            self.by_id.remove(&id);
            return Some(Effect::Destroyed { id });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32) -> Cred {
        Cred { uid, gid: uid, groups: vec![], pid: 42, caps: if uid == 0 { u64::MAX } else { 0 } }
    }

    fn id_of(r: (Reply, Effect)) -> i32 {
        match r.0 {
            Reply::Id(id) => id,
            other => panic!("expected an id, got {other:?}"),
        }
    }

    fn err_of(r: (Reply, Effect)) -> i32 {
        match r.0 {
            Reply::Err(Errno(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn get_semantics_match_linux() {
        let mut r = Registry::new();
        let u = user(1000);
        let get = |r: &mut Registry, key, size, flags, c: &Cred| {
            r.call(1, Call::ShmGet { key, size, flags, cred: c.clone() })
        };
        assert_eq!(err_of(get(&mut r, 5, 4096, 0o600, &u)), libc::ENOENT);
        assert_eq!(err_of(get(&mut r, 5, 0, libc::IPC_CREAT | 0o600, &u)), libc::EINVAL);
        let id = id_of(get(&mut r, 5, 8192, libc::IPC_CREAT | 0o600, &u));
        assert!(is_distributed_id(id));
        assert_eq!(id_of(get(&mut r, 5, 100, 0, &u)), id);
        assert_eq!(err_of(get(&mut r, 5, 8193, 0, &u)), libc::EINVAL);
        assert_eq!(err_of(get(&mut r, 5, 10, libc::IPC_CREAT | libc::IPC_EXCL | 0o600, &u)), libc::EEXIST);
        assert_eq!(err_of(get(&mut r, 5, 10, 0o600, &user(1001))), libc::EACCES);
        assert_eq!(id_of(get(&mut r, 5, 10, 0o600, &user(0))), id);
        let p1 = id_of(get(&mut r, libc::IPC_PRIVATE, 10, 0o600, &u));
        let p2 = id_of(get(&mut r, libc::IPC_PRIVATE, 10, 0o600, &u));
        assert_ne!(p1, p2);
    }

    #[test]
    fn rmid_waits_for_the_last_detach() {
        let mut r = Registry::new();
        let u = user(1000);
        let id = id_of(
            r.call(1, Call::ShmGet { key: 9, size: 4096, flags: libc::IPC_CREAT | 0o600, cred: u.clone() }),
        );
        assert!(matches!(
            r.call(1, Call::ShmAttach { id, readonly: false, exec: false, cred: u.clone() }).0,
            Reply::Attached { size: 4096 }
        ));
        assert!(matches!(
            r.call(2, Call::ShmAttach { id, readonly: true, exec: false, cred: u.clone() }).0,
            Reply::Attached { .. }
        ));
        // Not removed: a detach that keeps its pages is refused (they are
        // the segment's data), even by the last node attached.
        let keep2 = Call::ShmDetach { id, failed_attach: false, only_if_destroyed: true, cred: u.clone() };
        r.call(1, Call::ShmDetach { id, failed_attach: false, only_if_destroyed: false, cred: u.clone() });
        assert_eq!(err_of(r.call(2, keep2)), libc::EAGAIN);
        r.call(1, Call::ShmAttach { id, readonly: false, exec: false, cred: u.clone() });
        assert_eq!(err_of(r.call(2, Call::ShmRemove { id, cred: user(1001) })), libc::EPERM);
        assert_eq!(r.call(2, Call::ShmRemove { id, cred: u.clone() }).1, Effect::None);
        // The key is free again; the id still works.
        assert_eq!(
            err_of(r.call(1, Call::ShmGet { key: 9, size: 1, flags: 0, cred: u.clone() })),
            libc::ENOENT
        );
        match r.call(1, Call::ShmStat { id, cred: u.clone() }).0 {
            Reply::Stat(s) => {
                assert_eq!(s.nattch, 2);
                assert_eq!(s.mode & SHM_DEST, SHM_DEST);
                assert_eq!(s.key, libc::IPC_PRIVATE);
            }
            other => panic!("{other:?}"),
        }
        // A detach that keeps its pages is refused while another node is
        // attached, and changes nothing.
        let keep = || Call::ShmDetach { id, failed_attach: false, only_if_destroyed: true, cred: user(1000) };
        assert_eq!(err_of(r.call(1, keep())), libc::EAGAIN);
        let detach = Call::ShmDetach { id, failed_attach: false, only_if_destroyed: false, cred: u.clone() };
        assert_eq!(r.call(1, detach).1, Effect::None);
        // Node 1 detached: node 2's is the last attachment of a removed
        // segment, and detaching it without its pages destroys it.
        assert_eq!(err_of(r.call(1, keep())), libc::EINVAL);
        let (reply, effect) = r.call(2, keep());
        assert!(matches!(reply, Reply::Ok), "{reply:?}");
        assert_eq!(effect, Effect::Destroyed { id });
        assert_eq!(err_of(r.call(1, Call::ShmStat { id, cred: u })), libc::EINVAL);
    }

    fn create(r: &mut Registry, key: i32, mode: i32, c: &Cred) -> i32 {
        id_of(r.call(1, Call::ShmGet { key, size: 4096, flags: libc::IPC_CREAT | mode, cred: c.clone() }))
    }

    fn attach(r: &mut Registry, node: NodeId, id: i32, readonly: bool, exec: bool, c: &Cred) -> Reply {
        r.call(node, Call::ShmAttach { id, readonly, exec, cred: c.clone() }).0
    }

    fn stat(r: &mut Registry, id: i32) -> ShmStat {
        match r.call(1, Call::ShmStat { id, cred: user(0) }).0 {
            Reply::Stat(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn root_without_capabilities_is_an_ordinary_user() {
        let mut r = Registry::new();
        let id = create(&mut r, 11, 0o600, &user(1000));
        let root = Cred { caps: 0, ..user(0) };
        let get =
            |r: &mut Registry, flags| r.call(1, Call::ShmGet { key: 11, size: 0, flags, cred: root.clone() });
        assert_eq!(err_of(get(&mut r, 0o600)), libc::EACCES);
        assert_eq!(id_of(get(&mut r, 0)), id);
        assert!(matches!(attach(&mut r, 1, id, true, false, &root), Reply::Err(Errno(libc::EACCES))));
        assert_eq!(err_of(r.call(1, Call::ShmStat { id, cred: root.clone() })), libc::EACCES);
        let set = Call::ShmSet { id, uid: 0, gid: 0, mode: 0o666, cred: root.clone() };
        assert_eq!(err_of(r.call(1, set)), libc::EPERM);
        assert_eq!(err_of(r.call(1, Call::ShmRemove { id, cred: root.clone() })), libc::EPERM);
        // CAP_IPC_OWNER alone opens the permission bits, not IPC_RMID.
        let owner_cap = Cred { caps: 1 << CAP_IPC_OWNER, ..root };
        assert!(matches!(attach(&mut r, 1, id, false, false, &owner_cap), Reply::Attached { .. }));
        assert_eq!(err_of(r.call(1, Call::ShmRemove { id, cred: owner_cap })), libc::EPERM);
    }

    #[test]
    fn shm_exec_needs_execute_permission() {
        let mut r = Registry::new();
        let rw = create(&mut r, 12, 0o666, &user(1000));
        let rwx = create(&mut r, 13, 0o777, &user(1000));
        let other = user(1001);
        assert!(matches!(attach(&mut r, 1, rw, false, true, &other), Reply::Err(Errno(libc::EACCES))));
        assert!(matches!(attach(&mut r, 1, rw, true, true, &other), Reply::Err(Errno(libc::EACCES))));
        assert!(matches!(attach(&mut r, 1, rw, false, false, &other), Reply::Attached { .. }));
        assert!(matches!(attach(&mut r, 1, rwx, false, true, &other), Reply::Attached { .. }));
    }

    #[test]
    fn set_refuses_unmapped_ids_after_the_owner_check() {
        let mut r = Registry::new();
        let id = create(&mut r, 14, 0o600, &user(1000));
        let set = |uid, gid, c: &Cred| Call::ShmSet { id, uid, gid, mode: 0o640, cred: c.clone() };
        assert_eq!(err_of(r.call(1, set(u32::MAX, 0, &user(1001)))), libc::EPERM);
        assert_eq!(err_of(r.call(1, set(u32::MAX, 0, &user(1000)))), libc::EINVAL);
        assert_eq!(err_of(r.call(1, set(0, u32::MAX, &user(1000)))), libc::EINVAL);
        assert_eq!(stat(&mut r, id).mode, 0o600, "a refused IPC_SET changes nothing");
        assert!(matches!(r.call(1, set(1001, 7, &user(1000))).0, Reply::Ok));
        let s = stat(&mut r, id);
        assert_eq!((s.uid, s.gid, s.cuid, s.mode), (1001, 7, 1000, 0o640));
    }

    #[test]
    fn a_failed_attach_leaves_times_and_pid_unchanged() {
        let mut r = Registry::new();
        r.clock = || 1000;
        let u = user(1000);
        let id = create(&mut r, 15, 0o600, &u);
        assert!(matches!(attach(&mut r, 1, id, false, false, &u), Reply::Attached { .. }));
        r.clock = || 2000;
        let later = Cred { pid: 43, ..u.clone() };
        assert!(matches!(attach(&mut r, 1, id, false, false, &later), Reply::Attached { .. }));
        let undo = Call::ShmDetach { id, failed_attach: true, only_if_destroyed: false, cred: later.clone() };
        assert_eq!(r.call(1, undo).1, Effect::None);
        let s = stat(&mut r, id);
        assert_eq!((s.nattch, s.atime, s.dtime, s.lpid), (1, 1000, 0, 42));
        // RMID'd: undoing an attach can be what destroys the segment.
        assert!(matches!(r.call(1, Call::ShmRemove { id, cred: u.clone() }).0, Reply::Ok));
        assert!(matches!(attach(&mut r, 2, id, false, false, &u), Reply::Attached { .. }));
        assert_eq!(
            r.call(
                1,
                Call::ShmDetach { id, failed_attach: false, only_if_destroyed: false, cred: u.clone() }
            )
            .1,
            Effect::None
        );
        let undo = Call::ShmDetach { id, failed_attach: true, only_if_destroyed: false, cred: u };
        assert_eq!(r.call(2, undo).1, Effect::Destroyed { id });
    }

    #[test]
    fn impossible_sizes_are_enomem_unless_noreserve() {
        let mut r = Registry::new();
        r.enough_memory = |_| false;
        let u = user(1000);
        let get = |r: &mut Registry, key, size, flags| {
            r.call(1, Call::ShmGet { key, size, flags: flags | 0o600, cred: u.clone() })
        };
        assert_eq!(err_of(get(&mut r, 16, 0, libc::IPC_CREAT)), libc::EINVAL);
        assert_eq!(err_of(get(&mut r, 16, 4096, libc::IPC_CREAT)), libc::ENOMEM);
        assert_eq!(err_of(get(&mut r, libc::IPC_PRIVATE, 4096, 0)), libc::ENOMEM);
        assert_eq!(err_of(get(&mut r, 16, 4096, 0)), libc::ENOENT);
        id_of(get(&mut r, 16, 4096, libc::IPC_CREAT | SHM_NORESERVE));
        assert!(enough_memory(1), "one page is always there");
        assert!(
            !enough_memory(1 << 50)
                || std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|m| m.trim() == "1")
        );
    }
}
