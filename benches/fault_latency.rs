//! Fault latency: remote read fault, write fault invalidating one reader,
//! write fault taking the page from a remote writer, zero-page read; each
//! p50/p99 over many pages, printed beside the loopback UDP round trip and
//! the KDIPC transport's (QUIC) round trip measured in the same run.
//!
//!     cargo bench -p kdipc-benches --bench fault_latency [-- PAGES]
//!
//! Needs `cargo build --release` and `c-tests/build.sh` first.

#[path = "../shim/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use kdipc_benches::{transport_rtt, udp_rtt};

struct Phase {
    name: String,
    p50: f64,
    p99: f64,
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn main() {
    let pages: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    // Each access is timed on its own: no read-ahead hiding the round
    // trips (the nodes inherit this environment).
    std::env::set_var("KDIPC_READAHEAD", "0");
    let cluster = support::Cluster::local();
    let (udp50, udp99) = udp_rtt(5000);
    let certs = std::env::temp_dir().join(format!("kdipc-bench-certs-{}", std::process::id()));
    kdipc_runtime::certs::init(&certs).unwrap();
    let (q50, q99) = transport_rtt(5000, &certs);
    let _ = std::fs::remove_dir_all(&certs);

    let outs = cluster.run_ranks(
        "faultbench",
        2,
        &[support::fresh_key(), pages.to_string()],
        Duration::from_secs(300),
    );
    let mut phases = Vec::new();
    for o in &outs {
        o.assert_ok("faultbench");
        for l in o.stdout.lines().filter(|l| l.starts_with("phase ")) {
            let name = l.split_whitespace().nth(1).unwrap().to_string();
            phases.push(Phase { name, p50: field(l, "p50="), p99: field(l, "p99=") });
        }
    }
    println!("fault latency, 2 nodes + nameserver on loopback, {pages} pages per phase (µs)");
    println!("{:<44} {:>8} {:>8} {:>10} {:>10}", "", "p50", "p99", "p50/UDP", "p50/QUIC");
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>10} {:>10}",
        "UDP round trip, 32 B -> 4 KiB", udp50, udp99, "1.0", ""
    );
    println!(
        "{:<44} {:>8.1} {:>8.1} {:>10.1} {:>10}",
        "KDIPC transport round trip (QUIC, mTLS)",
        q50,
        q99,
        q50 / udp50,
        "1.0"
    );
    let label = |n: &str| match n {
        "zero-read" => "zero-page read fault (from the home)",
        "read" => "read fault, page held by a remote writer",
        "write-inval" => "write fault, invalidating one reader",
        "write-fetch" => "write fault, page taken from remote writer",
        other => panic!("unknown phase {other}"),
    };
    for p in &phases {
        println!(
            "{:<44} {:>8.1} {:>8.1} {:>10.1} {:>10.1}",
            label(&p.name),
            p.p50,
            p.p99,
            p.p50 / udp50,
            p.p50 / q50
        );
    }
}
