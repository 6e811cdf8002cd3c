//! What a node did, counted as it happens (lock-free: the fault handler
//! counts too, and stays async-signal-safe): faults, pages and bytes in and
//! out, invalidations, semaphore operations, and latency histograms.
//!
//! A node sends its figures to the nameserver every second while they
//! change and at exit (`kdipc stats` shows them); with `KDIPC_STATS=1` it
//! also prints them on stderr at exit.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (k, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return 1 << k;
            }
        }
        1 << 31
    }
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

/// A page's bytes arrived (`bytes`: 0 for a zero page).
pub fn page_in(bytes: usize) {
    PAGES_IN.fetch_add(1, Relaxed);
    BYTES_IN.fetch_add(bytes as u64, Relaxed);
}

/// A page's bytes left.
pub fn page_out(bytes: usize) {
    PAGES_OUT.fetch_add(1, Relaxed);
    BYTES_OUT.fetch_add(bytes as u64, Relaxed);
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
}
