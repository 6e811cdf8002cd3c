//! Deterministic simulation of the page coherence protocol
//! (`kdipc_runtime::protocol`, DESIGN.md §3 and §9), plus small scenario
//! tests of single protocol steps (`mod scenarios` at the end).
//!
//! # The simulation
//!
//! One [`Manager`] (node 0) and [`NODES`] [`NodeProtocol`]s share a few small
//! segments, so that every page is contended. They talk over a simulated
//! network with one FIFO queue per ordered pair of nodes (the protocol
//! requires per-pair order): each message gets a seeded random delay, but
//! never overtakes an earlier message of the same pair, so messages of
//! different pairs overtake each other all the time. A virtual clock jumps to
//! the next event — a delivery, a node's timer (`WakeAt`), an application
//! step — like quinn-proto's `tests/util.rs`.
//!
//! Each simulated node has a driver that performs the [`Action`]s the way the
//! runtime does, a page memory (a page's content is one `u64`: it travels as
//! the first 8 bytes of a 4 KiB `Payload::Bytes`, or as `Payload::Zero` when
//! 0) and [`THREADS`] application threads. A thread reads or writes a random
//! page; when `fault` says the access is missing, it blocks until a
//! `SetAccess` opens the page, then runs again a random time later but
//! sooner than the node's `hold`, so it must find its access still there (a
//! writer woken by a read grant faults again). A write stores a new, globally unique value and the model records
//! it as the page's latest value; a read must return exactly that value
//! (sequential consistency: with invalidate-before-write, any node that can
//! read holds the latest bytes). Now and then a node detaches a segment
//! (`release`, every `Released`, `forget`) and later attaches it again.
//!
//! After every step, for every page: at most one node has `Write`; if one
//! has, nobody else has `Read`; every node that can read or write holds the
//! latest value; the driver's access equals the protocol's; a home copy the
//! manager calls current holds the latest value. A page that is sent
//! (`SendPage`, `ReleasePage`) holds the latest value.
//!
//! At the end, no new accesses are started and everything drains; then every
//! blocked access has completed, no request is pending, the manager is idle
//! and its directory (`holders`) matches the nodes' access.
//!
//! Each seed also draws the holds, the share of slow messages, the rates of
//! writes and detaches ([`Params`]), and each run must show that it
//! exercised what it checks (reordering, deferrals, re-faults, detaches,
//! every kind of message but `Lost`).
//!
//! `KDIPC_SIM_SEEDS=N` runs seeds `0..N` (default 16), `KDIPC_SIM_SEED=S`
//! replays seed S alone, `KDIPC_SIM_TRACE=1` prints every event (use with
//! one seed). A failure names its seed (the panicking thread is
//! `sim-seed-S`, and the final message lists the failing seeds).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use kdipc_runtime::protocol::{
    Access, Action, CoherenceMsg, HomeState, Manager, NodeId, NodeProtocol, PageIdx, Payload, SegId, MANAGER,
    PAGE_SIZE,
};

/// Application nodes, ids `1..=NODES` (node 0 is the manager).
const NODES: usize = 8;
/// Application threads per node.
const THREADS: usize = 2;
/// The shared segments: id and number of pages.
const SEGMENTS: [(SegId, u32); 3] = [(11, 2), (22, 3), (33, 1)];
/// Message deliveries per seed before the simulation starts draining.
const DELIVERIES: u64 = 100_000;
/// Seeds run by default.
const DEFAULT_SEEDS: u64 = 16;
/// Steps allowed to drain; more means a livelock.
const DRAIN_LIMIT: u64 = 1_000_000;
/// Content of a page this node has no copy of (never read: a read of it
/// fails the test).
const POISON: u64 = u64::MAX;

/// splitmix64: small, seeded, good enough to pick delays and pages.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A page's content as a payload.
fn encode(value: u64) -> Payload {
    if value == 0 {
        return Payload::Zero;
    }
    let mut bytes = vec![0u8; PAGE_SIZE];
    bytes[..8].copy_from_slice(&value.to_le_bytes());
    Payload::Bytes(bytes)
}

/// A payload's content; panics on anything [`encode`] cannot produce.
fn decode(payload: &Payload) -> u64 {
    static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    match payload {
        Payload::Zero => 0,
        Payload::Bytes(b) => {
            assert_eq!(b.len(), PAGE_SIZE, "payload of {} bytes", b.len());
            assert!(b[8..] == ZEROS[8..], "payload bytes beyond the value are not ours");
            let value = u64::from_le_bytes(b[..8].try_into().unwrap());
            assert_ne!(value, 0, "a zero page travelled as 4 KiB of bytes");
            value
        }
    }
}

/// A payload's content, without [`decode`]'s checks of every byte.
fn peek(payload: &Payload) -> u64 {
    match payload {
        Payload::Zero => 0,
        Payload::Bytes(b) => u64::from_le_bytes(b[..8].try_into().unwrap()),
    }
}

