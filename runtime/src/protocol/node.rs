//! The protocol as seen by an application node.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::{Access, Action, CoherenceMsg, NodeId, PageIdx, Payload, ProtocolError, Report, SegId, MANAGER};

/// An outstanding request of this node for one page.
#[derive(Debug, Default)]
struct Pending {
    write: bool,
    have_data: bool,
    /// The nodes whose invalidation acknowledgements a write waits for.
    acks_needed: Option<Vec<NodeId>>,
    /// Acknowledgements received (they may come before the list).
    /// (node, version of the invalidation it acknowledged).
    acks_got: Vec<(NodeId, u64)>,
    /// The version the page will have (write) or was served at (read).
    version: u64,
    /// Who sent the bytes (the owner, for a read).
    from: NodeId,
    /// Where a read request went.
    asked: NodeId,
    /// Part of a `Claim` (no thread asked for it yet).
    claim: bool,
    /// A read asked for ahead of any fault (`Request { ahead }`).
    ahead: bool,
    /// A claimed page, or one read ahead, that a local thread faulted on
    /// meanwhile: the access it needs (`Some(write)`), asked for normally
    /// if the claim is refused or the read declined.
    wanted: Option<bool>,
}

#[derive(Debug)]
struct NodePage {
    access: Access,
    /// This node owns the page: it serves reads, keeps the copyset, and
    /// gives the page up when the manager designates another writer.
    owner: bool,
    /// When owner: nodes holding a read copy this node gave.
    copyset: Vec<NodeId>,
    /// The page's version (one more per writer): as owner, or of the read
    /// copy held.
    version: u64,
    /// Where to send a read request: the probable owner, when this node
    /// has learnt one for this page.
    hint: Option<NodeId>,
    pending: Option<Pending>,
    /// Highest version named by an `Invalidate` received: bytes served at
    /// an older version are stale.
    inval_version: u64,
    /// Requests and invalidations are not served before this time.
    hold_until: u64,
    /// Requests to serve once this node is settled as owner.
    queue: VecDeque<(NodeId, CoherenceMsg)>,
    /// Invalidations that arrived during the hold.
    deferred: VecDeque<CoherenceMsg>,
    /// A `Release` was sent and not yet answered.
    releasing: bool,
    /// The last hand-over to a writer: (to, the version it gave).
    gave: Option<(NodeId, u64)>,
    /// As owner: the nodes whose copies its last write invalidated.
    last_readers: Vec<NodeId>,
    /// Versions still to push to their readers (see [`NodeProtocol::push`]):
    /// refilled when one of `last_readers` asks for the page again.
    push_credit: u8,
    /// Those of `copyset` that got the page pushed and never asked for it:
    /// the copy may not have been installed (the node was detaching), so a
    /// write request of theirs gets the bytes, not `Grant`.
    pushed: Vec<NodeId>,
    /// Its last read-ahead was declined and nothing asked for it since:
    /// not asked ahead again.
    declined: bool,
    /// The read copy held was pushed by this node, unasked, and (`Some`)
    /// the epoch of its first access (see [`NodeProtocol::tick`]).
    push_copy: Option<(NodeId, Option<u64>)>,
    /// The version of the copy this node last gave back after using it: a
    /// read answered at that same version means it gave it back too soon.
    gave_back: Option<u64>,
    /// A pushed copy was given back too soon: pushed copies of this page
    /// are kept until invalidated.
    keep_pushed: bool,
    /// Pushed copies of this page invalidated in a row before they were
    /// given back: watching them cost a fault each and saved nothing (the
    /// owner wrote first); after [`MAX_MISSES`], pushed copies are kept.
    misses: u8,
    /// As owner: readers that gave back their copy of this version after
    /// using it; the next version is pushed to them.
    returned: Vec<NodeId>,
    /// This node asked for the page since it attached the segment: only
    /// then can a copy come unasked (a push; see the `Data` handler).
    asked: bool,
    /// As owner: readers served a version through the manager (`Fetch`),
    /// with that version; their give-backs of it are ignored.
    indirect: Vec<(NodeId, u64)>,
}

impl NodePage {
    fn new() -> Self {
        NodePage {
            access: Access::Invalid,
            owner: false,
            copyset: Vec::new(),
            version: 0,
            hint: None,
            pending: None,
            inval_version: 0,
            hold_until: 0,
            queue: VecDeque::new(),
            deferred: VecDeque::new(),
            releasing: false,
            gave: None,
            last_readers: Vec::new(),
            push_credit: 0,
            pushed: Vec::new(),
            declined: false,
            push_copy: None,
            gave_back: None,
            keep_pushed: false,
            misses: 0,
            returned: Vec::new(),
            asked: false,
            indirect: Vec::new(),
        }
    }

    /// Will own the page (or does): requests to it wait here.
    fn owner_or_becoming(&self) -> bool {
        self.owner || self.pending.as_ref().is_some_and(|p| p.write)
    }
}

/// The pages of one segment at this node.
#[derive(Debug)]
pub struct PageSet {
    pages: Vec<NodePage>,
    /// `release` ran: the node is giving the whole segment up.
    detaching: bool,
    /// The last node other than the manager that sent a page of this
    /// segment: where a read of a page with no hint goes first (see
    /// [`NodeProtocol::fault`]).
    last_sender: Option<NodeId>,
    /// A thread read a page whose read-ahead was declined: this program
    /// reads the zero pages it streams through, so reads ahead go as plain
    /// requests (one round trip for a window, not one per page).
    plain_ahead: bool,
}

/// The protocol state of one application node.
#[derive(Debug)]
pub struct NodeProtocol {
    me: NodeId,
    hold: u64,
    segs: HashMap<SegId, PageSet>,
    /// Pages with queued requests or deferred invalidations.
    waiting: BTreeSet<(SegId, PageIdx)>,
    /// Nodes known to be dead: they acknowledge nothing any more.
    dead: BTreeSet<NodeId>,
    /// Those of `dead` that left on purpose: what they sent before they
    /// closed still counts (see [`NodeProtocol::peer_gone`]).
    left: BTreeSet<NodeId>,
    /// Pages this node was asked to hand to a node that died, and kept:
    /// (dead node, segment, page), for the report about it.
    kept: Vec<(NodeId, SegId, PageIdx)>,
    /// The last hand-overs of pages of segments this node detached since
    /// (at most [`GAVE_KEPT`]): the bytes may still be on their way when
    /// the manager restarts, and only this node can tell.
    gave_gone: VecDeque<(SegId, PageIdx, NodeId, u64)>,
    /// Pages this node wrote whose new version goes to the nodes that read
    /// the old one (see [`NodeProtocol::push`]).
    pushes: Vec<(SegId, PageIdx, Vec<NodeId>)>,
    /// Write faults so far (see [`NodeProtocol::tick`]).
    epoch: u64,
    /// Pushed copies touched since they arrived, to give back (see
    /// [`NodeProtocol::tick`]).
    used: Vec<(SegId, PageIdx)>,
}

/// How many hand-overs of detached segments a node remembers.
const GAVE_KEPT: usize = 4096;

/// How many versions of a page are pushed to its readers after one of them
/// asked for it again (see [`NodeProtocol::push`]).
const PUSH_CREDIT: u8 = 8;

