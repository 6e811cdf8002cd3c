//! The nameserver's registry calls: `shmget` creating a key, `shmget`
//! finding an existing key, `shmctl(IPC_RMID)`; p50/p99 per call and calls
//! per second, beside the same program on the kernel and the transport's
//! round trip measured in this run:
//!
//!     cargo bench -p kdipc-benches --bench shmget_rate [-- ITERS]
//!
//! Needs `cargo build --release` and `c-tests/build.sh` first.

#[path = "../shim/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use kdipc_benches::transport_rtt;

/// (phase, p50, p99, rate) of each phase line.
fn phases(out: &support::Outcome) -> Vec<(String, f64, f64, f64)> {
    out.assert_ok("shmgetbench");
    let get = |l: &str, k: &str| -> f64 {
        l.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).expect("figure")
    };
    let v: Vec<_> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("phase "))
        .map(|l| {
            (
                l.split_whitespace().nth(1).unwrap().to_string(),
                get(l, "p50="),
                get(l, "p99="),
                get(l, "rate="),
            )
        })
        .collect();
    assert_eq!(v.len(), 3, "shmgetbench printed {:?}", out.stdout);
    v
}

fn main() {
    let iters: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    let t = Duration::from_secs(300);
    let args = |key: String| vec!["0".to_string(), "1".into(), key, iters.to_string()];
    // Keys far from the other tests' (each run uses KEY+1 ..= KEY+ITERS).
    let key = || {
        let k = support::fresh_key();
        let k = u32::from_str_radix(k.trim_start_matches("0x"), 16).unwrap();
        format!("{:#x}", 0x5000_0000 | ((k & 0x3f_ffff) << 6))
    };
    let native = {
        let mut c = Command::new(support::prog("shmgetbench"));
        c.args(args(key())).env("KDIPC_NATIVE", "1").env_remove("LD_PRELOAD");
        let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        phases(&support::wait_all(vec![child], t, std::path::Path::new("/dev/null")).remove(0))
    };
    let dsm = {
        let a = args(key());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        phases(&support::Cluster::local().run("shmgetbench", &refs, t))
    };
    let certs = std::env::temp_dir().join(format!("kdipc-bench-certs-{}", std::process::id()));
    kdipc_runtime::certs::init(&certs).unwrap();
    let (q50, _) = transport_rtt(5000, &certs);
    let _ = std::fs::remove_dir_all(&certs);

    println!("nameserver registry calls, {iters} keys, one page each, loopback (µs; calls/s)");
    println!(
        "{:<10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "call",
        "kern p50",
        "kern p99",
        "kern /s",
        "KDIPC p50",
        "KDIPC p99",
        "KDIPC /s",
        "/kernel",
        "/QUIC RTT"
    );
    for ((name, n50, n99, nrate), (_, d50, d99, drate)) in native.iter().zip(&dsm) {
        println!(
            "{name:<10} {n50:>9.2} {n99:>9.2} {nrate:>10.0} {d50:>9.1} {d99:>9.1} {drate:>10.0} {:>9.0} {:>9.2}",
            d50 / n50,
            d50 / q50
        );
    }
    println!("KDIPC transport round trip, loopback: p50 {q50:.1} µs");
}
