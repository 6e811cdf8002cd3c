//! Benchmarks of KDIPC (run with `cargo bench -p kdipc-benches`); each
//! prints its figures beside a physical reference measured in the same run.
//! This library holds those references.

use std::net::UdpSocket;
use std::time::Instant;

use kdipc_runtime::protocol::{CoherenceMsg, Payload, PAGE_SIZE};
use kdipc_runtime::transport::{Inbound, Transport};
use kdipc_runtime::wire::Msg;

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Loopback UDP: 32-byte request, 4 KiB answer (a page request), in µs.
pub fn udp_rtt(n: usize) -> (f64, f64) {
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
pub fn transport_rtt(n: usize, certs: &std::path::Path) -> (f64, f64) {
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
                let msg = CoherenceMsg::Data {
                    write: false,
                    seg,
                    page: page_idx,
                    acks: Vec::new(),
                    version: 0,
                    payload: page.clone(),
                };
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
            let req =
                CoherenceMsg::Request { seg: 1, page: i as u32, write: false, requester: 1, ahead: false };
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
