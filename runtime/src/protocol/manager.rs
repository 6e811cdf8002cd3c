//! The protocol as seen by the manager (node 0): who owns each page, and
//! the home copy of pages nobody owns.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    check_payload, check_version, Action, CoherenceMsg, HomeState, NodeId, PageIdx, PageReport, Payload,
    ProtocolError, Rejoin, Report, SegId, MANAGER, MAX_CLAIM,
};

/// Most designations a page remembers (see `HomePage::chain`): more writers
/// than this waiting for one page at once is not recovered after a death.
const CHAIN: usize = 64;

#[derive(Debug)]
struct HomePage {
    /// The owning node; `None`: the home owns the page.
    owner: Option<NodeId>,
    /// When the home owns the page: the current bytes.
    home: Option<Payload>,
    /// When the home owns the page: nodes holding a read copy it gave.
    readers: Vec<NodeId>,
    /// When the home owns the page: the page's version.
    version: u64,
    /// Releases that arrived after the page had been designated to another
    /// node: (releasing node, bytes, copyset, version). The releasing node
    /// bounces the designation back, and it is served from here.
    stash: Vec<(NodeId, Payload, Vec<NodeId>, u64)>,
    /// The nodes designated owner for writing, in order, since the home
    /// last held the page (the last is `owner`): the manager does not know
    /// which hand-overs along it are complete. After a death it finds the
    /// broken one from the survivors' reports.
    chain: Vec<NodeId>,
    /// Deaths whose recovery this page waits for; requests wait in
    /// `parked` meanwhile.
    suspect: u32,
    parked: Vec<(NodeId, bool)>,
    /// Releases of read copies passed to the owner (owner, reader): if the
    /// owner dies before it answers, the manager does. At most `CHAIN`.
    dropping: Vec<(NodeId, NodeId)>,
    /// The page left the home by a grant to this node, and the home's
    /// bytes (on disk) are those it gave (see [`HomeState::Given`]).
    given: Option<NodeId>,
    /// When `given` from a release that reached the manager after the
    /// page was designated (`stash`): its bytes, for the disk.
    given_bytes: Option<Payload>,
    /// After a restart, until [`Manager::rebuild`]: the state on disk and
    /// the home's bytes.
    restored: Option<(HomeState, Payload)>,
}

impl HomePage {
    fn new(home: Option<Payload>, version: u64) -> Self {
        HomePage {
            owner: None,
            home,
            readers: Vec::new(),
            version,
            stash: Vec::new(),
            chain: Vec::new(),
            suspect: 0,
            parked: Vec::new(),
            dropping: Vec::new(),
            given: None,
            given_bytes: None,
            restored: None,
        }
    }
}

/// A segment as a previous nameserver left it on disk: every page's state
/// and home bytes.
pub type Restored = Vec<(HomeState, Payload)>;

/// The recovery after a death: the survivors' reports, and the pages the
/// dead node owned or was in a hand-over of.
#[derive(Debug, Default)]
struct Recovery {
    awaiting: BTreeSet<NodeId>,
    reports: Vec<(NodeId, Report)>,
    pages: Vec<(SegId, PageIdx)>,
    /// Readers that released their copy of a page meanwhile: a copy they
    /// report is gone.
    dropped: Vec<(SegId, PageIdx, NodeId)>,
    /// The node left on purpose (see [`Manager::node_left`]).
    left: bool,
}

/// The directory of every distributed page.
#[derive(Debug, Default)]
pub struct Manager {
    segs: HashMap<SegId, Vec<HomePage>>,
    /// Nodes that died: their requests are stale, pages they owned lost.
    dead: BTreeSet<NodeId>,
    /// Recoveries under way, by dead node.
    recovering: BTreeMap<NodeId, Recovery>,
    /// Pages whose state at the home may have changed (when `track`).
    dirty: BTreeSet<(SegId, PageIdx)>,
    track: bool,
}

/// Who holds a page, as the manager sees it (for tests and `ipcs`).
#[derive(Debug, PartialEq, Eq)]
pub struct Holders {
    /// The owner, when it is not the home.
    pub owner: Option<NodeId>,
    /// Read copies the home gave (when the home owns the page).
    pub readers: Vec<NodeId>,
}

impl Manager {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new segment: every page is a zero page at home.
    pub fn create(&mut self, seg: SegId, npages: u32) {
        self.create_with(seg, (0..npages).map(|_| Payload::Zero).collect());
    }

    /// A segment whose home copies are given.
    pub fn create_with(&mut self, seg: SegId, pages: Vec<Payload>) {
        self.segs.insert(seg, pages.into_iter().map(|p| HomePage::new(Some(p), 0)).collect());
        if self.track {
            let n = self.segs[&seg].len() as PageIdx;
            self.dirty.extend((0..n).map(|i| (seg, i)));
        }
    }

