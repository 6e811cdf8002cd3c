//! The protocol as seen by the manager (node 0): who owns each page, and
//! the home copy of pages nobody owns.

use std::collections::HashMap;

use super::{
    check_payload, check_version, Action, CoherenceMsg, NodeId, PageIdx, Payload, ProtocolError, SegId,
    MANAGER, MAX_CLAIM,
};

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
}

/// The directory of every distributed page.
#[derive(Debug, Default)]
pub struct Manager {
    segs: HashMap<SegId, Vec<HomePage>>,
    /// Nodes that died: their requests are stale, pages they owned lost.
    dead: std::collections::BTreeSet<NodeId>,
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
            })
            .collect();
        self.segs.insert(seg, pages);
    }

    /// `node` died. Pages it owned are lost: their only current copy was
    /// there (a read copy elsewhere is not trusted as current). It leaves
    /// the home's read copies; its later or stale requests are ignored.
    /// Returns how many pages were lost.
    pub fn node_gone(&mut self, node: NodeId) -> usize {
        if node == MANAGER || !self.dead.insert(node) {
            return 0;
        }
        let mut lost = 0;
        for (&seg, pages) in self.segs.iter_mut() {
            let mut here = 0;
            for p in pages.iter_mut() {
                p.readers.retain(|&r| r != node);
                p.stash.retain(|s| s.0 != node);
                if p.owner == Some(node) {
                    p.owner = None;
                    p.home = None;
                    p.readers.clear();
                    here += 1;
                }
            }
            if here > 0 {
                tracing::error!(
                    seg,
                    node,
                    pages = here,
                    "pages lost: their only current copy was on a node that died"
                );
            }
            lost += here;
        }
        lost
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
                        p.home = Some(payload);
                        p.readers = copyset;
                        p.version = version;
                    } else {
                        p.stash.push((from, payload, copyset, version));
                    }
                    send(out, from, CoherenceMsg::Released { seg, page });
                    Ok(())
                } else {
                    drop_reader(seg, page, p, from, out);
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
                    drop_reader(seg, page, p, node, out);
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
        if !free || p.home != Some(Payload::Zero) {
            break;
        }
        p.home = None;
        p.owner = Some(from);
        versions.push(p.version + 1);
    }
    send(out, from, CoherenceMsg::Claimed { seg, page, count, versions });
    Ok(())
}

/// A reader gives up its copy.
fn drop_reader(seg: SegId, page: PageIdx, p: &mut HomePage, node: NodeId, out: &mut Vec<Action>) {
    match p.owner {
        Some(owner) => send(out, owner, CoherenceMsg::DropReader { seg, page, node }),
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
    if let Some(owner) = p.owner {
        if owner == from {
            return Err(ProtocolError::Unexpected("request from the owner"));
        }
        send(out, owner, CoherenceMsg::Fetch { seg, page, to: from, write });
        if write {
            p.owner = Some(from);
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
    Ok(())
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
