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

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use kdipc_runtime::protocol::{CoherenceMsg, Payload, PAGE_SIZE};
use kdipc_runtime::transport::{Inbound, Transport};
use kdipc_runtime::wire::Msg;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Loopback UDP: 32-byte request, 4 KiB answer (a page request), in µs.
fn udp_rtt(n: usize) -> (f64, f64) {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let page = [7u8; PAGE_SIZE];
        for _ in 0..n {
            let (_, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&page, from).unwrap();
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; PAGE_SIZE];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        client.send_to(&[1u8; 32], addr).unwrap();
        client.recv_from(&mut buf).unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.join().unwrap();
    (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
}

/// The KDIPC transport between two endpoints (two threads, each with its
/// own current-thread runtime, as two nodes have): a small request, a
/// page-sized `Data` answer, in µs.
fn transport_rtt(n: usize, certs: &std::path::Path) -> (f64, f64) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let certs_b = certs.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let tls = kdipc_runtime::certs::load(&certs_b).unwrap();
            let mut t = Transport::bind("127.0.0.1:0".parse().unwrap(), tls, tx).unwrap();
            t.set_me(2);
            addr_tx.send(t.local_addr().unwrap()).unwrap();
            let page = Payload::Bytes(vec![7u8; PAGE_SIZE]);
            while let Some(Inbound::Msg { from: Some(from), msg: Msg::Coherence(c), .. }) = rx.recv().await {
                let (seg, page_idx) = c.target();
                let msg =
                    CoherenceMsg::Data { seg, page: page_idx, acks: 0, version: 0, payload: page.clone() };
                t.send(from, Msg::Coherence(msg));
            }
        });
    });
    let b_addr = addr_rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tls = kdipc_runtime::certs::load(certs).unwrap();
        let mut t = Transport::bind("127.0.0.1:0".parse().unwrap(), tls, tx).unwrap();
        t.set_me(1);
        t.set_addr(2, b_addr);
        let mut lat = Vec::with_capacity(n);
        for i in 0..n + 50 {
            let t0 = Instant::now();
            let req = CoherenceMsg::Request { seg: 1, page: i as u32, write: false, requester: 1 };
            t.send(2, Msg::Coherence(req));
            match rx.recv().await {
                Some(Inbound::Msg { .. }) => {}
                other => panic!("transport benchmark: {other:?}"),
            }
            if i >= 50 {
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
    })
}

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
