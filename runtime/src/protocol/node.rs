//! The protocol as seen by an application node.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::{Access, Action, CoherenceMsg, NodeId, PageIdx, ProtocolError, SegId, MANAGER};

/// An outstanding request of this node for one page.
#[derive(Debug, Default)]
struct Pending {
    write: bool,
    have_data: bool,
    acks_needed: Option<u32>,
    acks_got: u32,
}

#[derive(Debug)]
struct NodePage {
    access: Access,
    pending: Option<Pending>,
    /// Fetch/Invalidate are not served before this time.
    hold_until: u64,
    /// Fetch/Invalidate that arrived during the hold, in arrival order.
    deferred: VecDeque<CoherenceMsg>,
    /// A `Release` was sent and not yet acknowledged: the bytes are still
    /// here and may still be fetched.
    releasing: bool,
}

impl NodePage {
    fn new() -> Self {
        NodePage {
            access: Access::Invalid,
            pending: None,
            hold_until: 0,
            deferred: VecDeque::new(),
            releasing: false,
        }
    }
}

/// The pages of one segment at this node.
#[derive(Debug)]
pub struct PageSet {
    pages: Vec<NodePage>,
}

/// The protocol state of one application node.
#[derive(Debug)]
pub struct NodeProtocol {
    me: NodeId,
    hold: u64,
    segs: HashMap<SegId, PageSet>,
    /// Pages with deferred messages.
    deferred: BTreeSet<(SegId, PageIdx)>,
}

