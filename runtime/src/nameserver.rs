//! The nameserver: node 0. Registry of keys and ids, membership, manager and
//! home of every page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::protocol::{Action, Manager, NodeId, MANAGER};
use crate::registry::{now_secs, Call, Effect, Errno, Registry, Reply};
use crate::semaphores::{SemCall, SemRegistry, SemopOutcome, Waiter};
use crate::transport::{bad, Inbound, Transport};
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
    /// Every node's latest figures: (pid, still there, figures).
    stats: std::collections::BTreeMap<NodeId, (i32, bool, crate::stats::Stats)>,
}

/// Runs a nameserver on `listen` with the credentials in `cert_dir` until
/// the process ends. `ready` is called once it listens.
pub async fn serve(
    listen: SocketAddr,
    cert_dir: &Path,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let tls = crate::certs::load(cert_dir).map_err(|e| e.to_string())?;
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut transport = Transport::bind(listen, tls, itx).map_err(|e| format!("binding {listen}: {e}"))?;
    transport.set_me(MANAGER);
    let local = transport.local_addr().map_err(|e| e.to_string())?;
    info!(%local, "nameserver listening");
    ready(local);
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
    };
    while let Some(m) = irx.recv().await {
        match m {
            Inbound::Msg { from, conn, msg } => s.handle(from, &conn, msg),
            Inbound::Gone { node } => {
                warn!(node, "node unreachable");
                s.node_gone(node)
            }
            Inbound::Lost { node, conn } => {
                let node = node.or_else(|| s.by_conn.get(&conn.stable_id()).copied());
                // Once per node (each of its connections ends).
                if let Some(n) = node.filter(|n| s.nodes.contains_key(n)) {
                    // A process that exits closes its connection itself;
                    // anything else (time-out, reset) is a node lost.
                    match conn.close_reason() {
                        Some(quinn::ConnectionError::ApplicationClosed(_)) => info!(node = n, "node left"),
                        why => {
                            warn!(
                                node = n,
                                lease_ms = crate::config::lease().as_millis() as u64,
                                "node lost: {}",
                                why.map_or("unknown".into(), |e| e.to_string())
                            )
                        }
                    }
                    s.node_gone(n);
                }
            }
        }
    }
    Ok(())
}

impl Server {
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
        match (from, msg) {
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
            (Some(node), Msg::Stats { pid, stats }) => {
                self.stats.insert(node, (pid, self.nodes.contains_key(&node), stats));
            }
            (Some(node), Msg::Call { id, call: Call::Stats }) => {
                let list =
                    self.stats.iter().map(|(&n, (pid, alive, s))| (n, *pid, *alive, s.clone())).collect();
                self.transport.send(node, Msg::Reply { id, reply: Reply::Stats(list) });
            }
            (Some(node), Msg::Call { id, call: Call::IpcList }) => {
                let reply = self.ipc_list(node);
                self.transport.send(node, Msg::Reply { id, reply });
            }
            (Some(node), Msg::Call { id, call }) if !matches!(call, Call::Register { .. }) => {
                let (reply, effect) = self.registry.call(node, call);
                self.effect(effect);
                self.transport.send(node, Msg::Reply { id, reply });
            }
            (Some(node), Msg::Coherence(m)) => {
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
                    self.transport.send(node, Msg::Reply { id, reply: Reply::Cancelled(true) });
                    return;
                }
            }
        }
        let reply = match c {
            SemCall::Get { key, nsems, flags, cred } => match self.sems.semget(key, nsems, flags, &cred, now)
            {
                Ok(sid) => Some(Reply::Id(sid)),
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
                Some(Reply::Ok)
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
            self.transport.send(node, Msg::Reply { id, reply });
        }
    }

    /// Every segment with its pages away from home, and every semaphore
    /// set (`kdipc ipcs`).
    fn ipc_list(&mut self, node: NodeId) -> Reply {
        let shm = match self.registry.call(node, Call::ShmList).0 {
            Reply::List(v) => v.into_iter().map(|(id, s)| (id, s, self.manager.pages_away(id))).collect(),
            _ => Vec::new(),
        };
        Reply::IpcList { shm, sem: self.sems.list() }
    }

    fn flush_sem_completions(&mut self) {
        for (w, res) in self.sems.take_completed() {
            let reply = match res {
                Ok(()) => Reply::Ok,
                Err(Errno(e)) => Reply::Err(Errno(e)),
            };
            self.transport.send(w.node, Msg::Reply { id: w.token, reply });
        }
    }

    fn effect(&mut self, e: Effect) {
        match e {
            Effect::None => {}
            Effect::Created { id, npages } => self.manager.create(id, npages),
            Effect::Destroyed { id } => {
                info!(seg = id, "segment destroyed");
                self.manager.destroy(id)
            }
        }
    }

    fn send_all(&mut self, out: Vec<Action>) {
        for a in out {
            if let Action::Send { to, msg } = a {
                self.transport.send(to, Msg::Coherence(msg));
            }
        }
    }

    fn node_gone(&mut self, node: NodeId) {
        if self.nodes.remove(&node).is_none() {
            return;
        }
        self.by_conn.retain(|_, n| *n != node);
        self.transport.forget(node);
        if let Some(s) = self.stats.get_mut(&node) {
            s.1 = false;
        }
        // Pages only it held are lost; every node learns it is gone (writes
        // waiting for its acknowledgement proceed, requests it was to
        // answer are asked again).
        // Every node learns it, and reports what it holds of the pages
        // the dead node held or was handing over (`Msg::Recovery`).
        for &other in self.nodes.keys() {
            self.transport.send(other, Msg::NodeGone { node });
        }
        let live: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut out = Vec::new();
        self.manager.node_gone(node, &live, &mut out);
        self.send_all(out);
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
