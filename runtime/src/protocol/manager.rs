//! The protocol as seen by the manager (node 0): directory and home of every
//! page.

use std::collections::{HashMap, VecDeque};

use super::{check_payload, Action, CoherenceMsg, NodeId, PageIdx, Payload, ProtocolError, SegId};

/// An operation waiting for its turn on a page.
#[derive(Debug)]
enum Op {
    Request { from: NodeId, write: bool },
    Release { from: NodeId, payload: Payload },
}

#[derive(Debug)]
struct HomePage {
    /// The node holding the page for writing; no reader then.
    writer: Option<NodeId>,
    /// Nodes holding a current read copy (sorted).
    readers: Vec<NodeId>,
    /// The home copy, when it is current.
    home: Option<Payload>,
    /// The node whose request is being served: nothing else happens on this
    /// page until it says `Done`.
    busy: Option<NodeId>,
    queue: VecDeque<Op>,
}

/// The directory of every distributed page.
#[derive(Debug, Default)]
pub struct Manager {
    segs: HashMap<SegId, Vec<HomePage>>,
}

/// Who holds a page, as the manager sees it (for tests and `ipcs`).
#[derive(Debug, PartialEq, Eq)]
pub struct Holders {
    pub writer: Option<NodeId>,
    pub readers: Vec<NodeId>,
    pub home_current: bool,
}

impl Manager {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new segment: every page is a zero page at home.
    pub fn create(&mut self, seg: SegId, npages: u32) {
        self.create_with(seg, (0..npages).map(|_| Payload::Zero).collect());
    }

    /// A segment whose home copies are given (restored state).
    pub fn create_with(&mut self, seg: SegId, pages: Vec<Payload>) {
        let pages = pages
            .into_iter()
            .map(|p| HomePage {
                writer: None,
                readers: Vec::new(),
                home: Some(p),
                busy: None,
                queue: VecDeque::new(),
            })
            .collect();
        self.segs.insert(seg, pages);
    }

    /// The segment is gone (removed and detached everywhere).
    pub fn destroy(&mut self, seg: SegId) {
        self.segs.remove(&seg);
    }

    pub fn holders(&self, seg: SegId, page: PageIdx) -> Option<Holders> {
        let p = self.segs.get(&seg)?.get(page as usize)?;
        Some(Holders { writer: p.writer, readers: p.readers.clone(), home_current: p.home.is_some() })
    }

    /// Whether every page of the segment is at rest and its home copy
    /// current (nobody holds it).
    pub fn at_home(&self, seg: SegId) -> bool {
        self.segs.get(&seg).is_some_and(|ps| {
            ps.iter().all(|p| p.writer.is_none() && p.readers.is_empty() && p.busy.is_none())
        })
    }

    /// The home copy of a page, if current.
    pub fn home_copy(&self, seg: SegId, page: PageIdx) -> Option<&Payload> {
        self.segs.get(&seg)?.get(page as usize)?.home.as_ref()
    }

    /// Whether nothing is queued or in progress anywhere.
    pub fn is_idle(&self) -> bool {
        self.segs.values().flatten().all(|p| p.busy.is_none() && p.queue.is_empty())
    }

    /// A message from node `from`.
    pub fn handle(
        &mut self,
        from: NodeId,
        msg: CoherenceMsg,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if from == super::MANAGER {
            return Err(ProtocolError::Unexpected("message from the manager to itself"));
        }
        let (seg, page) = msg.target();
        let pages = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        let p = pages.get_mut(page as usize).ok_or(ProtocolError::PageOutOfRange { seg, page })?;
        match msg {
            CoherenceMsg::Request { write, .. } => p.queue.push_back(Op::Request { from, write }),
            CoherenceMsg::Release { payload, .. } => {
                check_payload(&payload)?;
                p.queue.push_back(Op::Release { from, payload })
            }
            CoherenceMsg::Done { .. } => {
                if p.busy != Some(from) {
                    return Err(ProtocolError::Unexpected("Done from a node not being served"));
                }
                p.busy = None;
            }
            _ => return Err(ProtocolError::Unexpected("node message at the manager")),
        }
        run_queue(seg, page, p, out);
        Ok(())
    }
}

