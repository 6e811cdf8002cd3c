//! `semop` latency on an uncontended distributed set, beside the same
//! program on kernel semaphores and the transport's round trip, all
//! measured in this run:
//!
//!     cargo bench -p kdipc-benches --bench semop_latency [-- ITERS]
//!
//! Rows: native (no shim); under the shim with the set lent to the process
//! that uses it (it runs every operation in the calling thread); with the
//! set kept at its home, the nameserver, in another process on loopback;
//! and, as root, with the program on one emulated host and the nameserver
//! on another (network namespaces, veth, bridge). The last two start their
//! nameserver with `KDIPC_SEM_LEND=0` (never lend).
//! Needs `cargo build --release` and `c-tests/build.sh` first.

#[path = "../shim/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use kdipc_benches::{transport_rtt, udp_rtt};

fn p50_p99(out: &support::Outcome) -> (f64, f64) {
    out.assert_ok("sembench");
    let line = out.stdout.lines().find(|l| l.starts_with("semop ")).expect("sembench printed no figures");
    let get = |k: &str| -> f64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).expect("figure")
    };
    (get("p50="), get("p99="))
}

fn main() {
    let iters: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let t = Duration::from_secs(300);
    let args = |key: String| vec!["0".to_string(), "1".into(), key, iters.to_string()];

    let native = {
        let mut c = Command::new(support::prog("sembench"));
        c.args(args(support::fresh_key())).env("KDIPC_NATIVE", "1").env_remove("LD_PRELOAD");
        let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        p50_p99(&support::wait_all(vec![child], t, std::path::Path::new("/dev/null")).remove(0))
    };
    let run = |c: &support::Cluster| {
        let a = args(support::fresh_key());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        p50_p99(&c.run("sembench", &refs, t))
    };
    let lent = run(&support::Cluster::local());
    // The nameservers started from here on keep every set at home.
    std::env::set_var("KDIPC_SEM_LEND", "0");
    let local = run(&support::Cluster::local());
    let (udp50, _) = udp_rtt(5000);
    let certs = std::env::temp_dir().join(format!("kdipc-bench-certs-{}", std::process::id()));
    kdipc_runtime::certs::init(&certs).unwrap();
    let (q50, q99) = transport_rtt(5000, &certs);
    let _ = std::fs::remove_dir_all(&certs);
    let hosts = support::can_use_netns("semop_latency across emulated hosts")
        .then(|| run(&support::Cluster::hosts(1)));

    println!("semop latency, uncontended set, {iters} pairs of semop(-1)/semop(+1) (µs)");
    println!("{:<52} {:>8} {:>8} {:>10} {:>10}", "", "p50", "p99", "/native", "/QUIC RTT");
    println!("{:<52} {:>8.1} {:>8} {:>10} {:>10}", "UDP round trip, loopback (reference)", udp50, "", "", "");
    println!(
        "{:<52} {:>8.1} {:>8.1} {:>10} {:>10}",
        "KDIPC transport round trip, loopback", q50, q99, "", "1.0"
    );
    println!("{:<52} {:>8.2} {:>8.2} {:>10} {:>10}", "native kernel semop", native.0, native.1, "1.0", "");
    println!(
        "{:<52} {:>8.2} {:>8.2} {:>10.1} {:>10.3}",
        "KDIPC, set owned locally (lent to this process)",
        lent.0,
        lent.1,
        lent.0 / native.0,
        lent.0 / q50
    );
    println!(
        "{:<52} {:>8.1} {:>8.1} {:>10.0} {:>10.2}",
        "KDIPC, owner (nameserver) in another process",
        local.0,
        local.1,
        local.0 / native.0,
        local.0 / q50
    );
    if let Some(h) = hosts {
        println!(
            "{:<52} {:>8.1} {:>8.1} {:>10.0} {:>10.2}",
            "KDIPC, owner on another emulated host (veth)",
            h.0,
            h.1,
            h.0 / native.0,
            h.0 / q50
        );
    }
}
