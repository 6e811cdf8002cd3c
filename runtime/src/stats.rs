//! What a node did, counted as it happens (lock-free: the fault handler
//! counts too, and stays async-signal-safe): faults, pages and bytes in and
//! out, invalidations, semaphore operations, and latency histograms.
//!
//! The same figures are kept per object (segment or semaphore set) in two
//! fixed-size tables of atomics keyed by the object's id ([`SEGS`],
//! [`SETS`]): an entry is claimed with one compare-and-swap the first time
//! an object is counted, never freed, and the handler can count there too.
//! A process counts at most [`MAX_OBJECTS`] objects of each kind; later
//! ones count only in the node's totals.
//!
//! A node sends its figures to the nameserver every second while they
//! change and at exit (`kdipc stats` shows them); with `KDIPC_STATS=1` it
//! also prints them on stderr at exit.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Latencies in buckets of powers of two microseconds: bucket `k` holds
/// `[2^(k-1), 2^k)` µs (bucket 0: under 1 µs).
pub struct Histogram([AtomicU64; 32]);

impl Histogram {
    const fn new() -> Self {
        Histogram([const { AtomicU64::new(0) }; 32])
    }

    pub fn record(&self, ns: u64) {
        let us = ns / 1000;
        let k = (64 - us.leading_zeros() as usize).min(31);
        self.0[k].fetch_add(1, Relaxed);
    }

    /// The upper bound (µs) of the bucket holding quantile `q`; 0 when
    /// nothing was recorded.
    fn quantile(&self, q: f64) -> u64 {
        quantile(&self.buckets(), q)
    }

    /// The count of every bucket (trailing empty buckets left out).
    fn buckets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.0.iter().map(|c| c.load(Relaxed)).collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }

    fn reset(&self) {
        self.0.iter().for_each(|c| c.store(0, Relaxed));
    }
}

/// The upper bound (µs) of the bucket of a [`Histogram`]'s counts that
/// holds quantile `q`; 0 when nothing was recorded.
pub fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (k, c) in counts.iter().enumerate().take(32) {
        seen += c;
        if seen >= want {
            return 1 << k;
        }
    }
    1 << 31
}

/// Most objects of each kind a process counts on its own.
pub const MAX_OBJECTS: usize = 256;

/// Counters of one object (see [`ObjStats`] for their meaning).
pub const READ_FAULTS_I: usize = 0;
pub const WRITE_FAULTS_I: usize = 1;
pub const PAGES_IN_I: usize = 2;
pub const PAGES_OUT_I: usize = 3;
pub const BYTES_IN_I: usize = 4;
pub const BYTES_OUT_I: usize = 5;
pub const INVALIDATIONS_I: usize = 6;
pub const SEMOPS_LOCAL_I: usize = 7;
pub const SEMOPS_REMOTE_I: usize = 8;
const NCOUNTERS: usize = 9;

/// One object's figures; `id` 0: the entry is free (distributed ids have
/// bit 30 set).
pub struct ObjEntry {
    id: AtomicI32,
    counts: [AtomicU64; NCOUNTERS],
    /// Fault latency (segment) or `semop` latency (set).
    pub latency: Histogram,
}

impl ObjEntry {
    const fn new() -> Self {
        ObjEntry {
            id: AtomicI32::new(0),
            counts: [const { AtomicU64::new(0) }; NCOUNTERS],
            latency: Histogram::new(),
        }
    }

    /// Adds `n` to counter `i` (one of the `*_I` constants).
    pub fn add(&self, i: usize, n: u64) {
        self.counts[i].fetch_add(n, Relaxed);
    }
}

/// Objects of one kind by id: open addressing, linear probing, no removal
/// (so a probe that reaches a free entry knows the id is not there).
/// Lookups and claims are atomics only: async-signal-safe.
pub struct ObjTable([ObjEntry; MAX_OBJECTS]);

impl ObjTable {
    const fn new() -> Self {
        ObjTable([const { ObjEntry::new() }; MAX_OBJECTS])
    }