/// A message, short (payloads as their value), for traces and failures.
fn show(msg: &CoherenceMsg) -> String {
    match msg {
        CoherenceMsg::Data { seg, page, acks, version, payload, .. } => {
            format!(
                "Data {{ seg: {seg}, page: {page}, acks: {acks:?}, v{version}, value: {} }}",
                decode(payload)
            )
        }
        CoherenceMsg::Release { seg, page, owned: Some((payload, copyset, version)) } => {
            format!(
                "Release {{ seg: {seg}, page: {page}, value: {}, copyset: {copyset:?}, v{version} }}",
                decode(payload)
            )
        }
        other => format!("{other:?}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The head of the queue `from → to` arrives.
    Deliver { from: NodeId, to: NodeId },
    /// A node's `WakeAt(at)`.
    Timer { node: usize, at: u64 },
    /// An application thread does its next access.
    App { node: usize, thread: usize },
    /// A blocked thread, woken by a `SetAccess`, runs again.
    Wake { node: usize, thread: usize },
    /// A node attaches a segment it had detached.
    Reattach { node: usize, seg: usize },
    /// A node that served what waited for a segment it gives up
    /// (`serve_held`, as a process exit does first) releases it.
    Release { node: usize, seg: usize },
}

/// One ordered pair of nodes: messages in sending order, each with the
/// sequence number of its `Deliver` event.
#[derive(Default)]
struct Link {
    queue: VecDeque<(u64, CoherenceMsg)>,
    /// Delivery time of the last message sent: no later message arrives
    /// before it.
    last: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegState {
    Attached,
    /// `serve_held` ran; the release comes at an `Event::Release`.
    Serving,
    /// `release` sent this many `Release`s still unanswered.
    Detaching(usize),
    Detached,
}

/// An application thread waiting for access to a page.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    page: usize,
    write: bool,
    since: u64,
    /// The access the page was opened to when the thread was woken; it
    /// retries at a `Wake` event.
    woken: Option<Access>,
}

struct SimNode {
    proto: NodeProtocol,
    hold: u64,
    /// The application's access, per global page, as set by the actions.
    access: Vec<Access>,
    /// The page contents, per global page.
    memory: Vec<u64>,
    segs: Vec<SegState>,
    threads: Vec<Option<Blocked>>,
    /// Pending `WakeAt` times.
    timers: BTreeSet<u64>,
    /// Pushed copies not touched yet (`Action::Watch`), per global page.
    watched: Vec<bool>,
}

#[derive(Debug, Default)]
struct Stats {
    deliveries: u64,
    /// Deliveries of a message sent before another already delivered one.
    overtaken: u64,
    timers: u64,
    deferrals: u64,
    reads: u64,
    writes: u64,
    blocked: u64,
    refaults: u64,
    max_blocked: u64,
    detaches: u64,
    /// Detaches that served what waited first and released later.
    served_first: u64,
    /// Pages given up by detaches.
    released: u64,
    /// Pages pushed to their readers (`NodeProtocol::push`).
    pushes: u64,
    /// Holds ended by a thread moving on (`NodeProtocol::end_hold`).
    holds_ended: u64,
    reattaches: u64,
    /// `SendPage` of a page already released (detach racing a `Fetch`).
    sent_while_releasing: u64,
    /// Deliveries per message kind (see [`kind`]).
    kinds: [u64; KINDS.len()],
    /// Manager restarts, and the messages to or from it they dropped.
    restarts: u64,
    dropped: u64,
    steps: u64,
}

const KINDS: [&str; 15] = [
    "Request",
    "Fetch",
    "Grant",
    "Data",
    "Invalidate",
    "InvAck",
    "DropReader",
    "Release",
    "Lost",
    "Released",
    "Bounce",
    "Claim",
    "Claimed",
    "Declined",
    "GiveBack",
];
/// Kinds a run need not show (rare races, or failures).
const RARE: [&str; 5] = ["Lost", "Bounce", "DropReader", "Declined", "GiveBack"];

/// Index of a message's kind in [`KINDS`].
fn kind(msg: &CoherenceMsg) -> usize {
    match msg {
        CoherenceMsg::Request { .. } => 0,
        CoherenceMsg::Fetch { .. } => 1,
        CoherenceMsg::Grant { .. } => 2,
        CoherenceMsg::Data { .. } => 3,
        CoherenceMsg::Invalidate { .. } => 4,
        CoherenceMsg::InvAck { .. } => 5,
        CoherenceMsg::DropReader { .. } => 6,
        CoherenceMsg::Release { .. } => 7,
        CoherenceMsg::Lost { .. } => 8,
        CoherenceMsg::Released { .. } => 9,
        CoherenceMsg::Bounce { .. } => 10,
        CoherenceMsg::Claim { .. } => 11,
        CoherenceMsg::Claimed { .. } => 12,
        CoherenceMsg::Declined { .. } => 13,
        CoherenceMsg::GiveBack { .. } => 14,
    }
}

/// Knobs drawn per seed, so that seeds differ in more than the order.
#[derive(Debug)]
struct Params {
    /// Each node's `hold` is drawn from `1..=max_hold`.
    max_hold: u64,
    /// Share of messages that are slow (the others take 1..=20).
    slow_per_mille: u64,
    /// A slow message takes `20..=max_slow`.
    max_slow: u64,
    /// Chance that an application step first detaches a segment.
    detach_per_mille: u64,
    /// Share of accesses that are writes.
    write_per_mille: u64,
    /// The manager restarts every this many deliveries.
    restart_every: u64,
}

struct Sim {
    trace: bool,
    params: Params,
    rng: Rng,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    /// Indexed by `from * (NODES + 1) + to`.
    links: Vec<Link>,
    manager: Manager,
    nodes: Vec<SimNode>,
    /// Global page index → (segment index, page).
    pages: Vec<(usize, PageIdx)>,
    /// Segment index → its first global page.
    seg_base: Vec<usize>,
    /// The model: the last value written to each page.
    latest: Vec<u64>,
    next_value: u64,
    /// Highest sequence number of a delivered message.
    max_delivered: u64,
    /// Whether threads still start new accesses (false while draining).
    generating: bool,
    stats: Stats,
    /// The home's bytes as the nameserver keeps them on disk, per global
    /// page (written when the home takes a page; kept when it gives it).
    disk: Vec<Payload>,
    /// Deliveries of messages dropped by a restart (never delivered).
    dropped: HashSet<u64>,
    next_restart: u64,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = Rng(seed);
        let params = Params {
            max_hold: [8, 20, 60, 200][rng.below(4) as usize],
            slow_per_mille: [0, 50, 200, 500][rng.below(4) as usize],
            max_slow: [50, 300, 2000][rng.below(3) as usize],
            detach_per_mille: [1, 3, 20][rng.below(3) as usize],
            write_per_mille: [200, 400, 700][rng.below(3) as usize],
            restart_every: [15_000, 30_000, 45_000][rng.below(3) as usize],
        };
        let mut manager = Manager::new();
        manager.track_changes();
        let mut pages = Vec::new();
        let mut seg_base = Vec::new();
        for (si, &(seg, npages)) in SEGMENTS.iter().enumerate() {
            manager.create(seg, npages);
            seg_base.push(pages.len());
            pages.extend((0..npages).map(|p| (si, p)));
        }
        let nodes = (0..NODES)
            .map(|i| {
                let hold = rng.range(1, params.max_hold);
                let mut proto = NodeProtocol::new(i as NodeId + 1, hold);
                for &(seg, npages) in &SEGMENTS {
                    proto.attach(seg, npages);
                }
                SimNode {
                    proto,
                    hold,
                    access: vec![Access::Invalid; pages.len()],
                    memory: vec![POISON; pages.len()],
                    segs: vec![SegState::Attached; SEGMENTS.len()],
                    threads: vec![None; THREADS],
                    timers: BTreeSet::new(),
                    watched: vec![false; pages.len()],
                }
            })
            .collect();
        let mut sim = Sim {
            trace,
            params,
            rng,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            links: (0..(NODES + 1) * (NODES + 1)).map(|_| Link::default()).collect(),
            manager,
            nodes,
            latest: vec![0; pages.len()],
            pages,
            seg_base,
            next_value: 0,
            max_delivered: 0,
            generating: true,
            stats: Stats::default(),
            disk: Vec::new(),
            dropped: HashSet::new(),
            next_restart: 0,
        };
        sim.disk = vec![Payload::Zero; sim.pages.len()];
        sim.next_restart = sim.params.restart_every;
        for node in 0..NODES {
            for thread in 0..THREADS {
                sim.schedule_app(node, thread);
            }
        }
        sim
    }

    fn push(&mut self, at: u64, event: Event) -> u64 {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
        self.seq
    }

    fn schedule_app(&mut self, node: usize, thread: usize) {
        if self.generating {
            let at = self.now + self.rng.range(0, 40);
            self.push(at, Event::App { node, thread });
        }
    }

    /// A random network delay: mostly short, sometimes long.
    fn delay(&mut self) -> u64 {
        if self.rng.chance(self.params.slow_per_mille) {
            self.rng.range(20, self.params.max_slow)
        } else {
            self.rng.range(1, 20)
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: CoherenceMsg) {
        assert_ne!(from, to, "node {from} sends {} to itself", show(&msg));
        assert!(to as usize <= NODES, "message to unknown node {to}");
        if self.trace {
            eprintln!("{:>8} {from} -> {to}: {}", self.now, show(&msg));
        }
        let idx = from as usize * (NODES + 1) + to as usize;
        let at = (self.now + self.delay()).max(self.links[idx].last);
        self.links[idx].last = at;
        let seq = self.push(at, Event::Deliver { from, to });
        self.links[idx].queue.push_back((seq, msg));
    }

    fn global_page(&self, seg: SegId, page: PageIdx) -> usize {
        let si =
            SEGMENTS.iter().position(|&(s, _)| s == seg).unwrap_or_else(|| panic!("unknown segment {seg}"));
        assert!(page < SEGMENTS[si].1, "page {page} outside segment {seg}");
        self.seg_base[si] + page as usize
    }

    /// One event; false when there is none left.
    fn step(&mut self) -> bool {
        let Some(Reverse((at, seq, event))) = self.events.pop() else { return false };
        assert!(at >= self.now, "the clock went back");
        if self.dropped.remove(&seq) {
            return true;
        }
        self.now = at;
        self.stats.steps += 1;
        let stepped = match event {
            Event::Deliver { to: MANAGER, .. } => None,
            Event::Deliver { to, .. } => Some(to as usize - 1),
            Event::Timer { node, .. }
            | Event::App { node, .. }
            | Event::Wake { node, .. }
            | Event::Reattach { node, .. }
            | Event::Release { node, .. } => Some(node),
        };
        match event {
            Event::Deliver { from, to } => self.deliver(from, to, seq),
            Event::Timer { node, at } => {
                self.nodes[node].timers.remove(&at);
                self.stats.timers += 1;
                if self.trace {
                    eprintln!("{:>8} node {} timeout", self.now, node + 1);
                }
                let mut out = Vec::new();
                let now = self.now;
                if let Err(e) = self.nodes[node].proto.handle_timeout(now, &mut out) {
                    panic!("node {}: handle_timeout at {now}: {e}", node + 1);
                }
                self.apply(node, out);
            }
            Event::App { node, thread } => self.app(node, thread),
            Event::Wake { node, thread } => self.retry(node, thread),
            Event::Reattach { node, seg: si } => {
                let (seg, npages) = SEGMENTS[si];
                assert_eq!(self.nodes[node].segs[si], SegState::Detached);
                if self.trace {
                    eprintln!("{:>8} node {} attaches {seg}", self.now, node + 1);
                }
                self.nodes[node].proto.attach(seg, npages);
                self.nodes[node].segs[si] = SegState::Attached;
                self.stats.reattaches += 1;
            }
            Event::Release { node, seg: si } => {
                assert_eq!(self.nodes[node].segs[si], SegState::Serving);
                if self.trace {
                    eprintln!("{:>8} node {} releases {}", self.now, node + 1, SEGMENTS[si].0);
                }
                self.release(node, si);
            }
        }
        self.check(stepped);
        if self.generating && self.stats.deliveries >= self.next_restart {
            self.next_restart += self.params.restart_every;
            self.restart();
            self.check(None);
        }
        true
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, seq: u64) {
        let idx = from as usize * (NODES + 1) + to as usize;
        let (sent, msg) = self.links[idx].queue.pop_front().expect("delivery from an empty link");
        assert_eq!(sent, seq, "link {from} -> {to} out of order");
        self.stats.deliveries += 1;
        self.stats.kinds[kind(&msg)] += 1;
        if seq < self.max_delivered {
            self.stats.overtaken += 1;
        }
        self.max_delivered = self.max_delivered.max(seq);
        if self.trace {
            eprintln!("{:>8} {from} => {to}: {}", self.now, show(&msg));
        }
        let what = msg.target();
        let mut out = Vec::new();
        if to == MANAGER {
            if let Err(e) = self.manager.handle(from, msg, &mut out) {
                panic!("manager rejected a message from {from} about {what:?} at {}: {e}", self.now);
            }
            self.persist();
            for action in out {
                match action {
                    Action::Send { to, msg } => self.send(MANAGER, to, msg),
                    other => panic!("manager asked for {other:?}"),
                }
            }
        } else {
            let node = to as usize - 1;
            if let Err(e) = self.nodes[node].proto.handle(from, msg, self.now, &mut out) {
                panic!("node {to} rejected a message from {from} about {what:?} at {}: {e}", self.now);
            }
            self.apply(node, out);
        }
    }

    /// What the nameserver writes to its state directory after each
    /// message: the bytes of pages the home took.
    fn persist(&mut self) {
        for (seg, page) in self.manager.take_dirty() {
            if let Some((HomeState::Home { .. } | HomeState::Given { .. }, Some(bytes))) =
                self.manager.home_state(seg, page)
            {
                let gp = self.global_page(seg, page);
                self.disk[gp] = bytes.clone();
            }
        }
    }

    /// The nameserver dies and starts again from its state directory:
    /// every message to or from it on its way is lost; a new manager
    /// restores the pages' states and the home's bytes as on disk, every
    /// node sends its `Rejoin` report, and the manager rebuilds.
    fn restart(&mut self) {
        for i in 0..=NODES {
            for idx in [i * (NODES + 1), i] {
                for (seq, _) in self.links[idx].queue.drain(..) {
                    self.dropped.insert(seq);
                    self.stats.dropped += 1;
                }
            }
        }
        let mut manager = Manager::new();
        manager.track_changes();
        for (si, &(seg, npages)) in SEGMENTS.iter().enumerate() {
            let pages = (0..npages)
                .map(|page| {
                    let (st, _) = self.manager.home_state(seg, page).expect("page");
                    if self.trace {
                        eprintln!("{:>8} restored {seg}/{page}: {st:?}", self.now);
                    }
                    (st, self.disk[self.seg_base[si] + page as usize].clone())
                })
                .collect();
            manager.restore(seg, pages);
        }
        self.manager = manager;
        if self.trace {
            eprintln!("{:>8} the manager restarts", self.now);
        }
        let mut reports = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut r = n.proto.rejoin();
            for p in r.iter_mut() {
                if let Some((payload, _, _)) = p.releasing.as_mut() {
                    *payload = encode(n.memory[self.global_page(p.seg, p.page)]);
                }
            }
            if self.trace {
                for p in &r {
                    eprintln!("{:>8} node {} rejoins: {p:?}", self.now, i + 1);
                }
            }
            reports.push((i as NodeId + 1, r));
        }
        let mut out = Vec::new();
        self.manager.rebuild(reports, &[], &mut out);
        self.persist();
        for action in out {
            match action {
                Action::Send { to, msg } => self.send(MANAGER, to, msg),
                other => panic!("manager asked for {other:?}"),
            }
        }
        self.stats.restarts += 1;
    }

    /// The driver of node `node`: performs its actions in order.
    fn apply(&mut self, node: usize, actions: Vec<Action>) {
        let me = node as NodeId + 1;
        let mut work: VecDeque<Action> = actions.into();
        while let Some(action) = work.pop_front() {
            if self.trace {
                match &action {
                    Action::Send { .. } => {} // traced by `send`
                    Action::Install { seg, page, payload } => {
                        eprintln!("{:>8} node {me}: Install {seg}/{page} = {}", self.now, decode(payload))
                    }
                    other => eprintln!("{:>8} node {me}: {other:?}", self.now),
                }
            }
            match action {
                Action::Send { to, msg } => self.send(me, to, msg),
                Action::SetAccess { seg, page, access } => {
                    let gp = self.global_page(seg, page);
                    self.nodes[node].access[gp] = access;
                    if access == Access::Invalid {
                        self.nodes[node].watched[gp] = false;
                    }
                    if access != Access::Invalid {
                        self.wake(node, gp);
                    }
                }
                Action::Install { seg, page, payload } => {
                    let gp = self.global_page(seg, page);
                    let value = decode(&payload);
                    let n = &mut self.nodes[node];
                    assert!(
                        n.access[gp] == Access::Invalid || n.memory[gp] == value,
                        "node {me}: Install of {value} under open access {:?} to {seg}/{page} holding {}",
                        n.access[gp],
                        n.memory[gp]
                    );
                    n.memory[gp] = value;
                }
                Action::SendPage { seg, page, to, acks, version, keep } => {
                    let gp = self.global_page(seg, page);
                    let n = &mut self.nodes[node];
                    if n.access[gp] == Access::Invalid {
                        self.stats.sent_while_releasing += 1;
                    }
                    if keep == Access::Read && n.proto.pushed(seg, page).contains(&to) {
                        self.stats.pushes += 1;
                    }
                    n.watched[gp] = false;
                    n.access[gp] = n.access[gp].min(keep);
                    let value = n.memory[gp];
                    assert_eq!(
                        value, self.latest[gp],
                        "node {me} sends a stale copy of {seg}/{page} to {to}"
                    );
                    self.send(
                        me,
                        to,
                        CoherenceMsg::Data {
                            seg,
                            page,
                            write: keep == Access::Invalid,
                            acks,
                            version,
                            payload: encode(value),
                        },
                    );
                }
                Action::ReleasePage { seg, page, copyset, version } => {
                    let gp = self.global_page(seg, page);
                    let value = self.nodes[node].memory[gp];
                    assert_eq!(value, self.latest[gp], "node {me} releases a stale copy of {seg}/{page}");
                    let owned = Some((encode(value), copyset, version));
                    self.send(me, MANAGER, CoherenceMsg::Release { seg, page, owned });
                }
                Action::Released { seg, page } => {
                    let si = self.pages[self.global_page(seg, page)].0;
                    let SegState::Detaching(left) = self.nodes[node].segs[si] else {
                        panic!("node {me}: Released for {seg}/{page} while not detaching");
                    };
                    if left == 1 {
                        self.finish_detach(node, si);
                    } else {
                        self.nodes[node].segs[si] = SegState::Detaching(left - 1);
                    }
                }
                Action::Lost { seg, page } => panic!("node {me}: page {seg}/{page} lost at {}", self.now),
                Action::Watch { seg, page } => {
                    let gp = self.global_page(seg, page);
                    self.nodes[node].watched[gp] = true;
                }
                Action::WakeAt(at) => {
                    self.stats.deferrals += 1;
                    if self.nodes[node].timers.insert(at) {
                        let when = at.max(self.now);
                        self.push(when, Event::Timer { node, at });
                    }
                }
            }
        }
    }

    /// The page was opened: the threads blocked on it wake up and run again
    /// a little later — sooner than the node's `hold`, so the access must
    /// still be there then.
    fn wake(&mut self, node: usize, gp: usize) {
        let access = self.nodes[node].access[gp];
        let hold = self.nodes[node].hold;
        for thread in 0..THREADS {
            let Some(b) = &mut self.nodes[node].threads[thread] else { continue };
            if b.page != gp || b.woken.is_some() {
                continue;
            }
            b.woken = Some(access);
            let at = self.now + self.rng.below(hold);
            self.push(at, Event::Wake { node, thread });
        }
    }

    /// A woken thread runs its access again: it faults again if the access
    /// is (still) missing.
    fn retry(&mut self, node: usize, thread: usize) {
        let mut b = self.nodes[node].threads[thread].expect("woke a thread that is not blocked");
        let woken = b.woken.take().expect("woke a thread nobody woke");
        let (si, page) = self.pages[b.page];
        let seg = SEGMENTS[si].0;
        let mut out = Vec::new();
        let now = self.now;
        let present = match self.nodes[node].proto.fault(seg, page, b.write, now, &mut out) {
            Ok(present) => present,
            Err(e) => panic!("node {}: fault on {seg}/{page}: {e}", node + 1),
        };
        if present {
            // An owner upgrading with no copy out opens the page at once.
            self.nodes[node].threads[thread] = None;
            self.apply(node, out);
            self.stats.max_blocked = self.stats.max_blocked.max(self.now - b.since);
            self.perform(node, b.page, b.write);
            self.moved_on(node, b.page);
            self.schedule_app(node, thread);
            return;
        }
        // Only a writer woken by a read grant may find its access missing:
        // anything else was taken away within the hold.
        assert!(
            b.write && woken == Access::Read,
            "node {}: access to {seg}/{page} opened to {woken:?} at most {} ago is gone at {}",
            node + 1,
            self.nodes[node].hold,
            self.now
        );
        self.stats.refaults += 1;
        self.nodes[node].threads[thread] = Some(b);
        self.apply(node, out);
    }

    /// Half the time, a thread whose access to `gp` has just run moves on
    /// at once, as the runtime sees it when the thread faults again at
    /// another instruction: the page's hold ends (unless another thread of
    /// the node waits for the page too).
    fn moved_on(&mut self, node: usize, gp: usize) {
        let others = self.nodes[node].threads.iter().flatten().any(|b| b.page == gp);
        if others || !self.rng.chance(500) {
            return;
        }
        let (si, page) = self.pages[gp];
        let seg = SEGMENTS[si].0;
        let mut out = Vec::new();
        if let Err(e) = self.nodes[node].proto.end_hold(seg, page, self.now, &mut out) {
            panic!("node {}: end_hold of {seg}/{page}: {e}", node + 1);
        }
        if self.trace && !out.is_empty() {
            eprintln!("{:>8} node {} ends the hold of {seg}/{page}", self.now, node + 1);
        }
        self.stats.holds_ended += 1;
        self.apply(node, out);
    }

    /// An application access, with the access present.
    fn perform(&mut self, node: usize, gp: usize, write: bool) {
        let n = &mut self.nodes[node];
        let (si, page) = self.pages[gp];
        let seg = SEGMENTS[si].0;
        if write {
            assert_eq!(
                n.access[gp],
                Access::Write,
                "node {}: write to {seg}/{page} without access",
                node + 1
            );
            self.next_value += 1;
            n.memory[gp] = self.next_value;
            self.latest[gp] = self.next_value;
            self.stats.writes += 1;
            if self.trace {
                eprintln!("{:>8} node {} writes {seg}/{page} = {}", self.now, node + 1, self.next_value);
            }
        } else {
            assert_ne!(
                n.access[gp],
                Access::Invalid,
                "node {}: read of {seg}/{page} without access",
                node + 1
            );
            assert_eq!(
                n.memory[gp],
                self.latest[gp],
                "node {}: read of {seg}/{page} at {} returns a stale value",
                node + 1,
                self.now
            );
            self.stats.reads += 1;
        }
    }

    /// A thread's next step: an access, sometimes a detach first.
    fn app(&mut self, node: usize, thread: usize) {
        if !self.generating {
            return;
        }
        assert!(self.nodes[node].threads[thread].is_none(), "a blocked thread ran");
        if self.rng.chance(self.params.detach_per_mille) {
            self.detach(node);
        }
        let attached: Vec<usize> =
            (0..SEGMENTS.len()).filter(|&si| self.nodes[node].segs[si] == SegState::Attached).collect();
        if attached.is_empty() {
            self.schedule_app(node, thread);
            return;
        }
        let si = attached[self.rng.below(attached.len() as u64) as usize];
        let (seg, npages) = SEGMENTS[si];
        let page = self.rng.below(npages as u64) as PageIdx;
        let write = self.rng.chance(self.params.write_per_mille);
        let gp = self.seg_base[si] + page as usize;
        let mut out = Vec::new();
        let now = self.now;
        // As the runtime: a write fault begins an epoch (pushed copies used
        // before the last one are given back); the first access to a
        // pushed copy counts as its use.
        if write {
            self.nodes[node].proto.tick(Some(seg), now, &mut out);
        } else if std::mem::take(&mut self.nodes[node].watched[gp]) {
            self.nodes[node].proto.touched(seg, page);
        }
        let present = match self.nodes[node].proto.fault(seg, page, write, now, &mut out) {
            Ok(present) => present,
            Err(e) => panic!("node {}: fault on {seg}/{page} at {now}: {e}", node + 1),
        };
        if present {
            self.apply(node, out);
            self.perform(node, gp, write);
            self.schedule_app(node, thread);
        } else {
            if self.trace {
                eprintln!("{now:>8} node {} blocks on {seg}/{page} write={write}", node + 1);
            }
            self.stats.blocked += 1;
            self.nodes[node].threads[thread] = Some(Blocked { page: gp, write, since: now, woken: None });
            if write && page + 1 < npages && self.rng.chance(300) {
                // Write-ahead, as the runtime does in a run of write faults.
                let count = 1 + self.rng.below(4) as u32;
                self.nodes[node].proto.claim(seg, page + 1, count, &mut out);
            }
            if !write && self.rng.chance(300) {
                // Read-ahead, as the runtime does in a run of read faults:
                // the following pages nobody waits for.
                let count = 1 + self.rng.below(4) as u32;
                for p in page + 1..(page + 1 + count).min(npages) {
                    self.nodes[node].proto.read_ahead(seg, p, now, &mut out);
                }
            }
            self.apply(node, out);
        }
    }

    /// Detaches a random attached segment no thread of the node waits on
    /// and no request of the node is outstanding for.
    fn detach(&mut self, node: usize) {
        let si = self.rng.below(SEGMENTS.len() as u64) as usize;
        let n = &self.nodes[node];
        let base = self.seg_base[si];
        let busy =
            n.threads.iter().flatten().any(|b| (base..base + SEGMENTS[si].1 as usize).contains(&b.page));
        let seg = SEGMENTS[si].0;
        // The runtime's detach waits for requests still on their way (a
        // claim nobody waits for, read-ahead) before it releases.
        if n.segs[si] != SegState::Attached || busy || n.proto.any_pending(seg) {
            return;
        }
        if self.trace {
            eprintln!("{:>8} node {} detaches {seg}", self.now, node + 1);
        }
        self.stats.detaches += 1;
        if self.rng.chance(500) {
            // As at a process exit: what waits is served first, and
            // messages come and go before the release.
            let mut out = Vec::new();
            if let Err(e) = self.nodes[node].proto.serve_held(seg, &mut out) {
                panic!("node {}: serve_held of {seg}: {e}", node + 1);
            }
            if self.trace {
                eprintln!("{:>8} node {} serves what waits for {seg}, releases later", self.now, node + 1);
            }
            self.nodes[node].segs[si] = SegState::Serving;
            self.stats.served_first += 1;
            self.apply(node, out);
            let at = self.now + self.rng.range(1, 300);
            self.push(at, Event::Release { node, seg: si });
            return;
        }
        self.release(node, si);
    }

    /// Gives a segment up: `release`, then one `Released` per page.
    fn release(&mut self, node: usize, si: usize) {
        let seg = SEGMENTS[si].0;
        let mut out = Vec::new();
        let released = match self.nodes[node].proto.release(seg, &mut out) {
            Ok(n) => n,
            Err(e) => panic!("node {}: release of {seg}: {e}", node + 1),
        };
        self.stats.released += released as u64;
        self.nodes[node].segs[si] = SegState::Detaching(released);
        self.apply(node, out);
        if released == 0 {
            self.finish_detach(node, si);
        }
    }

    /// Every page of the segment was released: forget it.
    fn finish_detach(&mut self, node: usize, si: usize) {
        let (seg, npages) = SEGMENTS[si];
        let base = self.seg_base[si];
        let n = &mut self.nodes[node];
        n.proto.forget(seg);
        n.segs[si] = SegState::Detached;
        for gp in base..base + npages as usize {
            assert_eq!(n.access[gp], Access::Invalid, "node {}: detached {seg} still open", node + 1);
            n.memory[gp] = POISON;
        }
        if self.generating {
            let at = self.now + self.rng.range(1, 500);
            self.push(at, Event::Reattach { node, seg: si });
        }
    }

    /// The invariants of DESIGN.md §3, for every page; `stepped` is the
    /// node whose protocol instance ran in this step, if any (the others'
    /// access did not change).
    fn check(&self, stepped: Option<usize>) {
        if let Some(i) = stepped {
            let n = &self.nodes[i];
            for (gp, &(si, page)) in self.pages.iter().enumerate() {
                let seg = SEGMENTS[si].0;
                assert_eq!(
                    n.access[gp],
                    n.proto.access(seg, page),
                    "node {}: driver and protocol disagree on {seg}/{page} at {}",
                    i + 1,
                    self.now
                );
            }
        }
        for (gp, &(si, page)) in self.pages.iter().enumerate() {
            let seg = SEGMENTS[si].0;
            let latest = self.latest[gp];
            let mut writer = None;
            let mut readers = 0;
            for (i, n) in self.nodes.iter().enumerate() {
                let access = n.access[gp];
                match access {
                    Access::Invalid => continue,
                    Access::Read => readers += 1,
                    Access::Write => {
                        assert!(writer.is_none(), "two writers of {seg}/{page} at {}", self.now);
                        writer = Some(i);
                    }
                }
                assert_eq!(
                    n.memory[gp],
                    latest,
                    "node {} has {access:?} access to {seg}/{page} but a stale copy at {}",
                    i + 1,
                    self.now
                );
            }
            assert!(
                writer.is_none() || readers == 0,
                "{seg}/{page} has a writer and {readers} readers at {}",
                self.now
            );
            if let Some(home) = self.manager.home_copy(seg, page) {
                assert!(writer.is_none(), "{seg}/{page}: home copy current while written at {}", self.now);
                assert_eq!(peek(home), latest, "{seg}/{page}: stale home copy at {}", self.now);
            }
        }
    }

    /// The blocked threads and pending requests, to explain a deadlock.
    fn stuck(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for b in n.threads.iter().flatten() {
                let (si, page) = self.pages[b.page];
                let seg = SEGMENTS[si].0;
                let pending = n.proto.is_pending(seg, page);
                s += &format!(
                    "node {} blocked on {seg}/{page} since {} (pending: {pending}); ",
                    i + 1,
                    b.since
                );
            }
        }
        s
    }

    /// After draining: everything completed and the directory matches.
    fn check_quiescent(&self) {
        assert!(self.links.iter().all(|l| l.queue.is_empty()), "undelivered messages");
        for (i, n) in self.nodes.iter().enumerate() {
            assert!(n.threads.iter().all(Option::is_none), "node {}: deadlock: {}", i + 1, self.stuck());
            assert!(n.timers.is_empty(), "node {}: timers left", i + 1);
            for (si, state) in n.segs.iter().enumerate() {
                assert!(
                    !matches!(state, SegState::Detaching(_)),
                    "node {}: detach of {} never completed",
                    i + 1,
                    SEGMENTS[si].0
                );
            }
        }
        for (gp, &(si, page)) in self.pages.iter().enumerate() {
            let seg = SEGMENTS[si].0;
            let holders = self.manager.holders(seg, page).expect("page unknown to the manager");
            let mut owners = Vec::new();
            let mut readers = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                let id = i as NodeId + 1;
                assert!(!n.proto.is_pending(seg, page), "node {id}: request for {seg}/{page} still pending");
                if n.proto.is_owner(seg, page) {
                    owners.push(id);
                    assert_ne!(n.access[gp], Access::Invalid, "node {id} owns {seg}/{page} without a copy");
                } else if n.access[gp] == Access::Read {
                    readers.push(id);
                } else {
                    assert_eq!(
                        n.access[gp],
                        Access::Invalid,
                        "node {id} writes {seg}/{page} but does not own it"
                    );
                }
            }
            assert!(owners.len() <= 1, "{seg}/{page}: several owners {owners:?}");
            assert_eq!(holders.owner, owners.first().copied(), "{seg}/{page}: the manager's owner differs");
            // The copyset of the owner (the home's, or the owning node's)
            // is exactly the set of other nodes that can read, and the
            // nodes it pushed the page to that did not keep it (they were
            // detaching): a later write invalidates them for nothing. The
            // home cannot tell those apart (an owner gave them back with
            // the page), so its readers need only include every reader.
            let mut copyset = match holders.owner {
                None => holders.readers.clone(),
                Some(o) => {
                    let owner = &self.nodes[o as usize - 1].proto;
                    let pushed = owner.pushed(seg, page);
                    let mut c = owner.copyset(seg, page);
                    c.retain(|r| readers.contains(r) || !pushed.contains(r));
                    c
                }
            };
            copyset.sort_unstable();
            if holders.owner.is_none() {
                copyset.retain(|r| readers.contains(r));
            }
            assert_eq!(copyset, readers, "{seg}/{page}: the owner's copyset differs from the readers");
            if holders.owner.is_none() {
                let home = self.manager.home_copy(seg, page).expect("the home owns a page without bytes");
                assert_eq!(decode(home), self.latest[gp], "{seg}/{page}: data lost");
            }
        }
    }
}