/// Pushed copies of a page invalidated in a row before they were given
/// back, after which that page's pushed copies are no longer watched.
const MAX_MISSES: u8 = 3;

/// At most this many pages wait to be pushed.
const MAX_PUSHES: usize = 64;

/// A page, its handlers' context, and the set of pages with work waiting.
type Parts<'a> = (&'a mut NodePage, Ctx<'a>, &'a mut BTreeSet<(SegId, PageIdx)>);

/// Whether a queued message is for a dead node (a request on its behalf, or
/// a hand-over to it); `kept` is set for a hand-over to it.
fn for_dead(dead: &BTreeSet<NodeId>, m: &CoherenceMsg, kept: &mut bool) -> bool {
    match m {
        CoherenceMsg::Fetch { to, write, .. } if dead.contains(to) => {
            *kept |= *write;
            true
        }
        CoherenceMsg::Request { requester, .. } => dead.contains(requester),
        _ => false,
    }
}

/// Context for one page's handlers.
struct Ctx<'a> {
    me: NodeId,
    dead: &'a BTreeSet<NodeId>,
    /// Hand-overs to dead nodes this node dropped (see `NodeProtocol::kept`).
    kept: &'a mut Vec<(NodeId, SegId, PageIdx)>,
    seg: SegId,
    page: PageIdx,
    now: u64,
    hold: u64,
    /// This node is releasing the whole segment.
    detaching: bool,
    out: &'a mut Vec<Action>,
}

impl Ctx<'_> {
    fn send(&mut self, to: NodeId, msg: CoherenceMsg) {
        self.out.push(Action::Send { to, msg });
    }

    fn set_access(&mut self, p: &mut NodePage, access: Access) {
        if p.access != access {
            p.access = access;
            self.out.push(Action::SetAccess { seg: self.seg, page: self.page, access });
        }
    }
}

impl NodeProtocol {
    /// `hold`: minimum time a granted page stays before it is given away.
    pub fn new(me: NodeId, hold: u64) -> Self {
        NodeProtocol {
            me,
            hold,
            segs: HashMap::new(),
            waiting: BTreeSet::new(),
            dead: BTreeSet::new(),
            left: BTreeSet::new(),
            kept: Vec::new(),
            gave_gone: VecDeque::new(),
            pushes: Vec::new(),
            epoch: 0,
            used: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Starts tracking a segment of `npages` pages (all `Invalid`).
    pub fn attach(&mut self, seg: SegId, npages: u32) {
        self.segs.entry(seg).or_insert_with(|| PageSet {
            pages: (0..npages).map(|_| NodePage::new()).collect(),
            detaching: false,
            last_sender: None,
            plain_ahead: false,
        });
    }

    /// Stops tracking a segment whose pages were all released.
    pub fn forget(&mut self, seg: SegId) {
        if let Some(set) = self.segs.remove(&seg) {
            for (i, p) in set.pages.iter().enumerate() {
                if let Some((to, v)) = p.gave {
                    self.gave_gone.push_back((seg, i as PageIdx, to, v));
                }
            }
            while self.gave_gone.len() > GAVE_KEPT {
                self.gave_gone.pop_front();
            }
        }
        self.waiting.retain(|&(s, _)| s != seg);
    }

    fn page(&self, seg: SegId, page: PageIdx) -> Option<&NodePage> {
        self.segs.get(&seg).and_then(|s| s.pages.get(page as usize))
    }

    /// Current access of this node to a page.
    pub fn access(&self, seg: SegId, page: PageIdx) -> Access {
        self.page(seg, page).map_or(Access::Invalid, |p| p.access)
    }

    /// Whether this node owns the page.
    pub fn is_owner(&self, seg: SegId, page: PageIdx) -> bool {
        self.page(seg, page).is_some_and(|p| p.owner)
    }

    /// The read copies this node gave, when it owns the page.
    pub fn copyset(&self, seg: SegId, page: PageIdx) -> Vec<NodeId> {
        self.page(seg, page).map_or_else(Vec::new, |p| p.copyset.clone())
    }

    /// Nodes of the copyset that got the page pushed and did not ask for
    /// it since (see [`Self::push`]): they may hold no copy.
    pub fn pushed(&self, seg: SegId, page: PageIdx) -> Vec<NodeId> {
        self.page(seg, page).map(|p| p.pushed.clone()).unwrap_or_default()
    }

    /// Whether a request for any page of the segment is outstanding.
    pub fn any_pending(&self, seg: SegId) -> bool {
        self.segs.get(&seg).is_some_and(|s| s.pages.iter().any(|p| p.pending.is_some()))
    }

    /// The outstanding requests of a segment: (page, write, asked, have data).
    pub fn pending(&self, seg: SegId) -> Vec<(PageIdx, bool, NodeId, bool)> {
        self.segs.get(&seg).map_or_else(Vec::new, |s| {
            s.pages
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.pending.as_ref().map(|q| (i as PageIdx, q.write, q.asked, q.have_data))
                })
                .collect()
        })
    }

    /// Whether a request for the page is outstanding.
    pub fn is_pending(&self, seg: SegId, page: PageIdx) -> bool {
        self.page(seg, page).is_some_and(|p| p.pending.is_some())
    }

