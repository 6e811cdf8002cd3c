//! Every setting, in one table, read once from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KDIPC_NAMESERVER` | `127.0.0.1:7350`, started on demand | where the nameserver is |
//! | `KDIPC_CERT_DIR` | `/tmp/kdipc-<uid>` (created `0700` by the auto-started nameserver) | cluster credentials |
//! | `KDIPC_BIND` | `127.0.0.1:0` when the nameserver is on loopback, else `0.0.0.0:0` | this node's QUIC address |
//! | `KDIPC_KEYS` | none | keys distributed in unmodified programs: `all` or `0x1000-0x1fff,42` |
//! | `KDIPC_HOLD_US` | `100` | minimum time a granted page stays before it is given away |
//! | `KDIPC_SPIN_US` | `0` | how long a faulting thread spins before it sleeps |
//! | `KDIPC_READAHEAD` | `64` | most pages requested ahead of a run of faults on neighbouring pages (0: none) |
//! | `KDIPC_SEM_LEND` | `3` | (nameserver) consecutive operations of one node after which a semaphore set is lent to it (0: never) |
//! | `KDIPC_STATS` | unset | `1`: print this node's figures (`kdipc stats` fields) on stderr at exit |
//! | `KDIPC_LEASE_MS` | `5000` | a peer silent this long (no packet, keep-alives every fifth of it) is declared dead |
//! | `KDIPC_LOG` | `warn` | log filter (`RUST_LOG` syntax), to stderr |
//! | `KDIPC_BIN` | `kdipc` beside `libkdipc.so` | the `kdipc` binary, to start a nameserver on demand |

use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_NAMESERVER: &str = "127.0.0.1:7350";

/// Which keys are distributed in unmodified binaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySet {
    #[default]
    None,
    All,
    Ranges(Vec<(i64, i64)>),
}

impl KeySet {
    pub fn parse(s: &str) -> Result<KeySet, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(KeySet::None);
        }
        if s == "all" {
            return Ok(KeySet::All);
        }
        let num = |t: &str| -> Result<i64, String> {
            let t = t.trim();
            let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                i64::from_str_radix(h, 16)
            } else {
                t.parse()
            };
            v.map_err(|_| format!("KDIPC_KEYS: bad key {t:?}"))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let r = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let k = num(part)?;
                    (k, k)
                }
            };
            if r.0 > r.1 {
                return Err(format!("KDIPC_KEYS: empty range {part:?}"));
            }
            ranges.push(r);
        }
        Ok(KeySet::Ranges(ranges))
    }

    /// Whether `key` (as passed to `shmget`) is distributed. Keys are
    /// compared both as signed and as unsigned 32-bit values, so that
    /// `0xdeadbeef` matches the negative `key_t` it becomes.
    pub fn contains(&self, key: i32) -> bool {
        match self {
            KeySet::None => false,
            KeySet::All => true,
            KeySet::Ranges(r) => {
                let (a, b) = (key as i64, key as u32 as i64);
                r.iter().any(|&(lo, hi)| (lo..=hi).contains(&a) || (lo..=hi).contains(&b))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nameserver: SocketAddr,
    /// Nothing configured: start a nameserver on this machine if none runs.
    pub auto: bool,
    pub cert_dir: PathBuf,
    pub bind: SocketAddr,
    pub keys: KeySet,
    pub hold_us: u64,
    pub spin_us: u64,
    /// Real-time (`SCHED_FIFO`) priority asked for the runtime thread; 0:
    /// none (see `node::raise_priority`).
    pub rt_prio: i32,
    /// Most pages fetched ahead of a run of neighbouring faults.
    pub readahead: u32,
    /// Print this node's figures on stderr at exit.
    pub stats: bool,
}

/// `KDIPC_RT_PRIO`: the real-time priority asked for the runtime thread
/// of a node and of the nameserver (1 when unset, 0: none).
pub fn rt_prio_from_env() -> Result<i32, String> {
    match std::env::var("KDIPC_RT_PRIO").ok().filter(|v| !v.is_empty()) {
        Some(h) => h
            .parse()
            .ok()
            .filter(|p| (0..=99).contains(p))
            .ok_or_else(|| format!("KDIPC_RT_PRIO: not a priority 0-99: {h:?}")),
        None => Ok(1),
    }
}

/// The private directory for credentials when none is configured.
pub fn auto_cert_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/kdipc-{uid}"))
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ns = var("KDIPC_NAMESERVER");
        let auto = ns.is_none() && var("KDIPC_CERT_DIR").is_none();
        let nameserver: SocketAddr = ns
            .as_deref()
            .unwrap_or(DEFAULT_NAMESERVER)
            .parse()
            .map_err(|_| format!("KDIPC_NAMESERVER: not an address:port: {:?}", ns))?;
        let cert_dir = var("KDIPC_CERT_DIR").map(PathBuf::from).unwrap_or_else(auto_cert_dir);
        let bind = match var("KDIPC_BIND") {
            Some(b) => b.parse().map_err(|_| format!("KDIPC_BIND: not an address:port: {b:?}"))?,
            None if nameserver.ip().is_loopback() => "127.0.0.1:0".parse().expect("literal"),
            None => "0.0.0.0:0".parse().expect("literal"),
        };
        let keys = KeySet::parse(&var("KDIPC_KEYS").unwrap_or_default())?;
        let hold_us = match var("KDIPC_HOLD_US") {
            Some(h) => h.parse().map_err(|_| format!("KDIPC_HOLD_US: not a number: {h:?}"))?,
            None => 100,
        };
        let spin_us = match var("KDIPC_SPIN_US") {
            Some(h) => h.parse().map_err(|_| format!("KDIPC_SPIN_US: not a number: {h:?}"))?,
            None => 0,
        };
        let rt_prio = rt_prio_from_env()?;
        let readahead = match var("KDIPC_READAHEAD") {
            Some(h) => h.parse().map_err(|_| format!("KDIPC_READAHEAD: not a number: {h:?}"))?,
            None => 64,
        };
        let stats = var("KDIPC_STATS").is_some_and(|v| v != "0");
        Ok(Config { nameserver, auto, cert_dir, bind, keys, hold_us, spin_us, rt_prio, readahead, stats })
    }
}

/// The lease: a node (or the nameserver) that sends nothing for this long
/// is declared dead (`KDIPC_LEASE_MS`, 5000 by default, at least 100).
/// Both sides of a connection use the smaller of their two settings.
pub fn lease() -> std::time::Duration {
    let ms = std::env::var("KDIPC_LEASE_MS").ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(5000);
    std::time::Duration::from_millis(ms.max(100))
}

/// Sets up `tracing` to stderr with the `KDIPC_LOG` filter (once).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KDIPC_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets() {
        let k = KeySet::parse("0x1000-0x1fff,42").unwrap();
        assert!(k.contains(0x1000) && k.contains(0x1fff) && k.contains(42));
        assert!(!k.contains(0x2000) && !k.contains(41));
        assert!(KeySet::parse("all").unwrap().contains(-5));
        assert!(!KeySet::parse("").unwrap().contains(1));
        assert!(KeySet::parse("0xdeadbeef").unwrap().contains(0xdeadbeef_u32 as i32));
        assert!(KeySet::parse("5-3").is_err());
        assert!(KeySet::parse("x").is_err());
    }
}