/// One seed: run until [`DELIVERIES`], drain, check.
fn run_seed(seed: u64, trace: bool) -> (Params, Stats) {
    let mut sim = Sim::new(seed, trace);
    while sim.stats.deliveries < DELIVERIES {
        assert!(sim.step(), "deadlock: nothing left to happen at {}; {}", sim.now, sim.stuck());
    }
    sim.generating = false;
    let mut drained = 0;
    while sim.step() {
        drained += 1;
        assert!(drained < DRAIN_LIMIT, "draining does not end (livelock)");
    }
    sim.check_quiescent();
    let Sim { params, stats: s, .. } = sim;
    // The run must have exercised what it claims to test.
    assert!(s.overtaken * 5 > s.deliveries, "too little reordering: {s:?}");
    assert!(s.deferrals > 0 && s.timers > 0, "no Fetch/Invalidate was deferred: {s:?}");
    assert!(s.refaults > 0, "no writer woken by a read grant: {s:?}");
    assert!(s.detaches > 0 && s.reattaches > 0, "no detach/re-attach: {s:?}");
    assert!(s.served_first > 0, "no detach served what waited before releasing: {s:?}");
    assert!(s.pushes > 0, "no page was pushed: {s:?}");
    assert!(s.holds_ended > 0, "no hold was ended early: {s:?}");
    assert!(s.restarts > 0, "the manager never restarted: {s:?}");
    assert!(s.blocked * 10 > s.reads + s.writes, "too little contention: {s:?}");
    for (k, name) in KINDS.iter().enumerate() {
        // (A run whose detaching nodes never held a page sends no release.)
        let unreleased = s.released == 0 && ["Release", "Released"].contains(name);
        assert!(RARE.contains(name) || unreleased || s.kinds[k] > 0, "no {name} was ever sent: {s:?}");
    }
    (params, s)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value}: not a number")))
}