    fn parts<'a>(
        &'a mut self,
        seg: SegId,
        page: PageIdx,
        now: u64,
        out: &'a mut Vec<Action>,
    ) -> Result<Parts<'a>, ProtocolError> {
        let set = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        let p = set.pages.get_mut(page as usize).ok_or(ProtocolError::PageOutOfRange { seg, page })?;
        let detaching = set.detaching;
        Ok((
            p,
            Ctx {
                me: self.me,
                dead: &self.dead,
                kept: &mut self.kept,
                seg,
                page,
                now,
                hold: self.hold,
                detaching,
                out,
            },
            &mut self.waiting,
        ))
    }

    /// A local thread needs the page (`write` or read). Returns `true` when
    /// the access is there (possibly just now: apply `out` first);
    /// otherwise a request is on its way (or already was) and the driver
    /// will see `SetAccess` when it completes. A thread that needs write
    /// while a read request is outstanding calls again after it completes.
    pub fn fault(
        &mut self,
        seg: SegId,
        page: PageIdx,
        write: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<bool, ProtocolError> {
        self.fault_or_ahead(seg, page, write, false, now, out)
    }

    /// Asks for a copy of the page to read ahead of any fault (see
    /// [`CoherenceMsg::Declined`]), unless the node has it, asked for it,
    /// or was declined it since it last asked otherwise. Returns whether a
    /// request went out.
    pub fn read_ahead(&mut self, seg: SegId, page: PageIdx, now: u64, out: &mut Vec<Action>) -> bool {
        let Some(set) = self.segs.get(&seg) else { return false };
        let plain = set.plain_ahead;
        let Some(p) = set.pages.get(page as usize) else { return false };
        if p.access != Access::Invalid || p.pending.is_some() || p.releasing || (p.declined && !plain) {
            return false;
        }
        let n = out.len();
        let r = self.fault_or_ahead(seg, page, false, !plain, now, out);
        r.is_ok() && out.len() > n
    }

    fn fault_or_ahead(
        &mut self,
        seg: SegId,
        page: PageIdx,
        write: bool,
        ahead: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<bool, ProtocolError> {
        if write {
            self.push(Some((seg, page)), now, out);
            // An owner about to invalidate the readers of this page: the
            // new version goes to them at the next push (while they keep
            // asking again for it).
            let page_ref = self.segs.get_mut(&seg).and_then(|s| s.pages.get_mut(page as usize));
            if let Some(p) = page_ref {
                let upgrade = p.owner && p.access != Access::Write && p.pending.is_none() && !p.releasing;
                let mut to = p.copyset.clone();
                to.extend(p.returned.iter().filter(|r| !p.copyset.contains(r)));
                if upgrade && !to.is_empty() && p.push_credit > 0 && self.pushes.len() < MAX_PUSHES {
                    p.push_credit -= 1;
                    self.pushes.push((seg, page, to));
                }
            }
        }
        let guess = self.segs.get(&seg).and_then(|s| s.last_sender);
        if !ahead {
            let set = self.segs.get_mut(&seg);
            if let Some(set) = set.filter(|s| s.pages.get(page as usize).is_some_and(|p| p.declined)) {
                set.plain_ahead |= !write;
                set.pages[page as usize].declined = false;
            }
        }
        let (p, mut cx, _) = self.parts(seg, page, now, out)?;
        let need = if write { Access::Write } else { Access::Read };
        if p.access >= need {
            return Ok(true);
        }
        if let Some(pend) = p.pending.as_mut() {
            if (pend.claim || pend.ahead) && !ahead {
                pend.wanted = Some(pend.wanted.unwrap_or(false) || write);
            }
            return Ok(false);
        }
        if p.releasing {
            return Err(ProtocolError::Unexpected("fault on a page being released"));
        }
        let me = cx.me;
        if p.owner {
            // An owner always holds a current copy: upgrade it here, after
            // invalidating the copies it gave.
            let version = p.version + 1;
            let others = std::mem::take(&mut p.copyset);
            p.pushed.clear();
            // Readers that gave their copy back read this version too.
            let mut readers = std::mem::take(&mut p.returned);
            readers.retain(|r| !others.contains(r));
            readers.extend_from_slice(&others);
            if !readers.is_empty() {
                p.last_readers = readers;
            }
            if others.is_empty() {
                p.version = version;
                p.hold_until = now + cx.hold;
                cx.set_access(p, Access::Write);
                return Ok(true);
            }
            for &r in &others {
                cx.send(r, CoherenceMsg::Invalidate { seg, page, ack_to: me, version });
            }
            p.pending = Some(Pending {
                write: true,
                have_data: true,
                acks_needed: Some(others),
                version,
                from: me,
                ..Pending::default()
            });
            return Ok(false);
        }
        // A read goes to the probable owner. A page this node never had
        // goes to the node that last sent a page of the segment, not the
        // manager: the pages a program reads after another node wrote
        // them (a matrix, a grid) mostly come from one writer, and the
        // manager's hop (and its work, on a machine whose CPUs the
        // program keeps busy) is saved. A wrong guess passes the request
        // on to the manager: one hop more.
        let to = match p.hint.or(guess) {
            Some(h) if !write && !cx.dead.contains(&h) => h,
            _ => MANAGER,
        };
        p.pending = Some(Pending { write, asked: to, ahead, ..Pending::default() });
        p.asked = true;
        cx.send(to, CoherenceMsg::Request { seg, page, write, requester: me, ahead });
        Ok(false)
    }

    /// How many pages after `page` (at most `max`) to ask for together with
    /// it, because they left this node together and will likely be needed
    /// together (a row of a grid spans pages). Call before [`Self::fault`]:
    /// - a read of a copy that was invalidated: the following pages that
    ///   were invalidated too and whose probable owner is the same (a
    ///   neighbour rewrote them: ask for all in one round trip);
    /// - a write of an owned read copy that others hold: the following
    ///   pages this node owns for reading with the same copyset
    ///   (invalidate them all at once rather than one round trip each),
    ///   or that were given back by the same readers (`GiveBack`: opened
    ///   for writing at once, with one local fault).
    pub fn group(&self, seg: SegId, page: PageIdx, write: bool, max: u32) -> u32 {
        let Some(set) = self.segs.get(&seg) else { return 0 };
        let Some(first) = set.pages.get(page as usize) else { return 0 };
        let idle =
            |p: &NodePage| p.pending.is_none() && !p.releasing && p.queue.is_empty() && p.deferred.is_empty();
        if !idle(first) {
            return 0;
        }
        let same = |a: &[NodeId], b: &[NodeId]| a.len() == b.len() && a.iter().all(|r| b.contains(r));
        let same_copyset =
            |p: &NodePage| same(&p.copyset, &first.copyset) && same(&p.returned, &first.returned);
        let goes_with = |p: &NodePage| {
            idle(p)
                && if write {
                    p.owner && p.access == Access::Read && same_copyset(p)
                } else {
                    !p.owner && p.access == Access::Invalid && p.inval_version > 0 && p.hint == first.hint
                }
        };
        let starts = if write {
            first.owner
                && first.access == Access::Read
                && !(first.copyset.is_empty() && first.returned.is_empty())
        } else {
            !first.owner && first.access == Access::Invalid && first.inval_version > 0 && first.hint.is_some()
        };
        if !starts {
            return 0;
        }
        set.pages.iter().skip(page as usize + 1).take(max as usize).take_while(|p| goes_with(p)).count()
            as u32
    }

    /// Claims up to `count` pages from `first` on for writing (see
    /// [`CoherenceMsg::Claim`]): those this node neither has, nor asked
    /// for, nor serves anything of, up to the first that does not qualify.
    /// Returns how many were claimed (0: no message).
    pub fn claim(&mut self, seg: SegId, first: PageIdx, count: u32, out: &mut Vec<Action>) -> u32 {
        let Some(set) = self.segs.get_mut(&seg) else { return 0 };
        let count = count.min(super::MAX_CLAIM);
        let mut n = 0;
        for p in set.pages.iter_mut().skip(first as usize).take(count as usize) {
            let idle = p.access == Access::Invalid && !p.owner && p.pending.is_none() && !p.releasing;
            if !idle || !p.queue.is_empty() || !p.deferred.is_empty() {
                break;
            }
            p.pending = Some(Pending { write: true, claim: true, asked: MANAGER, ..Pending::default() });
            p.asked = true;
            n += 1;
        }
        if n > 0 {
            out.push(Action::Send { to: MANAGER, msg: CoherenceMsg::Claim { seg, page: first, count: n } });
        }
        n
    }

    /// The manager's answer to a claim.
    fn claimed(
        &mut self,
        seg: SegId,
        first: PageIdx,
        count: u32,
        versions: Vec<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if versions.len() > count as usize {
            return Err(ProtocolError::Unexpected("Claimed more pages than claimed"));
        }
        let end = first.checked_add(count).ok_or(ProtocolError::PageOutOfRange { seg, page: first })?;
        let mut page = first;
        for version in versions {
            super::check_version(version)?;
            let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
            let pend = p.pending.as_mut().filter(|p| p.claim && !p.have_data);
            let pend = pend.ok_or(ProtocolError::Unexpected("Claimed for a page not claimed"))?;
            pend.have_data = true;
            pend.acks_needed = Some(Vec::new());
            pend.version = version;
            pend.from = MANAGER;
            cx.out.push(Action::Install { seg, page, payload: super::Payload::Zero });
            complete(p, &mut cx, waiting)?;
            page = page.checked_add(1).ok_or(ProtocolError::PageOutOfRange { seg, page })?;
        }
        // The rest of the claim was refused: ask normally for what a thread
        // wants, pass on what waited for this node.
        let me = self.me;
        while page < end {
            let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
            let pend = p.pending.take_if(|p| p.claim && !p.have_data);
            let pend = pend.ok_or(ProtocolError::Unexpected("Claimed for a page not claimed"))?;
            if let Some(write) = pend.wanted {
                let to = if write { MANAGER } else { p.hint.unwrap_or(MANAGER) };
                p.pending = Some(Pending { write, asked: to, ..Pending::default() });
                cx.send(to, CoherenceMsg::Request { seg, page, write, requester: me, ahead: false });
            }
            drain(p, &mut cx, waiting)?;
            page += 1;
        }
        Ok(())
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
        if self.dead.contains(&from) && !self.left.contains(&from) {
            // Sent before it died, arriving after its death was handled
            // (and reported to the manager as not arrived): ignored.
            return Ok(());
        }
        if let CoherenceMsg::Request { write: false, .. } = msg {
            if !self.segs.contains_key(&seg) {
                // A stale hint: this node detached the segment. The manager
                // knows the owner.
                out.push(Action::Send { to: MANAGER, msg });
                return Ok(());
            }
        }
        if !self.segs.contains_key(&seg) {
            match msg {
                // This node detached the segment and holds no copy. What
                // still comes was sent twice (the manager answers a release
                // for an owner that left after answering itself; a
                // restarted manager invalidates and asks again): an
                // invalidation is acknowledged, the rest is late.
                CoherenceMsg::Invalidate { ack_to, version, .. } => {
                    out.push(Action::Send { to: ack_to, msg: CoherenceMsg::InvAck { seg, page, version } });
                    return Ok(());
                }
                CoherenceMsg::Released { .. }
                | CoherenceMsg::Data { write: false, .. }
                | CoherenceMsg::Declined { .. }
                | CoherenceMsg::GiveBack { .. }
                | CoherenceMsg::InvAck { .. } => return Ok(()),
                // A read request of this node bounced by a detaching node,
                // asked again of the manager meanwhile (a restart) and
                // answered before this node detached too.
                CoherenceMsg::Bounce { .. } if from != MANAGER => return Ok(()),
                _ => {}
            }
        }
        if let CoherenceMsg::Claimed { count, versions, .. } = msg {
            if from != MANAGER {
                return Err(ProtocolError::Unexpected("Claimed not from the manager"));
            }
            return self.claimed(seg, page, count, versions, now, out);
        }
        let detaching = self.segs.get(&seg).is_some_and(|s| s.detaching);
        if let (CoherenceMsg::Data { .. }, Some(s)) = (&msg, self.segs.get_mut(&seg)) {
            if from != MANAGER {
                s.last_sender = Some(from);
            }
        }
        let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
        match msg {
            CoherenceMsg::Request { write: false, requester, .. } if requester != cx.me => {
                dispatch(p, &mut cx, waiting, from, msg)
            }
            CoherenceMsg::Fetch { .. } | CoherenceMsg::DropReader { .. } => {
                if from != MANAGER {
                    return Err(ProtocolError::Unexpected("Fetch/DropReader not from the manager"));
                }
                dispatch(p, &mut cx, waiting, from, msg)
            }
            CoherenceMsg::Invalidate { .. } => {
                if now < p.hold_until || !p.deferred.is_empty() {
                    p.deferred.push_back(msg);
                    cx.out.push(Action::WakeAt(p.hold_until));
                    waiting.insert((seg, page));
                    return Ok(());
                }
                invalidate(p, &mut cx, msg)
            }
            CoherenceMsg::Grant { acks, version, .. } => {
                super::check_version(version)?;
                let pend = p.pending.as_mut().ok_or(ProtocolError::Unexpected("Grant"))?;
                // A copy this node gave back (`tick`) whose owner has not
                // heard of it yet, and that nothing changed since: its
                // bytes are still in this node's memory, current.
                let given_back =
                    p.gave_back == Some(p.version) && version == p.version + 1 && p.inval_version < version;
                if !pend.write || (p.access == Access::Invalid && !given_back) || pend.have_data {
                    return Err(ProtocolError::Unexpected("Grant"));
                }
                pend.have_data = true;
                pend.acks_needed = Some(acks);
                pend.version = version;
                pend.from = from;
                complete(p, &mut cx, waiting)
            }
            CoherenceMsg::Data { write, acks, version, payload, .. } => {
                super::check_payload(&payload)?;
                super::check_version(version)?;
                let Some(pend) = p.pending.as_mut().filter(|p| !p.have_data && p.write == write) else {
                    // A duplicate answer to a read request that was sent
                    // again (after a death or a restart of the manager).
                    // A copy of an older version is never installed once
                    // this node has been invalidated since. A current one
                    // is, also while this node asks to write or claims the
                    // page: its sender counts it a reader now, and may
                    // answer that write request with `Grant` (no bytes).
                    // Not over the bytes of a write on their way.
                    let other = p.pending.as_ref().is_some_and(|q| q.have_data);
                    // Not to a page this node has not asked for since it
                    // attached the segment: a push sent before it detached
                    // the segment last (and attached it again) is stale,
                    // and its sender no longer counts it a reader.
                    // Nor a copy of the version this node gave back: its
                    // sender, which sent it before it read the `GiveBack`,
                    // will drop this node from the copyset when it does.
                    let current = version >= p.inval_version
                        && version >= p.version
                        && p.asked
                        && p.gave_back != Some(version);
                    let idle = p.access == Access::Invalid && !p.owner && !p.releasing && !detaching;
                    if !write && !other && current && idle {
                        p.version = version;
                        p.hint = Some(from);
                        p.hold_until = cx.now + cx.hold;
                        cx.out.push(Action::Install { seg, page, payload });
                        // A push (no request of this node waits): watched,
                        // to be given back once used (see `tick`).
                        p.push_copy = None;
                        if from != MANAGER && !p.keep_pushed && p.pending.is_none() {
                            p.push_copy = Some((from, None));
                            cx.out.push(Action::Watch { seg, page });
                        }
                        cx.set_access(p, Access::Read);
                    }
                    return Ok(());
                };
                if !pend.write && version < p.inval_version {
                    // Served before a write that has already invalidated
                    // this node: stale. Ask again, from the new writer.
                    let me = cx.me;
                    let to = p.hint.filter(|h| !cx.dead.contains(h)).unwrap_or(MANAGER);
                    pend.asked = to;
                    cx.send(
                        to,
                        CoherenceMsg::Request { seg, page, write: false, requester: me, ahead: false },
                    );
                    return Ok(());
                }
                if !write && p.gave_back == Some(version) {
                    // Asked again for the copy this node gave back: it was
                    // still in use. Pushed copies of this page are kept.
                    p.keep_pushed = true;
                }
                pend.have_data = true;
                pend.acks_needed = Some(acks);
                pend.version = version;
                pend.from = from;
                cx.out.push(Action::Install { seg, page, payload });
                complete(p, &mut cx, waiting)
            }
            CoherenceMsg::InvAck { version, .. } => {
                // A second acknowledgement (a restarted manager invalidates
                // the copies it finds older than the page again), or one
                // for an earlier write, changes nothing.
                let Some(pend) = p.pending.as_mut().filter(|q| q.write) else { return Ok(()) };
                if pend.acks_got.contains(&(from, version)) {
                    return Ok(());
                }
                pend.acks_got.push((from, version));
                complete(p, &mut cx, waiting)
            }
            CoherenceMsg::Released { .. } => {
                if !p.releasing {
                    // A second answer: after a death, the manager answers
                    // for a dead owner, and so may this node itself.
                    return Ok(());
                }
                p.releasing = false;
                p.owner = false;
                p.copyset.clear();
                p.returned.clear();
                cx.out.push(Action::Released { seg, page });
                Ok(())
            }
            CoherenceMsg::GiveBack { version, .. } => {
                // Only for the version this node owns and gave `from`, and
                // not while a write of this node invalidates it (that
                // invalidation is acknowledged anyway). Its next version
                // goes to `from` as a push; `from` used the copy, which
                // earns the page pushes.
                // Nor when `from` was served this version through the
                // manager: that request may have overtaken this give-back
                // (it left `from` after it), and `from` then holds the copy
                // served, which its next invalidation must reach.
                if p.owner
                    && p.pending.is_none()
                    && !p.releasing
                    && p.version == version
                    && p.copyset.contains(&from)
                    && !p.indirect.contains(&(from, version))
                {
                    p.copyset.retain(|&r| r != from);
                    p.pushed.retain(|&r| r != from);
                    if !p.returned.contains(&from) {
                        p.returned.push(from);
                    }
                    p.push_credit = PUSH_CREDIT;
                }
                Ok(())
            }
            CoherenceMsg::Declined { .. } => {
                if from != MANAGER {
                    return Err(ProtocolError::Unexpected("Declined not from the manager"));
                }
                // Not for a read asked ahead and still waiting (a duplicate
                // after a death or a restart, answered otherwise): nothing.
                let Some(pend) = p.pending.take_if(|q| q.ahead && !q.write && !q.have_data) else {
                    return Ok(());
                };
                p.declined = pend.wanted.is_none();
                if let Some(write) = pend.wanted {
                    // A thread faulted on it meanwhile: ask as for a fault.
                    let me = cx.me;
                    p.pending = Some(Pending { write, asked: MANAGER, ..Pending::default() });
                    cx.send(MANAGER, CoherenceMsg::Request { seg, page, write, requester: me, ahead: false });
                }
                drain(p, &mut cx, waiting)
            }
            CoherenceMsg::Lost { .. } => {
                if from != MANAGER {
                    return Err(ProtocolError::Unexpected("Lost"));
                }
                // Not waiting: the answer to a request asked again after a
                // death, whose first answer came after all.
                if p.pending.take().is_some() {
                    // No current copy exists: neither is one here.
                    cx.set_access(p, Access::Invalid);
                    p.hint = Some(MANAGER);
                    cx.out.push(Action::Lost { seg, page });
                    // What waited here for the page goes back to the
                    // manager, which answers it (`Lost`); the writers
                    // designated after this node were told already.
                    for (_, m) in std::mem::take(&mut p.queue) {
                        match m {
                            CoherenceMsg::Request { write: false, .. } => cx.send(MANAGER, m),
                            CoherenceMsg::Fetch { to, write: false, .. } => cx.send(
                                MANAGER,
                                CoherenceMsg::Request {
                                    seg,
                                    page,
                                    write: false,
                                    requester: to,
                                    ahead: false,
                                },
                            ),
                            CoherenceMsg::DropReader { node, .. } => {
                                cx.send(node, CoherenceMsg::Released { seg, page })
                            }
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            CoherenceMsg::Bounce { inner, .. } if from != MANAGER => {
                // The node this one asked is detaching the segment: ask the
                // manager (unless the request was asked again meanwhile).
                let me = cx.me;
                match *inner {
                    CoherenceMsg::Request { seg: s, page: q, write: false, requester, .. }
                        if s == seg && q == page && requester == me =>
                    {
                        if let Some(pend) =
                            p.pending.as_mut().filter(|q| !q.write && !q.have_data && q.asked == from)
                        {
                            pend.asked = MANAGER;
                            p.hint = None;
                            cx.send(
                                MANAGER,
                                CoherenceMsg::Request {
                                    seg,
                                    page,
                                    write: false,
                                    requester: me,
                                    ahead: false,
                                },
                            );
                        }
                        Ok(())
                    }
                    _ => Err(ProtocolError::Unexpected("Bounce at a node")),
                }
            }
            CoherenceMsg::Request { .. }
            | CoherenceMsg::Release { .. }
            | CoherenceMsg::Bounce { .. }
            | CoherenceMsg::Claim { .. }
            | CoherenceMsg::Claimed { .. } => Err(ProtocolError::Unexpected("manager message at a node")),
        }
    }

    /// A node died (or left; the nameserver tells every node, and a lost
    /// connection tells this one). It acknowledges nothing any more: writes
    /// waiting for its acknowledgement proceed; it is nobody's probable
    /// owner; every read this node waits for is asked of the manager again
    /// (it may have been forwarded to the dead node); its messages still on
    /// their way are ignored; a page this node was to hand to it stays here
    /// (now or when the manager's `Fetch` comes later). Once the manager
    /// has declared it dead, [`Self::report`] says what this node holds.
    ///
    /// A node that `left` (closed after giving every page back) had every
    /// message it sent acknowledged by its receiver before it closed, but
    /// this node may not have read them all yet (the nameserver's word can
    /// come first): they are still handled when they come (a hand-over out
    /// of it is not recovered by the manager, so this is its only way
    /// here).
    pub fn peer_gone(
        &mut self,
        node: NodeId,
        left: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if node == MANAGER || !self.dead.insert(node) {
            return Ok(());
        }
        if left {
            self.left.insert(node);
        }
        let me = self.me;
        let mut writes = Vec::new();
        for (&seg, set) in self.segs.iter_mut() {
            for (i, p) in set.pages.iter_mut().enumerate() {
                let page = i as PageIdx;
                if p.hint == Some(node) && p.releasing && !p.owner {
                    // The release of a read copy the dead owner gave: the
                    // owner would have answered it; nobody else will.
                    p.releasing = false;
                    out.push(Action::Released { seg, page });
                }
                p.copyset.retain(|&r| r != node);
                let mut kept = false;
                p.queue.retain(|(from, m)| *from != node && !for_dead(&self.dead, m, &mut kept));
                if kept {
                    self.kept.push((node, seg, page));
                }
                let Some(pend) = p.pending.as_mut() else { continue };
                if pend.write {
                    writes.push((seg, page));
                } else if !pend.have_data {
                    pend.asked = MANAGER;
                    out.push(Action::Send {
                        to: MANAGER,
                        msg: CoherenceMsg::Request { seg, page, write: false, requester: me, ahead: false },
                    });
                }
            }
        }
        for (seg, page) in writes {
            let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
            complete(p, &mut cx, waiting)?;
        }
        Ok(())
    }

    /// The [`Report`] for the manager about dead node `node` (after
    /// [`Self::peer_gone`]), when the nameserver has declared it dead: the
    /// read copies it gave that are still here (current: it would have
    /// invalidated them before writing; the driver fills in the bytes,
    /// `Payload::Zero` here), this node's writes and reads still waiting,
    /// and the pages it was to hand to the dead node and kept.
    pub fn report(&mut self, node: NodeId) -> Report {
        let mut report = Report::default();
        for (&seg, set) in self.segs.iter() {
            for (i, p) in set.pages.iter().enumerate() {
                let page = i as PageIdx;
                if p.hint == Some(node) && p.access == Access::Read && !p.owner && !p.releasing {
                    report.copies.push((seg, page, p.version, Payload::Zero));
                }
                match &p.pending {
                    // A claim is answered by the manager, which does not die.
                    Some(q) if q.write && !q.have_data && !q.claim => report.waiting.push((seg, page)),
                    Some(q) if !q.write && !q.have_data => report.reading.push((seg, page)),
                    _ => {}
                }
            }
        }
        self.kept.retain(|&(d, seg, page)| {
            if d == node {
                report.kept.push((seg, page));
            }
            d != node
        });
        report
    }

    /// What this node holds, waits for and hands over of every page, for
    /// a restarted manager ([`super::Rejoin`]). A releasing owner's bytes
    /// are left `Payload::Zero` for the driver to fill in.
    pub fn rejoin(&self) -> super::Rejoin {
        let mut v = Vec::new();
        for (&seg, set) in self.segs.iter() {
            for (i, p) in set.pages.iter().enumerate() {
                let pend = p.pending.as_ref();
                let mut r = super::PageReport {
                    seg,
                    page: i as PageIdx,
                    known: p.version.max(p.inval_version).max(pend.map_or(0, |q| q.version)),
                    gave: p.gave,
                    ..Default::default()
                };
                if p.releasing && p.owner {
                    r.releasing = Some((Payload::Zero, p.copyset.clone(), p.version));
                } else if p.releasing {
                    r.dropping = true;
                } else if p.owner {
                    r.owns = Some(pend.filter(|q| q.write).map_or(p.version, |q| q.version));
                } else if p.access == Access::Read {
                    r.copy = Some(p.version);
                }
                if let Some(q) = pend.filter(|q| q.write && q.have_data) {
                    let got = |n: &NodeId| q.acks_got.contains(&(*n, q.version)) || self.dead.contains(n);
                    r.awaiting = q.acks_needed.iter().flatten().filter(|n| !got(n)).copied().collect();
                }
                match pend {
                    Some(q) if q.write && q.have_data && !p.owner => r.owns = Some(q.version),
                    Some(q) if q.claim && !q.have_data => r.claiming = true,
                    Some(q) if q.write && !q.have_data => r.writing = true,
                    Some(q) if !q.write && !q.have_data => r.reading = true,
                    _ => {}
                }
                for (_, m) in &p.queue {
                    if let CoherenceMsg::Fetch { to, write: true, .. } = m {
                        r.handoffs.push(*to);
                    }
                }
                let quiet = r.owns.is_none()
                    && r.releasing.is_none()
                    && r.copy.is_none()
                    && !(r.writing || r.claiming || r.reading || r.dropping)
                    && r.gave.is_none();
                if !quiet {
                    v.push(r);
                }
            }
        }
        for &(seg, page, to, version) in &self.gave_gone {
            match v.iter_mut().find(|r| r.seg == seg && r.page == page) {
                Some(r) => {
                    if r.gave.is_none_or(|g| g.1 < version) {
                        r.gave = Some((to, version));
                    }
                }
                None => {
                    v.push(super::PageReport { seg, page, gave: Some((to, version)), ..Default::default() })
                }
            }
        }
        v.sort_unstable_by_key(|r| (r.seg, r.page));
        v
    }

    /// Sends the pages this node wrote since the last push to the nodes
    /// that read their previous versions and asked again for the version
    /// after (a halo row a neighbour reads after every step; see
    /// docs/design.md, "Pushes"), as if they had asked: this node keeps a
    /// read copy and counts them readers. A write fault on another page
    /// calls it (`skip`: that page), before its own invalidations leave, so a
    /// reader gets the pages written before a progress flag ahead of the
    /// flag's invalidation, on the same stream; a page still in its hold
    /// goes when its thread moves on ([`Self::end_hold`]), never when the
    /// hold's timer runs out. Pushing is serving a read early: sequential
    /// consistency holds as for any read.
    pub fn push(&mut self, skip: Option<(SegId, PageIdx)>, now: u64, out: &mut Vec<Action>) {
        if self.pushes.is_empty() {
            return;
        }
        let me = self.me;
        for (seg, page, to) in std::mem::take(&mut self.pushes) {
            if skip == Some((seg, page)) {
                self.pushes.push((seg, page, to));
                continue;
            }
            let Some(set) = self.segs.get_mut(&seg) else { continue };
            if set.detaching {
                continue;
            }
            let Some(p) = set.pages.get_mut(page as usize) else { continue };
            if p.pending.as_ref().is_some_and(|q| q.write && q.have_data) {
                // Still waiting for the readers' acknowledgements.
                self.pushes.push((seg, page, to));
                continue;
            }
            let settled = p.owner && p.access == Access::Write && p.pending.is_none() && !p.releasing;
            if !settled || !p.queue.is_empty() || !p.deferred.is_empty() {
                continue;
            }
            if now < p.hold_until {
                // The hold protects the write that faulted: pushed once
                // the thread has moved on (`end_hold`), or at a write
                // fault on another page after the hold, never when a timer
                // runs out. A thread not yet run since its fault (on two
                // busy CPUs that takes longer than the hold) would fault
                // again, and invalidate the copy just pushed: an
                // invalidation round trip on the writer's path.
                self.pushes.push((seg, page, to));
                continue;
            }
            for r in to {
                if r == me || r == MANAGER || self.dead.contains(&r) || p.copyset.contains(&r) {
                    continue;
                }
                p.access = Access::Read;
                p.copyset.push(r);
                p.pushed.push(r);
                out.push(Action::SendPage {
                    seg,
                    page,
                    to: r,
                    acks: Vec::new(),
                    version: p.version,
                    keep: Access::Read,
                });
            }
        }
    }

    /// A local thread touched a pushed copy (the driver kept it closed
    /// after [`Action::Watch`] and opened it at that access): it will be
    /// given back at a later write fault (see [`Self::tick`]).
    pub fn touched(&mut self, seg: SegId, page: PageIdx) {
        let epoch = self.epoch;
        let page_ref = self.segs.get_mut(&seg).and_then(|s| s.pages.get_mut(page as usize));
        if let Some((_, used @ None)) = page_ref.and_then(|p| p.push_copy.as_mut()) {
            *used = Some(epoch);
            self.used.push((seg, page));
        }
    }

    /// A local thread faults to write: the next epoch begins. Pushed copies
    /// first touched before the previous write fault are given back to the
    /// owner that pushed them (`GiveBack`), which then writes the page
    /// again without invalidating this node, and pushes the version after.
    /// A program that reads a neighbour's row once per step, then
    /// publishes its own progress (a write), is done with that row by its
    /// next step's publication; the neighbour writes the row again after
    /// that, and no longer waits for an invalidation round trip. A copy
    /// given back too soon (read again before the owner wrote it) turns
    /// this off for its page. Giving a copy back is only dropping it
    /// early, so sequential consistency holds as for any invalidation.
    ///
    /// `writing`: the segment the write fault is in (`None`: a `semop`).
    /// A copy touched in the current epoch waits for the next one if the
    /// fault is in its own segment (a loop may be reading it while it
    /// stores into the segment); a store elsewhere (a progress flag in its
    /// own segment) or a `semop` is taken as a publication, after which the
    /// copies touched so far are done with.
    pub fn tick(&mut self, writing: Option<SegId>, now: u64, out: &mut Vec<Action>) {
        let epoch = self.epoch;
        self.epoch += 1;
        for (seg, page) in std::mem::take(&mut self.used) {
            let Some(set) = self.segs.get_mut(&seg).filter(|s| !s.detaching) else { continue };
            let Some(p) = set.pages.get_mut(page as usize) else { continue };
            let Some((owner, Some(first))) = p.push_copy else { continue };
            let copy = p.access == Access::Read && !p.owner && p.pending.is_none() && !p.releasing;
            if !copy || self.dead.contains(&owner) {
                p.push_copy = None;
                continue;
            }
            let grace = writing == Some(seg) && first >= epoch;
            if grace || now < p.hold_until || !p.deferred.is_empty() {
                self.used.push((seg, page));
                continue;
            }
            p.push_copy = None;
            p.misses = 0;
            p.gave_back = Some(p.version);
            p.access = Access::Invalid;
            out.push(Action::SetAccess { seg, page, access: Access::Invalid });
            out.push(Action::Send {
                to: owner,
                msg: CoherenceMsg::GiveBack { seg, page, version: p.version },
            });
        }
    }

    /// Serves what waited for a hold to expire.
    pub fn handle_timeout(&mut self, now: u64, out: &mut Vec<Action>) -> Result<(), ProtocolError> {
        let due: Vec<(SegId, PageIdx)> = self.waiting.iter().copied().collect();
        for (seg, page) in due {
            let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
            if p.hold_until > now {
                cx.out.push(Action::WakeAt(p.hold_until));
                continue;
            }
            while let Some(msg) = p.deferred.pop_front() {
                invalidate(p, &mut cx, msg)?;
            }
            drain(p, &mut cx, waiting)?;
            if p.queue.is_empty() && p.deferred.is_empty() {
                waiting.remove(&(seg, page));
            }
        }
        Ok(())
    }

    /// The access a local thread faulted for has run (the driver knows:
    /// the thread has faulted since at another instruction): the page's
    /// hold ends now. What waited for it is served and pushes go.
    pub fn end_hold(
        &mut self,
        seg: SegId,
        page: PageIdx,
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        let (p, mut cx, waiting) = self.parts(seg, page, now, out)?;
        if p.hold_until > now {
            p.hold_until = now;
            while let Some(msg) = p.deferred.pop_front() {
                invalidate(p, &mut cx, msg)?;
            }
            drain(p, &mut cx, waiting)?;
            if p.queue.is_empty() && p.deferred.is_empty() {
                waiting.remove(&(seg, page));
            }
        }
        // Also when the hold ran out before: what waits to be pushed goes
        // now (see `push`).
        self.push(None, now, out);
        Ok(())
    }

    /// Gives every copy of the segment up. Owned pages go back to the
    /// manager with their bytes (`ReleasePage`); read copies with a
    /// `Release`. The driver waits for one `Released` per page before
    /// calling [`Self::forget`]. Returns the number of pages released. No
    /// request may be outstanding.
    pub fn release(&mut self, seg: SegId, out: &mut Vec<Action>) -> Result<usize, ProtocolError> {
        let set = self.segs.get(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        // Refuse before changing anything.
        if set.pages.iter().any(|p| p.pending.is_some()) {
            return Err(ProtocolError::Unexpected("release with a request outstanding"));
        }
        // What waited here is served first; then every page closes (one
        // run of `SetAccess`, which the driver revokes in few `mprotect`s),
        // then the releases go, each after its page closed.
        self.serve_held(seg, out)?;
        let me = self.me;
        let hold = self.hold;
        let set = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        let mut released = Vec::new();
        for (i, p) in set.pages.iter_mut().enumerate() {
            if p.owner || p.access != Access::Invalid {
                p.releasing = true;
                let mut cx = Ctx {
                    me,
                    dead: &self.dead,
                    kept: &mut self.kept,
                    seg,
                    page: i as PageIdx,
                    now: u64::MAX,
                    hold,
                    detaching: true,
                    out,
                };
                cx.set_access(p, Access::Invalid);
                released.push(i as PageIdx);
            }
        }
        for &page in &released {
            let p = &set.pages[page as usize];
            out.push(if p.owner {
                Action::ReleasePage { seg, page, copyset: p.copyset.clone(), version: p.version }
            } else {
                Action::Send { to: MANAGER, msg: CoherenceMsg::Release { seg, page, owned: None } }
            });
        }
        self.waiting.retain(|&(s, _)| s != seg);
        Ok(released.len())
    }

    /// The first step of giving a segment up: serves every request and
    /// invalidation that waits here, holds or not, and from now on sends
    /// read requests for pages this node does not own back to their
    /// requesters. A process exit does this for every segment, and lets
    /// the answers leave, before the first release: a release (the bytes
    /// of every page owned) keeps the runtime busy for milliseconds, and
    /// the peer waiting for the page this process wrote last (a barrier, a
    /// progress flag) would wait that long.
    pub fn serve_held(&mut self, seg: SegId, out: &mut Vec<Action>) -> Result<(), ProtocolError> {
        let me = self.me;
        let hold = self.hold;
        let set = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        set.detaching = true;
        for (i, p) in set.pages.iter_mut().enumerate() {
            if p.deferred.is_empty() && p.queue.is_empty() {
                continue;
            }
            let page = i as PageIdx;
            let mut cx = Ctx {
                me,
                dead: &self.dead,
                kept: &mut self.kept,
                seg,
                page,
                now: u64::MAX,
                hold,
                detaching: true,
                out,
            };
            while let Some(msg) = p.deferred.pop_front() {
                invalidate(p, &mut cx, msg)?;
            }
            drain(p, &mut cx, &mut self.waiting)?;
        }
        Ok(())
    }
}

/// A read request, `Fetch` or `DropReader` for this node: served now,
/// queued until this node is a settled owner, bounced or forwarded.
fn dispatch(
    p: &mut NodePage,
    cx: &mut Ctx,
    waiting: &mut BTreeSet<(SegId, PageIdx)>,
    from: NodeId,
    msg: CoherenceMsg,
) -> Result<(), ProtocolError> {
    let (seg, page) = (cx.seg, cx.page);
    // Reject the impossible on arrival, not when it is served.
    match msg {
        CoherenceMsg::Fetch { to, .. } | CoherenceMsg::Request { requester: to, .. }
            if to == cx.me || to == MANAGER =>
        {
            return Err(ProtocolError::Unexpected("request on behalf of this node or the manager"));
        }
        _ => {}
    }
    let mut kept = false;
    if for_dead(cx.dead, &msg, &mut kept) {
        // For a node that died: nobody to serve; a page to hand to it stays.
        if kept {
            cx.kept.push((
                match msg {
                    CoherenceMsg::Fetch { to, .. } => to,
                    _ => MANAGER,
                },
                seg,
                page,
            ));
        }
        return Ok(());
    }
    if p.releasing || !p.owner_or_becoming() {
        return match msg {
            // Giving the segment up (a process exit): the requester asks
            // the manager itself. Passed on, the request would wait behind
            // every release (the bytes of every page this node owned) on
            // the way to the manager.
            CoherenceMsg::Request { requester, write: false, .. } if cx.detaching && requester == from => {
                cx.send(requester, CoherenceMsg::Bounce { seg, page, inner: Box::new(msg) });
                Ok(())
            }
            // Not (or no longer) the owner: the manager knows who is.
            CoherenceMsg::Request { .. } => {
                cx.send(MANAGER, msg);
                Ok(())
            }
            // The release went first; the manager serves these from it.
            CoherenceMsg::Fetch { .. } | CoherenceMsg::DropReader { .. } if p.releasing && p.owner => {
                cx.send(MANAGER, CoherenceMsg::Bounce { seg, page, inner: Box::new(msg) });
                Ok(())
            }
            _ => Err(ProtocolError::Unexpected("Fetch/DropReader at a node that does not own the page")),
        };
    }
    p.queue.push_back((from, msg));
    drain(p, cx, waiting)
}

/// Serves queued requests while this node is a settled owner past its hold.
fn drain(
    p: &mut NodePage,
    cx: &mut Ctx,
    waiting: &mut BTreeSet<(SegId, PageIdx)>,
) -> Result<(), ProtocolError> {
    while !p.queue.is_empty() {
        if p.owner_or_becoming() && !p.releasing {
            if p.pending.is_some() {
                return Ok(()); // `complete` drains again.
            }
            if cx.now < p.hold_until {
                cx.out.push(Action::WakeAt(p.hold_until));
                waiting.insert((cx.seg, cx.page));
                return Ok(());
            }
        }
        let (from, msg) = p.queue.pop_front().expect("not empty");
        if p.owner && !p.releasing {
            serve(p, cx, from, msg)?;
        } else {
            dispatch(p, cx, waiting, from, msg)?;
        }
    }
    Ok(())
}

/// Serves one request as the settled owner.
fn serve(p: &mut NodePage, cx: &mut Ctx, from: NodeId, msg: CoherenceMsg) -> Result<(), ProtocolError> {
    let (seg, page, me) = (cx.seg, cx.page, cx.me);
    match msg {
        CoherenceMsg::Request { requester: to, write: false, .. }
        | CoherenceMsg::Fetch { to, write: false, .. } => {
            if to == me || to == MANAGER {
                return Err(ProtocolError::Unexpected("read request for the owner itself"));
            }
            if from != to {
                // Through the manager: it may have overtaken a give-back
                // of this version on `to`'s own stream (see `GiveBack`).
                p.indirect.retain(|&(_, v)| v == p.version);
                if !p.indirect.contains(&(to, p.version)) {
                    p.indirect.push((to, p.version));
                }
            }
            p.access = p.access.min(Access::Read);
            if p.last_readers.contains(&to) {
                // It read the last version too: it will read the next.
                p.push_credit = PUSH_CREDIT;
            }
            p.pushed.retain(|&r| r != to);
            cx.out.push(Action::SendPage {
                seg,
                page,
                to,
                acks: Vec::new(),
                version: p.version,
                keep: Access::Read,
            });
            if !p.copyset.contains(&to) {
                p.copyset.push(to);
            }
        }
        CoherenceMsg::Fetch { to, write: true, .. } => {
            if to == me || to == MANAGER {
                return Err(ProtocolError::Unexpected("write request for the owner itself"));
            }
            let version = p.version + 1;
            let copyset = std::mem::take(&mut p.copyset);
            let had_copy = copyset.contains(&to) && !p.pushed.contains(&to);
            p.pushed.clear();
            let others: Vec<NodeId> = copyset.into_iter().filter(|&r| r != to).collect();
            for &r in &others {
                cx.send(r, CoherenceMsg::Invalidate { seg, page, ack_to: to, version });
            }
            let acks = others;
            if had_copy {
                cx.set_access(p, Access::Invalid);
                cx.send(to, CoherenceMsg::Grant { seg, page, acks, version });
            } else {
                p.access = Access::Invalid;
                cx.out.push(Action::SendPage { seg, page, to, acks, version, keep: Access::Invalid });
            }
            p.owner = false;
            p.returned.clear();
            p.hint = Some(to);
            p.gave = Some((to, version));
        }
        CoherenceMsg::DropReader { node, .. } => {
            p.copyset.retain(|&r| r != node);
            p.pushed.retain(|&r| r != node);
            cx.send(node, CoherenceMsg::Released { seg, page });
        }
        _ => return Err(ProtocolError::Unexpected("serve")),
    }
    Ok(())
}

/// Drops this node's read copy.
fn invalidate(p: &mut NodePage, cx: &mut Ctx, msg: CoherenceMsg) -> Result<(), ProtocolError> {
    let CoherenceMsg::Invalidate { ack_to, version, .. } = msg else {
        return Err(ProtocolError::Unexpected("invalidate"));
    };
    if (p.owner || p.access != Access::Invalid) && p.version >= version {
        // Not older than the version it names: sent again after a restart
        // of the manager, this copy is newer than the one it was meant for.
        cx.send(ack_to, CoherenceMsg::InvAck { seg: cx.seg, page: cx.page, version });
        return Ok(());
    }
    if p.owner {
        return Err(ProtocolError::Unexpected("Invalidate at the owner"));
    }
    p.inval_version = p.inval_version.max(version);
    if p.push_copy.take().is_some() && p.access == Access::Read {
        p.misses += 1;
        p.keep_pushed |= p.misses >= MAX_MISSES;
    }
    cx.set_access(p, Access::Invalid);
    p.hint = Some(ack_to);
    cx.send(ack_to, CoherenceMsg::InvAck { seg: cx.seg, page: cx.page, version });
    Ok(())
}

/// Opens the page once the bytes and every acknowledgement are in.
fn complete(
    p: &mut NodePage,
    cx: &mut Ctx,
    waiting: &mut BTreeSet<(SegId, PageIdx)>,
) -> Result<(), ProtocolError> {
    let Some(pend) = p.pending.as_ref() else { return Ok(()) };
    let Some(needed) = pend.acks_needed.as_ref() else { return Ok(()) };
    // Acknowledgements from nodes not in `needed` (invalidated again after
    // a restart of the manager) do not count.
    let acked = |n: &NodeId| pend.acks_got.contains(&(*n, pend.version)) || cx.dead.contains(n);
    if !pend.have_data || !needed.iter().all(acked) {
        return Ok(());
    }
    let pend = p.pending.take().expect("checked");
    p.push_copy = None;
    if pend.write {
        p.owner = true;
        p.version = pend.version;
        p.copyset.clear();
        p.hint = Some(cx.me);
        cx.set_access(p, Access::Write);
    } else {
        p.hint = Some(pend.from);
        p.version = pend.version;
        cx.set_access(p, Access::Read);
    }
    p.hold_until = cx.now + cx.hold;
    drain(p, cx, waiting)
}
