//! The nameserver: node 0. Registry of keys and ids, membership, manager and
//! home of every page.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::persist::{Snapshot, Store};
use crate::protocol::{Action, Manager, NodeId, Rejoin, MANAGER};
use crate::registry::{now_secs, Call, Effect, Errno, Registry, Reply};
use crate::semaphores::{SemCall, SemRegistry, SemopOutcome, Waiter};
use crate::stats::{ObjKind, ObjReport, ObjStats};
use crate::transport::{bad, Goodbye, Inbound, Transport};
use crate::wire::Msg;

struct Server {
    transport: Transport,
    registry: Registry,
    /// Every distributed semaphore set: the nameserver is their home and
    /// runs their operations, except while a set is lent to the one node
    /// that uses it.
    sems: SemRegistry,
    /// Calls on a lent set, in arrival order, waiting for it to come back
    /// (it was recalled when the first arrived).
    deferred: HashMap<i32, Vec<(NodeId, u64, SemCall)>>,
    manager: Manager,
    /// Registered nodes and where they listen.
    nodes: HashMap<NodeId, SocketAddr>,
    /// Nodes by connection (a node's own stream says `Hello { None }`).
    by_conn: HashMap<usize, NodeId>,
    next_node: NodeId,
    /// Every node's latest figures: (pid, still there, figures, figures
    /// per object).
    stats: BTreeMap<NodeId, (i32, bool, crate::stats::Stats, Vec<ObjStats>)>,
    /// The key of every object created, for `kdipc stats` of objects
    /// removed since.
    keys: HashMap<(ObjKind, i32), i32>,
    /// `kdipc ipcs` calls waiting for the nodes to say which segments they
    /// hold pages of, by query number.
    lists: HashMap<u64, ListQuery>,
    next_query: u64,
    /// `--state DIR`: where the state is kept, and whether the snapshot
    /// must be written again before the next answer leaves.
    store: Option<Store>,
    save: bool,
    /// Starts on the state directory.
    epoch: u64,
    /// Nodes declared dead or gone: refused if they speak again.
    dead: BTreeSet<NodeId>,
    /// With a store: the answers to each node's latest calls that changed
    /// something (a node asks again what a restart left unanswered).
    replies: HashMap<NodeId, VecDeque<(u64, Reply)>>,
    /// After a restart, until the members came back or the lease ran out.
    rejoining: Option<Rejoining>,
    /// When the oldest recovery after a death still waiting for reports
    /// began: a node that has not reported within the lease is declared
    /// dead (requests for the dead node's pages wait for the reports).
    reports_due: Option<Instant>,
}

/// How many answers per node are kept (a node has at most one call per
/// thread outstanding).
const KEEP_REPLIES: usize = 64;

/// A restart in progress: the members of the last run are asked to
/// rejoin; page requests wait until all did (or the lease ran out) and the
/// manager rebuilt who owns what.
struct Rejoining {
    awaiting: BTreeSet<NodeId>,
    reports: Vec<(NodeId, Rejoin)>,
    held: Vec<(NodeId, quinn::Connection, Msg)>,
    deadline: Instant,
}

/// How long `kdipc ipcs` waits for the nodes' answers: a node that has not
/// answered by then is not counted in the copies column.
const LIST_WAIT: Duration = Duration::from_secs(1);

/// An `IpcList` call in progress.
struct ListQuery {
    /// Who asked, and its call's id.
    asker: NodeId,
    call: u64,
    /// Nodes yet to answer.
    waiting: BTreeSet<NodeId>,
    /// Per segment: nodes that hold at least one of its pages.
    copies: HashMap<i32, u32>,
    deadline: Instant,
}