    /// The entry of object `id`, claimed on first use; `None` when the
    /// table is full (or `id` is 0).
    pub fn entry(&self, id: i32) -> Option<&ObjEntry> {
        if id == 0 {
            return None;
        }
        let start = ((id as u32).wrapping_mul(0x9e37_79b1) >> 24) as usize % MAX_OBJECTS;
        for k in 0..MAX_OBJECTS {
            let e = &self.0[(start + k) % MAX_OBJECTS];
            match e.id.load(std::sync::atomic::Ordering::Acquire) {
                cur if cur == id => return Some(e),
                0 => match e.id.compare_exchange(
                    0,
                    id,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                ) {
                    Ok(_) => return Some(e),
                    Err(cur) if cur == id => return Some(e),
                    Err(_) => continue,
                },
                _ => continue,
            }
        }
        None
    }

    /// Adds `n` to counter `i` of object `id`.
    pub fn add(&self, id: i32, i: usize, n: u64) {
        if let Some(e) = self.entry(id) {
            e.add(i, n);
        }
    }

    fn snapshot(&self, kind: ObjKind, out: &mut Vec<ObjStats>) {
        for e in &self.0 {
            let id = e.id.load(std::sync::atomic::Ordering::Acquire);
            if id == 0 {
                continue;
            }
            let c = |i: usize| e.counts[i].load(Relaxed);
            out.push(ObjStats {
                kind,
                id,
                read_faults: c(READ_FAULTS_I),
                write_faults: c(WRITE_FAULTS_I),
                pages_in: c(PAGES_IN_I),
                pages_out: c(PAGES_OUT_I),
                bytes_in: c(BYTES_IN_I),
                bytes_out: c(BYTES_OUT_I),
                invalidations: c(INVALIDATIONS_I),
                semops_local: c(SEMOPS_LOCAL_I),
                semops_remote: c(SEMOPS_REMOTE_I),
                latency: e.latency.buckets(),
            });
        }
    }

    fn reset(&self) {
        for e in &self.0 {
            e.id.store(0, Relaxed);
            e.counts.iter().for_each(|c| c.store(0, Relaxed));
            e.latency.reset();
        }
    }
}

/// Figures per segment id.
pub static SEGS: ObjTable = ObjTable::new();
/// Figures per semaphore set id.
pub static SETS: ObjTable = ObjTable::new();

/// What kind of object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjKind {
    #[default]
    Shm,
    Sem,
}

impl ObjKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjKind::Shm => "shm",
            ObjKind::Sem => "sem",
        }
    }
}

/// One object's figures at one node (or summed over nodes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjStats {
    pub kind: ObjKind,
    pub id: i32,
    /// Faults on the segment a program thread waited for.
    pub read_faults: u64,
    pub write_faults: u64,
    /// Pages of the segment that arrived or left, and their bytes.
    pub pages_in: u64,
    pub pages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Copies of the segment's pages dropped for a writer.
    pub invalidations: u64,
    /// Operations on the set run where it was lent, or sent to its home.
    pub semops_local: u64,
    pub semops_remote: u64,
    /// Fault (segment) or remote `semop` (set) latency: counts per bucket
    /// of [`Histogram`].
    pub latency: Vec<u64>,
}

impl ObjStats {
    /// Adds another node's figures for the same object.
    pub fn merge(&mut self, o: &ObjStats) {
        self.read_faults += o.read_faults;
        self.write_faults += o.write_faults;
        self.pages_in += o.pages_in;
        self.pages_out += o.pages_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.invalidations += o.invalidations;
        self.semops_local += o.semops_local;
        self.semops_remote += o.semops_remote;
        if self.latency.len() < o.latency.len() {
            self.latency.resize(o.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
    }

    pub fn p50_us(&self) -> u64 {
        quantile(&self.latency, 0.5)
    }

    pub fn p99_us(&self) -> u64 {
        quantile(&self.latency, 0.99)
    }

    /// `name=value` pairs of its kind, in a fixed order.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        match self.kind {
            ObjKind::Shm => vec![
                ("read_faults", self.read_faults),
                ("write_faults", self.write_faults),
                ("pages_in", self.pages_in),
                ("pages_out", self.pages_out),
                ("bytes_in", self.bytes_in),
                ("bytes_out", self.bytes_out),
                ("invalidations", self.invalidations),
                ("fault_p50_us", self.p50_us()),
                ("fault_p99_us", self.p99_us()),
            ],
            ObjKind::Sem => vec![
                ("semops_local", self.semops_local),
                ("semops_remote", self.semops_remote),
                ("semop_p50_us", self.p50_us()),
                ("semop_p99_us", self.p99_us()),
            ],
        }
    }
}

