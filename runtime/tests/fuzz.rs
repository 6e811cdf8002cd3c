//! Property fuzzing of everything a peer's bytes reach: the frame decoder
//! (every message type), the coherence state machines of the manager and
//! of a node, and the registries of segments and semaphore sets. Random and
//! mutated-valid bytes, and well-formed but impossible messages (pages
//! outside the segment, `sem_num` ≥ `nsems`, unknown versions, huge
//! lengths and counts) must give an error, never a panic, and must never
//! make a state machine act on something that does not exist.
//!
//! Bounded: `KDIPC_FUZZ_CASES` cases per property (default 1000: about a
//! second in all); raise it for a longer run (20 000: about 15 s).

use std::net::SocketAddr;

use kdipc_runtime::protocol::{
    Action, CoherenceMsg, Manager, NodeProtocol, PageIdx, Payload, ProtocolError, Report, SegId, MANAGER,
    PAGE_SIZE,
};
use kdipc_runtime::registry::{Call, Cred, Errno, Registry, Reply, ShmStat};
use kdipc_runtime::semaphores::{
    SemCall, SemInfo, SemOp, SemRegistry, SemStat, SemctlArg, SemctlReply, SemopOutcome, Waiter,
};
use kdipc_runtime::stats::{ObjKind, ObjReport, ObjStats, Stats};
use kdipc_runtime::wire::{self, Frame, Msg, WireError, MAX_FRAME, PROTOCOL_VERSION};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    let cases = std::env::var("KDIPC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Field values a test case draws; the samples below build one message of
/// every type from them.
#[derive(Clone, Debug)]
struct Fields {
    n: u32,
    x: u64,
    i: i32,
    flag: bool,
    bytes: Vec<u8>,
    nodes: Vec<u32>,
}

fn fields() -> impl Strategy<Value = Fields> {
    // Edge values too: uniform draws would almost never give them.
    (
        prop_oneof![any::<u32>(), Just(0), Just(u32::MAX)],
        prop_oneof![any::<u64>(), Just(0), Just(u64::MAX)],
        prop_oneof![any::<i32>(), Just(-1), Just(i32::MIN), Just(i32::MAX)],
        any::<bool>(),
        prop_oneof![Just(PAGE_SIZE), 0..PAGE_SIZE * 2],
        prop::collection::vec(any::<u32>(), 0..6),
    )
        .prop_map(|(n, x, i, flag, len, nodes)| Fields {
            n,
            x,
            i,
            flag,
            bytes: (0..len).map(|k| (k as u32 ^ n) as u8).collect(),
            nodes,
        })
}

fn obj_stats(f: &Fields) -> ObjStats {
    ObjStats {
        kind: if f.flag { ObjKind::Shm } else { ObjKind::Sem },
        id: f.i,
        write_faults: f.x,
        latency: f.nodes.iter().map(|&n| n as u64).collect(),
        ..Default::default()
    }
}

fn cred(f: &Fields) -> Cred {
    Cred { uid: f.n, gid: f.n >> 1, groups: f.nodes.clone(), pid: f.i, caps: f.x }
}

fn payload(f: &Fields) -> Payload {
    if f.flag {
        Payload::Bytes(f.bytes.clone())
    } else {
        Payload::Zero
    }
}

/// A survivor's report after a death, about page `f.n` of segment `f.i`.
fn report(f: &Fields) -> Report {
    let at = (f.i, f.n);
    Report {
        copies: vec![(f.i, f.n, f.x, payload(f))],
        waiting: if f.flag { vec![at] } else { vec![] },
        kept: f.nodes.iter().map(|_| at).collect(),
        reading: vec![at],
    }
}

fn coherence(f: &Fields) -> Vec<CoherenceMsg> {
    let (seg, page) = (f.i, f.n);
    vec![
        CoherenceMsg::Request { seg, page, write: f.flag, requester: f.n, ahead: f.n & 1 == 0 },
        CoherenceMsg::Declined { seg, page },
        CoherenceMsg::GiveBack { seg, page, version: f.x },
        CoherenceMsg::Fetch { seg, page, to: f.n, write: f.flag },
        CoherenceMsg::Grant { seg, page, acks: vec![f.n], version: f.x },
        CoherenceMsg::Data {
            seg,
            page,
            write: f.n.is_multiple_of(2),
            acks: vec![f.n],
            version: f.x,
            payload: payload(f),
        },
        CoherenceMsg::Invalidate { seg, page, ack_to: f.n, version: f.x },
        CoherenceMsg::InvAck { seg, page, version: f.x },
        CoherenceMsg::Release { seg, page, owned: f.flag.then(|| (payload(f), f.nodes.clone(), f.x)) },
        CoherenceMsg::Release { seg, page, owned: None },
        CoherenceMsg::DropReader { seg, page, node: f.n },
        CoherenceMsg::Bounce {
            seg,
            page,
            inner: Box::new(CoherenceMsg::Fetch { seg, page, to: f.n, write: f.flag }),
        },
        CoherenceMsg::Lost { seg, page },
        CoherenceMsg::Released { seg, page },
        CoherenceMsg::Claim { seg, page, count: f.n },
        CoherenceMsg::Claimed { seg, page, count: f.n, versions: vec![f.x; (f.n % 5) as usize] },
    ]
}

fn sem_stat(f: &Fields) -> SemStat {
    SemStat {
        key: f.i,
        uid: f.n,
        gid: f.n,
        cuid: f.n,
        cgid: f.n,
        mode: f.n,
        nsems: f.n,
        otime: 0,
        ctime: f.i.into(),
    }
}

fn shm_stat(f: &Fields) -> ShmStat {
    ShmStat {
        key: f.i,
        uid: f.n,
        gid: f.n,
        cuid: f.n,
        cgid: f.n,
        mode: f.n,
        size: f.x,
        atime: 1,
        dtime: 2,
        ctime: 3,
        cpid: f.i,
        lpid: f.i,
        nattch: f.x,
    }
}

/// One message of every type (and of every call and reply), with the
/// drawn field values.
fn samples(f: &Fields) -> Vec<Msg> {
    let c = cred(f);
    let id = f.i;
    let ops = f.nodes.iter().map(|&v| SemOp { num: v as u16, op: (v >> 16) as i16, flg: v as i16 }).collect();
    let sem_calls = vec![
        SemCall::Exit { pid: f.i },
        SemCall::Get { key: f.i, nsems: f.i, flags: f.i, cred: c.clone() },
        SemCall::Op { id, ops, cred: c.clone() },
        SemCall::Cancel { token: f.x, pid: f.i },
        SemCall::MoveUndo { from: f.i as u32, to: f.i as u32, pid: f.i },
        SemCall::Ctl { id, semnum: f.i, cmd: f.i, arg: SemctlArg::None, cred: c.clone() },
        SemCall::Ctl { id, semnum: 0, cmd: f.i, arg: SemctlArg::Val(f.i), cred: c.clone() },
        SemCall::Ctl {
            id,
            semnum: 0,
            cmd: f.i,
            arg: SemctlArg::Array(f.nodes.iter().map(|&v| v as u16).collect()),
            cred: c.clone(),
        },
        SemCall::Ctl {
            id,
            semnum: 0,
            cmd: f.i,
            arg: SemctlArg::Perm { uid: f.n, gid: f.n, mode: f.n },
            cred: c.clone(),
        },
    ];
    let mut calls: Vec<Call> = sem_calls.into_iter().map(Call::Sem).collect();
    calls.extend([
        Call::Register { pid: f.i },
        Call::ShmGet { key: f.i, size: f.x, flags: f.i, cred: c.clone() },
        Call::ShmAttach { id, readonly: f.flag, exec: !f.flag, cred: c.clone() },
        Call::ShmDetach { id, failed_attach: f.flag, only_if_destroyed: !f.flag, cred: c.clone() },
        Call::ShmStat { id, cred: c.clone() },
        Call::ShmSet { id, uid: f.n, gid: f.n, mode: f.n, cred: c.clone() },
        Call::ShmRemove { id, cred: c.clone() },
        Call::ShmTotals,
        Call::ShmList,
        Call::IpcList,
    ]);
    let info = SemInfo {
        semmap: f.i,
        semmni: f.i,
        semmns: f.i,
        semmnu: f.i,
        semmsl: f.i,
        semopm: f.i,
        semume: f.i,
        semusz: f.i,
        semvmx: f.i,
        semaem: f.i,
    };
    let replies = vec![
        Reply::SemCtl(SemctlReply::Ok),
        Reply::SemCtl(SemctlReply::Value(f.i)),
        Reply::SemCtl(SemctlReply::All(f.nodes.iter().map(|&v| v as u16).collect())),
        Reply::SemCtl(SemctlReply::Stat { ret: f.i, stat: sem_stat(f) }),
        Reply::SemCtl(SemctlReply::Info { ret: f.i, info }),
        Reply::Cancelled(f.flag),
        Reply::Registered { node: f.n },
        Reply::Id(f.i),
        Reply::Attached { size: f.x },
        Reply::Stat(shm_stat(f)),
        Reply::Totals { segments: f.x, pages: f.x },
        Reply::List(vec![(f.i, shm_stat(f))]),
        Reply::Ok,
        Reply::Err(Errno(f.i)),
        Reply::IpcList { shm: vec![(f.i, shm_stat(f), f.n, f.n)], sem: vec![(f.i, sem_stat(f), f.n)] },
        Reply::Stats {
            nodes: vec![(f.n, f.i, f.flag, Stats { read_faults: f.x, ..Default::default() })],
            objects: vec![ObjReport { key: f.flag.then_some(f.i), removed: f.flag, stats: obj_stats(f) }],
        },
    ];
    let mut msgs = vec![
        Msg::Hello { node: f.flag.then_some(f.n) },
        Msg::PeerAddr { node: f.n, addr: SocketAddr::from(([127, 0, 0, 1], f.n as u16)) },
        Msg::Stats {
            pid: f.i,
            stats: Stats { semop_p99_us: f.x, ..Default::default() },
            objects: vec![obj_stats(f)],
        },
        Msg::HeldQuery { query: f.x },
        Msg::Held { query: f.x, segs: vec![(f.i, f.n)] },
        Msg::NodeGone { node: f.n, left: f.x.is_multiple_of(2) },
        Msg::Restarted { epoch: f.x },
        Msg::Rejoin {
            pages: vec![kdipc_runtime::protocol::PageReport {
                seg: f.i,
                page: f.n,
                owns: Some(f.x),
                releasing: f.flag.then(|| (payload(f), f.nodes.clone(), f.x)),
                handoffs: f.nodes.clone(),
                gave: Some((f.n, f.x)),
                ..Default::default()
            }],
        },
        Msg::Recovery { dead: f.n, report: report(f) },
    ];
    msgs.extend(coherence(f).into_iter().map(Msg::Coherence));
    msgs.extend(calls.into_iter().enumerate().map(|(k, call)| Msg::Call { id: f.x ^ k as u64, call }));
    msgs.extend(replies.into_iter().map(|reply| Msg::Reply { id: f.x, reply }));
    msgs
}

/// One frame body (no length prefix).
fn body(msg: &Msg) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::encode_into(msg, &mut buf);
    buf.split_off(4)
}