/// Runs a nameserver on `listen` with the credentials in `cert_dir` until
/// the process ends. `ready` is called once it listens.
pub async fn serve(
    listen: SocketAddr,
    cert_dir: &Path,
    state: Option<&Path>,
    fsync: bool,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    // Nodes wait on its answers (a fresh page, a segment's owner) as on a
    // peer's: it runs real-time for the same reason (see `raise_priority`).
    crate::node::raise_priority(crate::config::rt_prio_from_env()?);
    let mut store = state.map(Store::open).transpose()?;
    if let Some((s, _)) = store.as_mut() {
        s.set_sync(fsync);
    }
    let tls = crate::certs::load(cert_dir).map_err(|e| e.to_string())?;
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut transport = Transport::bind(listen, tls, itx).map_err(|e| format!("binding {listen}: {e}"))?;
    transport.set_me(MANAGER);
    let local = transport.local_addr().map_err(|e| e.to_string())?;
    info!(%local, "nameserver listening");
    let mut s = Server {
        transport,
        registry: Registry::new(),
        sems: {
            let mut r = SemRegistry::new();
            if let Some(n) = std::env::var("KDIPC_SEM_LEND").ok().and_then(|v| v.parse().ok()) {
                r.set_lend_after(n);
            }
            r
        },
        deferred: HashMap::new(),
        manager: Manager::new(),
        nodes: HashMap::new(),
        by_conn: HashMap::new(),
        next_node: 1,
        stats: Default::default(),
        keys: HashMap::new(),
        lists: HashMap::new(),
        next_query: 0,
        store: None,
        save: false,
        epoch: 0,
        dead: BTreeSet::new(),
        replies: HashMap::new(),
        rejoining: None,
        reports_due: None,
    };
    if let Some((store, loaded)) = store {
        s.start_from(store, loaded);
    }
    ready(local);
    loop {
        let deadline = s
            .lists
            .values()
            .map(|q| q.deadline)
            .chain(s.rejoining.as_ref().map(|r| r.deadline))
            .chain(s.reports_due)
            .min();
        let m = tokio::select! {
            m = irx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                s.expire_lists();
                if s.rejoining.as_ref().is_some_and(|r| r.deadline <= Instant::now()) {
                    s.finish_rejoin();
                }
                if s.reports_due.is_some_and(|d| d <= Instant::now()) {
                    s.reports_overdue();
                }
                s.persist();
                continue;
            }
        };
        match m {
            Inbound::Msg { from, conn, msg } => s.handle(from, &conn, msg),
            Inbound::Gone { node } => {
                warn!(node, "node unreachable");
                s.node_gone(node, false)
            }
            Inbound::Lost { node, conn } => {
                let node = node.or_else(|| s.by_conn.get(&conn.stable_id()).copied());
                // Once per node (each of its connections ends).
                if let Some(n) = node.filter(|n| s.nodes.contains_key(n)) {
                    // A process that exits closes its connection itself;
                    // anything else (time-out, reset) is a node lost.
                    let left = match conn.close_reason() {
                        Some(quinn::ConnectionError::ApplicationClosed(c))
                            if c.error_code == (Goodbye::Clean as u32).into() =>
                        {
                            info!(node = n, "node left");
                            true
                        }
                        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                            warn!(node = n, code = %c.error_code, "node left without giving every page back");
                            false
                        }
                        why => {
                            warn!(
                                node = n,
                                lease_ms = crate::config::lease().as_millis() as u64,
                                "node lost: {}",
                                why.map_or("unknown".into(), |e| e.to_string())
                            );
                            false
                        }
                    };
                    s.node_gone(n, left);
                }
            }
        }
        // Before any answer of this round leaves (the writers run when
        // this task waits), what it changed is on disk.
        s.persist();
    }
    Ok(())
}

impl Server {
    /// `--state DIR`: carries on from what the last nameserver left there
    /// (registry, semaphore sets, home pages, members), or starts afresh.
    /// Members are asked to rejoin.
    fn start_from(&mut self, store: Store, loaded: Option<crate::persist::Loaded>) {
        // A set lent to a node would live only there: with a store, sets
        // stay home.
        self.sems.set_lend_after(0);
        self.manager.track_changes();
        if let Some((snap, segs)) = loaded {
            self.epoch = snap.epoch + 1;
            self.registry = Registry::restore(snap.registry);
            self.sems = SemRegistry::restore(snap.sems);
            self.sems.set_lend_after(0);
            self.next_node = snap.next_node.max(1);
            self.nodes = snap.members.into_iter().collect();
            self.dead = snap.dead.into_iter().collect();
            self.manager.mark_dead(self.dead.iter().copied());
            self.replies = snap.replies.into_iter().map(|(n, v)| (n, v.into_iter().collect())).collect();
            for (id, pages) in segs {
                if let Some(key) = self.registry.key_of(id) {
                    self.keys.insert((ObjKind::Shm, id), key);
                }
                self.manager.restore(id, pages);
            }
            info!(
                epoch = self.epoch,
                segments = self.registry.snapshot().segs.len(),
                sets = self.sems.list().len(),
                members = self.nodes.len(),
                "state restored"
            );
            for (&n, &addr) in &self.nodes {
                self.transport.set_addr(n, addr);
                self.transport.send(n, Msg::Restarted { epoch: self.epoch });
            }
            self.rejoining = Some(Rejoining {
                awaiting: self.nodes.keys().copied().collect(),
                reports: Vec::new(),
                held: Vec::new(),
                deadline: Instant::now() + crate::config::lease(),
            });
        }
        self.store = Some(store);
        self.save = true;
        if self.rejoining.as_ref().is_some_and(|r| r.awaiting.is_empty()) {
            self.finish_rejoin();
        }
        self.persist();
    }

