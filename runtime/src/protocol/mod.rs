//! The page coherence protocol, as a sans-IO state machine.
//!
//! No sockets, no clocks, no signals, no memory mappings: messages and local
//! faults go in, messages and [`Action`]s come out. The transport and the
//! fault path (`crate::node`) are thin adapters that feed it; the
//! deterministic simulation in `runtime/tests/simulation.rs` drives many
//! instances over a reordering network.
//!
//! # The protocol
//!
//! Multiple readers, single writer, write-invalidate (Ivy), with page
//! **owners** and a **fixed manager** (node 0, the nameserver) that decides
//! the order of writers:
//!
//! * Each page has one owner: the node that last wrote it, or the manager
//!   (the home) when nobody does. The owner holds a current copy, knows the
//!   read copies it gave (its copyset) and serves reads itself.
//! * A read fault sends `Request` to the probable owner (the node that last
//!   gave this node the page or invalidated it; for a page it never had,
//!   the node that last sent it a page of the segment, else the manager).
//!   The owner answers with `Data`: one round trip when the hint is right.
//!   A node that is not the owner forwards the request to the manager.
//! * A write fault sends `Request` to the manager, which designates the
//!   requester as the next owner at once and sends `Fetch` to the current
//!   one. The current owner invalidates every other copy (`Invalidate`,
//!   acknowledged straight to the requester with `InvAck`) and sends `Data`
//!   (or `Grant` when the requester's copy is current) saying how many
//!   acknowledgements to wait for. An owner that holds the page for reading
//!   upgrades without asking anyone.
//! * A node writing through pages in order also sends `Claim` for the
//!   pages after the one it faulted on: the manager makes it the owner of
//!   each that is a zero page at home with no copies (never written, or
//!   given back zero) and answers `Claimed` with their versions (the
//!   granted pages are a prefix of the range; the node asks for the others
//!   normally when it touches them). One round trip then opens up to
//!   `KDIPC_READAHEAD` pages a program initialises, instead of one each.
//! * A node reading through pages in order asks for the next ones too
//!   (`Request` with `ahead`); the manager answers `Declined` (no copy) for
//!   a page that is a zero page at home without copies, so that reading
//!   past the end of the data does not stop another node's claim there.
//! * Requests that reach a node that is about to own the page, or that owns
//!   it and is busy, wait there in arrival order (KDIPC's notify queue).
//! * Every page has a version, one more per writer. `Data` and
//!   `Invalidate` carry it; a read copy served at an older version than an
//!   invalidation this node already received is stale and asked again.
//! * A node that detaches gives its pages back with `Release`: an owner
//!   sends its bytes and copyset and the manager's home owns the page again;
//!   a reader's release is passed to the owner (`DropReader`). What reaches
//!   a releasing owner meanwhile goes back to the manager (`Bounce`), but a
//!   read request goes back to its requester, which asks the manager (it
//!   would wait behind the releases otherwise).
//! * An owner pushes the new version of a page to the nodes that read
//!   every version (`Data` unasked); a node gives a pushed copy it has used
//!   back to that owner at a later write fault or `semop` (`GiveBack`), so
//!   that the owner's next write invalidates nobody (`NodeProtocol::tick`).
//!
//! * After a death (`Manager::node_gone`, `NodeProtocol::peer_gone`),
//!   every survivor sends a [`Report`]; the manager parks requests for the
//!   pages the dead node held or was handing over until all are in, then
//!   recovers each from the node that kept it or a current read copy, or
//!   answers `Lost` (docs/design.md, "Node death").
//!
//! Requirements on the transport: messages between one pair of nodes arrive
//! in the order they were sent (one QUIC stream per direction).
//!
//! A node keeps a page it was just granted for at least `hold` time units
//! before serving a request or invalidation for it, so that the faulting
//! instruction gets to run (no ping-pong livelock between two writers),
//! or until the driver knows it ran (`NodeProtocol::end_hold`).

mod manager;
mod node;

pub use manager::{Manager, Restored};
pub use node::{NodeProtocol, PageSet};

use serde::{Deserialize, Serialize};

/// A node of the cluster. Node 0 is the nameserver (manager and home).
pub type NodeId = u32;
/// The manager and home of every page.
pub const MANAGER: NodeId = 0;
/// A distributed segment, by its cluster-wide id.
pub type SegId = i32;
/// Index of a 4 KiB page inside its segment.
pub type PageIdx = u32;

/// Size of a coherence unit.
pub const PAGE_SIZE: usize = 4096;