impl NodeProtocol {
    /// `hold`: minimum time a granted page stays before it is given away.
    pub fn new(me: NodeId, hold: u64) -> Self {
        NodeProtocol { me, hold, segs: HashMap::new(), deferred: BTreeSet::new() }
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Starts tracking a segment of `npages` pages (all `Invalid`).
    pub fn attach(&mut self, seg: SegId, npages: u32) {
        self.segs
            .entry(seg)
            .or_insert_with(|| PageSet { pages: (0..npages).map(|_| NodePage::new()).collect() });
    }

    /// Stops tracking a segment whose pages were all released.
    pub fn forget(&mut self, seg: SegId) {
        self.segs.remove(&seg);
        self.deferred.retain(|&(s, _)| s != seg);
    }

    pub fn is_attached(&self, seg: SegId) -> bool {
        self.segs.contains_key(&seg)
    }

    /// Current access of this node to a page.
    pub fn access(&self, seg: SegId, page: PageIdx) -> Access {
        self.segs.get(&seg).and_then(|s| s.pages.get(page as usize)).map_or(Access::Invalid, |p| p.access)
    }

    /// Whether a request for the page is outstanding.
    pub fn is_pending(&self, seg: SegId, page: PageIdx) -> bool {
        self.segs.get(&seg).and_then(|s| s.pages.get(page as usize)).is_some_and(|p| p.pending.is_some())
    }

    fn page_mut(&mut self, seg: SegId, page: PageIdx) -> Result<&mut NodePage, ProtocolError> {
        let set = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        set.pages.get_mut(page as usize).ok_or(ProtocolError::PageOutOfRange { seg, page })
    }

    /// A local thread needs the page (`write` or read). Returns `true` when
    /// the access is already there; otherwise a request is on its way (or
    /// already was) and the driver will see `SetAccess` when it completes.
    /// A thread that needs write while a read request is outstanding calls
    /// again after that one completes.
    pub fn fault(
        &mut self,
        seg: SegId,
        page: PageIdx,
        write: bool,
        out: &mut Vec<Action>,
    ) -> Result<bool, ProtocolError> {
        let p = self.page_mut(seg, page)?;
        let need = if write { Access::Write } else { Access::Read };
        if p.access >= need {
            return Ok(true);
        }
        if p.pending.is_none() {
            p.pending = Some(Pending { write, ..Pending::default() });
            out.push(Action::Send { to: MANAGER, msg: CoherenceMsg::Request { seg, page, write } });
        }
        Ok(false)
    }

    /// A message from `from`.
    pub fn handle(
        &mut self,
        from: NodeId,
        msg: CoherenceMsg,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        let (seg, page) = msg.target();
        let hold = self.hold;
        let me = self.me;
        let p = self.page_mut(seg, page)?;
        match msg {
            CoherenceMsg::Fetch { .. } | CoherenceMsg::Invalidate { .. } => {
                if from != MANAGER {
                    return Err(ProtocolError::Unexpected("Fetch/Invalidate not from the manager"));
                }
                // Checked on arrival, not only when served: a bad Fetch must
                // not be deferred and then fail in `handle_timeout`.
                check_fetch(me, p, &msg)?;
                if now < p.hold_until || !p.deferred.is_empty() {
                    p.deferred.push_back(msg);
                    out.push(Action::WakeAt(p.hold_until));
                    self.deferred.insert((seg, page));
                    return Ok(());
                }
                serve(me, seg, page, p, msg, out)
            }
            CoherenceMsg::Grant { acks, .. } => {
                if from != MANAGER || p.access == Access::Invalid {
                    return Err(ProtocolError::Unexpected("Grant"));
                }
                let pend = p.pending.as_mut().ok_or(ProtocolError::Unexpected("Grant"))?;
                pend.have_data = true;
                pend.acks_needed = Some(acks);
                complete(seg, page, p, now, hold, out)
            }
            CoherenceMsg::Data { acks, payload, .. } => {
                super::check_payload(&payload)?;
                let pend = p.pending.as_mut().ok_or(ProtocolError::Unexpected("Data"))?;
                if pend.have_data {
                    return Err(ProtocolError::Unexpected("second Data"));
                }
                pend.have_data = true;
                pend.acks_needed = Some(acks);
                out.push(Action::Install { seg, page, payload });
                complete(seg, page, p, now, hold, out)
            }
            CoherenceMsg::InvAck { .. } => {
                let pend = p.pending.as_mut().ok_or(ProtocolError::Unexpected("InvAck"))?;
                pend.acks_got += 1;
                complete(seg, page, p, now, hold, out)
            }
            CoherenceMsg::Released { .. } => {
                if from != MANAGER || !p.releasing {
                    return Err(ProtocolError::Unexpected("Released"));
                }
                p.releasing = false;
                out.push(Action::Released { seg, page });
                Ok(())
            }
            CoherenceMsg::Lost { .. } => {
                if from != MANAGER || p.pending.take().is_none() {
                    return Err(ProtocolError::Unexpected("Lost"));
                }
                out.push(Action::Lost { seg, page });
                Ok(())
            }
            CoherenceMsg::Request { .. } | CoherenceMsg::Done { .. } | CoherenceMsg::Release { .. } => {
                Err(ProtocolError::Unexpected("manager message at a node"))
            }
        }
    }

    /// Serves deferred messages whose hold has expired. Returns the next
    /// time to be called, if any.
    pub fn handle_timeout(&mut self, now: u64, out: &mut Vec<Action>) -> Result<(), ProtocolError> {
        let me = self.me;
        let due: Vec<(SegId, PageIdx)> = self.deferred.iter().copied().collect();
        for (seg, page) in due {
            let p = self.page_mut(seg, page)?;
            if p.hold_until > now {
                out.push(Action::WakeAt(p.hold_until));
                continue;
            }
            while let Some(msg) = p.deferred.pop_front() {
                serve(me, seg, page, p, msg, out)?;
            }
            self.deferred.remove(&(seg, page));
        }
        Ok(())
    }

    /// Gives every copy of the segment back to the manager. The driver sends
    /// each `Release` with the page's bytes when the action says so, and
    /// waits for one `Released` per page before calling [`Self::forget`].
    /// Returns the number of pages released. No request may be outstanding.
    pub fn release(&mut self, seg: SegId, out: &mut Vec<Action>) -> Result<usize, ProtocolError> {
        let me = self.me;
        let set = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        // Refused before anything changes.
        if set.pages.iter().any(|p| p.pending.is_some()) {
            return Err(ProtocolError::Unexpected("release with a request outstanding"));
        }
        let mut n = 0;
        for (i, p) in set.pages.iter_mut().enumerate() {
            let page = i as PageIdx;
            while let Some(msg) = p.deferred.pop_front() {
                serve(me, seg, page, p, msg, out)?;
            }
            if p.access != Access::Invalid {
                p.access = Access::Invalid;
                p.releasing = true;
                out.push(Action::SetAccess { seg, page, access: Access::Invalid });
                out.push(Action::ReleasePage { seg, page });
                n += 1;
            }
        }
        self.deferred.retain(|&(s, _)| s != seg);
        Ok(n)
    }
}

/// Rejects a `Fetch` for a page this node does not hold, or to itself.
fn check_fetch(me: NodeId, p: &NodePage, msg: &CoherenceMsg) -> Result<(), ProtocolError> {
    match *msg {
        CoherenceMsg::Fetch { to, .. } if (p.access == Access::Invalid && !p.releasing) || to == me => {
            Err(ProtocolError::Unexpected("Fetch"))
        }
        _ => Ok(()),
    }
}

/// Answers a `Fetch` or `Invalidate` now.
fn serve(
    me: NodeId,
    seg: SegId,
    page: PageIdx,
    p: &mut NodePage,
    msg: CoherenceMsg,
    out: &mut Vec<Action>,
) -> Result<(), ProtocolError> {
    match msg {
        CoherenceMsg::Fetch { to, write, acks, .. } => {
            check_fetch(me, p, &msg)?;
            let keep = if write { Access::Invalid } else { Access::Read };
            p.access = p.access.min(keep);
            out.push(Action::SendPage { seg, page, to, acks, keep });
            Ok(())
        }
        CoherenceMsg::Invalidate { ack_to, .. } => {
            if p.access != Access::Invalid {
                p.access = Access::Invalid;
                out.push(Action::SetAccess { seg, page, access: Access::Invalid });
            }
            out.push(Action::Send { to: ack_to, msg: CoherenceMsg::InvAck { seg, page } });
            Ok(())
        }
        _ => Err(ProtocolError::Unexpected("serve")),
    }
}

/// Opens the page once the bytes and every acknowledgement are in.
fn complete(
    seg: SegId,
    page: PageIdx,
    p: &mut NodePage,
    now: u64,
    hold: u64,
    out: &mut Vec<Action>,
) -> Result<(), ProtocolError> {
    let Some(pend) = p.pending.as_ref() else { return Ok(()) };
    let Some(needed) = pend.acks_needed else { return Ok(()) };
    if pend.acks_got > needed {
        return Err(ProtocolError::Unexpected("too many InvAck"));
    }
    if !pend.have_data || pend.acks_got < needed {
        return Ok(());
    }
    let access = if pend.write { Access::Write } else { Access::Read };
    p.pending = None;
    p.access = access;
    p.hold_until = now + hold;
    out.push(Action::SetAccess { seg, page, access });
    out.push(Action::Send { to: MANAGER, msg: CoherenceMsg::Done { seg, page } });
    Ok(())
}