#[test]
fn simulated_cluster_is_coherent() {
    let trace = std::env::var_os("KDIPC_SIM_TRACE").is_some_and(|v| v != "0");
    let seeds: Vec<u64> = match env_u64("KDIPC_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("KDIPC_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(seeds.len());
    let next = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let run = std::thread::Builder::new()
                    .name(format!("sim-seed-{seed}"))
                    .spawn(move || run_seed(seed, trace))
                    .expect("spawn a simulation thread")
                    .join();
                match run {
                    Ok((p, s)) => eprintln!(
                        "seed {seed}: {} deliveries ({} overtaking), {} steps, {} reads, {} writes, \
                         {} blocked ({} refaults, longest {}), {} deferrals, {} detaches \
                         ({} served first, {} pages sent while releasing), {} restarts ({} messages dropped), \
                         {} pushes ({} given back); {p:?}",
                        s.deliveries,
                        s.overtaken,
                        s.steps,
                        s.reads,
                        s.writes,
                        s.blocked,
                        s.refaults,
                        s.max_blocked,
                        s.deferrals,
                        s.detaches,
                        s.served_first,
                        s.sent_while_releasing,
                        s.restarts,
                        s.dropped,
                        s.pushes,
                        s.kinds[kind(&CoherenceMsg::GiveBack { seg: 0, page: 0, version: 0 })],
                    ),
                    Err(e) => {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failed.lock().unwrap().push((seed, msg));
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    failed.sort();
    if let Some((seed, msg)) = failed.first() {
        let seeds: Vec<u64> = failed.iter().map(|f| f.0).collect();
        panic!("simulation failed for seeds {seeds:?}; first: seed {seed}: {msg} (replay: KDIPC_SIM_SEED={seed})");
    }
}

/// Single protocol steps, checked message by message.
mod scenarios {
    use kdipc_runtime::protocol::{
        Access, Action, CoherenceMsg, Manager, NodeId, NodeProtocol, Payload, ProtocolError, Report, MANAGER,
        PAGE_SIZE,
    };

    const SEG: i32 = 7;
    const Z: Payload = Payload::Zero;

    fn send(to: NodeId, msg: CoherenceMsg) -> Action {
        Action::Send { to, msg }
    }

    fn request(page: u32, write: bool, requester: NodeId) -> CoherenceMsg {
        CoherenceMsg::Request { seg: SEG, page, write, requester, ahead: false }
    }

    fn data(page: u32, write: bool, acks: Vec<NodeId>, version: u64) -> CoherenceMsg {
        CoherenceMsg::Data { seg: SEG, page, write, acks, version, payload: Z }
    }

    fn inval(page: u32, ack_to: NodeId, version: u64) -> CoherenceMsg {
        CoherenceMsg::Invalidate { seg: SEG, page, ack_to, version }
    }

    fn ack(page: u32, version: u64) -> CoherenceMsg {
        CoherenceMsg::InvAck { seg: SEG, page, version }
    }

    fn fetch(page: u32, to: NodeId, write: bool) -> CoherenceMsg {
        CoherenceMsg::Fetch { seg: SEG, page, to, write }
    }

    fn access(page: u32, access: Access) -> Action {
        Action::SetAccess { seg: SEG, page, access }
    }

    fn node(id: NodeId, hold: u64) -> NodeProtocol {
        let mut n = NodeProtocol::new(id, hold);
        n.attach(SEG, 2);
        n
    }

    fn manager() -> Manager {
        let mut m = Manager::new();
        m.create(SEG, 2);
        m
    }

    /// Runs one manager step and returns its actions.
    fn at_manager(m: &mut Manager, from: NodeId, msg: CoherenceMsg) -> Vec<Action> {
        let mut out = Vec::new();
        m.handle(from, msg, &mut out).expect("manager rejected a valid message");
        out
    }

    /// Runs one node step and returns its actions.
    fn at_node(n: &mut NodeProtocol, from: NodeId, msg: CoherenceMsg, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        n.handle(from, msg, now, &mut out).expect("node rejected a valid message");
        out
    }

    fn fault(n: &mut NodeProtocol, page: u32, write: bool, now: u64) -> (bool, Vec<Action>) {
        let mut out = Vec::new();
        let present = n.fault(SEG, page, write, now, &mut out).expect("fault");
        (present, out)
    }

    /// `n` reads page 0 from the home (zero page).
    fn read_from_home(m: &mut Manager, n: &mut NodeProtocol, now: u64) {
        let id = n.id();
        assert_eq!(fault(n, 0, false, now), (false, vec![send(MANAGER, request(0, false, id))]));
        assert_eq!(at_manager(m, id, request(0, false, id)), vec![send(id, data(0, false, vec![], 0))]);
        assert_eq!(
            at_node(n, MANAGER, data(0, false, vec![], 0), now),
            vec![Action::Install { seg: SEG, page: 0, payload: Z }, access(0, Access::Read)]
        );
    }

    /// `n` writes page `page` of a fresh manager (zero page, no reader).
    fn write_from_home(m: &mut Manager, n: &mut NodeProtocol, page: u32, now: u64) {
        let id = n.id();
        assert_eq!(fault(n, page, true, now), (false, vec![send(MANAGER, request(page, true, id))]));
        assert_eq!(at_manager(m, id, request(page, true, id)), vec![send(id, data(page, true, vec![], 1))]);
        let out = at_node(n, MANAGER, data(page, true, vec![], 1), now);
        assert!(out.contains(&access(page, Access::Write)));
        assert!(n.is_owner(SEG, page));
        assert_eq!(m.holders(SEG, page).unwrap().owner, Some(id));
    }

    /// A claim gets the prefix of untouched zero pages; a page of the range
    /// that a local thread faulted on meanwhile and the manager refused is
    /// asked for normally; the rest stays where it was.
    #[test]
    fn claim_grants_untouched_zero_pages_and_asks_again_for_refused_ones() {
        let mut m = Manager::new();
        m.create(SEG, 4);
        let mut n1 = NodeProtocol::new(1, 10);
        n1.attach(SEG, 4);
        // Node 2 holds a read copy of page 2: not claimable.
        at_manager(&mut m, 2, request(2, false, 2));
        let mut out = Vec::new();
        assert_eq!(n1.claim(SEG, 1, 3, &mut out), 3);
        let claim = CoherenceMsg::Claim { seg: SEG, page: 1, count: 3 };
        assert_eq!(out, vec![send(MANAGER, claim.clone())]);
        // A thread reads page 2 while it is claimed: it waits for the claim.
        assert_eq!(fault(&mut n1, 2, false, 0), (false, vec![]));
        let claimed = CoherenceMsg::Claimed { seg: SEG, page: 1, count: 3, versions: vec![1] };
        assert_eq!(at_manager(&mut m, 1, claim), vec![send(1, claimed.clone())]);
        assert_eq!(
            at_node(&mut n1, MANAGER, claimed, 0),
            vec![
                Action::Install { seg: SEG, page: 1, payload: Z },
                access(1, Access::Write),
                send(MANAGER, request(2, false, 1)),
            ]
        );
        assert!(n1.is_owner(SEG, 1));
        assert_eq!(m.holders(SEG, 1).unwrap().owner, Some(1));
        assert!(!n1.is_pending(SEG, 3) && !n1.is_owner(SEG, 3));
        assert_eq!(m.holders(SEG, 3).unwrap().owner, None);
        // Another node's write of a claimed page is served by the claimer.
        assert_eq!(
            at_manager(&mut m, 2, request(1, true, 2)),
            vec![send(1, CoherenceMsg::Fetch { seg: SEG, page: 1, to: 2, write: true })]
        );
        // An answer for pages this node did not claim is malformed.
        let bogus = CoherenceMsg::Claimed { seg: SEG, page: 3, count: 1, versions: vec![1] };
        assert!(n1.handle(MANAGER, bogus, 0, &mut Vec::new()).is_err());
    }

    /// A read asked ahead of a page nobody has written is declined: the
    /// node gets no copy, so another node's claim of it succeeds; a thread
    /// that faulted on it meanwhile is asked for normally. A page written
    /// before is read ahead as any read.
    #[test]
    fn read_ahead_of_an_unwritten_page_is_declined() {
        let mut m = Manager::new();
        m.create(SEG, 4);
        let mut n1 = NodeProtocol::new(1, 10);
        n1.attach(SEG, 4);
        let ahead = |page| CoherenceMsg::Request { seg: SEG, page, write: false, requester: 1, ahead: true };
        let declined = |page| CoherenceMsg::Declined { seg: SEG, page };
        for page in [0, 1] {
            let mut out = Vec::new();
            assert!(n1.read_ahead(SEG, page, 0, &mut out));
            assert_eq!(out, vec![send(MANAGER, ahead(page))]);
            assert_eq!(at_manager(&mut m, 1, ahead(page)), vec![send(1, declined(page))]);
        }
        // Page 0: nobody waits. Page 1: a thread faulted on it meanwhile.
        assert_eq!(fault(&mut n1, 1, false, 0), (false, vec![]));
        assert_eq!(at_node(&mut n1, MANAGER, declined(0), 0), vec![]);
        assert_eq!(at_node(&mut n1, MANAGER, declined(1), 0), vec![send(MANAGER, request(1, false, 1))]);
        assert!(!n1.is_pending(SEG, 0) && n1.access(SEG, 0) == Access::Invalid);
        assert_eq!(m.holders(SEG, 0).unwrap().readers, Vec::<NodeId>::new());
        // A late duplicate changes nothing.
        assert_eq!(at_node(&mut n1, MANAGER, declined(0), 0), vec![]);
        // Declined once: not asked ahead again.
        assert!(!n1.read_ahead(SEG, 0, 0, &mut Vec::new()));
        // Node 2 claims pages 0..2: nobody holds a copy.
        let claim = CoherenceMsg::Claim { seg: SEG, page: 0, count: 2 };
        let claimed = CoherenceMsg::Claimed { seg: SEG, page: 0, count: 2, versions: vec![1, 1] };
        assert_eq!(at_manager(&mut m, 2, claim), vec![send(2, claimed)]);
        // Written now: read ahead like any read (the owner serves it).
        assert_eq!(
            at_manager(&mut m, 1, ahead(0)),
            vec![send(2, CoherenceMsg::Fetch { seg: SEG, page: 0, to: 1, write: false })]
        );
        // Only the manager declines.
        assert!(n1.handle(2, declined(2), 0, &mut Vec::new()).is_err());
        // Page 3, declined too, then read by a thread: this program reads
        // what it streams through, so its reads ahead become plain ones.
        let mut out = Vec::new();
        assert!(n1.read_ahead(SEG, 3, 0, &mut out));
        assert_eq!(at_manager(&mut m, 1, ahead(3)), vec![send(1, declined(3))]);
        at_node(&mut n1, MANAGER, declined(3), 0);
        assert_eq!(fault(&mut n1, 3, false, 0), (false, vec![send(MANAGER, request(3, false, 1))]));
        at_manager(&mut m, 1, request(3, false, 1));
        let mut out = Vec::new();
        assert!(n1.read_ahead(SEG, 2, 0, &mut out));
        assert_eq!(out, vec![send(MANAGER, request(2, false, 1))]);
    }

    #[test]
    fn zero_page_travels_without_payload() {
        let mut m = manager();
        let mut n1 = node(1, 10);
        read_from_home(&mut m, &mut n1, 0);
        assert_eq!(n1.access(SEG, 0), Access::Read);
        // A write of a never-written page gets the zero page too.
        assert_eq!(at_manager(&mut m, 2, request(1, true, 2)), vec![send(2, data(1, true, vec![], 1))]);
    }

    #[test]
    fn write_invalidates_every_reader() {
        let mut m = manager();
        let (mut n1, mut n2, mut n3) = (node(1, 10), node(2, 10), node(3, 10));
        read_from_home(&mut m, &mut n1, 0);
        read_from_home(&mut m, &mut n2, 0);
        assert_eq!(m.holders(SEG, 0).unwrap().readers, vec![1, 2]);
        fault(&mut n3, 0, true, 0);
        assert_eq!(
            at_manager(&mut m, 3, request(0, true, 3)),
            vec![send(1, inval(0, 3, 1)), send(2, inval(0, 3, 1)), send(3, data(0, true, vec![1, 2], 1))]
        );
        // The data alone does not open the page: two acknowledgements are due.
        assert_eq!(
            at_node(&mut n3, MANAGER, data(0, true, vec![1, 2], 1), 100),
            vec![Action::Install { seg: SEG, page: 0, payload: Z }]
        );
        for reader in [&mut n1, &mut n2] {
            assert_eq!(
                at_node(reader, MANAGER, inval(0, 3, 1), 100),
                vec![access(0, Access::Invalid), send(3, ack(0, 1))]
            );
        }
        assert!(at_node(&mut n3, 1, ack(0, 1), 101).is_empty());
        assert_eq!(n3.access(SEG, 0), Access::Invalid);
        // An acknowledgement of another write does not count.
        assert!(at_node(&mut n3, 2, ack(0, 7), 102).is_empty());
        assert_eq!(at_node(&mut n3, 2, ack(0, 1), 102), vec![access(0, Access::Write)]);
        assert!(n3.is_owner(SEG, 0));
        assert_eq!(m.holders(SEG, 0).unwrap().owner, Some(3));
    }

    /// The home sends its bytes also to a reader that upgrades: a reader
    /// it counts may be one an owner pushed the page to and that did not
    /// keep it.
    #[test]
    fn reader_upgrading_at_the_home_gets_the_bytes_with_acks() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 10), node(2, 10));
        read_from_home(&mut m, &mut n1, 0);
        read_from_home(&mut m, &mut n2, 0);
        assert_eq!(
            at_manager(&mut m, 1, request(0, true, 1)),
            vec![send(2, inval(0, 1, 1)), send(1, data(0, true, vec![2], 1))]
        );
    }

    /// A node that reads every version of a page another node writes (a
    /// halo row) gets the next version pushed at the writer's next write
    /// fault, before that fault's invalidations, and stops getting it
    /// after `PUSH_CREDIT` versions it did not ask for. A node pushed to
    /// that asks to write gets the bytes, not `Grant`.
    #[test]
    fn pages_read_after_every_write_are_pushed_to_their_reader() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        write_from_home(&mut m, &mut n1, 1, 0);
        let serve = |n1: &mut NodeProtocol, n2: &mut NodeProtocol, page: u32, now: u64| {
            assert!(!fault(n2, page, false, now).0);
            let out = at_node(n1, 2, request(page, false, 2), now);
            assert!(matches!(out[..], [Action::SendPage { to: 2, keep: Access::Read, .. }]), "{out:?}");
        };
        // Version 1 read, version 2 written and read again: a re-reader.
        serve(&mut n1, &mut n2, 0, 1);
        assert!(!fault(&mut n1, 0, true, 2).0);
        at_node(&mut n2, 1, inval(0, 1, 2), 3);
        at_node(&mut n1, 2, ack(0, 2), 4);
        serve(&mut n1, &mut n2, 0, 5);
        // Version 3: written; the write fault on page 1 pushes it.
        assert!(!fault(&mut n1, 0, true, 6).0);
        at_node(&mut n1, 2, ack(0, 3), 7);
        let (present, out) = fault(&mut n1, 1, true, 8);
        assert!(present);
        assert_eq!(
            out,
            vec![Action::SendPage { seg: SEG, page: 0, to: 2, acks: vec![], version: 3, keep: Access::Read }]
        );
        assert_eq!(n1.access(SEG, 0), Access::Read);
        assert_eq!(n1.pushed(SEG, 0), vec![2]);
        // Node 2 wants to write it: the bytes go, not `Grant`.
        let out = at_node(&mut n1, MANAGER, fetch(0, 2, true), 9);
        assert!(matches!(out[..], [Action::SendPage { to: 2, keep: Access::Invalid, .. }]), "{out:?}");
    }

    #[test]
    fn a_held_page_is_pushed_when_its_thread_moves_on_not_when_the_hold_runs_out() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 100), node(2, 100));
        write_from_home(&mut m, &mut n1, 0, 0);
        // Node 2 reads versions 1 and 2 (asking each time): a re-reader.
        for (version, now) in [(1, 200), (2, 400)] {
            assert!(!fault(&mut n2, 0, false, now).0);
            at_node(&mut n1, 2, request(0, false, 2), now);
            if version == 1 {
                assert!(!fault(&mut n1, 0, true, now + 100).0);
                at_node(&mut n2, 1, inval(0, 1, 2), now + 100);
                at_node(&mut n1, 2, ack(0, 2), now + 100);
            }
        }
        // Version 3 is written at 600 (held until 700).
        assert!(!fault(&mut n1, 0, true, 600).0);
        at_node(&mut n1, 2, ack(0, 3), 600);
        assert_eq!(n1.access(SEG, 0), Access::Write);
        // The hold runs out, the writing thread has not run yet (a busy
        // CPU): nothing is pushed, the page stays writable.
        let mut out = Vec::new();
        n1.handle_timeout(800, &mut out).unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(n1.access(SEG, 0), Access::Write);
        // The thread faults elsewhere (it has stored): version 3 goes.
        let mut out = Vec::new();
        n1.end_hold(SEG, 0, 900, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::SendPage { seg: SEG, page: 0, to: 2, acks: vec![], version: 3, keep: Access::Read }]
        );
        assert_eq!(n1.access(SEG, 0), Access::Read);
    }

    #[test]
    fn a_give_back_overtaken_by_a_read_through_the_manager_leaves_the_reader_counted() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        write_from_home(&mut m, &mut n1, 1, 0);
        // Node 2 reads versions 1 and 2 (asking each time); version 3 is
        // pushed to it, used, and given back.
        for (version, now) in [(1, 1), (2, 5)] {
            assert!(!fault(&mut n2, 0, false, now).0);
            at_node(&mut n1, 2, request(0, false, 2), now);
            at_node(&mut n2, 1, data(0, false, vec![], version), now);
            assert!(!fault(&mut n1, 0, true, now + 1).0);
            at_node(&mut n2, 1, inval(0, 1, version + 1), now + 2);
            at_node(&mut n1, 2, ack(0, version + 1), now + 3);
        }
        let (_, out) = fault(&mut n1, 1, true, 9);
        assert!(matches!(out[..], [Action::SendPage { page: 0, to: 2, version: 3, .. }]), "{out:?}");
        at_node(&mut n2, 1, data(0, false, vec![], 3), 10);
        n2.touched(SEG, 0);
        let mut out = Vec::new();
        n2.tick(Some(SEG), 11, &mut out);
        n2.tick(Some(SEG), 12, &mut out);
        let give_back = CoherenceMsg::GiveBack { seg: SEG, page: 0, version: 3 };
        assert_eq!(out, vec![access(0, Access::Invalid), send(1, give_back.clone())]);
        // Node 2 detaches the segment (it holds nothing of it), attaches it
        // again and reads the page: its request goes through the manager,
        // and reaches node 1 before the give-back on the direct stream.
        // Node 1 serves it...
        assert_eq!(n2.release(SEG, &mut Vec::new()), Ok(0));
        n2.forget(SEG);
        n2.attach(SEG, 2);
        assert_eq!(fault(&mut n2, 0, false, 13).1, vec![send(MANAGER, request(0, false, 2))]);
        assert_eq!(at_manager(&mut m, 2, request(0, false, 2)), vec![send(1, fetch(0, 2, false))]);
        let out = at_node(&mut n1, MANAGER, fetch(0, 2, false), 13);
        assert!(matches!(out[..], [Action::SendPage { to: 2, version: 3, .. }]), "{out:?}");
        at_node(&mut n2, 1, data(0, false, vec![], 3), 13);
        assert_eq!(n2.access(SEG, 0), Access::Read);
        // ...and the late give-back refers to the copy before: node 2
        // still holds one, and node 1's next write invalidates it.
        at_node(&mut n1, 2, give_back, 14);
        assert_eq!(n1.copyset(SEG, 0), vec![2]);
        let (present, out) = fault(&mut n1, 0, true, 15);
        assert!(!present);
        assert_eq!(out, vec![send(2, inval(0, 1, 4))]);
    }

    #[test]
    fn a_used_pushed_copy_is_given_back_and_the_next_write_invalidates_nothing() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        write_from_home(&mut m, &mut n1, 1, 0);
        n2.attach(SEG, 2);
        // Node 2 reads versions 1 and 2 of page 0 (asking each time): the
        // page earns pushes.
        let read = |n1: &mut NodeProtocol, n2: &mut NodeProtocol, version: u64, now: u64| {
            assert!(!fault(n2, 0, false, now).0);
            at_node(n1, 2, request(0, false, 2), now);
            at_node(n2, 1, data(0, false, vec![], version), now);
            assert_eq!(n2.access(SEG, 0), Access::Read);
        };
        read(&mut n1, &mut n2, 1, 1);
        assert!(!fault(&mut n1, 0, true, 2).0);
        at_node(&mut n2, 1, inval(0, 1, 2), 3);
        at_node(&mut n1, 2, ack(0, 2), 4);
        read(&mut n1, &mut n2, 2, 5);
        // Version 3 is pushed: node 2 keeps it closed until it is used.
        assert!(!fault(&mut n1, 0, true, 6).0);
        at_node(&mut n2, 1, inval(0, 1, 3), 7);
        at_node(&mut n1, 2, ack(0, 3), 8);
        let (_, out) = fault(&mut n1, 1, true, 9);
        assert!(matches!(out[..], [Action::SendPage { page: 0, to: 2, version: 3, .. }]), "{out:?}");
        assert_eq!(
            at_node(&mut n2, 1, data(0, false, vec![], 3), 10),
            vec![
                Action::Install { seg: SEG, page: 0, payload: Z },
                Action::Watch { seg: SEG, page: 0 },
                access(0, Access::Read)
            ]
        );
        // Not used: write faults give nothing back.
        let mut out = Vec::new();
        n2.tick(Some(SEG), 11, &mut out);
        n2.tick(Some(SEG), 12, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Used, then one write fault later: still in use. The one after:
        // given back.
        n2.touched(SEG, 0);
        n2.tick(Some(SEG), 13, &mut out);
        assert!(out.is_empty(), "{out:?}");
        n2.tick(Some(SEG), 14, &mut out);
        let give_back = CoherenceMsg::GiveBack { seg: SEG, page: 0, version: 3 };
        assert_eq!(out, vec![access(0, Access::Invalid), send(1, give_back.clone())]);
        // The owner then writes without invalidating, and pushes the next
        // version at its next write fault elsewhere.
        assert!(at_node(&mut n1, 2, give_back, 15).is_empty());
        assert!(n1.copyset(SEG, 0).is_empty());
        assert_eq!(fault(&mut n1, 0, true, 16), (true, vec![access(0, Access::Write)]));
        let (_, out) = fault(&mut n1, 1, true, 17);
        assert!(matches!(out[..], [Action::SendPage { page: 0, to: 2, version: 4, .. }]), "{out:?}");
        assert_eq!(n1.copyset(SEG, 0), vec![2]);
        // Given back too soon (read again at the same version): pushes of
        // the page are kept from then on.
        at_node(&mut n2, 1, data(0, false, vec![], 4), 18);
        n2.touched(SEG, 0);
        let mut out = Vec::new();
        n2.tick(Some(SEG), 19, &mut out);
        n2.tick(Some(SEG), 20, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        at_node(&mut n1, 2, CoherenceMsg::GiveBack { seg: SEG, page: 0, version: 4 }, 21);
        read(&mut n1, &mut n2, 4, 22);
        assert!(!fault(&mut n1, 0, true, 23).0);
        at_node(&mut n2, 1, inval(0, 1, 5), 24);
        at_node(&mut n1, 2, ack(0, 5), 25);
        fault(&mut n1, 1, true, 26);
        assert_eq!(
            at_node(&mut n2, 1, data(0, false, vec![], 5), 27),
            vec![Action::Install { seg: SEG, page: 0, payload: Z }, access(0, Access::Read)]
        );
        // A give-back of an older version changes nothing.
        at_node(&mut n1, 2, CoherenceMsg::GiveBack { seg: SEG, page: 0, version: 4 }, 28);
        assert_eq!(n1.copyset(SEG, 0), vec![2]);
    }

    #[test]
    fn a_store_elsewhere_gives_back_at_once_and_useless_watches_stop() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        write_from_home(&mut m, &mut n1, 1, 0);
        n2.attach(SEG, 2);
        let read = |n1: &mut NodeProtocol, n2: &mut NodeProtocol, version: u64, now: u64| {
            assert!(!fault(n2, 0, false, now).0);
            at_node(n1, 2, request(0, false, 2), now);
            at_node(n2, 1, data(0, false, vec![], version), now);
        };
        // A new version written (node 2 invalidated), pushed at the
        // owner's write fault on page 1, and delivered.
        let next = |n1: &mut NodeProtocol, n2: &mut NodeProtocol, v: u64, now: u64| {
            assert!(!fault(n1, 0, true, now).0);
            at_node(n2, 1, inval(0, 1, v), now);
            at_node(n1, 2, ack(0, v), now);
            let (_, out) = fault(n1, 1, true, now);
            assert!(matches!(out[..], [Action::SendPage { page: 0, to: 2, .. }]), "{out:?}");
            at_node(n2, 1, data(0, false, vec![], v), now)
        };
        read(&mut n1, &mut n2, 1, 1);
        assert!(!fault(&mut n1, 0, true, 2).0);
        at_node(&mut n2, 1, inval(0, 1, 2), 2);
        at_node(&mut n1, 2, ack(0, 2), 2);
        read(&mut n1, &mut n2, 2, 3);
        let out = next(&mut n1, &mut n2, 3, 4);
        assert!(out.contains(&Action::Watch { seg: SEG, page: 0 }), "{out:?}");
        // Touched in this epoch, then a store in another segment (a
        // progress flag): given back at once.
        n2.touched(SEG, 0);
        let mut out = Vec::new();
        n2.tick(Some(SEG + 1), 5, &mut out);
        let give_back = CoherenceMsg::GiveBack { seg: SEG, page: 0, version: 3 };
        assert_eq!(out, vec![access(0, Access::Invalid), send(1, give_back.clone())]);
        at_node(&mut n1, 2, give_back, 6);
        // Pushed copies invalidated before they were given back (versions
        // 4, 5, 6), three in a row: the next is no longer watched.
        assert_eq!(fault(&mut n1, 0, true, 7), (true, vec![access(0, Access::Write)]));
        let (_, out) = fault(&mut n1, 1, true, 7);
        assert!(matches!(out[..], [Action::SendPage { page: 0, to: 2, version: 4, .. }]), "{out:?}");
        at_node(&mut n2, 1, data(0, false, vec![], 4), 7);
        for v in 5..7 {
            let out = next(&mut n1, &mut n2, v, v + 3);
            assert!(out.contains(&Action::Watch { seg: SEG, page: 0 }), "{v} {out:?}");
        }
        let out = next(&mut n1, &mut n2, 7, 10);
        assert!(!out.contains(&Action::Watch { seg: SEG, page: 0 }), "{out:?}");
        assert_eq!(n2.access(SEG, 0), Access::Read);
    }

    #[test]
    fn the_owner_serves_reads_directly_and_upgrades_alone() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        // Node 2 learns the owner from an invalidation, then asks it directly.
        n2.attach(SEG, 2);
        at_node(&mut n2, MANAGER, inval(0, 1, 1), 0);
        assert_eq!(fault(&mut n2, 0, false, 1), (false, vec![send(1, request(0, false, 2))]));
        assert_eq!(
            at_node(&mut n1, 2, request(0, false, 2), 2),
            vec![Action::SendPage { seg: SEG, page: 0, to: 2, acks: vec![], version: 1, keep: Access::Read }]
        );
        assert_eq!(n1.copyset(SEG, 0), vec![2]);
        at_node(&mut n2, 1, data(0, false, vec![], 1), 3);
        assert_eq!(n2.access(SEG, 0), Access::Read);
        // The owner writes again: it invalidates node 2 itself, no manager.
        assert_eq!(fault(&mut n1, 0, true, 4), (false, vec![send(2, inval(0, 1, 2))]));
        assert_eq!(
            at_node(&mut n2, 1, inval(0, 1, 2), 5),
            vec![access(0, Access::Invalid), send(1, ack(0, 2))]
        );
        assert_eq!(at_node(&mut n1, 2, ack(0, 2), 6), vec![access(0, Access::Write)]);
        // With no copy out, an upgrade costs no message at all.
        let mut m2 = manager();
        let mut n3 = node(3, 0);
        write_from_home(&mut m2, &mut n3, 1, 0);
        at_node(&mut n3, MANAGER, fetch(1, 4, false), 1);
        at_node(&mut n3, MANAGER, CoherenceMsg::DropReader { seg: SEG, page: 1, node: 4 }, 2);
        assert_eq!(fault(&mut n3, 1, true, 3), (true, vec![access(1, Access::Write)]));
    }

    #[test]
    fn a_designated_owner_queues_requests_until_it_is_settled() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 0), node(2, 0));
        write_from_home(&mut m, &mut n1, 0, 0);
        // Node 2 asks to write: the manager designates it and fetches from 1.
        fault(&mut n2, 0, true, 1);
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(1, fetch(0, 2, true))]);
        // Node 3 asks to read before node 2 has the page: queued at node 2.
        assert_eq!(at_manager(&mut m, 3, request(0, false, 3)), vec![send(2, fetch(0, 3, false))]);
        assert!(at_node(&mut n2, MANAGER, fetch(0, 3, false), 2).is_empty());
        // Node 1 hands the page over; node 2 opens it, then serves node 3.
        assert_eq!(
            at_node(&mut n1, MANAGER, fetch(0, 2, true), 3),
            vec![Action::SendPage {
                seg: SEG,
                page: 0,
                to: 2,
                acks: vec![],
                version: 2,
                keep: Access::Invalid
            }]
        );
        assert!(!n1.is_owner(SEG, 0));
        assert_eq!(
            at_node(&mut n2, 1, data(0, true, vec![], 2), 4),
            vec![
                Action::Install { seg: SEG, page: 0, payload: Z },
                access(0, Access::Write),
                Action::SendPage { seg: SEG, page: 0, to: 3, acks: vec![], version: 2, keep: Access::Read },
            ]
        );
    }

    #[test]
    fn stale_read_copy_is_discarded_and_asked_again() {
        let mut n3 = node(3, 0);
        fault(&mut n3, 0, false, 0);
        // The write at version 2 invalidates node 3 before the copy of
        // version 1 that node 1 served arrives.
        at_node(&mut n3, 2, inval(0, 2, 2), 1);
        assert_eq!(at_node(&mut n3, 1, data(0, false, vec![], 1), 2), vec![send(2, request(0, false, 3))]);
        assert!(n3.is_pending(SEG, 0));
        assert_eq!(n3.access(SEG, 0), Access::Invalid);
        let out = at_node(&mut n3, 2, data(0, false, vec![], 2), 3);
        assert!(out.contains(&access(0, Access::Read)));
    }

    #[test]
    fn a_releasing_owner_bounces_requests_to_the_manager() {
        let mut m = manager();
        let mut n1 = node(1, 0);
        write_from_home(&mut m, &mut n1, 0, 0);
        let mut out = Vec::new();
        assert_eq!(n1.release(SEG, &mut out), Ok(1));
        assert!(out.contains(&Action::ReleasePage { seg: SEG, page: 0, copyset: vec![], version: 1 }));
        // The manager designated node 2 before the release arrived.
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(1, fetch(0, 2, true))]);
        let release = CoherenceMsg::Release {
            seg: SEG,
            page: 0,
            owned: Some((Payload::Bytes(vec![9; PAGE_SIZE]), vec![], 1)),
        };
        assert_eq!(
            at_manager(&mut m, 1, release),
            vec![send(1, CoherenceMsg::Released { seg: SEG, page: 0 })]
        );
        let bounce = CoherenceMsg::Bounce { seg: SEG, page: 0, inner: Box::new(fetch(0, 2, true)) };
        assert_eq!(at_node(&mut n1, MANAGER, fetch(0, 2, true), 1), vec![send(MANAGER, bounce.clone())]);
        // Node 2 gets the released bytes, at the next version.
        assert_eq!(
            at_manager(&mut m, 1, bounce),
            vec![send(
                2,
                CoherenceMsg::Data {
                    seg: SEG,
                    page: 0,
                    write: true,
                    acks: vec![],
                    version: 2,
                    payload: Payload::Bytes(vec![9; PAGE_SIZE])
                }
            )]
        );
        at_node(&mut n1, MANAGER, CoherenceMsg::Released { seg: SEG, page: 0 }, 2);
        assert!(!n1.is_owner(SEG, 0));
    }

    #[test]
    fn fetch_during_hold_waits_for_the_hold() {
        let mut m = manager();
        let mut n1 = node(1, 100);
        write_from_home(&mut m, &mut n1, 0, 10);
        // Granted at 10: kept until 110.
        assert_eq!(at_node(&mut n1, MANAGER, fetch(0, 2, true), 50), vec![Action::WakeAt(110)]);
        assert_eq!(n1.access(SEG, 0), Access::Write);
        let mut out = Vec::new();
        n1.handle_timeout(60, &mut out).unwrap();
        assert_eq!(out, vec![Action::WakeAt(110)]);
        let mut out = Vec::new();
        n1.handle_timeout(110, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::SendPage {
                seg: SEG,
                page: 0,
                to: 2,
                acks: vec![],
                version: 2,
                keep: Access::Invalid
            }]
        );
        assert_eq!(n1.access(SEG, 0), Access::Invalid);
        let mut out = Vec::new();
        n1.handle_timeout(200, &mut out).unwrap();
        assert!(out.is_empty());
    }

    /// A process exit serves what waits in a hold before it releases
    /// anything: the peer waiting for the page written last (a barrier)
    /// gets it without waiting for the release of every other page.
    #[test]
    fn serve_held_serves_a_held_read_before_the_release() {
        let mut m = manager();
        let mut n1 = node(1, 100);
        write_from_home(&mut m, &mut n1, 0, 10);
        write_from_home(&mut m, &mut n1, 1, 10);
        // Node 2 asks for page 0 during its hold: it waits.
        assert_eq!(at_node(&mut n1, 2, request(0, false, 2), 20), vec![Action::WakeAt(110)]);
        let mut out = Vec::new();
        n1.serve_held(SEG, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::SendPage { seg: SEG, page: 0, to: 2, acks: vec![], version: 1, keep: Access::Read }]
        );
        assert_eq!(n1.access(SEG, 0), Access::Read);
        assert_eq!(n1.access(SEG, 1), Access::Write, "nothing is released yet");
        // A read of a page it does not own goes back to the requester.
        let bounce = CoherenceMsg::Bounce { seg: SEG, page: 0, inner: Box::new(request(0, false, 3)) };
        let mut n2 = node(2, 100);
        at_node(&mut n2, 1, data(0, false, vec![], 1), 30);
        assert_eq!(n2.serve_held(SEG, &mut Vec::new()), Ok(()));
        assert_eq!(at_node(&mut n2, 3, request(0, false, 3), 40), vec![send(3, bounce)]);
        // Then the release gives both pages back.
        let mut out = Vec::new();
        assert_eq!(n1.release(SEG, &mut out), Ok(2));
        assert!(out.contains(&Action::ReleasePage { seg: SEG, page: 0, copyset: vec![2], version: 1 }));
        assert!(out.contains(&Action::ReleasePage { seg: SEG, page: 1, copyset: vec![], version: 1 }));
    }

    #[test]
    fn end_hold_serves_what_waited_for_the_hold() {
        let mut m = manager();
        let mut n1 = node(1, 100);
        write_from_home(&mut m, &mut n1, 0, 10);
        // A read during the hold waits for it...
        assert_eq!(at_node(&mut n1, 2, request(0, false, 2), 20), vec![Action::WakeAt(110)]);
        // ...until the writing thread has moved on (the driver saw it fault
        // at another instruction): served then, not at 110.
        let mut out = Vec::new();
        n1.end_hold(SEG, 0, 30, &mut out).unwrap();
        assert_eq!(
            out,
            vec![Action::SendPage { seg: SEG, page: 0, to: 2, acks: vec![], version: 1, keep: Access::Read }]
        );
        // An invalidation of a read copy in its hold, likewise.
        let mut n2 = node(2, 100);
        read_from_home(&mut manager(), &mut n2, 40);
        assert_eq!(at_node(&mut n2, MANAGER, inval(0, 3, 1), 50), vec![Action::WakeAt(140)]);
        let mut out = Vec::new();
        n2.end_hold(SEG, 0, 60, &mut out).unwrap();
        assert_eq!(out, vec![access(0, Access::Invalid), send(3, ack(0, 1))]);
        // Past its hold, or for a page it does not track, nothing happens.
        let mut out = Vec::new();
        n2.end_hold(SEG, 0, 70, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(n2.end_hold(SEG + 1, 0, 70, &mut out).is_err());
    }

    #[test]
    fn invalidate_during_hold_waits_for_the_hold() {
        let mut m = manager();
        let mut n1 = node(1, 100);
        read_from_home(&mut m, &mut n1, 10);
        assert_eq!(at_node(&mut n1, MANAGER, inval(0, 2, 1), 20), vec![Action::WakeAt(110)]);
        assert_eq!(n1.access(SEG, 0), Access::Read);
        let mut out = Vec::new();
        n1.handle_timeout(110, &mut out).unwrap();
        assert_eq!(out, vec![access(0, Access::Invalid), send(2, ack(0, 1))]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut m = manager();
        let mut n1 = node(1, 10);
        let mut out = Vec::new();

        // Node side.
        assert_eq!(
            n1.fault(SEG, 2, false, 0, &mut out),
            Err(ProtocolError::PageOutOfRange { seg: SEG, page: 2 })
        );
        assert_eq!(n1.fault(99, 0, true, 0, &mut out), Err(ProtocolError::UnknownSegment(99)));
        let grant = CoherenceMsg::Grant { seg: SEG, page: 0, acks: vec![], version: 1 };
        assert!(n1.handle(MANAGER, grant, 0, &mut out).is_err(), "Grant with nothing pending");
        assert!(n1.handle(MANAGER, inval(1000, 2, 1), 0, &mut out).is_err());
        assert_eq!(n1.handle(MANAGER, fetch(0, 2, false), 0, &mut out).map_err(|_| ()), Err(()));
        let stranger = CoherenceMsg::Fetch { seg: 99, page: 0, to: 2, write: false };
        assert_eq!(n1.handle(MANAGER, stranger, 0, &mut out), Err(ProtocolError::UnknownSegment(99)));
        // A late or second acknowledgement (after a restart of the
        // manager) is ignored.
        assert!(n1.handle(MANAGER, ack(0, 1), 0, &mut out).is_ok());
        // A `Released` with no release outstanding is a second answer after
        // a death (the manager answers for a dead owner): ignored.
        assert!(n1.handle(MANAGER, CoherenceMsg::Released { seg: SEG, page: 0 }, 0, &mut out).is_ok());
        assert!(
            n1.handle(2, CoherenceMsg::Lost { seg: SEG, page: 0 }, 0, &mut out).is_err(),
            "Lost not from the manager"
        );
        assert!(n1.handle(2, request(0, true, 2), 0, &mut out).is_err(), "a write request at a node");
        assert!(n1.handle(3, fetch(0, 2, false), 0, &mut out).is_err(), "Fetch not from the manager");
        assert!(n1.handle(MANAGER, fetch(0, 1, false), 0, &mut out).is_err(), "Fetch for itself");
        // A Data with a wrong-length payload (none, or more than a page),
        // even for a pending request.
        fault(&mut n1, 0, false, 0);
        let mut out = Vec::new();
        for len in [0, PAGE_SIZE + 1, 2 * PAGE_SIZE] {
            let bad = CoherenceMsg::Data {
                seg: SEG,
                page: 0,
                write: false,
                acks: vec![],
                version: 0,
                payload: Payload::Bytes(vec![1; len]),
            };
            assert_eq!(n1.handle(MANAGER, bad, 0, &mut out), Err(ProtocolError::BadPayload(len)));
        }
        assert!(n1.is_pending(SEG, 0));
        // A read copy not asked for now (a second answer, after a restart
        // of the manager) older than an invalidation changes nothing; a
        // current one is kept (its sender counts this node a reader).
        // Not for a page never asked for since the segment was attached:
        // a push from before a detach and attach again.
        out.clear();
        assert_eq!(n1.handle(2, data(1, false, vec![], 1), 0, &mut out), Ok(()));
        assert!(out.is_empty() && n1.access(SEG, 1) == Access::Invalid);
        fault(&mut n1, 1, false, 0);
        n1.handle(2, data(1, false, vec![], 1), 0, &mut out).unwrap();
        n1.handle(2, inval(1, 2, 3), 20, &mut out).unwrap();
        out.clear();
        assert_eq!(n1.handle(MANAGER, data(1, false, vec![], 2), 0, &mut out), Ok(()));
        assert!(out.is_empty() && n1.access(SEG, 1) == Access::Invalid);
        assert_eq!(n1.handle(MANAGER, data(1, false, vec![], 3), 0, &mut out), Ok(()));
        assert_eq!(n1.access(SEG, 1), Access::Read);

        // Manager side.
        let mut out = Vec::new();
        let far = CoherenceMsg::Request { seg: 99, page: 0, write: false, requester: 1, ahead: false };
        assert_eq!(m.handle(1, far, &mut out), Err(ProtocolError::UnknownSegment(99)));
        assert_eq!(
            m.handle(1, request(2, true, 1), &mut out),
            Err(ProtocolError::PageOutOfRange { seg: SEG, page: 2 })
        );
        let bad = CoherenceMsg::Release {
            seg: SEG,
            page: 0,
            owned: Some((Payload::Bytes(vec![0; PAGE_SIZE + 17]), vec![], 0)),
        };
        assert_eq!(m.handle(1, bad, &mut out), Err(ProtocolError::BadPayload(PAGE_SIZE + 17)));
        assert!(
            m.handle(MANAGER, request(0, false, 1), &mut out).is_err(),
            "a message from the manager itself"
        );
        assert!(m.handle(1, request(0, false, MANAGER), &mut out).is_err(), "a request for the manager");
        assert!(m.handle(1, data(0, false, vec![], 0), &mut out).is_err(), "a node message at the manager");
        let bounce = CoherenceMsg::Bounce { seg: SEG, page: 0, inner: Box::new(fetch(0, 2, true)) };
        assert!(m.handle(1, bounce, &mut out).is_err(), "a bounce without a release");
        assert!(out.is_empty(), "a rejected message had effects: {out:?}");

        // Both still work.
        read_from_home(&mut m, &mut node(2, 10), 0);
    }

    #[test]
    fn release_with_a_request_outstanding_changes_nothing() {
        let mut m = manager();
        let mut n1 = node(1, 10);
        read_from_home(&mut m, &mut n1, 0);
        fault(&mut n1, 1, true, 0);
        let mut out = Vec::new();
        assert!(n1.release(SEG, &mut out).is_err());
        assert!(out.is_empty(), "a refused release had effects: {out:?}");
        assert_eq!(n1.access(SEG, 0), Access::Read);
        // Once the request completes, the release goes through.
        at_node(&mut n1, MANAGER, data(1, true, vec![], 1), 1);
        assert_eq!(n1.release(SEG, &mut out), Ok(2));
        assert!(out.contains(&send(MANAGER, CoherenceMsg::Release { seg: SEG, page: 0, owned: None })));
        assert!(out.contains(&Action::ReleasePage { seg: SEG, page: 1, copyset: vec![], version: 1 }));
    }

    /// A read request reaching a node that is giving the segment up goes
    /// back to its requester, which asks the manager (not passed on
    /// behind the node's releases); a second answer is ignored.
    #[test]
    fn a_detaching_node_sends_a_read_request_back_to_its_requester() {
        let mut m = manager();
        let mut n1 = node(1, 10);
        let mut n2 = node(2, 10);
        write_from_home(&mut m, &mut n1, 0, 0);
        // n2 learnt n1 as the probable owner (an earlier copy from it).
        assert_eq!(fault(&mut n2, 0, false, 1).1, vec![send(MANAGER, request(0, false, 2))]);
        assert_eq!(at_manager(&mut m, 2, request(0, false, 2)), vec![send(1, fetch(0, 2, false))]);
        at_node(&mut n1, MANAGER, fetch(0, 2, false), 100);
        at_node(&mut n2, 1, data(0, false, vec![], 1), 100);
        at_node(&mut n2, 1, inval(0, 1, 2), 200);
        // Invalidated by n1 (as by a write there), n2 asks n1 again; n1
        // detaches before the request reaches it.
        assert_eq!(fault(&mut n2, 0, false, 300).1, vec![send(1, request(0, false, 2))]);
        let mut out = Vec::new();
        assert_eq!(n1.release(SEG, &mut out), Ok(1));
        let bounce = CoherenceMsg::Bounce { seg: SEG, page: 0, inner: Box::new(request(0, false, 2)) };
        assert_eq!(at_node(&mut n1, 2, request(0, false, 2), 300), vec![send(2, bounce.clone())]);
        assert_eq!(at_node(&mut n2, 1, bounce.clone(), 300), vec![send(MANAGER, request(0, false, 2))]);
        // Asked again already: a late second bounce changes nothing.
        assert_eq!(at_node(&mut n2, 1, bounce.clone(), 300), vec![]);
        assert!(n2.is_pending(SEG, 0));
        // Nor once n2 has detached the segment (it was answered, then
        // released everything): it is late, not malformed.
        n2.forget(SEG);
        assert_eq!(n2.handle(1, bounce, 400, &mut Vec::new()), Ok(()));
    }

    // ---- deaths ---------------------------------------------------------

    /// `n1` owns page 0 at version 1 (it wrote it) and gave `n2` a read
    /// copy.
    fn owner_and_reader(m: &mut Manager, n1: &mut NodeProtocol, n2: &mut NodeProtocol) {
        write_from_home(m, n1, 0, 0);
        assert_eq!(fault(n2, 0, false, 1).1, vec![send(MANAGER, request(0, false, 2))]);
        assert_eq!(at_manager(m, 2, request(0, false, 2)), vec![send(1, fetch(0, 2, false))]);
        let out = at_node(n1, MANAGER, fetch(0, 2, false), 100);
        assert!(
            matches!(out[..], [Action::SendPage { to: 2, version: 1, keep: Access::Read, .. }]),
            "{out:?}"
        );
        at_node(n2, 1, data(0, false, vec![], 1), 100);
        assert_eq!(n2.access(SEG, 0), Access::Read);
    }

    /// The node learns of the death from the nameserver and reports.
    fn gone(n: &mut NodeProtocol, dead: NodeId) -> (Vec<Action>, Report) {
        let mut out = Vec::new();
        n.peer_gone(dead, false, 1000, &mut out).unwrap();
        (out, n.report(dead))
    }

    fn report(m: &mut Manager, from: NodeId, dead: NodeId, r: Report) -> Vec<Action> {
        let mut out = Vec::new();
        m.report(from, dead, r, &mut out).unwrap();
        out
    }

    #[test]
    fn a_read_copy_of_a_dead_owner_is_recovered_and_requests_wait_for_it() {
        let mut m = manager();
        let (mut n1, mut n2, mut n3) = (node(1, 10), node(2, 10), node(3, 10));
        owner_and_reader(&mut m, &mut n1, &mut n2);
        let mut out = Vec::new();
        m.node_gone(1, &[2, 3], &mut out);
        assert!(out.is_empty());
        // A request meanwhile waits for the reports.
        assert!(at_manager(&mut m, 3, request(0, true, 3)).is_empty());
        let (_, r2) = gone(&mut n2, 1);
        assert_eq!(r2.copies, vec![(SEG, 0, 1, Z)]);
        assert!(report(&mut m, 2, 1, r2).is_empty());
        let (_, r3) = gone(&mut n3, 1);
        assert_eq!(r3, Report::default());
        // The copy is the home's now (version 1), and the parked write is
        // served from it: n2's copy is invalidated for version 2.
        let out = report(&mut m, 3, 1, r3);
        assert_eq!(out, vec![send(2, inval(0, 3, 2)), send(3, data(0, true, vec![2], 2))]);
        assert_eq!(m.holders(SEG, 0).unwrap().owner, Some(3));
    }

    #[test]
    fn a_writer_whose_bytes_were_to_come_from_a_dead_owner_gets_a_current_copy() {
        let mut m = manager();
        let (mut n1, mut n2, mut n3) = (node(1, 10), node(2, 10), node(3, 10));
        owner_and_reader(&mut m, &mut n1, &mut n2);
        // n3 is designated; the Fetch reaches n1, which dies before serving.
        assert_eq!(fault(&mut n3, 0, true, 200).1, vec![send(MANAGER, request(0, true, 3))]);
        assert_eq!(at_manager(&mut m, 3, request(0, true, 3)), vec![send(1, fetch(0, 3, true))]);
        let mut out = Vec::new();
        m.node_gone(1, &[2, 3], &mut out);
        let (_, r2) = gone(&mut n2, 1);
        let (_, r3) = gone(&mut n3, 1);
        assert_eq!(r3.waiting, vec![(SEG, 0)]);
        report(&mut m, 2, 1, r2);
        let out = report(&mut m, 3, 1, r3);
        assert_eq!(out, vec![send(2, inval(0, 3, 2)), send(3, data(0, true, vec![2], 2))]);
        at_node(&mut n2, MANAGER, inval(0, 3, 2), 300);
        let out = at_node(&mut n3, MANAGER, data(0, true, vec![2], 2), 300);
        assert!(!out.contains(&access(0, Access::Write)), "waits for n2's acknowledgement");
        let out = at_node(&mut n3, 2, ack(0, 2), 300);
        assert!(out.contains(&access(0, Access::Write)));
    }

    #[test]
    fn a_hand_over_to_a_dead_designated_owner_stays_with_the_owner() {
        let mut m = manager();
        let (mut n1, mut n3) = (node(1, 10), node(3, 10));
        write_from_home(&mut m, &mut n1, 0, 0);
        // n2 is designated, then n3 behind it; n2 dies; n1 hears of it
        // before the Fetch for n2 arrives.
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(1, fetch(0, 2, true))]);
        assert_eq!(fault(&mut n3, 0, true, 0).1, vec![send(MANAGER, request(0, true, 3))]);
        assert_eq!(at_manager(&mut m, 3, request(0, true, 3)), vec![send(2, fetch(0, 3, true))]);
        let mut out = Vec::new();
        m.node_gone(2, &[1, 3], &mut out);
        n1.peer_gone(2, false, 100, &mut out).unwrap();
        assert!(at_node(&mut n1, MANAGER, fetch(0, 2, true), 100).is_empty(), "kept");
        assert!(n1.is_owner(SEG, 0));
        let r1 = n1.report(2);
        assert_eq!(r1.kept, vec![(SEG, 0)]);
        let (_, r3) = gone(&mut n3, 2);
        report(&mut m, 1, 2, r1);
        // n1 hands the page to n3 instead.
        assert_eq!(report(&mut m, 3, 2, r3), vec![send(1, fetch(0, 3, true))]);
        let out = at_node(&mut n1, MANAGER, fetch(0, 3, true), 100);
        assert!(matches!(out[..], [Action::SendPage { to: 3, version: 2, .. }]), "{out:?}");
    }

    #[test]
    fn writers_behind_a_dead_designated_owner_that_had_the_bytes_get_lost() {
        let mut m = manager();
        let (mut n1, mut n3) = (node(1, 10), node(3, 10));
        write_from_home(&mut m, &mut n1, 0, 0);
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(1, fetch(0, 2, true))]);
        // n1 served n2 (the bytes went to n2), then n2 died.
        let out = at_node(&mut n1, MANAGER, fetch(0, 2, true), 100);
        assert!(matches!(out[..], [Action::SendPage { to: 2, .. }]), "{out:?}");
        assert_eq!(fault(&mut n3, 0, true, 0).1, vec![send(MANAGER, request(0, true, 3))]);
        assert_eq!(at_manager(&mut m, 3, request(0, true, 3)), vec![send(2, fetch(0, 3, true))]);
        let mut out = Vec::new();
        m.node_gone(2, &[1, 3], &mut out);
        let (_, r1) = gone(&mut n1, 2);
        let (_, r3) = gone(&mut n3, 2);
        report(&mut m, 1, 2, r1);
        let lost = CoherenceMsg::Lost { seg: SEG, page: 0 };
        assert_eq!(report(&mut m, 3, 2, r3), vec![send(3, lost.clone())]);
        assert_eq!(at_node(&mut n3, MANAGER, lost, 200), vec![Action::Lost { seg: SEG, page: 0 }]);
        // Later requests are answered Lost too.
        let lost = CoherenceMsg::Lost { seg: SEG, page: 0 };
        assert_eq!(at_manager(&mut m, 1, request(0, false, 1)), vec![send(1, lost)]);
    }

    #[test]
    fn a_release_passed_to_an_owner_that_died_is_answered_by_the_manager() {
        let mut m = manager();
        let (mut n1, mut n2) = (node(1, 10), node(2, 10));
        owner_and_reader(&mut m, &mut n1, &mut n2);
        let mut out = Vec::new();
        assert_eq!(n2.release(SEG, &mut out).unwrap(), 1);
        let release = CoherenceMsg::Release { seg: SEG, page: 0, owned: None };
        assert!(out.contains(&send(MANAGER, release.clone())));
        let drop = CoherenceMsg::DropReader { seg: SEG, page: 0, node: 2 };
        assert_eq!(at_manager(&mut m, 2, release), vec![send(1, drop)]);
        let mut out = Vec::new();
        m.node_gone(1, &[2], &mut out);
        let released = CoherenceMsg::Released { seg: SEG, page: 0 };
        assert_eq!(out, vec![send(2, released.clone())]);
        assert_eq!(at_node(&mut n2, MANAGER, released, 200), vec![Action::Released { seg: SEG, page: 0 }]);
        // n2 released its copy: its report names none, the page is lost.
        let (_, r2) = gone(&mut n2, 1);
        assert!(r2.copies.is_empty());
        report(&mut m, 2, 1, r2);
        assert_eq!(m.home_copy(SEG, 0), None);
    }

    #[test]
    fn messages_from_a_dead_node_are_ignored() {
        let mut n2 = node(2, 10);
        let mut out = Vec::new();
        n2.peer_gone(1, false, 0, &mut out).unwrap();
        assert_eq!(fault(&mut n2, 0, false, 0).1, vec![send(MANAGER, request(0, false, 2))]);
        // A late answer from the dead node does not complete the read.
        assert!(at_node(&mut n2, 1, data(0, false, vec![], 1), 10).is_empty());
        assert!(n2.is_pending(SEG, 0));
    }

    #[test]
    fn the_death_of_an_earlier_writer_leaves_a_later_hand_over_alone() {
        let mut m = manager();
        let (mut n1, mut n2, mut n3) = (node(1, 10), node(2, 10), node(3, 10));
        // n1 writes, hands to n2, n2 to n3, and n2 asks again: chain 1, 2,
        // 3, 2 with n2 waiting for n3's bytes (n3 alive).
        write_from_home(&mut m, &mut n1, 0, 0);
        assert_eq!(fault(&mut n2, 0, true, 0).1, vec![send(MANAGER, request(0, true, 2))]);
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(1, fetch(0, 2, true))]);
        let out = at_node(&mut n1, MANAGER, fetch(0, 2, true), 100);
        assert!(matches!(out[..], [Action::SendPage { to: 2, version: 2, .. }]), "{out:?}");
        at_node(&mut n2, 1, data(0, true, vec![], 2), 100);
        assert_eq!(at_manager(&mut m, 3, request(0, true, 3)), vec![send(2, fetch(0, 3, true))]);
        assert_eq!(fault(&mut n3, 0, true, 100).1, vec![send(MANAGER, request(0, true, 3))]);
        let out = at_node(&mut n2, MANAGER, fetch(0, 3, true), 1000);
        assert!(matches!(out[..], [Action::SendPage { to: 3, version: 3, .. }]), "{out:?}");
        assert_eq!(fault(&mut n2, 0, true, 1000).1, vec![send(MANAGER, request(0, true, 2))]);
        assert_eq!(at_manager(&mut m, 2, request(0, true, 2)), vec![send(3, fetch(0, 2, true))]);
        // n1 dies: n2 waits, but for n3; nothing is lost or resent.
        let mut out = Vec::new();
        m.node_gone(1, &[2, 3], &mut out);
        let (_, r2) = gone(&mut n2, 1);
        assert_eq!(r2.waiting, vec![(SEG, 0)]);
        let (_, r3) = gone(&mut n3, 1);
        assert!(report(&mut m, 2, 1, r2).is_empty());
        assert!(report(&mut m, 3, 1, r3).is_empty());
        assert_eq!(m.holders(SEG, 0).unwrap().owner, Some(2));
        at_node(&mut n3, 2, data(0, true, vec![], 3), 1000);
        let out = at_node(&mut n3, MANAGER, fetch(0, 2, true), 2000);
        assert!(matches!(out[..], [Action::SendPage { to: 2, version: 4, .. }]), "{out:?}");
    }

    /// A read of a page a node never had goes to the node that last sent
    /// it a page of the segment, which serves it if it owns it; a wrong
    /// guess is passed on to the manager.
    #[test]
    fn a_read_with_no_hint_goes_to_the_last_sender_and_a_wrong_guess_to_the_manager() {
        let mut m = Manager::new();
        m.create(SEG, 3);
        let mk = |id| {
            let mut n = NodeProtocol::new(id, 10);
            n.attach(SEG, 3);
            n
        };
        let (mut n1, mut n2, mut n3) = (mk(1), mk(2), mk(3));
        write_from_home(&mut m, &mut n1, 0, 0);
        write_from_home(&mut m, &mut n1, 1, 0);
        write_from_home(&mut m, &mut n3, 2, 0);
        // Page 0: no hint, no guess yet: the manager, which has node 1
        // serve it.
        assert_eq!(fault(&mut n2, 0, false, 100), (false, vec![send(MANAGER, request(0, false, 2))]));
        let out = at_manager(&mut m, 2, request(0, false, 2));
        let [Action::Send { to: 1, msg }] = &out[..] else { panic!("manager: {out:?}") };
        let out = at_node(&mut n1, MANAGER, msg.clone(), 100);
        let [Action::SendPage { to: 2, version, .. }] = out[..] else { panic!("node 1: {out:?}") };
        let out = at_node(&mut n2, 1, data(0, false, vec![], version), 100);
        assert!(out.contains(&access(0, Access::Read)), "{out:?}");
        // Page 1: straight to node 1, which serves it.
        assert_eq!(fault(&mut n2, 1, false, 100), (false, vec![send(1, request(1, false, 2))]));
        let out = at_node(&mut n1, 2, request(1, false, 2), 100);
        assert!(matches!(out[..], [Action::SendPage { to: 2, .. }]), "{out:?}");
        // Page 2 (node 3's): to node 1 too, which passes it to the manager.
        assert_eq!(fault(&mut n2, 2, false, 100), (false, vec![send(1, request(2, false, 2))]));
        assert_eq!(at_node(&mut n1, 2, request(2, false, 2), 100), vec![send(MANAGER, request(2, false, 2))]);
        // Writes still go to the manager.
        assert_eq!(fault(&mut n1, 2, true, 100).1, vec![send(MANAGER, request(2, true, 1))]);
    }
}