/// A change to a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        bits: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        byte: u8,
    },
    Remove {
        at: usize,
    },
    /// A varint that claims a huge length or count.
    Huge {
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        at.prop_map(|at| Mutation::Remove { at }),
        at.prop_map(|at| Mutation::Huge { at }),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let len = b.len().max(1);
    match *m {
        Mutation::Flip { at, bits } => {
            if !b.is_empty() {
                b[at % len] ^= bits
            }
        }
        Mutation::Truncate { at } => b.truncate(at % len),
        Mutation::Insert { at, byte } => b.insert(at % (b.len() + 1), byte),
        Mutation::Remove { at } => {
            if !b.is_empty() {
                b.remove(at % len);
            }
        }
        Mutation::Huge { at } => {
            let at = at % (b.len() + 1);
            b.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random bytes: an error or some message, never a panic.
    #[test]
    fn decode_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode(&bytes);
    }

    /// Every message type survives the trip, and its mutations decode to
    /// an error or to some other message, never a panic.
    #[test]
    fn decode_mutated_frames(f in fields(), muts in prop::collection::vec(mutation(), 1..4)) {
        for msg in samples(&f) {
            let good = body(&msg);
            let back = wire::decode(&good).expect("a valid frame decodes");
            prop_assert_eq!(body(&back), good.clone());
            let mut bad = good;
            for m in &muts {
                apply(&mut bad, m);
            }
            let _ = wire::decode(&bad);
        }
    }

    /// Unknown versions and oversized bodies are refused as such.
    #[test]
    fn decode_refuses_other_versions(f in fields(), version in any::<u16>()) {
        prop_assume!(version != PROTOCOL_VERSION);
        for msg in samples(&f) {
            let bytes = postcard::to_allocvec(&Frame { version, msg }).unwrap();
            prop_assert!(matches!(wire::decode(&bytes), Err(WireError::Version(v)) if v == version));
        }
    }
}

#[test]
fn decode_refuses_oversized_bodies() {
    let big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(wire::decode(&big), Err(WireError::TooLarge(_))));
}