    /// Every member came back (or the lease ran out): the manager rebuilds
    /// who owns each page from their reports; the members that did not
    /// come back are dead; page messages that waited are handled.
    fn finish_rejoin(&mut self) {
        let Some(r) = self.rejoining.take() else { return };
        let gone: Vec<NodeId> = r.awaiting.into_iter().collect();
        info!(rejoined = r.reports.len(), gone = ?gone, "rebuilding page ownership after the restart");
        let mut out = Vec::new();
        self.manager.rebuild(r.reports, &gone, &mut out);
        self.send_all(out);
        for n in gone {
            warn!(node = n, "node did not rejoin after the restart: declared dead");
            self.forget_node(n, false);
        }
        for (n, conn, msg) in r.held {
            self.handle(Some(n), &conn, msg);
        }
    }

    /// Writes what changed to the state directory (with `--state`).
    fn persist(&mut self) {
        let Some(store) = self.store.as_mut() else { return };
        for (seg, page) in self.manager.take_dirty() {
            if let Some((st, bytes)) = self.manager.home_state(seg, page) {
                if let Err(e) = store.write_page(seg, page, &st, bytes) {
                    error!("state directory: {e}");
                }
            }
        }
        if std::mem::take(&mut self.save) {
            let mut snap: Snapshot = crate::persist::new_snapshot();
            snap.epoch = self.epoch;
            snap.next_node = self.next_node;
            snap.members = self.nodes.iter().map(|(&n, &a)| (n, a)).collect();
            snap.dead = self.dead.iter().copied().collect();
            snap.registry = self.registry.snapshot();
            snap.sems = self.sems.snapshot();
            snap.replies = self.replies.iter().map(|(&n, q)| (n, q.iter().cloned().collect())).collect();
            if let Err(e) = store.save(&snap) {
                error!("state directory: {e}");
            }
        }
        if let Err(e) = store.flush() {
            error!("state directory: {e}");
        }
    }

    /// Answers call `id` of `node`; with a store, an answer of a call that
    /// changed something (`keep`) is kept for the node asking again.
    fn reply(&mut self, node: NodeId, id: u64, reply: Reply, keep: bool) {
        if self.store.is_some() {
            self.save = true;
            if keep {
                let q = self.replies.entry(node).or_default();
                q.push_back((id, reply.clone()));
                if q.len() > KEEP_REPLIES {
                    q.pop_front();
                }
            }
        }
        self.transport.send(node, Msg::Reply { id, reply });
    }