    /// Nodes declared dead before a restart: their messages are stale.
    pub fn mark_dead(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        self.dead.extend(nodes);
    }

    /// Keeps a list of the pages whose [`HomeState`] may have changed
    /// ([`Self::take_dirty`]), for a nameserver that keeps it on disk.
    pub fn track_changes(&mut self) {
        self.track = true;
    }

    /// The pages whose state at the home may have changed since last asked.
    pub fn take_dirty(&mut self) -> Vec<(SegId, PageIdx)> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    fn touch(&mut self, seg: SegId, page: PageIdx, count: u32) {
        if self.track {
            self.dirty.extend((0..count).filter_map(|i| page.checked_add(i)).map(|p| (seg, p)));
        }
    }

    /// A page's state at the home, and the home's bytes when it owns them.
    pub fn home_state(&self, seg: SegId, page: PageIdx) -> Option<(HomeState, Option<&Payload>)> {
        let p = self.segs.get(&seg)?.get(page as usize)?;
        let version = p.version;
        if let Some((st, _)) = &p.restored {
            return Some((*st, None)); // Not rebuilt yet: as on disk.
        }
        Some(match (&p.owner, &p.home) {
            (Some(_), _) => match p.given {
                Some(to) => (HomeState::Given { version, to }, p.given_bytes.as_ref()),
                None => (HomeState::Away { version }, None),
            },
            (None, Some(h)) => (HomeState::Home { version, zero: *h == Payload::Zero }, Some(h)),
            (None, None) => (HomeState::Lost { version }, None),
        })
    }

    /// A segment as a previous nameserver left it; pages the home did not
    /// own wait for [`Self::rebuild`].
    pub fn restore(&mut self, seg: SegId, pages: Restored) {
        let pages = pages
            .into_iter()
            .map(|(st, payload)| match st {
                HomeState::Home { version, .. } => HomePage::new(Some(payload), version),
                HomeState::Given { version, .. }
                | HomeState::Away { version }
                | HomeState::Lost { version } => {
                    let mut p = HomePage::new(None, version);
                    p.restored = Some((st, payload));
                    p
                }
            })
            .collect();
        self.segs.insert(seg, pages);
    }

    /// After a restart: rebuilds who owns each page that was away from
    /// the home from the nodes' reports (`reports`: every node that came
    /// back; `gone`: the members that did not, now dead), then asks again
    /// for what the nodes wait for. Per page (docs/design.md, "Nameserver
    /// restart"):
    /// - the node that holds it at the highest version, or, if higher, the
    ///   writer its last holder handed it to (the bytes are on their way),
    ///   is the head; the writers designated after it, whose hand-overs
    ///   wait at their predecessors, follow it; the last is the owner;
    /// - a holder that was giving it back gives it back now;
    /// - otherwise the home owns it if it did (on disk), or if it gave it
    ///   to a writer that still waits for it and nobody heard of a later
    ///   version (the grant was lost with the nameserver);
    /// - otherwise it is lost (its holder died meanwhile).
    ///
    /// Then the writes nobody was handing over, the reads, the claims
    /// (refused: asked for normally) and the releases of read copies are
    /// served as if they had just arrived.
    pub fn rebuild(&mut self, reports: Vec<(NodeId, Rejoin)>, gone: &[NodeId], out: &mut Vec<Action>) {
        for &n in gone {
            self.dead.insert(n);
        }
        let mut by_page: HashMap<(SegId, PageIdx), Vec<(NodeId, PageReport)>> = HashMap::new();
        for (node, rejoin) in reports {
            for r in rejoin {
                // Impossible entries (a page outside its segment, a short
                // payload, a version at its limit) are left out, with a line.
                let versions = [r.owns, r.copy, r.gave.map(|g| g.1), r.releasing.as_ref().map(|x| x.2)];
                let sound = self.check(r.seg, r.page).is_ok()
                    && versions.iter().flatten().all(|&v| check_version(v).is_ok())
                    && r.releasing.as_ref().is_none_or(|x| check_payload(&x.0).is_ok());
                if sound {
                    by_page.entry((r.seg, r.page)).or_default().push((node, r));
                } else {
                    tracing::warn!(
                        node,
                        seg = r.seg,
                        page = r.page,
                        "impossible entry in a rejoin report ignored"
                    );
                }
            }
        }
        let mut lost: BTreeMap<SegId, usize> = BTreeMap::new();
        let mut segs: Vec<SegId> = self.segs.keys().copied().collect();
        segs.sort_unstable();
        for seg in segs {
            let n = self.segs[&seg].len() as PageIdx;
            for page in 0..n {
                let es = by_page.remove(&(seg, page)).unwrap_or_default();
                let p = &mut self.segs.get_mut(&seg).expect("listed")[page as usize];
                if !rebuild_page(seg, page, p, &es, &self.dead, out) {
                    *lost.entry(seg).or_default() += 1;
                }
                if self.track {
                    self.dirty.insert((seg, page));
                }
            }
        }
        for (seg, pages) in lost {
            tracing::error!(
                seg,
                pages,
                "pages lost across the nameserver's restart: their holder did not come back"
            );
        }
    }