const SEG: SegId = 0x4000_0001;

/// A coherence message about `SEG` or another segment, any page, from any
/// node, with any payload.
fn any_coherence() -> impl Strategy<Value = (u32, CoherenceMsg)> {
    (fields(), 0..12usize, prop_oneof![Just(SEG), any::<i32>()], 0..12u32, 0..5u32).prop_map(
        |(f, k, seg, page, from)| {
            let mut m = coherence(&Fields { i: seg, n: page, ..f.clone() }).swap_remove(k);
            // Nodes are small numbers: make the named nodes plausible.
            if let CoherenceMsg::Request { requester, .. } = &mut m {
                *requester %= 5;
            }
            (from, m)
        },
    )
}

/// Whether an action is about a page that exists (`npages` pages of SEG)
/// and carries at most a page (at least a byte) when it carries bytes.
fn sound(a: &Action, npages: u32) -> bool {
    let ok = |seg: SegId, page: PageIdx| seg == SEG && page < npages;
    let full = |p: &Payload| {
        matches!(p, Payload::Zero) || matches!(p, Payload::Bytes(b) if (1..=PAGE_SIZE).contains(&b.len()))
    };
    match a {
        Action::Send { msg, .. } => {
            let (seg, page) = msg.target();
            ok(seg, page)
                && match msg {
                    CoherenceMsg::Data { payload, .. } => full(payload),
                    CoherenceMsg::Release { owned: Some((p, _, _)), .. } => full(p),
                    _ => true,
                }
        }
        Action::Install { seg, page, payload } => ok(*seg, *page) && full(payload),
        Action::SetAccess { seg, page, .. }
        | Action::SendPage { seg, page, .. }
        | Action::ReleasePage { seg, page, .. }
        | Action::Released { seg, page }
        | Action::Lost { seg, page }
        | Action::Watch { seg, page } => ok(*seg, *page),
        Action::WakeAt(_) => true,
    }
}