    fn handle(&mut self, from: Option<NodeId>, conn: &quinn::Connection, msg: Msg) {
        let from = from.or_else(|| self.by_conn.get(&conn.stable_id()).copied());
        if let Some(n) = from {
            if !self.nodes.contains_key(&n) {
                // Declared dead (its lease ran out, e.g. a cut link that
                // healed): its pages and semaphore state were given up;
                // nothing it says is trusted until it registers anew.
                warn!(node = n, remote = %conn.remote_address(), "refusing a node declared dead: it must register again");
                conn.close(2u32.into(), b"declared dead");
                return;
            }
        }
        if let (Some(n), Some(r)) = (from, self.rejoining.as_mut()) {
            match msg {
                Msg::Rejoin { pages } => {
                    if r.awaiting.remove(&n) {
                        info!(node = n, pages = pages.len(), "node rejoined");
                        r.reports.push((n, pages));
                        if r.awaiting.is_empty() {
                            self.finish_rejoin();
                        }
                    }
                    return;
                }
                Msg::Coherence(_) | Msg::Recovery { .. } => {
                    r.held.push((n, conn.clone(), msg));
                    return;
                }
                _ => {}
            }
        }
        if let (Some(n), Msg::Call { id, .. }) = (from, &msg) {
            // Asked again after a restart: answered from the record.
            if let Some((_, reply)) = self.replies.get(&n).and_then(|q| q.iter().find(|(i, _)| i == id)) {
                let reply = reply.clone();
                self.transport.send(n, Msg::Reply { id: *id, reply });
                return;
            }
        }
        match (from, msg) {
            (_, Msg::Rejoin { .. }) => {} // Late: the rebuild is done.
            (None, Msg::Call { id, call: Call::Register { pid } }) => {
                let node = self.next_node;
                self.next_node += 1;
                let addr = conn.remote_address();
                info!(node, pid, %addr, "node joined");
                self.by_conn.insert(conn.stable_id(), node);
                self.transport.bind_conn(node, conn.clone());
                self.transport.set_addr(node, addr);
                self.transport.send(node, Msg::Reply { id, reply: Reply::Registered { node } });
                for (&other, &oaddr) in &self.nodes {
                    self.transport.send(node, Msg::PeerAddr { node: other, addr: oaddr });
                    self.transport.send(other, Msg::PeerAddr { node, addr });
                }
                self.nodes.insert(node, addr);
                self.save = true;
            }
            (Some(node), Msg::Call { id, call: Call::Sem(c) }) => self.sem_call(node, id, c),
            (Some(node), Msg::SemSync { id, state }) => {
                // A sync that crossed the set's return is simply late.
                if self.sems.lent_to(id) == Some(node) && !self.sems.update(id, node, state, false) {
                    bad(conn, &format!("semaphore set {id}: values from node {node} do not fit"));
                }
            }
            (Some(node), Msg::SemReturn { id, state }) => {
                if !self.sems.update(id, node, state, true) {
                    return bad(
                        conn,
                        &format!("semaphore set {id} returned by node {node}, which did not hold it"),
                    );
                }
                self.replay(id);
            }
            (Some(node), Msg::Stats { pid, stats, mut objects }) => {
                // A histogram has 32 buckets; anything beyond is not ours.
                objects.iter_mut().for_each(|o| o.latency.truncate(32));
                // A node shown gone (it exited) stays gone.
                let alive = self.nodes.contains_key(&node) && self.stats.get(&node).is_none_or(|s| s.1);
                self.stats.insert(node, (pid, alive, stats, objects));
            }
            (Some(node), Msg::Call { id, call: Call::Stats }) => {
                let reply = self.stats_reply(node);
                self.transport.send(node, Msg::Reply { id, reply });
            }
            (Some(node), Msg::Call { id, call: Call::IpcList }) => self.ipc_list(node, id),
            (Some(node), Msg::Held { query, segs }) => {
                if let Some(q) = self.lists.get_mut(&query) {
                    if q.waiting.remove(&node) {
                        for (seg, pages) in segs {
                            if pages > 0 {
                                *q.copies.entry(seg).or_default() += 1;
                            }
                        }
                        if q.waiting.is_empty() {
                            self.finish_list(query);
                        }
                    }
                }
            }
            (Some(node), Msg::Call { id, call }) if !matches!(call, Call::Register { .. }) => {
                let keep = matches!(
                    call,
                    Call::ShmGet { .. }
                        | Call::ShmAttach { .. }
                        | Call::ShmDetach { .. }
                        | Call::ShmSet { .. }
                        | Call::ShmRemove { .. }
                );
                let (reply, effect) = self.registry.call(node, call);
                self.effect(effect);
                self.reply(node, id, reply, keep);
            }
            (Some(node), Msg::Coherence(m)) => {
                tracing::trace!(from = node, msg = ?m, "received");
                let mut out = Vec::new();
                if let Err(e) = self.manager.handle(node, m, &mut out) {
                    bad(conn, &format!("protocol: {e}"));
                }
                self.send_all(out);
            }
            (Some(node), Msg::Recovery { dead, report }) => {
                let mut out = Vec::new();
                if let Err(e) = self.manager.report(node, dead, report, &mut out) {
                    bad(conn, &format!("protocol: {e}"));
                }
                self.send_all(out);
                if self.manager.awaiting_reports().is_empty() {
                    self.reports_due = None;
                }
            }
            (_, other) => bad(conn, &format!("unexpected message at the nameserver: {other:?}")),
        }
    }

