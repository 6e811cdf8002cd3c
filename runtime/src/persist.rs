//! The nameserver's state on disk (`kdipc nameserver --state DIR`), so that
//! a restarted nameserver carries on where the last one stopped.
//!
//! - `DIR/state.0`, `DIR/state.1`: the registry of segments, the semaphore
//!   sets, the members of the cluster and the answers to recent calls
//!   (postcard), written whole whenever one of them changed, before any
//!   answer that depends on the change leaves; alternately into the two
//!   files, each write headed by a sequence number, its length and a
//!   checksum, so that a torn write leaves the other file good. (One
//!   `pwrite` per change: a temporary file renamed over the old took five
//!   system calls and doubled the time of a `semop`-bound run.)
//! - `DIR/shm-ID`: the home copy of every page of segment ID (4 KiB each,
//!   sparse), and `DIR/shm-ID.meta`: 16 bytes per page, its state at the
//!   home (see [`HomeState`]), written when it changes, the bytes before
//!   the state that names them.
//!
//! The writes are ordinary `write`s: they survive the nameserver process
//! dying at any instant (the kernel has them). With `--fsync` they also
//! survive a crash of the machine: a page's bytes are on the disk before
//! the state that names them is written, and everything a turn wrote is on
//! the disk before that turn's answers leave (`Store::flush`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{HomeState, NodeId, PageIdx, Payload, SegId, PAGE_SIZE};
use crate::registry::{RegistrySnapshot, Reply};
use crate::semaphores::SemSnapshot;

/// Bumped when the layout of [`Snapshot`] changes.
const FORMAT: u32 = 1;

/// Everything of the nameserver but the pages.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// Incremented by every start on this directory.
    pub epoch: u64,
    pub next_node: NodeId,
    /// Registered nodes and where they listen.
    pub members: Vec<(NodeId, SocketAddr)>,
    /// Nodes declared dead (their messages are refused).
    pub dead: Vec<NodeId>,
    pub registry: RegistrySnapshot,
    pub sems: SemSnapshot,
    /// The answers to each node's latest calls that changed something, by
    /// call id: a node asks again what it had no answer to when the
    /// nameserver stopped, and gets the same answer rather than a second
    /// execution.
    pub replies: Vec<(NodeId, Vec<(u64, Reply)>)>,
}

/// A page's state at the home, 16 bytes on disk: version, kind, node.
fn encode(s: &HomeState) -> [u8; 16] {
    let (version, kind, node) = match *s {
        HomeState::Home { version, zero: true } => (version, 0u32, 0u32),
        HomeState::Home { version, zero: false } => (version, 1, 0),
        HomeState::Given { version, to } => (version, 2, to),
        HomeState::Away { version } => (version, 3, 0),
        HomeState::Lost { version } => (version, 4, 0),
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&version.to_le_bytes());
    b[8..12].copy_from_slice(&kind.to_le_bytes());
    b[12..].copy_from_slice(&node.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<HomeState> {
    let version = u64::from_le_bytes(b[..8].try_into().ok()?);
    let node = u32::from_le_bytes(b[12..16].try_into().ok()?);
    Some(match u32::from_le_bytes(b[8..12].try_into().ok()?) {
        0 => HomeState::Home { version, zero: true },
        1 => HomeState::Home { version, zero: false },
        2 => HomeState::Given { version, to: node },
        3 => HomeState::Away { version },
        4 => HomeState::Lost { version },
        _ => return None,
    })
}

struct SegFiles {
    data: File,
    meta: File,
    /// The state last written, per page.
    written: Vec<[u8; 16]>,
}

/// The state directory.
pub struct Store {
    dir: PathBuf,
    segs: HashMap<SegId, SegFiles>,
    /// `state.0` and `state.1`, and the sequence number of the last write.
    snaps: [File; 2],
    seq: u64,
    /// `--fsync`, and what this turn wrote and has not synced yet.
    sync: bool,
    unsynced_meta: Vec<SegId>,
    unsynced_snap: Option<usize>,
}

/// Bytes before a snapshot in `state.N`: sequence number, length, checksum.
const HEADER: usize = 20;

/// FNV-1a: enough to tell a torn write.
fn checksum(b: &[u8]) -> u32 {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100_0000_01b3));
    (h ^ (h >> 32)) as u32
}