/// The most pages one `Claim` may name (a larger one is malformed).
pub const MAX_CLAIM: u32 = 1024;

/// Access rights of one node to one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    Invalid,
    Read,
    Write,
}

/// The bytes of a page on the wire: up to its last non-zero byte (the
/// rest of the page is zero), none at all for a zero page. A progress flag
/// or a counter at the start of a page travels in a few bytes, not 4 KiB.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Zero,
    /// 1 to `PAGE_SIZE` bytes.
    Bytes(#[serde(with = "raw_bytes")] Vec<u8>),
}

impl Payload {
    /// The payload of a page (`PAGE_SIZE` bytes).
    pub fn from_page(page: &[u8]) -> Payload {
        // Eight bytes at a time from the end (a byte-wise scan of a page
        // holding one counter went through 4 KiB a byte at a time).
        let words = page.len() / 8 * 8;
        let tail = page[words..].iter().rposition(|&b| b != 0).map(|i| words + i);
        let last = tail.or_else(|| {
            let w = page[..words]
                .chunks_exact(8)
                .rposition(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) != 0)?;
            let c = &page[w * 8..w * 8 + 8];
            Some(w * 8 + c.iter().rposition(|&b| b != 0).unwrap_or(0))
        });
        match last {
            None => Payload::Zero,
            Some(last) => Payload::Bytes(page[..=last].to_vec()),
        }
    }

    /// Writes the page this payload stands for into `page` (`PAGE_SIZE`
    /// bytes; the payload was checked by [`check_payload`]).
    pub fn fill(&self, page: &mut [u8]) {
        let n = match self {
            Payload::Zero => 0,
            Payload::Bytes(b) => {
                page[..b.len()].copy_from_slice(b);
                b.len()
            }
        };
        page[n..].fill(0);
    }
}

/// The length, not the bytes (messages are logged at `trace`).
impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Zero => f.write_str("Zero"),
            Payload::Bytes(b) => write!(f, "Bytes({})", b.len()),
        }
    }
}

/// Bytes as one length-prefixed blob (serde's default for `Vec<u8>` is a
/// sequence of separately encoded integers: 10× slower for a page).
mod raw_bytes {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// Messages of the coherence protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoherenceMsg {
    /// `requester` faulted on the page: a read goes to the probable owner,
    /// a write to the manager; a node that is not the owner forwards a read
    /// to the manager.
    /// `ahead`: a read asked for ahead of any fault (read-ahead); the
    /// manager declines it for a page nobody has written (`Declined`).
    Request { seg: SegId, page: PageIdx, write: bool, requester: NodeId, ahead: bool },
    /// manager → requester: the read asked for ahead is of a zero page at
    /// home without copies: no copy is given (a program reading past the
    /// data it streams through would otherwise hold copies of pages
    /// another node is about to write, and that writer's claim of them
    /// would fail and each write wait for an invalidation).
    Declined { seg: SegId, page: PageIdx },
    /// node → manager: make me the owner of the pages `page..page + count`
    /// that are zero pages at home without copies (a prefix of the range).
    Claim { seg: SegId, page: PageIdx, count: u32 },
    /// manager → node: the answer to a `Claim` of `count` pages: you own
    /// `page..page + versions.len()`, zero, each at its version; the rest
    /// of the claimed range stays where it was.
    Claimed { seg: SegId, page: PageIdx, count: u32, versions: Vec<u64> },
    /// manager → owner: serve `to`; for a write, hand the page over.
    Fetch { seg: SegId, page: PageIdx, to: NodeId, write: bool },
    /// owner or manager → new writer: your copy is current; open it once
    /// every node in `acks` acknowledged its invalidation (or died).
    Grant { seg: SegId, page: PageIdx, acks: Vec<NodeId>, version: u64 },
    /// owner or manager → requester: the page's bytes, at `version`, for a
    /// read or (`write`) a write request, then with `acks` as in `Grant`.
    /// A node that asked twice (a death) tells a late answer to its read
    /// from the answer to the write it asks for next.
    Data { seg: SegId, page: PageIdx, write: bool, acks: Vec<NodeId>, version: u64, payload: Payload },
    /// → reader: drop your copy (the page is at `version` now);
    /// acknowledge to `ack_to`.
    Invalidate { seg: SegId, page: PageIdx, ack_to: NodeId, version: u64 },
    /// reader → new writer: the copy is dropped, for the `Invalidate` of
    /// this version (a restarted manager invalidates again, so one copy
    /// can be acknowledged twice; only the version tells which write an
    /// acknowledgement is for).
    InvAck { seg: SegId, page: PageIdx, version: u64 },
    /// node → manager: the node gives up the page (detach, exit); an owner
    /// sends (bytes, copyset, version).
    Release { seg: SegId, page: PageIdx, owned: Option<(Payload, Vec<NodeId>, u64)> },
    /// manager → owner: `node` gives up its read copy.
    DropReader { seg: SegId, page: PageIdx, node: NodeId },
    /// releasing owner → manager: a `Fetch` or `DropReader` that arrived
    /// after the owner sent its `Release`; detaching node → requester: a
    /// read `Request` it will not serve (ask the manager).
    Bounce { seg: SegId, page: PageIdx, inner: Box<CoherenceMsg> },
    /// manager → requester: no current copy of the page exists any more.
    Lost { seg: SegId, page: PageIdx },
    /// manager or owner → node: the release is complete.
    Released { seg: SegId, page: PageIdx },
    /// reader → the owner that pushed the page: the pushed copy of
    /// `version` was used and is dropped (see `NodeProtocol::tick`); the
    /// owner's next write need not invalidate it, and goes to the reader
    /// as a push.
    GiveBack { seg: SegId, page: PageIdx, version: u64 },
}