    /// A semaphore call; blocked operations are answered when they
    /// complete.
    fn sem_call(&mut self, node: NodeId, id: u64, c: SemCall) {
        let now = now_secs();
        let target = match &c {
            SemCall::Op { id, .. } | SemCall::Ctl { id, .. } => Some(*id),
            _ => None,
        };
        // Answers that only read need not be kept for a restart.
        let keep = match &c {
            SemCall::Ctl { cmd, .. } => {
                matches!(cmd & !0x100, libc::SETVAL | libc::SETALL | libc::IPC_SET | libc::IPC_RMID)
            }
            _ => true,
        };
        if let Some(sid) = target {
            if let Some(borrower) = self.sems.lent_to(sid) {
                let q = self.deferred.entry(sid).or_default();
                if q.is_empty() {
                    self.transport.send(borrower, Msg::SemRecall { id: sid });
                }
                q.push((node, id, c));
                return;
            }
        }
        if let SemCall::Cancel { token, .. } = c {
            // An operation still waiting for its set to come back is
            // withdrawn here.
            for q in self.deferred.values_mut() {
                if let Some(i) = q.iter().position(|(n, cid, _)| *n == node && *cid == token) {
                    q.remove(i);
                    self.reply(node, id, Reply::Cancelled(true), true);
                    return;
                }
            }
        }
        let reply = match c {
            SemCall::Get { key, nsems, flags, cred } => match self.sems.semget(key, nsems, flags, &cred, now)
            {
                Ok(sid) => {
                    self.keys.insert((ObjKind::Sem, sid), key);
                    Some(Reply::Id(sid))
                }
                Err(e) => Some(Reply::Err(e)),
            },
            SemCall::Op { id: sid, ops, cred } => {
                let waiter = Waiter { node, pid: cred.pid, token: id };
                match self.sems.semop(sid, &ops, waiter, &cred, now) {
                    SemopOutcome::Done => {
                        let others_wait = self.deferred.get(&sid).is_some_and(|q| !q.is_empty());
                        if !others_wait {
                            if let Some(state) = self.sems.lend(sid, node) {
                                self.transport.send(node, Msg::SemLend { id: sid, state });
                            }
                        }
                        Some(Reply::Ok)
                    }
                    SemopOutcome::Err(e) => Some(Reply::Err(e)),
                    SemopOutcome::Blocked => None,
                }
            }
            SemCall::Cancel { token, pid } => {
                let waiter = Waiter { node, pid, token };
                Some(Reply::Cancelled(self.sems.cancel(&waiter, now)))
            }
            SemCall::Exit { pid } => {
                for q in self.deferred.values_mut() {
                    q.retain(|(n, _, c)| {
                        !(*n == node && matches!(c, SemCall::Op { cred, .. } if cred.pid == pid))
                    });
                }
                self.sems.process_exit(node, pid, now);
                // A node's process says this as it exits (after its last
                // figures): `kdipc stats` shows it gone from now on, not
                // only once its connection is closed.
                if let Some(s) = self.stats.get_mut(&node) {
                    s.1 = false;
                }
                Some(Reply::Ok)
            }
            SemCall::MoveUndo { from, to, pid } => {
                // Never to a node that is gone: they would never apply.
                let n = if self.nodes.contains_key(&to) { self.sems.move_undo(from, to, pid) } else { 0 };
                Some(Reply::Id(n as i32))
            }
            SemCall::Ctl { id: sid, semnum, cmd, arg, cred } => {
                match self.sems.semctl(sid, semnum, cmd, arg, &cred, now) {
                    Ok(r) => Some(Reply::SemCtl(r)),
                    Err(e) => Some(Reply::Err(e)),
                }
            }
        };
        // Operations this call unblocked are answered first: a waiter's
        // completion is ordered before whatever the caller does next.
        self.flush_sem_completions();
        if let Some(reply) = reply {
            self.reply(node, id, reply, keep);
        }
    }