    /// `node` died; `live` are the nodes still registered. Every page it
    /// owned, or was in a hand-over of, waits (requests for it are parked)
    /// until every live node has sent its [`Report`] (`report`); then each
    /// is recovered: from the node that still holds it, from a current read
    /// copy, or else declared lost (`Lost` to the writers waiting for it,
    /// and to every later request). It leaves the home's read copies; its
    /// later or stale requests are ignored.
    pub fn node_gone(&mut self, node: NodeId, live: &[NodeId], out: &mut Vec<Action>) {
        self.gone(node, live, false, out);
    }

    /// `node` exited after giving every page back: everything it was handed
    /// it had passed on, and its last messages were acknowledged before it
    /// closed (`Transport::close`). Nothing of its pages is missing: it
    /// only leaves the hand-over chains. It is otherwise handled as a death
    /// (its later messages ignored, reads that reached it after it closed
    /// answered again once the survivors reported them).
    pub fn node_left(&mut self, node: NodeId, live: &[NodeId], out: &mut Vec<Action>) {
        self.gone(node, live, true, out);
    }

    fn gone(&mut self, node: NodeId, live: &[NodeId], left: bool, out: &mut Vec<Action>) {
        if node == MANAGER || !self.dead.insert(node) {
            return;
        }
        let mut done = Vec::new();
        for (&d, r) in self.recovering.iter_mut() {
            if r.awaiting.remove(&node) && r.awaiting.is_empty() {
                done.push(d);
            }
        }
        let mut rec = Recovery { left, ..Recovery::default() };
        for (&seg, pages) in self.segs.iter_mut() {
            for (i, p) in pages.iter_mut().enumerate() {
                p.readers.retain(|&r| r != node);
                p.stash.retain(|s| s.0 != node);
                p.parked.retain(|&(n, _)| n != node);
                for &(owner, reader) in &p.dropping {
                    if owner == node && !self.dead.contains(&reader) {
                        out.push(Action::Send {
                            to: reader,
                            msg: CoherenceMsg::Released { seg, page: i as PageIdx },
                        });
                        rec.dropped.push((seg, i as PageIdx, reader));
                    }
                }
                p.dropping.retain(|&(o, r)| o != node && r != node);
                if p.owner == Some(node) || p.chain.contains(&node) {
                    p.suspect += 1;
                    rec.pages.push((seg, i as PageIdx));
                }
            }
        }
        rec.awaiting = live.iter().copied().filter(|&n| n != MANAGER && !self.dead.contains(&n)).collect();
        if rec.awaiting.is_empty() {
            done.push(node);
        }
        tracing::info!(node, left, pages = rec.pages.len(), awaiting = ?rec.awaiting, "recovering the pages of a node gone");
        self.recovering.insert(node, rec);
        for d in done {
            self.finish(d, out);
        }
    }

    /// The nodes whose report about a death is still awaited.
    pub fn awaiting_reports(&self) -> BTreeSet<NodeId> {
        self.recovering.values().flat_map(|r| r.awaiting.iter().copied()).collect()
    }

    /// A survivor's report after the death of `dead`.
    pub fn report(
        &mut self,
        from: NodeId,
        dead: NodeId,
        report: Report,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if from == MANAGER || from == dead {
            return Err(ProtocolError::Unexpected("report from the manager or about oneself"));
        }
        for &(seg, page) in report.waiting.iter().chain(&report.kept).chain(&report.reading) {
            self.check(seg, page)?;
        }
        for (seg, page, version, payload) in &report.copies {
            self.check(*seg, *page)?;
            check_version(*version)?;
            check_payload(payload)?;
        }
        if self.dead.contains(&from) {
            return Ok(());
        }
        tracing::debug!(from, dead, "recovery report");
        match self.recovering.get_mut(&dead) {
            Some(r) => {
                if r.awaiting.remove(&from) {
                    r.reports.push((from, report));
                    if r.awaiting.is_empty() {
                        self.finish(dead, out);
                    }
                }
            }
            // Finished (or this node registered after the death).
            None if self.dead.contains(&dead) => {}
            None => return Err(ProtocolError::Unexpected("report about a node not declared dead")),
        }
        Ok(())
    }