/// A message about a page that does not exist is an error.
fn refused_if_impossible(seg: SegId, page: PageIdx, npages: u32, r: &Result<(), ProtocolError>) -> bool {
    (seg == SEG && page < npages) || r.is_err()
}

proptest! {
    #![proptest_config(config())]

    /// The manager: impossible messages are errors; whatever it does is
    /// about pages that exist, with full pages.
    #[test]
    fn manager_never_trusts_a_message(npages in 1..6u32, msgs in prop::collection::vec(any_coherence(), 1..40)) {
        let mut m = Manager::new();
        m.create(SEG, npages);
        for (from, msg) in msgs {
            let (seg, page) = msg.target();
            let mut out = Vec::new();
            let r = m.handle(from, msg, &mut out);
            prop_assert!(refused_if_impossible(seg, page, npages, &r), "{:?}", r);
            for a in &out {
                prop_assert!(sound(a, npages), "{:?}", a);
            }
        }
    }

    /// The manager after deaths: reports naming pages that do not exist,
    /// with bad payloads or versions, about nodes not declared dead, are
    /// errors; whatever it does is about pages that exist.
    #[test]
    fn manager_never_trusts_a_report(
        npages in 1..6u32,
        steps in prop::collection::vec(
            (any_coherence(), fields(), prop_oneof![Just(SEG), any::<i32>()], 0..8u32, 0..5u32, 0..5u32, any::<bool>()),
            1..40,
        ),
    ) {
        let mut m = Manager::new();
        m.create(SEG, npages);
        for ((from, msg), f, seg, page, reporter, dead, kill) in steps {
            let mut out = Vec::new();
            let _ = m.handle(from, msg, &mut out);
            if kill {
                m.node_gone(dead, &[1, 2, 3, 4], &mut out);
            }
            let rep = report(&Fields { i: seg, n: page, ..f });
            let bad = seg != SEG || page >= npages;
            let r = m.report(reporter, dead, rep, &mut out);
            prop_assert!(!bad || r.is_err(), "{:?}", r);
            for a in &out {
                prop_assert!(sound(a, npages), "{:?}", a);
            }
        }
    }

    /// A node, between its own faults and releases: the same.
    #[test]
    fn node_never_trusts_a_message(
        npages in 1..6u32,
        steps in prop::collection::vec((any_coherence(), any::<bool>(), 0..8u32, any::<bool>()), 1..40),
    ) {
        let mut n = NodeProtocol::new(1, 2);
        n.attach(SEG, npages);
        let mut now = 0;
        for ((from, msg), fault, page, write) in steps {
            now += 1;
            let mut out = Vec::new();
            if fault {
                if write {
                    n.tick(Some(SEG), now, &mut out);
                } else {
                    n.touched(SEG, page);
                }
                let r = n.fault(SEG, page, write, now, &mut out);
                prop_assert!(page < npages || r.is_err());
            }
            let (seg, mpage) = msg.target();
            let forwarded = matches!(msg, CoherenceMsg::Request { write: false, .. }) && seg != SEG;
            // Late messages about a segment this node detached: ignored, an
            // invalidation acknowledged.
            let late = seg != SEG
                && matches!(
                    msg,
                    CoherenceMsg::Invalidate { .. }
                        | CoherenceMsg::Released { .. }
                        | CoherenceMsg::Data { write: false, .. }
                        | CoherenceMsg::Declined { .. }
                        | CoherenceMsg::GiveBack { .. }
                        | CoherenceMsg::InvAck { .. }
                )
                || seg != SEG && from != MANAGER && matches!(msg, CoherenceMsg::Bounce { .. });
            let r = n.handle(from, msg, now, &mut out);
            prop_assert!(forwarded || late || refused_if_impossible(seg, mpage, npages, &r), "{:?}", r);
            let _ = n.handle_timeout(now, &mut out);
            for a in &out {
                // A read request for a segment this node does not have
                // goes to the manager unchanged.
                let passed_on = (forwarded && matches!(a, Action::Send { to: MANAGER, .. }))
                    || (late && matches!(a, Action::Send { msg: CoherenceMsg::InvAck { .. }, .. }));
                prop_assert!(passed_on || sound(a, npages), "{:?}", a);
            }
        }
        let mut out = Vec::new();
        let _ = n.release(SEG, &mut out);
        for a in &out {
            prop_assert!(sound(a, npages), "{:?}", a);
        }
    }
}

