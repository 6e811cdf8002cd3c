//! Page transfer throughput between two nodes on loopback
//! (`c-tests/pagestream.c`): pages/s and MB/s per phase, without
//! read-ahead (one fault in flight), with 4 faulting threads, and with
//! read-ahead (the default; it serves reads, writes fault one by one), beside the same program run natively and the
//! one-request-at-a-time bound of the transport round trip measured in the
//! same run.
//!
//!     cargo bench -p kdipc-benches --bench page_throughput [-- PAGES]
//!
//! Needs `cargo build --release` and `c-tests/build.sh` first.

#[path = "../shim/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use kdipc_benches::transport_rtt;

const PHASES: [&str; 4] = ["write-fresh", "read", "write-take", "read-back"];

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// pages/s per phase of one run of both ranks.
fn parse(outs: &[support::Outcome]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for o in outs {
        o.assert_ok("pagestream");
        for l in o.stdout.lines().filter(|l| l.starts_with("phase ")) {
            m.insert(l.split_whitespace().nth(1).unwrap().to_string(), field(l, "pages_per_s="));
        }
    }
    m
}

fn main() {
    let pages: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(16384);
    let t = Duration::from_secs(600);
    let cluster = support::Cluster::local();
    let certs = std::env::temp_dir().join(format!("kdipc-bench-certs-{}", std::process::id()));
    kdipc_runtime::certs::init(&certs).unwrap();
    let (q50, _) = transport_rtt(5000, &certs);
    let _ = std::fs::remove_dir_all(&certs);

    let native = {
        let key = support::fresh_key();
        let children: Vec<Child> = (0..2)
            .map(|rank: u32| {
                std::process::Command::new(support::prog("pagestream"))
                    .args([rank.to_string(), "2".into(), key.clone(), pages.to_string()])
                    .env("KDIPC_NATIVE", "1")
                    .env_remove("LD_PRELOAD")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        parse(&support::wait_all(children, t, std::path::Path::new("/dev/null")))
    };
    let run = |readahead: &str, threads: u32| {
        let key = support::fresh_key();
        let children: Vec<Child> = (0..2)
            .map(|rank: u32| {
                cluster
                    .command(0, &support::prog("pagestream"))
                    .args([rank.to_string(), "2".into(), key.clone(), pages.to_string(), threads.to_string()])
                    .env("KDIPC_READAHEAD", readahead)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        parse(&support::wait_all(children, t, std::path::Path::new("/dev/null")))
    };
    let rows = [
        ("KDIPC, no read-ahead, 1 thread", run("0", 1)),
        ("KDIPC, no read-ahead, 4 threads", run("0", 4)),
        ("KDIPC, read-ahead 64 (default), 1 thread", run("64", 1)),
    ];

    println!("page throughput, 2 nodes + nameserver on loopback, {pages} pages (4 KiB) per phase, pages/s");
    print!("{:<44}", "");
    for p in PHASES {
        print!(" {p:>12}");
    }
    println!();
    print!("{:<44}", "native (plain memory, first touch)");
    for p in PHASES {
        print!(" {:>12.0}", native[p]);
    }
    println!();
    println!("{:<44} {:>12.0}   (1 / QUIC RTT of {q50:.1} µs)", "one request at a time, bound", 1e6 / q50);
    for (name, m) in &rows {
        print!("{name:<44}");
        for p in PHASES {
            print!(" {:>12.0}", m[p]);
        }
        println!();
    }
    // Read-ahead serves reads; writes are one fault each.
    let (_, best) = &rows[2];
    let min = ["read", "read-back"].iter().map(|p| best[*p]).fold(f64::INFINITY, f64::min);
    println!(
        "read-ahead: slower read phase {min:.0} pages/s = {:.0} MB/s = {:.1}× the one-at-a-time bound",
        min * 4096.0 / 1e6,
        min * q50 / 1e6
    );
}