/// Serves queued operations until one is in progress or none is left.
fn run_queue(seg: SegId, page: PageIdx, p: &mut HomePage, out: &mut Vec<Action>) {
    while p.busy.is_none() {
        let Some(op) = p.queue.pop_front() else { return };
        match op {
            Op::Request { from, write } => {
                if serve_request(seg, page, p, from, write, out) {
                    p.busy = Some(from);
                }
            }
            Op::Release { from, payload } => {
                let held = p.writer == Some(from) || p.readers.contains(&from);
                if p.writer == Some(from) {
                    p.writer = None;
                }
                p.readers.retain(|&r| r != from);
                // The released bytes are current only if the node still held
                // the page when its turn came.
                if held && p.home.is_none() {
                    p.home = Some(payload);
                }
                out.push(Action::Send { to: from, msg: CoherenceMsg::Released { seg, page } });
            }
        }
    }
}

fn send(out: &mut Vec<Action>, to: NodeId, msg: CoherenceMsg) {
    out.push(Action::Send { to, msg });
}

/// Starts serving a request; returns whether it is now in progress (waiting
/// for the requester's `Done`).
fn serve_request(
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    from: NodeId,
    write: bool,
    out: &mut Vec<Action>,
) -> bool {
    if p.writer == Some(from) || (!write && p.readers.contains(&from)) {
        // Already there (a retried fault): nothing moves.
        send(out, from, CoherenceMsg::Grant { seg, page, acks: 0 });
        return true;
    }
    if !write {
        if let Some(w) = p.writer.take() {
            send(out, w, CoherenceMsg::Fetch { seg, page, to: from, write: false, acks: 0 });
            p.readers.push(w);
        } else if let Some(home) = &p.home {
            send(out, from, CoherenceMsg::Data { seg, page, acks: 0, payload: home.clone() });
        } else if let Some(&source) = p.readers.first() {
            send(out, source, CoherenceMsg::Fetch { seg, page, to: from, write: false, acks: 0 });
        } else {
            lost(seg, page, p, from, out);
            return false;
        }
        p.readers.push(from);
        p.readers.sort_unstable();
        p.readers.dedup();
        return true;
    }
    // A write: every other copy goes.
    let had_copy = p.readers.contains(&from);
    let others: Vec<NodeId> = p.readers.iter().copied().filter(|&r| r != from).collect();
    p.readers.clear();
    let old_writer = p.writer.replace(from);
    let home = p.home.take();
    if let Some(w) = old_writer {
        send(out, w, CoherenceMsg::Fetch { seg, page, to: from, write: true, acks: 0 });
    } else if had_copy {
        invalidate(seg, page, &others, from, out);
        send(out, from, CoherenceMsg::Grant { seg, page, acks: others.len() as u32 });
    } else if let Some(home) = home {
        invalidate(seg, page, &others, from, out);
        send(out, from, CoherenceMsg::Data { seg, page, acks: others.len() as u32, payload: home });
    } else if let Some((source, rest)) = others.split_first() {
        invalidate(seg, page, rest, from, out);
        send(out, *source, CoherenceMsg::Fetch { seg, page, to: from, write: true, acks: rest.len() as u32 });
    } else {
        p.writer = None;
        lost(seg, page, p, from, out);
        return false;
    }
    true
}

/// No current copy of the page exists anywhere (its only holder died): the
/// requester is told so, never given stale or zeroed bytes.
fn lost(seg: SegId, page: PageIdx, p: &mut HomePage, from: NodeId, out: &mut Vec<Action>) {
    tracing::error!(seg, page, node = from, "page lost: no current copy exists");
    p.readers.retain(|&r| r != from);
    send(out, from, CoherenceMsg::Lost { seg, page });
}

fn invalidate(seg: SegId, page: PageIdx, nodes: &[NodeId], ack_to: NodeId, out: &mut Vec<Action>) {
    for &n in nodes {
        send(out, n, CoherenceMsg::Invalidate { seg, page, ack_to });
    }
}