    /// `kdipc ipcs`: asks every node which segments it holds pages of;
    /// answers when all did, or after [`LIST_WAIT`].
    fn ipc_list(&mut self, node: NodeId, call: u64) {
        let query = self.next_query;
        self.next_query += 1;
        let waiting: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        for &n in &waiting {
            self.transport.send(n, Msg::HeldQuery { query });
        }
        let deadline = Instant::now() + LIST_WAIT;
        self.lists.insert(query, ListQuery { asker: node, call, waiting, copies: HashMap::new(), deadline });
        if self.lists[&query].waiting.is_empty() {
            self.finish_list(query);
        }
    }

    /// Answers `IpcList` query `query`: every segment with its pages away
    /// from home and the nodes that said they hold its pages, and every
    /// semaphore set.
    fn finish_list(&mut self, query: u64) {
        let Some(q) = self.lists.remove(&query) else { return };
        let shm = match self.registry.call(q.asker, Call::ShmList).0 {
            Reply::List(v) => v
                .into_iter()
                .map(|(id, s)| {
                    let copies = q.copies.get(&id).copied().unwrap_or(0);
                    (id, s, self.manager.pages_away(id), copies)
                })
                .collect(),
            _ => Vec::new(),
        };
        let sem = self
            .sems
            .list()
            .into_iter()
            .map(|(id, s)| (id, s, self.sems.lent_to(id).unwrap_or(MANAGER)))
            .collect();
        let reply = Reply::IpcList { shm, sem };
        self.transport.send(q.asker, Msg::Reply { id: q.call, reply });
    }

    /// Answers the `IpcList` queries whose time is up.
    fn expire_lists(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self.lists.iter().filter(|(_, q)| q.deadline <= now).map(|(&k, _)| k).collect();
        for k in due {
            self.finish_list(k);
        }
    }

    /// `kdipc stats`: every node's figures, and every object's summed over
    /// the nodes (objects that exist but were not counted yet: zeros).
    fn stats_reply(&mut self, node: NodeId) -> Reply {
        let nodes = self.stats.iter().map(|(&n, (pid, alive, s, _))| (n, *pid, *alive, s.clone())).collect();
        let mut live: HashMap<(ObjKind, i32), i32> = HashMap::new();
        if let Reply::List(v) = self.registry.call(node, Call::ShmList).0 {
            live.extend(v.into_iter().map(|(id, s)| ((ObjKind::Shm, id), s.key)));
        }
        live.extend(self.sems.list().into_iter().map(|(id, s)| ((ObjKind::Sem, id), s.key)));
        let mut sums: BTreeMap<(ObjKind, i32), ObjStats> = BTreeMap::new();
        for (_, _, _, objs) in self.stats.values() {
            for o in objs {
                sums.entry((o.kind, o.id))
                    .or_insert_with(|| ObjStats { kind: o.kind, id: o.id, ..Default::default() })
                    .merge(o);
            }
        }
        for &(kind, id) in live.keys() {
            sums.entry((kind, id)).or_insert_with(|| ObjStats { kind, id, ..Default::default() });
        }
        let objects = sums
            .into_iter()
            .map(|(k, stats)| ObjReport {
                key: live.get(&k).or_else(|| self.keys.get(&k)).copied(),
                removed: !live.contains_key(&k),
                stats,
            })
            .collect();
        Reply::Stats { nodes, objects }
    }

    fn flush_sem_completions(&mut self) {
        for (w, res) in self.sems.take_completed() {
            let reply = match res {
                Ok(()) => Reply::Ok,
                Err(Errno(e)) => Reply::Err(Errno(e)),
            };
            self.reply(w.node, w.token, reply, true);
        }
    }

    fn effect(&mut self, e: Effect) {
        match e {
            Effect::None => {}
            Effect::Created { id, npages } => {
                if let Some(key) = self.registry.key_of(id) {
                    self.keys.insert((ObjKind::Shm, id), key);
                }
                if let Some(Err(e)) = self.store.as_mut().map(|s| s.create_seg(id, npages)) {
                    error!("state directory: {e}");
                }
                self.manager.create(id, npages)
            }
            Effect::Destroyed { id } => {
                info!(seg = id, "segment destroyed");
                if let Some(s) = self.store.as_mut() {
                    s.remove_seg(id);
                }
                self.manager.destroy(id)
            }
        }
    }