/// A registry call with values from the ranges that matter.
fn any_call(ids: Vec<i32>) -> impl Strategy<Value = (u32, Call)> {
    let id = prop_oneof![prop::sample::select(ids), any::<i32>()];
    let size = prop_oneof![0..20_000u64, any::<u64>()];
    let flags = prop_oneof![Just(libc::IPC_CREAT | 0o666), Just(0), any::<i32>()];
    let key = prop_oneof![0..4i32, any::<i32>()];
    let who = prop_oneof![Just(0u32), Just(1000), any::<u32>()];
    (0..4u32, 0..8usize, id, size, flags, key, who, any::<bool>()).prop_map(
        |(node, k, id, size, flags, key, uid, flag)| {
            let cred = Cred {
                uid,
                gid: uid,
                groups: vec![uid],
                pid: node as i32,
                caps: if uid == 0 { u64::MAX } else { 0 },
            };
            let call = match k {
                0 => Call::ShmGet { key, size, flags, cred },
                1 => Call::ShmAttach { id, readonly: flag, exec: !flag && size % 2 == 0, cred },
                2 => Call::ShmDetach { id, failed_attach: flag, only_if_destroyed: size % 3 == 0, cred },
                3 => Call::ShmStat { id, cred },
                4 => Call::ShmSet { id, uid: size as u32, gid: uid, mode: flags as u32, cred },
                5 => Call::ShmRemove { id, cred },
                6 => Call::ShmTotals,
                _ => Call::Register { pid: key },
            };
            (node, call)
        },
    )
}

