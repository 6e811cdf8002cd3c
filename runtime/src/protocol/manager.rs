//! The protocol as seen by the manager (node 0): who owns each page, and
//! the home copy of pages nobody owns.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    check_payload, check_version, Action, CoherenceMsg, NodeId, PageIdx, Payload, ProtocolError, Report,
    SegId, MANAGER, MAX_CLAIM,
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
}

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
}

/// The directory of every distributed page.
#[derive(Debug, Default)]
pub struct Manager {
    segs: HashMap<SegId, Vec<HomePage>>,
    /// Nodes that died: their requests are stale, pages they owned lost.
    dead: BTreeSet<NodeId>,
    /// Recoveries under way, by dead node.
    recovering: BTreeMap<NodeId, Recovery>,
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

    /// A segment whose home copies are given (restored state).
    pub fn create_with(&mut self, seg: SegId, pages: Vec<Payload>) {
        let pages = pages
            .into_iter()
            .map(|p| HomePage {
                owner: None,
                home: Some(p),
                readers: Vec::new(),
                version: 0,
                stash: Vec::new(),
                chain: Vec::new(),
                suspect: 0,
                parked: Vec::new(),
                dropping: Vec::new(),
            })
            .collect();
        self.segs.insert(seg, pages);
    }

    /// `node` died; `live` are the nodes still registered. Every page it
    /// owned, or was in a hand-over of, waits (requests for it are parked)
    /// until every live node has sent its [`Report`] (`report`); then each
    /// is recovered: from the node that still holds it, from a current read
    /// copy, or else declared lost (`Lost` to the writers waiting for it,
    /// and to every later request). It leaves the home's read copies; its
    /// later or stale requests are ignored.
    pub fn node_gone(&mut self, node: NodeId, live: &[NodeId], out: &mut Vec<Action>) {
        if node == MANAGER || !self.dead.insert(node) {
            return;
        }
        let mut done = Vec::new();
        for (&d, r) in self.recovering.iter_mut() {
            if r.awaiting.remove(&node) && r.awaiting.is_empty() {
                done.push(d);
            }
        }
        let mut rec = Recovery::default();
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
        tracing::info!(node, pages = rec.pages.len(), awaiting = ?rec.awaiting, "recovering the pages of a dead node");
        self.recovering.insert(node, rec);
        for d in done {
            self.finish(d, out);
        }
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
        tracing::info!(node = dead, pages = rec.pages.len(), "every survivor reported: recovering");
        let mut lost: BTreeMap<SegId, usize> = BTreeMap::new();
        for &(seg, page) in &rec.pages {
            let Some(p) = self.segs.get_mut(&seg).and_then(|ps| ps.get_mut(page as usize)) else { continue };
            p.suspect = p.suspect.saturating_sub(1);
            let dropped: Vec<NodeId> =
                rec.dropped.iter().filter(|d| d.0 == seg && d.1 == page).map(|d| d.2).collect();
            if !recover(seg, page, p, dead, &rec.reports, &dropped, out) {
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
            return claim(seg, page, count, pages, from, out);
        }
        let p = pages.get_mut(page as usize).ok_or(ProtocolError::PageOutOfRange { seg, page })?;
        match msg {
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
                        p.chain.clear();
                        p.home = Some(payload);
                        p.readers = copyset;
                        p.version = version;
                    } else {
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
                    grant_write(seg, page, to, copyset, payload, version + 1, out);
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
fn recover(
    seg: SegId,
    page: PageIdx,
    p: &mut HomePage,
    dead: NodeId,
    reports: &[(NodeId, Report)],
    dropped: &[NodeId],
    out: &mut Vec<Action>,
) -> bool {
    let j = p.chain.iter().rposition(|&n| n == dead);
    if j.is_none() && p.owner != Some(dead) {
        return true; // Given back meanwhile.
    }
    let waiting = |n: NodeId| reports.iter().any(|(f, r)| *f == n && r.waiting.contains(&(seg, page)));
    let next = j.and_then(|j| p.chain.get(j + 1).copied());
    let rest: Vec<NodeId> = j.map_or_else(Vec::new, |j| p.chain[j + 1..].to_vec());
    // The node after the dead one waits for the bytes from it only if its
    // write is that designation: designated again later, it got them then
    // and waits for a later hand-over now.
    let again = rest.iter().skip(1).any(|&n| Some(n) == next);
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
            }
            None => {
                p.owner = None;
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
    p.home = None;
    p.readers.clear();
    p.chain.clear();
    false
}

/// Makes `to` the writer of a page whose current bytes and copyset are
/// here: every other copy is invalidated, acknowledged to `to`.
fn grant_write(
    seg: SegId,
    page: PageIdx,
    to: NodeId,
    copyset: Vec<NodeId>,
    payload: Payload,
    version: u64,
    out: &mut Vec<Action>,
) {
    let had_copy = copyset.contains(&to);
    let others: Vec<NodeId> = copyset.into_iter().filter(|&r| r != to).collect();
    for &r in &others {
        send(out, r, CoherenceMsg::Invalidate { seg, page, ack_to: to, version });
    }
    let acks = others;
    if had_copy {
        send(out, to, CoherenceMsg::Grant { seg, page, acks, version });
    } else {
        send(out, to, CoherenceMsg::Data { seg, page, write: true, acks, version, payload });
    }
}