impl CoherenceMsg {
    /// The segment and page a message is about.
    pub fn target(&self) -> (SegId, PageIdx) {
        match *self {
            CoherenceMsg::Request { seg, page, .. }
            | CoherenceMsg::Fetch { seg, page, .. }
            | CoherenceMsg::Claim { seg, page, .. }
            | CoherenceMsg::Claimed { seg, page, .. }
            | CoherenceMsg::Grant { seg, page, .. }
            | CoherenceMsg::Data { seg, page, .. }
            | CoherenceMsg::Invalidate { seg, page, .. }
            | CoherenceMsg::InvAck { seg, page, .. }
            | CoherenceMsg::Release { seg, page, .. }
            | CoherenceMsg::DropReader { seg, page, .. }
            | CoherenceMsg::Bounce { seg, page, .. }
            | CoherenceMsg::Lost { seg, page }
            | CoherenceMsg::Declined { seg, page }
            | CoherenceMsg::GiveBack { seg, page, .. }
            | CoherenceMsg::Released { seg, page } => (seg, page),
        }
    }
}

/// What a node tells the manager after a death (one per dead node and
/// surviving node), so that the pages the dead node held or was handing
/// over are recovered from a current copy where one exists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Read copies this node still holds whose owner was the dead node:
    /// (segment, page, version, bytes). A valid read copy is current: its
    /// owner writes only after every copy it gave acknowledged an
    /// invalidation.
    pub copies: Vec<(SegId, PageIdx, u64, Payload)>,
    /// Write requests of this node whose bytes have not arrived.
    pub waiting: Vec<(SegId, PageIdx)>,
    /// Pages this node was to hand to the dead node and still owns.
    pub kept: Vec<(SegId, PageIdx)>,
    /// Read requests of this node not answered yet (asked again of the
    /// manager; the first may have been forwarded to the dead node before
    /// the manager knew it was dead).
    pub reading: Vec<(SegId, PageIdx)>,
}

/// A page's state at the home, as the nameserver keeps it on disk
/// (`crate::persist`) to carry on after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HomeState {
    /// The home owns the page, at `version` (`zero`: never written).
    Home { version: u64, zero: bool },
    /// The home gave the page to `to` for writing, from the bytes it has
    /// (its version `version`); nodes may have passed it on since.
    Given { version: u64, to: NodeId },
    /// The page is at the nodes, and the home's bytes are not current.
    Away { version: u64 },
    /// No current copy exists.
    Lost { version: u64 },
}

/// What a node tells a restarted manager about one page (see
/// [`Rejoin`]); only pages with something to say are listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageReport {
    pub seg: SegId,
    pub page: PageIdx,
    /// This node owns the page, or has its bytes and waits only for
    /// invalidation acknowledgements: the version it has (will have).
    pub owns: Option<u64>,
    /// It gave the page back (`Release` with these bytes, copyset and
    /// version) and has no answer.
    pub releasing: Option<(Payload, Vec<NodeId>, u64)>,
    /// It holds a valid read copy, at this version.
    pub copy: Option<u64>,
    /// Its write request, claim, read request waits for an answer.
    pub writing: bool,
    pub claiming: bool,
    pub reading: bool,
    /// It gave its read copy back and has no answer.
    pub dropping: bool,
    /// Writers the manager designated after this node, whose hand-over
    /// waits here, in order.
    pub handoffs: Vec<NodeId>,
    /// Its last hand-over to a writer: (to, the version it gave).
    pub gave: Option<(NodeId, u64)>,
    /// It has the bytes of its write and waits for these nodes to
    /// acknowledge their invalidation (the manager's were lost with it).
    pub awaiting: Vec<NodeId>,
    /// The highest version of the page this node has heard of.
    pub known: u64,
}