proptest! {
    #![proptest_config(config())]

    /// The segment registry answers every call with a reply (an errno for
    /// nonsense), and its counts stay consistent.
    #[test]
    fn registry_answers_anything(
        calls in prop::collection::vec(any_call(vec![0x4000_0001, 0x4000_0002, 0x4000_0003]), 1..60),
        gone in prop::option::of(0..4u32),
    ) {
        let mut r = Registry::new();
        for (node, call) in calls {
            let register = matches!(call, Call::Register { .. });
            let (reply, _) = r.call(node, call);
            if register {
                prop_assert!(matches!(reply, Reply::Err(Errno(libc::EINVAL))));
            }
        }
        if let Some(n) = gone {
            r.node_gone(n);
        }
        let Reply::List(list) = r.call(0, Call::ShmList).0 else { panic!("ShmList") };
        for (_, s) in list {
            prop_assert!(s.size >= 1 && s.nattch < 60);
        }
    }
}

/// A semaphore operation or control with values from the ranges that
/// matter: `sem_num` around and beyond `nsems`, any `sem_op`, any command.
#[derive(Clone, Debug)]
enum SemStep {
    Get { key: i32, nsems: i32, flags: i32 },
    Op { set: usize, ops: Vec<SemOp>, token: u64 },
    Ctl { set: usize, semnum: i32, cmd: i32, arg: SemctlArg },
    Cancel { token: u64 },
    Exit { node: u32, pid: i32 },
    NodeGone { node: u32 },
}