/// One object's figures summed over every node that reported them (for
/// `kdipc stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjReport {
    /// Its key, when the nameserver knows it (`None`: removed before
    /// it was heard of).
    pub key: Option<i32>,
    /// It exists no more.
    pub removed: bool,
    pub stats: ObjStats,
}

/// Every object this process counted, segments first, by id.
pub fn objects() -> Vec<ObjStats> {
    let mut v = Vec::new();
    SEGS.snapshot(ObjKind::Shm, &mut v);
    SETS.snapshot(ObjKind::Sem, &mut v);
    v.sort_by_key(|o| (o.kind, o.id));
    v
}

/// Starts every figure from zero (a forked child is a node of its own).
pub fn reset() {
    for c in [
        &READ_FAULTS,
        &WRITE_FAULTS,
        &PAGES_IN,
        &PAGES_OUT,
        &BYTES_IN,
        &BYTES_OUT,
        &INVALIDATIONS,
        &SEMOPS_LOCAL,
        &SEMOPS_REMOTE,
    ] {
        c.store(0, Relaxed);
    }
    FAULT_LATENCY.reset();
    SEMOP_LATENCY.reset();
    SEGS.reset();
    SETS.reset();
}

pub static READ_FAULTS: AtomicU64 = AtomicU64::new(0);
pub static WRITE_FAULTS: AtomicU64 = AtomicU64::new(0);
pub static PAGES_IN: AtomicU64 = AtomicU64::new(0);
pub static PAGES_OUT: AtomicU64 = AtomicU64::new(0);
pub static BYTES_IN: AtomicU64 = AtomicU64::new(0);
pub static BYTES_OUT: AtomicU64 = AtomicU64::new(0);
pub static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
pub static SEMOPS_LOCAL: AtomicU64 = AtomicU64::new(0);
pub static SEMOPS_REMOTE: AtomicU64 = AtomicU64::new(0);
/// Time a faulting thread waited for its page.
pub static FAULT_LATENCY: Histogram = Histogram::new();
/// Time a `semop` sent to the set's home took.
pub static SEMOP_LATENCY: Histogram = Histogram::new();

/// A page of segment `seg` arrived (`bytes`: 0 for a zero page).
pub fn page_in(seg: i32, bytes: usize) {
    PAGES_IN.fetch_add(1, Relaxed);
    BYTES_IN.fetch_add(bytes as u64, Relaxed);
    if let Some(e) = SEGS.entry(seg) {
        e.add(PAGES_IN_I, 1);
        e.add(BYTES_IN_I, bytes as u64);
    }
}

/// A page of segment `seg` left.
pub fn page_out(seg: i32, bytes: usize) {
    PAGES_OUT.fetch_add(1, Relaxed);
    BYTES_OUT.fetch_add(bytes as u64, Relaxed);
    if let Some(e) = SEGS.entry(seg) {
        e.add(PAGES_OUT_I, 1);
        e.add(BYTES_OUT_I, bytes as u64);
    }
}

/// A copy of a page of segment `seg` was dropped for a writer.
pub fn invalidation(seg: i32) {
    INVALIDATIONS.fetch_add(1, Relaxed);
    SEGS.add(seg, INVALIDATIONS_I, 1);
}

/// A thread waited `ns` for a page of segment `seg`. Async-signal-safe.
pub fn fault(seg: i32, write: bool, ns: u64) {
    let (global, i) = if write { (&WRITE_FAULTS, WRITE_FAULTS_I) } else { (&READ_FAULTS, READ_FAULTS_I) };
    global.fetch_add(1, Relaxed);
    FAULT_LATENCY.record(ns);
    if let Some(e) = SEGS.entry(seg) {
        e.add(i, 1);
        e.latency.record(ns);
    }
}

/// A `semop` on set `id` ran on the set lent here.
pub fn semop_local(id: i32) {
    SEMOPS_LOCAL.fetch_add(1, Relaxed);
    SETS.add(id, SEMOPS_LOCAL_I, 1);
}

/// A `semop` on set `id` was sent to its home and took `ns`.
pub fn semop_remote(id: i32, ns: u64) {
    SEMOPS_REMOTE.fetch_add(1, Relaxed);
    SEMOP_LATENCY.record(ns);
    if let Some(e) = SETS.entry(id) {
        e.add(SEMOPS_REMOTE_I, 1);
        e.latency.record(ns);
    }
}