    fn check(&self, seg: SegId, page: PageIdx) -> Result<(), ProtocolError> {
        let pages = self.segs.get(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        pages.get(page as usize).map(|_| ()).ok_or(ProtocolError::PageOutOfRange { seg, page })
    }

    /// Every report about `dead` is in: recover its pages and serve what
    /// waited for them.
    fn finish(&mut self, dead: NodeId, out: &mut Vec<Action>) {
        let Some(rec) = self.recovering.remove(&dead) else { return };
        for &(seg, page) in &rec.pages {
            self.touch(seg, page, 1);
        }
        tracing::info!(node = dead, pages = rec.pages.len(), "every survivor reported: recovering");
        let mut lost: BTreeMap<SegId, usize> = BTreeMap::new();
        for &(seg, page) in &rec.pages {
            let Some(p) = self.segs.get_mut(&seg).and_then(|ps| ps.get_mut(page as usize)) else { continue };
            p.suspect = p.suspect.saturating_sub(1);
            let dropped: Vec<NodeId> =
                rec.dropped.iter().filter(|d| d.0 == seg && d.1 == page).map(|d| d.2).collect();
            if !recover(seg, page, p, dead, rec.left, &rec.reports, &dropped, out) {
                *lost.entry(seg).or_default() += 1;
            }
            // Reads that may have gone to the dead node before it was known
            // dead are answered again (a node ignores a second answer).
            for (n, r) in &rec.reports {
                if r.reading.contains(&(seg, page)) && !p.parked.contains(&(*n, false)) {
                    p.parked.push((*n, false));
                }
            }
            if p.suspect == 0 {
                for (n, write) in std::mem::take(&mut p.parked) {
                    // Errors only for impossible requests, already refused.
                    let _ = request(&self.dead, seg, page, p, n, write, out);
                }
            }
        }
        for (seg, pages) in lost {
            tracing::error!(
                seg,
                node = dead,
                pages,
                "pages lost: their only current copy was on a node that died"
            );
        }
    }

    /// The segment is gone (removed and detached everywhere).
    pub fn destroy(&mut self, seg: SegId) {
        self.segs.remove(&seg);
    }

    pub fn holders(&self, seg: SegId, page: PageIdx) -> Option<Holders> {
        let p = self.segs.get(&seg)?.get(page as usize)?;
        Some(Holders { owner: p.owner, readers: p.readers.clone() })
    }

    /// How many pages of the segment a node other than the home owns
    /// (for `kdipc ipcs`).
    pub fn pages_away(&self, seg: SegId) -> u32 {
        self.segs.get(&seg).map_or(0, |ps| ps.iter().filter(|p| p.owner.is_some()).count() as u32)
    }

    /// The home copy of a page, if the home owns it.
    pub fn home_copy(&self, seg: SegId, page: PageIdx) -> Option<&Payload> {
        let p = self.segs.get(&seg)?.get(page as usize)?;
        p.owner.is_none().then_some(p.home.as_ref()).flatten()
    }

    /// A message from node `from`.
    pub fn handle(
        &mut self,
        from: NodeId,
        msg: CoherenceMsg,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if from == MANAGER {
            return Err(ProtocolError::Unexpected("message from the manager to itself"));
        }
        let (seg, page) = msg.target();
        if self.dead.contains(&from) {
            return Ok(()); // Late: it died after sending this.
        }
        // A late message about a segment destroyed meanwhile.
        let pages = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        if let CoherenceMsg::Claim { count, .. } = msg {
            let r = claim(seg, page, count, pages, from, out);
            self.touch(seg, page, count.min(MAX_CLAIM));
            return r;
        }
        self.touch(seg, page, 1);
        let pages = self.segs.get_mut(&seg).ok_or(ProtocolError::UnknownSegment(seg))?;
        let p = pages.get_mut(page as usize).ok_or(ProtocolError::PageOutOfRange { seg, page })?;
        match msg {
            CoherenceMsg::Request { requester, write: false, ahead: true, .. }
                if p.owner.is_none()
                    && p.readers.is_empty()
                    && p.stash.is_empty()
                    && p.suspect == 0
                    && p.parked.is_empty()
                    && p.home == Some(Payload::Zero)
                    && !self.dead.contains(&requester)
                    && requester != MANAGER =>
            {
                // Read ahead, of a page nobody has written: no copy (see
                // `CoherenceMsg::Declined`), so that a writer can still
                // claim it.
                send(out, requester, CoherenceMsg::Declined { seg, page });
                Ok(())
            }
            CoherenceMsg::Request { requester, write, .. } => {
                // A node forwards requests for others (`requester`).
                request(&self.dead, seg, page, p, requester, write, out)
            }
            CoherenceMsg::Release { owned, .. } => {
                if let Some((payload, copyset, version)) = owned {
                    check_payload(&payload)?;
                    check_version(version)?;
                    let mut copyset = copyset;
                    copyset.retain(|&r| r != from && r != MANAGER);
                    if p.owner == Some(from) {
                        p.owner = None;
                        p.given = None;
                        p.given_bytes = None;
                        p.chain.clear();
                        p.home = Some(payload);
                        p.readers = copyset;
                        p.version = version;
                    } else {
                        // Designated to the next writer meanwhile: it is
                        // served from here when `from` bounces the `Fetch`
                        // back. Kept on disk as given to it until then.
                        if let Some(to) =
                            p.chain.iter().rposition(|&n| n == from).and_then(|i| p.chain.get(i + 1))
                        {
                            p.given = Some(*to);
                            p.given_bytes = Some(payload.clone());
                            p.version = version;
                        }
                        p.stash.push((from, payload, copyset, version));
                    }
                    send(out, from, CoherenceMsg::Released { seg, page });
                    Ok(())
                } else {
                    drop_reader(&self.dead, seg, page, p, from, out);
                    Ok(())
                }
            }
            CoherenceMsg::Bounce { inner, .. } => match *inner {
                // An owner that released the page returns what reached it
                // meanwhile; its `Release` arrived first.
                CoherenceMsg::Fetch { to, write: false, .. } => {
                    request(&self.dead, seg, page, p, to, false, out)
                }
                CoherenceMsg::Fetch { to, write: true, .. } => {
                    // The designation of `to` reached a node that had
                    // released the page: serve it from that release.
                    let i = p
                        .stash
                        .iter()
                        .position(|s| s.0 == from)
                        .ok_or(ProtocolError::Unexpected("Bounce of a write without a release"))?;
                    let (_, payload, copyset, version) = p.stash.swap_remove(i);
                    grant_write(seg, page, to, copyset, payload.clone(), version + 1, out);
                    // Given from here as from the home: kept on disk until
                    // `to` has it.
                    p.version = version;
                    p.given = Some(to);
                    p.given_bytes = Some(payload);
                    Ok(())
                }
                CoherenceMsg::DropReader { node, .. } => {
                    drop_reader(&self.dead, seg, page, p, node, out);
                    Ok(())
                }
                _ => Err(ProtocolError::Unexpected("Bounce of this message")),
            },
            _ => Err(ProtocolError::Unexpected("node message at the manager")),
        }
    }
}

fn send(out: &mut Vec<Action>, to: NodeId, msg: CoherenceMsg) {
    out.push(Action::Send { to, msg });
}

/// `from` claims `page..page + count` for writing: it gets the prefix of
/// zero pages at home that nobody holds a copy of.
fn claim(
    seg: SegId,
    page: PageIdx,
    count: u32,
    pages: &mut [HomePage],
    from: NodeId,
    out: &mut Vec<Action>,
) -> Result<(), ProtocolError> {
    let end = page as usize + count as usize;
    if count == 0 || count > MAX_CLAIM || end > pages.len() {
        return Err(ProtocolError::PageOutOfRange { seg, page: page.saturating_add(count) });
    }
    let mut versions = Vec::new();
    for p in &mut pages[page as usize..end] {
        let free = p.owner.is_none() && p.readers.is_empty() && p.stash.is_empty();
        if !free || p.suspect > 0 || !p.parked.is_empty() || p.home != Some(Payload::Zero) {
            break;
        }
        p.home = None;
        p.owner = Some(from);
        p.given = Some(from);
        p.given_bytes = None;
        p.chain = vec![from];
        p.dropping.retain(|&(_, r)| r != from);
        versions.push(p.version + 1);
    }
    send(out, from, CoherenceMsg::Claimed { seg, page, count, versions });
    Ok(())
}

/// A reader gives up its copy.
fn drop_reader(
    dead: &BTreeSet<NodeId>,
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    node: NodeId,
    out: &mut Vec<Action>,
) {
    match p.owner {
        // A dead owner answers nothing; its copyset died with it.
        Some(owner) if !dead.contains(&owner) => {
            send(out, owner, CoherenceMsg::DropReader { seg, page, node });
            p.dropping.push((owner, node));
            if p.dropping.len() > CHAIN {
                p.dropping.remove(0);
            }
        }
        Some(_) => send(out, node, CoherenceMsg::Released { seg, page }),
        None => {
            p.readers.retain(|&r| r != node);
            send(out, node, CoherenceMsg::Released { seg, page });
        }
    }
}

fn request(
    dead: &std::collections::BTreeSet<NodeId>,
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    from: NodeId,
    write: bool,
    out: &mut Vec<Action>,
) -> Result<(), ProtocolError> {
    if from == MANAGER {
        return Err(ProtocolError::Unexpected("request for the manager"));
    }
    if dead.contains(&from) {
        return Ok(()); // Nobody to answer.
    }
    p.dropping.retain(|&(_, r)| r != from);
    if p.owner == Some(from) && !write {
        // A read asked twice (after a death or a restart) whose first
        // answer came: the node has since been designated the writer.
        return Ok(());
    }
    if p.suspect > 0 {
        // After a death, until the page is recovered.
        if p.owner == Some(from) {
            return Err(ProtocolError::Unexpected("request from the owner"));
        }
        p.parked.push((from, write));
        return Ok(());
    }
    if let Some(owner) = p.owner {
        if owner == from {
            return Err(ProtocolError::Unexpected("request from the owner"));
        }
        send(out, owner, CoherenceMsg::Fetch { seg, page, to: from, write });
        if write {
            p.owner = Some(from);
            if p.chain.last() != Some(&owner) {
                p.chain.push(owner);
            }
            p.chain.push(from);
            if p.chain.len() > CHAIN {
                p.chain.remove(0);
            }
        }
        return Ok(());
    }
    let Some(home) = &p.home else {
        tracing::error!(seg, page, node = from, "page lost: no current copy exists");
        send(out, from, CoherenceMsg::Lost { seg, page });
        return Ok(());
    };
    if !write {
        send(
            out,
            from,
            CoherenceMsg::Data {
                seg,
                page,
                write: false,
                acks: Vec::new(),
                version: p.version,
                payload: home.clone(),
            },
        );
        if !p.readers.contains(&from) {
            p.readers.push(from);
        }
        return Ok(());
    }
    let home = p.home.take().unwrap_or(Payload::Zero);
    let readers = std::mem::take(&mut p.readers);
    grant_write(seg, page, from, readers, home, p.version + 1, out);
    p.owner = Some(from);
    p.given = Some(from);
    p.given_bytes = None;
    p.chain = vec![from];
    Ok(())
}

/// Recovers a page after the death of `dead`, given every survivor's
/// report. Returns `false` when the page is lost.
///
/// The dead node either held the page (the last in `chain`, or `owner`) or
/// was one hand-over along `chain`. If the node after it in the chain got
/// its bytes (it does not report waiting), nothing is missing. Otherwise
/// the bytes are where they still are: at the node that was to hand the
/// page to the dead one and kept it (`kept`), or in a read copy the dead
/// owner gave (`copies`: valid copies are current, since an owner writes
/// only after every copy acknowledged its invalidation). Failing both, the
/// page is lost: the waiting writers get `Lost`, and so does every later
/// request.
///
/// A node that `left` on purpose completed every hand-over out of it: it
/// only leaves the chain. (Its owning the page still would be a release
/// that never came: recovered as a death.)
#[allow(clippy::too_many_arguments)]
fn recover(
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    dead: NodeId,
    left: bool,
    reports: &[(NodeId, Report)],
    dropped: &[NodeId],
    out: &mut Vec<Action>,
) -> bool {
    let j = p.chain.iter().rposition(|&n| n == dead);
    if j.is_none() && p.owner != Some(dead) {
        return true; // Given back meanwhile.
    }
    if left && p.owner != Some(dead) {
        p.chain.retain(|&n| n != dead);
        return true;
    }
    let waiting = |n: NodeId| reports.iter().any(|(f, r)| *f == n && r.waiting.contains(&(seg, page)));
    let next = j.and_then(|j| p.chain.get(j + 1).copied());
    let rest: Vec<NodeId> = j.map_or_else(Vec::new, |j| p.chain[j + 1..].to_vec());
    // The node after the dead one waits for the bytes from it only if its
    // write is that designation: designated again later, or with a write
    // request parked here since the death (a node asks once per write, so
    // that is a new write), it got them then and waits for a later
    // hand-over now.
    let again =
        rest.iter().skip(1).any(|&n| Some(n) == next) || next.is_some_and(|n| p.parked.contains(&(n, true)));
    if next.is_some_and(|n| again || !waiting(n)) {
        p.chain.retain(|&n| n != dead);
        return true; // The hand-over out of the dead node completed.
    }
    let keeper = reports.iter().find(|(_, r)| r.kept.contains(&(seg, page))).map(|(f, _)| *f);
    if let Some(k) = keeper {
        p.chain.retain(|&n| n != dead);
        match next {
            Some(to) => send(out, k, CoherenceMsg::Fetch { seg, page, to, write: true }),
            None => p.owner = Some(k),
        }
        tracing::warn!(
            seg,
            page,
            node = dead,
            keeper = k,
            "page kept by the node that was to hand it to a dead one"
        );
        return true;
    }
    let copies: Vec<(NodeId, u64, &Payload)> = reports
        .iter()
        .filter(|(f, _)| !dropped.contains(f))
        .flat_map(|(f, r)| {
            r.copies.iter().filter(|c| c.0 == seg && c.1 == page).map(move |c| (*f, c.2, &c.3))
        })
        .collect();
    if let Some(&(_, version, payload)) = copies.iter().max_by_key(|c| c.1) {
        let mut holders: Vec<NodeId> = copies.iter().map(|c| c.0).collect();
        holders.dedup();
        if copies.iter().any(|c| c.1 != version) {
            tracing::error!(seg, page, "read copies of different versions after a death");
        }
        let payload = payload.clone();
        match next {
            Some(to) => {
                grant_write(seg, page, to, holders, payload, version + 1, out);
                p.chain = rest;
                p.given = None;
                p.given_bytes = None;
            }
            None => {
                p.owner = None;
                p.given = None;
                p.given_bytes = None;
                p.home = Some(payload);
                p.version = version;
                p.readers = holders;
                p.chain.clear();
            }
        }
        tracing::warn!(
            seg,
            page,
            node = dead,
            version,
            "page recovered from a read copy after its owner died"
        );
        return true;
    }
    for &w in &rest {
        send(out, w, CoherenceMsg::Lost { seg, page });
    }
    p.owner = None;
    p.given = None;
    p.given_bytes = None;
    p.home = None;
    p.readers.clear();
    p.chain.clear();
    false
}

/// Makes `to` the writer of a page whose current bytes and copyset are
/// here: every other copy is invalidated, acknowledged to `to`. The bytes
/// go too, also to a reader: a copyset an owner gave back may name a node
/// it pushed the page to and that did not keep it (see `NodeProtocol::push`).
fn grant_write(
    seg: SegId,
    page: PageIdx,
    to: NodeId,
    copyset: Vec<NodeId>,
    payload: Payload,
    version: u64,
    out: &mut Vec<Action>,
) {
    let others: Vec<NodeId> = copyset.into_iter().filter(|&r| r != to).collect();
    for &r in &others {
        send(out, r, CoherenceMsg::Invalidate { seg, page, ack_to: to, version });
    }
    let acks = others;
    send(out, to, CoherenceMsg::Data { seg, page, write: true, acks, version, payload });
}

/// Rebuilds one page after a restart (see [`Manager::rebuild`]); `es` are
/// the reports about it. Returns `false` when the page is lost.
fn rebuild_page(
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    es: &[(NodeId, PageReport)],
    dead: &BTreeSet<NodeId>,
    out: &mut Vec<Action>,
) -> bool {
    let restored = p.restored.take();
    let get = |n: NodeId| es.iter().find(|(m, _)| *m == n).map(|(_, r)| r);
    let writing = |n: NodeId| get(n).is_some_and(|r| r.writing);
    let holder =
        es.iter().filter_map(|(n, r)| r.owns.or(r.releasing.as_ref().map(|x| x.2)).map(|v| (v, *n))).max();
    // A hand-over on its way gives a version newer than any copy (the
    // giver invalidated them at that version); an older one is history.
    let held = es
        .iter()
        .map(|(_, r)| r.owns.max(r.copy).max(r.releasing.as_ref().map(|x| x.2)).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let heard = es.iter().map(|(_, r)| r.known).max().unwrap_or(0);
    // A version the home got back was not on its way (its writer gave the
    // page back, and may ask again after attaching anew, knowing nothing).
    let home_has = p.home.is_some().then_some(p.version);
    let inflight = es
        .iter()
        .filter_map(|(_, r)| r.gave)
        .filter(|&(to, v)| {
            writing(to)
                && get(to).is_some_and(|r| r.known < v)
                && v > held
                && v >= heard
                && home_has.is_none_or(|h| v > h)
        })
        .max_by_key(|g| g.1);
    let head = match (holder, inflight) {
        (Some((hv, h)), Some((to, v))) => Some(if v > hv { to } else { h }),
        (Some((_, h)), None) => Some(h),
        (None, Some((to, _))) => Some(to),
        (None, None) => None,
    };
    // Copies older than the head's version are invalidated (again: the
    // manager's own `Invalidate`s of a grant from the home were lost with
    // it; a node acknowledges twice, harmlessly).
    let head_version = head.map(|h| {
        let own = get(h).and_then(|r| r.owns.or(r.releasing.as_ref().map(|x| x.2)));
        own.or(inflight.filter(|g| g.0 == h).map(|g| g.1)).unwrap_or(0)
    });
    if let (Some(h), Some(v)) = (head, head_version) {
        let mut to: BTreeSet<NodeId> =
            get(h).map(|r| r.awaiting.iter().copied().collect()).unwrap_or_default();
        for (n, r) in es {
            // A reader giving its copy back acknowledges too.
            if r.copy.is_some_and(|c| c < v) || r.dropping {
                to.insert(*n);
            }
        }
        for n in to.into_iter().filter(|&n| n != h && n != MANAGER && !dead.contains(&n)) {
            send(out, n, CoherenceMsg::Invalidate { seg, page, ack_to: h, version: v });
        }
    }
    let mut chain = Vec::new();
    let mut ok = true;
    match head.map(|h| (h, get(h).and_then(|r| r.releasing.clone()))) {
        Some((h, Some((payload, copyset, version)))) if get(h).is_some_and(|r| r.owns.is_none()) => {
            // It was giving the page back: the home takes it now, unless
            // it had (its bytes at that version are on disk).
            // (A page home on disk comes back home, not as `restored`.)
            let done = (p.home.is_some() && p.version >= version)
                || matches!(restored, Some((HomeState::Home { version: v, .. }, _)) if v >= version);
            if !done {
                p.home = Some(payload);
                p.version = version;
            }
            p.readers =
                copyset.into_iter().filter(|&r| r != h && r != MANAGER && !dead.contains(&r)).collect();
            send(out, h, CoherenceMsg::Released { seg, page });
        }
        Some((h, _)) => {
            chain.push(h);
            let mut cur = h;
            while let Some(&next) = get(cur).and_then(|r| r.handoffs.first()) {
                if !writing(next) || chain.contains(&next) {
                    break;
                }
                chain.push(next);
                cur = next;
            }
            p.home = None;
            p.owner = chain.last().copied();
            p.given = None;
            p.given_bytes = None;
        }
        None => {
            let known = es
                .iter()
                .map(|(_, r)| r.known.max(r.owns.unwrap_or(0)).max(r.copy.unwrap_or(0)))
                .max()
                .unwrap_or(0);
            match restored {
                // It was home (then `p` already has it), or the grant of
                // it was lost with the nameserver: the writer still waits
                // and no node heard of a newer version.
                None => {}
                Some((HomeState::Home { .. }, payload)) => p.home = Some(payload),
                // (The grant's own invalidations name `version + 1`.)
                Some((HomeState::Given { version, to }, payload))
                    if known <= version + 1
                        && get(to).is_some_and(|r| (r.writing || r.claiming) && r.known <= version) =>
                {
                    p.home = Some(payload);
                    p.version = version;
                }
                Some((st, _)) => {
                    if !matches!(st, HomeState::Lost { .. }) {
                        tracing::error!(
                            seg,
                            page,
                            "page lost: its holder did not come back after the restart"
                        );
                    }
                    ok = false;
                }
            }
        }
    }
    p.chain = chain.clone();
    if !es.is_empty() {
        tracing::debug!(seg, page, ?head, ?chain, owner = ?p.owner, home = p.home.is_some(), reports = ?es.iter().map(|(n, r)| (n, r.owns, r.copy.is_some(), r.writing, r.reading, r.claiming, &r.handoffs, r.gave)).collect::<Vec<_>>(), "rebuilt page");
    }
    if p.owner.is_none() && p.home.is_some() {
        // Every valid read copy of a page the home owns is current. A node
        // still reading it may have a copy on its way too: the last owner
        // served it, then gave the page back to the old manager, whose
        // copyset died with it; the next writer invalidates it as well
        // (a node acknowledges an invalidation with or without a copy).
        for (n, r) in es {
            let copy = r.copy.is_some() && r.owns.is_none() && r.releasing.is_none();
            let reading = r.reading && !r.writing && !dead.contains(n);
            if (copy || reading) && !p.readers.contains(n) {
                p.readers.push(*n);
            }
        }
    }
    // What the nodes wait for, asked again. A release by a node that is
    // not the page's holder is moot.
    for (n, r) in es {
        if r.releasing.is_some() && Some(*n) != head {
            send(out, *n, CoherenceMsg::Released { seg, page });
        }
        if r.claiming {
            send(out, *n, CoherenceMsg::Claimed { seg, page, count: 1, versions: Vec::new() });
        }
    }
    // Writers nobody hands the page to: asked for again, each followed by
    // the writers whose hand-overs wait at it. The writers some node
    // hands it to come with that node.
    let targets: BTreeSet<NodeId> = es.iter().flat_map(|(_, r)| r.handoffs.iter().copied()).collect();
    for pass in 0..2 {
        for (n, r) in es {
            if !r.writing || p.chain.contains(n) || (pass == 0 && targets.contains(n)) {
                continue;
            }
            if p.owner.is_none() && p.home.is_none() {
                send(out, *n, CoherenceMsg::Lost { seg, page });
                continue;
            }
            let _ = request(dead, seg, page, p, *n, true, out);
            let mut cur = *n;
            while let Some(&next) = get(cur).and_then(|r| r.handoffs.first()) {
                if !writing(next) || p.chain.contains(&next) {
                    break;
                }
                p.chain.push(next);
                p.owner = Some(next);
                cur = next;
            }
        }
    }
    for (n, r) in es {
        if r.reading && !r.writing {
            if p.owner.is_none() && p.home.is_none() {
                send(out, *n, CoherenceMsg::Lost { seg, page });
            } else if p.owner != Some(*n) {
                let _ = request(dead, seg, page, p, *n, false, out);
            }
        }
        if r.dropping {
            drop_reader(dead, seg, page, p, *n, out);
        }
    }
    ok
}