/// A node's report to a restarted manager: what it holds, waits for and
/// is handing over of every page (the manager lost that with its memory;
/// the home copies and which pages the home gave to whom it kept on disk).
pub type Rejoin = Vec<PageReport>;

/// What a protocol instance asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send { to: NodeId, msg: CoherenceMsg },
    /// Set the application's access to a page (the driver calls `mprotect`
    /// and, when opening, wakes the threads waiting for it).
    SetAccess { seg: SegId, page: PageIdx, access: Access },
    /// Write received bytes into the page (before any `SetAccess` opening it).
    Install { seg: SegId, page: PageIdx, payload: Payload },
    /// Lower access to `keep` (revoking first, so that every store is
    /// visible), read the page and send it as `Data` to `to`.
    SendPage { seg: SegId, page: PageIdx, to: NodeId, acks: Vec<NodeId>, version: u64, keep: Access },
    /// Read the page and send it to the manager in a `Release` with this
    /// copyset and version.
    ReleasePage { seg: SegId, page: PageIdx, copyset: Vec<NodeId>, version: u64 },
    /// A release of this page was acknowledged by the manager.
    Released { seg: SegId, page: PageIdx },
    /// The page is lost: threads waiting for it get `SIGBUS`.
    Lost { seg: SegId, page: PageIdx },
    /// Call `handle_timeout` at (or after) this time.
    WakeAt(u64),
    /// The read copy about to open is a push: keep it closed in the
    /// program's views until a thread touches it, then open it and call
    /// `NodeProtocol::touched` (comes before the page's `SetAccess`).
    Watch { seg: SegId, page: PageIdx },
}

/// A message that must not be trusted: it names a page or segment that does
/// not exist here, or arrives in a state where it is impossible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unknown segment {0}")]
    UnknownSegment(SegId),
    #[error("page {page} outside segment {seg}")]
    PageOutOfRange { seg: SegId, page: PageIdx },
    #[error("unexpected {0} in this state")]
    Unexpected(&'static str),
    #[error("bad payload length {0}")]
    BadPayload(usize),
}

/// Checks a received page version: versions start at 0 and grow by one per
/// writer, so the last value only comes from a peer that lies, and the
/// next writer's version would overflow.
pub fn check_version(v: u64) -> Result<(), ProtocolError> {
    if v == u64::MAX {
        return Err(ProtocolError::Unexpected("page version at its limit"));
    }
    Ok(())
}

/// Checks the length of a received payload.
pub fn check_payload(p: &Payload) -> Result<(), ProtocolError> {
    match p {
        Payload::Bytes(b) if b.is_empty() || b.len() > PAGE_SIZE => Err(ProtocolError::BadPayload(b.len())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_a_page_up_to_its_last_nonzero_byte() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(Payload::from_page(&page) == Payload::Zero);
        page[0] = 3;
        page[7] = 1;
        let flag = Payload::from_page(&page);
        assert!(matches!(&flag, Payload::Bytes(b) if b.len() == 8));
        page[PAGE_SIZE - 1] = 9;
        let full = Payload::from_page(&page);
        assert!(matches!(&full, Payload::Bytes(b) if b.len() == PAGE_SIZE));
        for p in [&flag, &full, &Payload::Zero] {
            check_payload(p).unwrap();
            // Filled over stale bytes: the page comes back exactly.
            let mut out = vec![0xaa; PAGE_SIZE];
            p.fill(&mut out);
            assert!(Payload::from_page(&out) == *p);
        }
        let mut out = vec![0xaa; PAGE_SIZE];
        flag.fill(&mut out);
        assert_eq!((out[0], out[7], out[8], out[PAGE_SIZE - 1]), (3, 1, 0, 0));
        // Every position of the last non-zero byte, and slices whose length
        // is not a multiple of the 8-byte scan.
        for len in [PAGE_SIZE, 13, 8, 7, 1] {
            for last in 0..len {
                let mut b = vec![0u8; len];
                b[last / 2] = 1;
                b[last] = 5;
                assert!(
                    matches!(Payload::from_page(&b), Payload::Bytes(v) if v.len() == last + 1),
                    "{len} {last}"
                );
            }
        }
    }
}