fn sem_step() -> impl Strategy<Value = SemStep> {
    let op = (
        prop_oneof![0..6u16, any::<u16>()],
        any::<i16>(),
        prop_oneof![Just(0i16), Just(0x800), Just(0x1000), Just(0x1800), any::<i16>()],
    )
        .prop_map(|(num, op, flg)| SemOp { num, op, flg });
    let arg = prop_oneof![
        Just(SemctlArg::None),
        any::<i32>().prop_map(SemctlArg::Val),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(SemctlArg::Array),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(uid, gid, mode)| SemctlArg::Perm {
            uid,
            gid,
            mode
        }),
    ];
    prop_oneof![
        (
            0..3i32,
            prop_oneof![1..5i32, any::<i32>()],
            prop_oneof![Just(libc::IPC_CREAT | 0o600), any::<i32>()]
        )
            .prop_map(|(key, nsems, flags)| SemStep::Get { key, nsems, flags }),
        (0..4usize, prop::collection::vec(op, 0..5), 0..6u64).prop_map(|(set, ops, token)| SemStep::Op {
            set,
            ops,
            token
        }),
        (0..4usize, prop_oneof![0..6i32, any::<i32>()], prop_oneof![0..25i32, any::<i32>()], arg)
            .prop_map(|(set, semnum, cmd, arg)| SemStep::Ctl { set, semnum, cmd, arg }),
        (0..6u64).prop_map(|token| SemStep::Cancel { token }),
        (0..3u32, 0..3i32).prop_map(|(node, pid)| SemStep::Exit { node, pid }),
        (0..3u32).prop_map(|node| SemStep::NodeGone { node }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The semaphore registry answers every call: `sem_num` ≥ `nsems` is
    /// `EFBIG`, nonsense an errno, never a panic.
    #[test]
    fn semaphores_answer_anything(steps in prop::collection::vec(sem_step(), 1..60)) {
        let mut r = SemRegistry::new();
        let root = Cred { uid: 0, gid: 0, groups: vec![], pid: 1, caps: u64::MAX };
        let mut sets: Vec<(i32, usize)> = Vec::new();
        let id_of = |sets: &[(i32, usize)], k: usize| sets.get(k).copied().unwrap_or((k as i32 + 1, 0));
        for (now, step) in steps.into_iter().enumerate() {
            let now = now as i64;
            match step {
                SemStep::Get { key, nsems, flags } => {
                    if let Ok(id) = r.semget(key, nsems, flags, &root, now) {
                        if !sets.iter().any(|s| s.0 == id) {
                            sets.push((id, nsems as usize));
                        }
                    }
                }
                SemStep::Op { set, ops, token } => {
                    let (id, nsems) = id_of(&sets, set);
                    let waiter = Waiter { node: 1, pid: 1, token };
                    let beyond = nsems > 0
                        && ops.len() <= 32
                        && ops.iter().any(|o| o.num as usize >= nsems);
                    let out = r.semop(id, &ops, waiter, &root, now);
                    if beyond && sets.iter().any(|s| s.0 == id) {
                        prop_assert!(
                            matches!(out, SemopOutcome::Err(Errno(libc::EFBIG)) | SemopOutcome::Err(Errno(libc::EIDRM)) | SemopOutcome::Err(Errno(libc::EINVAL))),
                            "{:?}", out
                        );
                    }
                }
                SemStep::Ctl { set, semnum, cmd, arg } => {
                    let (id, _) = id_of(&sets, set);
                    let _ = r.semctl(id, semnum, cmd, arg, &root, now);
                }
                SemStep::Cancel { token } => {
                    r.cancel(&Waiter { node: 1, pid: 1, token }, now);
                }
                SemStep::Exit { node, pid } => {
                    r.process_exit(node, pid, now);
                }
                SemStep::NodeGone { node } => {
                    r.node_gone(node, now);
                }
            }
            let _ = r.take_completed();
        }
        for (_, stat) in r.list() {
            prop_assert!(stat.nsems >= 1);
        }
    }
}

/// Versions grow by one per writer: a peer that claims the last one would
/// make the next writer's overflow.
#[test]
fn versions_at_their_limit_are_refused() {
    let page = Payload::Bytes(vec![7; PAGE_SIZE]);
    let mut m = Manager::new();
    m.create(SEG, 1);
    let mut out = Vec::new();
    let write = CoherenceMsg::Request { seg: SEG, page: 0, write: true, requester: 1, ahead: false };
    m.handle(1, write.clone(), &mut out).unwrap();
    let release = CoherenceMsg::Release { seg: SEG, page: 0, owned: Some((page.clone(), vec![], u64::MAX)) };
    assert!(m.handle(1, release, &mut out).is_err());
    let write2 = CoherenceMsg::Request { seg: SEG, page: 0, write: true, requester: 2, ahead: false };
    m.handle(2, write2, &mut out).unwrap();

    for msg in [
        CoherenceMsg::Data { seg: SEG, page: 0, write: true, acks: vec![], version: u64::MAX, payload: page },
        CoherenceMsg::Grant { seg: SEG, page: 0, acks: vec![], version: u64::MAX },
    ] {
        let mut n = NodeProtocol::new(1, 0);
        n.attach(SEG, 1);
        let mut out = Vec::new();
        // A read copy first, so that a Grant is possible.
        assert!(!n.fault(SEG, 0, false, 0, &mut out).unwrap());
        let data = CoherenceMsg::Data {
            seg: SEG,
            page: 0,
            write: false,
            acks: vec![],
            version: 1,
            payload: Payload::Zero,
        };
        if matches!(msg, CoherenceMsg::Grant { .. }) {
            n.handle(MANAGER, data, 1, &mut out).unwrap();
            assert!(!n.fault(SEG, 0, true, 2, &mut out).unwrap());
        } else {
            assert!(!n.fault(SEG, 0, true, 2, &mut out).unwrap_or(false));
        }
        assert!(n.handle(MANAGER, msg, 3, &mut out).is_err());
        // An owner's next write is one more: it must not overflow.
        let _ = n.fault(SEG, 0, true, 4, &mut out);
    }
}
