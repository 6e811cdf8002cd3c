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
//! Multiple readers, single writer, write-invalidate (Ivy), with a **fixed
//! manager**: node 0 (the nameserver) is the manager and home of every page.
//! Per page it knows the writer (at most one) or the set of readers, and
//! whether its own home copy is current. It serves the requests for one page
//! one at a time, in arrival order (KDIPC's notify queue):
//!
//! * `Request` (node → manager): a node faulted and needs the page.
//! * The manager then either answers itself (`Data` from the home copy, or
//!   `Grant` when the requester already holds a current copy), or sends
//!   `Fetch` to the node holding the newest bytes, which sends `Data`
//!   directly to the requester. For a write, every other reader receives
//!   `Invalidate` and acknowledges straight to the requester (`InvAck`); the
//!   `Data`/`Grant` says how many acknowledgements to wait for.
//! * The requester, once it has the bytes and every acknowledgement, opens
//!   the page and tells the manager `Done`; only then does the manager serve
//!   the next request for that page.
//! * A node that detaches hands its copies back with `Release` (carrying
//!   the bytes), answered by `Released`: the home keeps the data of a
//!   segment nobody holds.
//!
//! Requirements on the transport: messages between one pair of nodes arrive
//! in the order they were sent (one QUIC stream per direction). That order
//! is what makes a `Fetch`/`Invalidate` always arrive after the `Data` the
//! same node sent earlier.
//!
//! A node keeps a page it was just granted for at least `hold` time units
//! before answering a `Fetch` or `Invalidate` for it, so that the faulting
//! instruction gets to run (no ping-pong livelock between two writers).

mod manager;
mod node;

pub use manager::Manager;
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

/// Access rights of one node to one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    Invalid,
    Read,
    Write,
}

/// The bytes of a page on the wire. A page that was never written travels
/// without payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Zero,
    Bytes(#[serde(with = "raw_bytes")] Vec<u8>),
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
    /// node → manager: the node faulted on the page.
    Request { seg: SegId, page: PageIdx, write: bool },
    /// manager → holder: send the page to `to`; for a write, give up your
    /// copy, otherwise keep a read copy. `acks` is passed on in `Data`.
    Fetch { seg: SegId, page: PageIdx, to: NodeId, write: bool, acks: u32 },
    /// manager → requester: your copy is current; open it after `acks`
    /// invalidation acknowledgements.
    Grant { seg: SegId, page: PageIdx, acks: u32 },
    /// holder or manager → requester: the page's bytes.
    Data { seg: SegId, page: PageIdx, acks: u32, payload: Payload },
    /// manager → reader: drop your copy, acknowledge to `ack_to`.
    Invalidate { seg: SegId, page: PageIdx, ack_to: NodeId },
    /// reader → requester.
    InvAck { seg: SegId, page: PageIdx },
    /// requester → manager: the request is complete.
    Done { seg: SegId, page: PageIdx },
    /// node → manager: the node gives up its copy (detach, exit).
    Release { seg: SegId, page: PageIdx, payload: Payload },
    /// manager → requester: no current copy of the page exists any more.
    Lost { seg: SegId, page: PageIdx },
    /// manager → node: the release is complete.
    Released { seg: SegId, page: PageIdx },
}

impl CoherenceMsg {
    /// The segment and page a message is about.
    pub fn target(&self) -> (SegId, PageIdx) {
        match *self {
            CoherenceMsg::Request { seg, page, .. }
            | CoherenceMsg::Fetch { seg, page, .. }
            | CoherenceMsg::Grant { seg, page, .. }
            | CoherenceMsg::Data { seg, page, .. }
            | CoherenceMsg::Invalidate { seg, page, .. }
            | CoherenceMsg::InvAck { seg, page }
            | CoherenceMsg::Done { seg, page }
            | CoherenceMsg::Release { seg, page, .. }
            | CoherenceMsg::Lost { seg, page }
            | CoherenceMsg::Released { seg, page } => (seg, page),
        }
    }
}

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
    SendPage { seg: SegId, page: PageIdx, to: NodeId, acks: u32, keep: Access },
    /// Read the page and send it to the manager in a `Release`.
    ReleasePage { seg: SegId, page: PageIdx },
    /// A release of this page was acknowledged by the manager.
    Released { seg: SegId, page: PageIdx },
    /// The page is lost: threads waiting for it get `SIGBUS`.
    Lost { seg: SegId, page: PageIdx },
    /// Call `handle_timeout` at (or after) this time.
    WakeAt(u64),
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

/// Checks the length of a received payload.
pub fn check_payload(p: &Payload) -> Result<(), ProtocolError> {
    match p {
        Payload::Bytes(b) if b.len() != PAGE_SIZE => Err(ProtocolError::BadPayload(b.len())),
        _ => Ok(()),
    }
}