    fn send_all(&mut self, out: Vec<Action>) {
        for a in out {
            if let Action::Send { to, msg } = a {
                tracing::trace!(to, ?msg, "send");
                self.transport.send(to, Msg::Coherence(msg));
            }
        }
    }

    /// `left`: it closed its connection saying it gave every page back.
    fn node_gone(&mut self, node: NodeId, left: bool) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        if self.rejoining.as_mut().is_some_and(|r| r.awaiting.remove(&node)) {
            // It will not report: the rebuild goes on without it (its
            // pages are dealt with there).
            self.forget_node(node, left);
            if self.rejoining.as_ref().is_some_and(|r| r.awaiting.is_empty()) {
                self.finish_rejoin();
            }
            return;
        }
        // Pages only it held are lost; every node learns it is gone (writes
        // waiting for its acknowledgement proceed, requests it was to
        // answer are asked again), and reports what it holds of the pages
        // the dead node held or was handing over (`Msg::Recovery`).
        let live: Vec<NodeId> = self.nodes.keys().copied().filter(|&n| n != node).collect();
        let mut out = Vec::new();
        if left {
            self.manager.node_left(node, &live, &mut out);
        } else {
            self.manager.node_gone(node, &live, &mut out);
        }
        self.forget_node(node, left);
        self.send_all(out);
        self.watch_reports();
    }

    /// Starts (or stops) the clock on the reports awaited after a death.
    fn watch_reports(&mut self) {
        if self.manager.awaiting_reports().is_empty() {
            self.reports_due = None;
        } else if self.reports_due.is_none() {
            self.reports_due = Some(Instant::now() + crate::config::lease());
        }
    }

    /// A node that has not sent its report about a death within the lease
    /// (alive, it answers within milliseconds) holds up the recovery of
    /// the dead node's pages for everyone: it is declared dead in turn.
    fn reports_overdue(&mut self) {
        self.reports_due = None;
        for n in self.manager.awaiting_reports() {
            warn!(node = n, "no recovery report within the lease: node declared dead");
            self.node_gone(n, false);
        }
        self.watch_reports();
    }

    /// Everything but the pages of a node that is gone: it leaves the
    /// members (every node hears), its attaches go, its `SEM_UNDO`
    /// adjustments apply, its blocked operations go, the sets lent to it
    /// come home as last reported.
    fn forget_node(&mut self, node: NodeId, left: bool) {
        if self.nodes.remove(&node).is_none() {
            return;
        }
        self.dead.insert(node);
        self.save = true;
        // (Its entries in `by_conn` go: quinn reuses connection ids.)
        self.by_conn.retain(|_, n| *n != node);
        self.transport.forget(node);
        if let Some(s) = self.stats.get_mut(&node) {
            s.1 = false;
        }
        // `kdipc ipcs` calls stop waiting for it.
        let done: Vec<u64> = self
            .lists
            .iter_mut()
            .filter_map(|(&k, q)| (q.waiting.remove(&node) && q.waiting.is_empty()).then_some(k))
            .collect();
        for k in done {
            self.finish_list(k);
        }
        for &other in self.nodes.keys() {
            self.transport.send(other, Msg::NodeGone { node, left });
        }
        for e in self.registry.node_gone(node) {
            self.effect(e);
        }
        for q in self.deferred.values_mut() {
            q.retain(|(n, _, _)| *n != node);
        }
        // The sets lent to it come home as it last reported them.
        let reclaimed = self.sems.reclaim(node);
        // Its SEM_UNDO adjustments apply, its blocked operations go.
        self.sems.node_gone(node, now_secs());
        self.flush_sem_completions();
        for id in reclaimed {
            warn!(node, id, "semaphore set lent to a lost node taken back as it last reported it");
            self.replay(id);
        }
        self.replies.remove(&node);
    }

    /// Runs the calls that waited for set `id` to come home, in order;
    /// they stay listed until run, so that the set is lent again only
    /// after the last.
    fn replay(&mut self, id: i32) {
        while let Some((n, cid, c)) =
            self.deferred.get_mut(&id).filter(|q| !q.is_empty()).map(|q| q.remove(0))
        {
            self.sem_call(n, cid, c);
        }
        self.deferred.remove(&id);
    }
}