/// The snapshot in one of the files, if whole: (sequence number, bytes).
fn read_snap(f: &File) -> Option<(u64, Vec<u8>)> {
    let mut buf = Vec::new();
    (&*f).read_to_end(&mut buf).ok()?;
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(buf.get(8..12)?.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(buf.get(12..16)?.try_into().ok()?);
    let body = buf.get(HEADER..HEADER + len)?;
    (seq > 0 && checksum(body) == sum).then(|| (seq, body.to_vec()))
}

/// What a previous nameserver left: its snapshot and, per segment, every
/// page's state and home bytes.
pub type Loaded = (Snapshot, Vec<(SegId, Vec<(HomeState, Payload)>)>);

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Store {
    /// Opens (creating it `0700` if need be) the state directory. Returns
    /// what the last nameserver left there, if anything.
    pub fn open(dir: &Path) -> Result<(Store, Option<Loaded>), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("creating", dir, e))?;
        let open = |n: u32| {
            let p = dir.join(format!("state.{n}"));
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("opening", &p, e))
        };
        let snaps = [open(0)?, open(1)?];
        let best = snaps.iter().filter_map(read_snap).max_by_key(|s| s.0);
        let mut store = Store {
            dir: dir.to_path_buf(),
            segs: HashMap::new(),
            snaps,
            seq: 0,
            sync: false,
            unsynced_meta: Vec::new(),
            unsynced_snap: None,
        };
        let Some((seq, body)) = best else { return Ok((store, None)) };
        store.seq = seq;
        let path = dir.join(format!("state.{}", seq % 2));
        let snap: Snapshot =
            postcard::from_bytes(&body).map_err(|e| format!("{}: undecodable: {e}", path.display()))?;
        if snap.format != FORMAT {
            return Err(format!(
                "{}: format {} (this kdipc reads {FORMAT}): move the directory away to start afresh",
                path.display(),
                snap.format
            ));
        }
        let mut segs = Vec::new();
        for (id, stat, _) in &snap.registry.segs {
            let npages = stat.size.div_ceil(PAGE_SIZE as u64) as u32;
            let pages = store.load_seg(*id, npages)?;
            segs.push((*id, pages));
        }
        // Files of segments the registry no longer has (removed while a
        // write was under way) go.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("shm-").map(|r| r.trim_end_matches(".meta"));
                if let Some(id) = id.and_then(|i| i.parse::<SegId>().ok()) {
                    if !store.segs.contains_key(&id) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        Ok((store, Some((snap, segs))))
    }

    fn open_seg(&self, id: SegId, npages: u32, create: bool) -> Result<SegFiles, String> {
        let open = |name: String| {
            let p = self.dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("opening", &p, e))
        };
        let data = open(format!("shm-{id}"))?;
        let meta = open(format!("shm-{id}.meta"))?;
        if create {
            let set = |f: &File, len: u64, name: &str| {
                f.set_len(len).map_err(|e| io("sizing", &self.dir.join(name), e))
            };
            set(&data, npages as u64 * PAGE_SIZE as u64, "shm")?;
            set(&meta, npages as u64 * 16, "shm.meta")?;
        }
        Ok(SegFiles { data, meta, written: vec![[0; 16]; npages as usize] })
    }

    fn load_seg(&mut self, id: SegId, npages: u32) -> Result<Vec<(HomeState, Payload)>, String> {
        let files = match self.open_seg(id, npages, false) {
            Ok(f) => f,
            // Created in the registry, not yet on disk: all zero.
            Err(_) => self.open_seg(id, npages, true)?,
        };
        let mut meta = vec![0u8; npages as usize * 16];
        let n = files.meta.read_at(&mut meta, 0).unwrap_or(0);
        meta[n..].fill(0);
        let mut pages = Vec::with_capacity(npages as usize);
        let mut files = files;
        for i in 0..npages as usize {
            let rec = &meta[i * 16..i * 16 + 16];
            let state = decode(rec).unwrap_or(HomeState::Lost { version: 0 });
            let payload = match state {
                HomeState::Home { zero: true, .. } => Payload::Zero,
                _ => {
                    let mut b = vec![0u8; PAGE_SIZE];
                    match files.data.read_at(&mut b, (i * PAGE_SIZE) as u64) {
                        Ok(PAGE_SIZE) => Payload::from_page(&b),
                        _ => Payload::Zero,
                    }
                }
            };
            files.written[i] = encode(&state);
            pages.push((state, payload));
        }
        self.segs.insert(id, files);
        Ok(pages)
    }

    /// A new segment: every page a zero page at home.
    pub fn create_seg(&mut self, id: SegId, npages: u32) -> Result<(), String> {
        let f = self.open_seg(id, npages, true)?;
        self.segs.insert(id, f);
        Ok(())
    }

    /// The segment is gone.
    pub fn remove_seg(&mut self, id: SegId) {
        self.segs.remove(&id);
        let _ = std::fs::remove_file(self.dir.join(format!("shm-{id}")));
        let _ = std::fs::remove_file(self.dir.join(format!("shm-{id}.meta")));
    }

    /// Writes a page's state at the home (and its bytes when the home owns
    /// them), if it changed since last written.
    pub fn write_page(
        &mut self,
        seg: SegId,
        page: PageIdx,
        state: &HomeState,
        bytes: Option<&Payload>,
    ) -> Result<(), String> {
        let Some(f) = self.segs.get_mut(&seg) else { return Ok(()) };
        let Some(slot) = f.written.get_mut(page as usize) else { return Ok(()) };
        let rec = encode(state);
        if *slot == rec {
            return Ok(());
        }
        // The bytes the state names: the home's, or those it gave from a
        // late release (a zero page is written out too, over older bytes).
        let data = match (state, bytes) {
            (HomeState::Home { zero: false, .. }, Some(b @ Payload::Bytes(_)))
            | (HomeState::Given { .. }, Some(b)) => Some(b),
            _ => None,
        };
        if let Some(b) = data {
            let mut bytes = [0u8; PAGE_SIZE];
            b.fill(&mut bytes);
            f.data
                .write_all_at(&bytes, page as u64 * PAGE_SIZE as u64)
                .map_err(|e| format!("writing page {page} of segment {seg}: {e}"))?;
            if self.sync {
                f.data.sync_data().map_err(|e| format!("syncing segment {seg}: {e}"))?;
            }
        }
        if self.sync && !self.unsynced_meta.contains(&seg) {
            self.unsynced_meta.push(seg);
        }
        f.meta
            .write_all_at(&rec, page as u64 * 16)
            .map_err(|e| format!("writing the state of page {page} of segment {seg}: {e}"))?;
        *slot = rec;
        Ok(())
    }

    /// Writes `snap` over the older of the two snapshots.
    pub fn save(&mut self, snap: &Snapshot) -> Result<(), String> {
        let body = postcard::to_allocvec(snap).map_err(|e| format!("encoding the state: {e}"))?;
        let seq = self.seq + 1;
        let mut buf = Vec::with_capacity(HEADER + body.len());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(&body).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&body);
        let n = (seq % 2) as usize;
        self.snaps[n]
            .write_all_at(&buf, 0)
            .map_err(|e| io("writing", &self.dir.join(format!("state.{n}")), e))?;
        self.seq = seq;
        if self.sync {
            self.unsynced_snap = Some(n);
        }
        Ok(())
    }

    /// With `--fsync`: puts what this turn wrote on the disk.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Syncs what was written since the last call (`--fsync` only).
    pub fn flush(&mut self) -> Result<(), String> {
        for seg in std::mem::take(&mut self.unsynced_meta) {
            if let Some(f) = self.segs.get(&seg) {
                f.meta.sync_data().map_err(|e| format!("syncing segment {seg}: {e}"))?;
            }
        }
        if let Some(n) = self.unsynced_snap.take() {
            self.snaps[n].sync_data().map_err(|e| format!("syncing state.{n}: {e}"))?;
        }
        Ok(())
    }
}

/// Encodes a snapshot's format (for `Server` to fill in).
pub fn new_snapshot() -> Snapshot {
    Snapshot { format: FORMAT, ..Default::default() }
}
