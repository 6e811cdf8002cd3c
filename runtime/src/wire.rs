//! Messages between nodes, as they travel: `postcard`-encoded [`Frame`]s,
//! each preceded by its length (u32, little endian), on one QUIC stream per
//! direction and peer.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::protocol::{CoherenceMsg, NodeId};
use crate::registry::{Call, Reply};
use crate::semaphores::SetState;

/// Bumped on every incompatible change of [`Msg`].
pub const PROTOCOL_VERSION: u16 = 14;
/// Largest frame accepted (a page plus headroom, or a registry answer).
pub const MAX_FRAME: usize = 1 << 20;

/// One message on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    pub version: u16,
    pub msg: Msg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// First frame on every stream: who is sending (`None` before the
    /// nameserver has given the node an id).
    Hello { node: Option<NodeId> },
    /// Page coherence.
    Coherence(CoherenceMsg),
    /// node → nameserver: a registry call.
    Call { id: u64, call: Call },
    /// nameserver → node: its answer.
    Reply { id: u64, reply: Reply },
    /// nameserver → node: where a node listens.
    PeerAddr { node: NodeId, addr: SocketAddr },
    /// nameserver → node: that node died or left.
    NodeGone {
        node: NodeId,
        /// It closed saying it gave every page back (see
        /// `NodeProtocol::peer_gone`).
        left: bool,
    },
    /// node → nameserver: after `dead` died (or this node lost its
    /// connection to it), what this node holds of the pages the dead node
    /// may have held; the manager recovers them from these.
    Recovery { dead: NodeId, report: crate::protocol::Report },
    /// node → nameserver: its figures now, in all and per object (for
    /// `kdipc stats`).
    Stats { pid: i32, stats: crate::stats::Stats, objects: Vec<crate::stats::ObjStats> },
    /// nameserver → node: which segments do you hold pages of (for the
    /// copies column of `kdipc ipcs`)?
    HeldQuery { query: u64 },
    /// node → nameserver: the answer: (segment, pages this node can read
    /// or write) for every segment attached here.
    Held { query: u64, segs: Vec<(i32, u32)> },
    /// nameserver → node: semaphore set `id` is lent to you (before the
    /// answer to the operation that made it so).
    SemLend { id: i32, state: SetState },
    /// nameserver → borrower: give set `id` back.
    SemRecall { id: i32 },
    /// borrower → nameserver: set `id` comes back.
    SemReturn { id: i32, state: SetState },
    /// nameserver → node: the nameserver restarted (from its state on
    /// disk, `--state`): send `Rejoin` and ask again what you had no
    /// answer to.
    Restarted { epoch: u64 },
    /// node → restarted nameserver: what this node holds and waits for of
    /// every page.
    Rejoin { pages: crate::protocol::Rejoin },
    /// borrower → nameserver: the values of set `id` now (while it holds
    /// it, every few milliseconds when they changed).
    SemSync { id: i32, state: SetState },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u16),
}

/// [`Frame`] by reference, for encoding without a copy (same encoding).
#[derive(Serialize)]
struct FrameRef<'a> {
    version: u16,
    msg: &'a Msg,
}

/// Appends one length-prefixed frame to `buf`.
pub fn encode_into(msg: &Msg, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let frame = FrameRef { version: PROTOCOL_VERSION, msg };
    // Serializing into a Vec cannot fail for these types.
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(&frame, taken).expect("encoding into a Vec");
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one frame body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    // The version first, so that a peer of another version gets a clear
    // error rather than an undecodable message.
    let (version, rest): (u16, _) = postcard::take_from_bytes(body)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    Ok(postcard::from_bytes(rest)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    #[test]
    fn round_trip_and_rejects() {
        let msg = Msg::Coherence(CoherenceMsg::Data {
            write: false,
            seg: 7,
            page: 3,
            acks: vec![1],
            version: 4,
            payload: Payload::Zero,
        });
        let mut buf = Vec::new();
        encode_into(&msg, &mut buf);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        match decode(&buf[4..]).unwrap() {
            Msg::Coherence(c) => assert_eq!(c.target(), (7, 3)),
            other => panic!("decoded {other:?}"),
        }
        // Truncated, garbage and wrong version are errors, not panics.
        assert!(decode(&buf[4..buf.len() - 1]).is_err());
        assert!(decode(&[0xff; 9]).is_err());
        let bad = postcard::to_allocvec(&Frame { version: 99, msg }).unwrap();
        assert!(matches!(decode(&bad), Err(WireError::Version(99))));
    }
}