/// One node's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub read_faults: u64,
    pub write_faults: u64,
    pub pages_in: u64,
    pub pages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub invalidations: u64,
    pub semops_local: u64,
    pub semops_remote: u64,
    /// Bucket upper bounds, µs.
    pub fault_p50_us: u64,
    pub fault_p99_us: u64,
    pub semop_p50_us: u64,
    pub semop_p99_us: u64,
}

/// This process's figures now.
pub fn snapshot() -> Stats {
    Stats {
        read_faults: READ_FAULTS.load(Relaxed),
        write_faults: WRITE_FAULTS.load(Relaxed),
        pages_in: PAGES_IN.load(Relaxed),
        pages_out: PAGES_OUT.load(Relaxed),
        bytes_in: BYTES_IN.load(Relaxed),
        bytes_out: BYTES_OUT.load(Relaxed),
        invalidations: INVALIDATIONS.load(Relaxed),
        semops_local: SEMOPS_LOCAL.load(Relaxed),
        semops_remote: SEMOPS_REMOTE.load(Relaxed),
        fault_p50_us: FAULT_LATENCY.quantile(0.5),
        fault_p99_us: FAULT_LATENCY.quantile(0.99),
        semop_p50_us: SEMOP_LATENCY.quantile(0.5),
        semop_p99_us: SEMOP_LATENCY.quantile(0.99),
    }
}

impl Stats {
    /// `name=value` pairs, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 13] {
        [
            ("read_faults", self.read_faults),
            ("write_faults", self.write_faults),
            ("pages_in", self.pages_in),
            ("pages_out", self.pages_out),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("invalidations", self.invalidations),
            ("semops_local", self.semops_local),
            ("semops_remote", self.semops_remote),
            ("fault_p50_us", self.fault_p50_us),
            ("fault_p99_us", self.fault_p99_us),
            ("semop_p50_us", self.semop_p50_us),
            ("semop_p99_us", self.semop_p99_us),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_bounds() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for _ in 0..90 {
            h.record(100_000); // 100 µs: bucket [64, 128)
        }
        for _ in 0..10 {
            h.record(3_000_000); // 3 ms: bucket [2048, 4096)
        }
        assert_eq!(h.quantile(0.5), 128);
        assert_eq!(h.quantile(0.99), 4096);
        h.record(500); // under 1 µs
        assert_eq!(h.0[0].load(Relaxed), 1);
    }

    #[test]
    fn object_table_claims_finds_and_fills_up() {
        static T: ObjTable = ObjTable::new();
        assert!(T.entry(0).is_none());
        let a = 0x4000_0001;
        T.add(a, WRITE_FAULTS_I, 3);
        T.add(a, WRITE_FAULTS_I, 2);
        assert!(std::ptr::eq(T.entry(a).unwrap(), T.entry(a).unwrap()));
        let mut v = Vec::new();
        T.snapshot(ObjKind::Shm, &mut v);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].id, v[0].write_faults, v[0].read_faults), (a, 5, 0));
        // Full: every id gets its own entry until none is left.
        for k in 2..=MAX_OBJECTS as i32 {
            assert!(T.entry(0x4000_0000 | k).is_some(), "entry {k}");
        }
        assert!(T.entry(0x4000_0000 | (MAX_OBJECTS as i32 + 1)).is_none());
        assert_eq!(T.entry(a).unwrap().counts[WRITE_FAULTS_I].load(Relaxed), 5);
        T.reset();
        let mut v = Vec::new();
        T.snapshot(ObjKind::Shm, &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn merged_objects_add_up() {
        let mut a = ObjStats {
            kind: ObjKind::Sem,
            id: 7,
            semops_remote: 2,
            latency: vec![0, 1],
            ..Default::default()
        };
        let b = ObjStats {
            kind: ObjKind::Sem,
            id: 7,
            semops_local: 5,
            latency: vec![0, 0, 0, 3],
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!((a.semops_local, a.semops_remote), (5, 2));
        assert_eq!(a.latency, vec![0, 1, 0, 3]);
        assert_eq!((a.p50_us(), a.p99_us()), (8, 8));
    }
}
