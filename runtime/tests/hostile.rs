//! Hostile peers against a real nameserver (the `kdipc` binary) over real
//! QUIC, with hand-made clients:
//!
//! * TLS: a client with no certificate, a self-signed one, or another
//!   cluster's is refused during the handshake, before any request is
//!   read; the nameserver logs one line naming the peer and the reason.
//! * Frames: a certified client that sends garbage, a truncated frame, an
//!   oversized length, another protocol version, or a well-formed request
//!   for a page outside its segment has that connection closed with one
//!   log line; the nameserver keeps serving, and a real C program under the
//!   shim runs correctly afterwards.
//!
//! Needs `cargo build --release` and `c-tests/build.sh` (`scripts/test`
//! does both), like the shim's tests, whose harness this file shares.

#[path = "../../shim/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kdipc_runtime::certs;
use kdipc_runtime::protocol::CoherenceMsg;
use kdipc_runtime::registry::{Call, Cred, Errno, Reply};
use kdipc_runtime::semaphores::{SemCall, SemOp};
use kdipc_runtime::wire::{self, Frame, Msg};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::Cluster;

const T: Duration = Duration::from_secs(30);
/// How long a refusal or a close may take to arrive.
const SOON: Duration = Duration::from_secs(5);

fn env_of(c: &Cluster, var: &str) -> String {
    let cmd = c.command(0, Path::new("/bin/true"));
    let v = cmd.get_envs().find(|(k, _)| *k == var).and_then(|(_, v)| v).unwrap();
    v.to_str().unwrap().to_string()
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Waits until the nameserver's log has `n` lines containing `what`.
fn wait_log(c: &Cluster, what: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let log = c.ns_log();
        if count(&log, what) >= n || std::time::Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// What a raw client presents.
enum Identity {
    Nothing,
    SelfSigned,
    /// The node credential of another `kdipc certs init` directory.
    From(PathBuf),
}

/// A client that trusts the cluster's CA (so that it is the nameserver
/// that decides) and presents `id`.
fn raw_client(ca: &Path, id: Identity) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match id {
        Identity::Nothing => builder.with_no_client_auth(),
        Identity::SelfSigned => {
            let c = rcgen::generate_simple_self_signed(vec![certs::SERVER_NAME.to_string()]).unwrap();
            let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
            builder.with_client_auth_cert(vec![c.cert.der().clone()], key).unwrap()
        }
        Identity::From(dir) => {
            let cert = CertificateDer::from_pem_file(dir.join("node.pem")).unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join("node.key")).unwrap();
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![certs::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap()))
}

fn frame(msg: &Msg) -> Vec<u8> {
    let mut buf = Vec::new();
    wire::encode_into(msg, &mut buf);
    buf
}

fn me() -> Cred {
    Cred { uid: 0, gid: 0, groups: vec![], pid: std::process::id() as i32, caps: 0 }
}

/// Connects with `cfg`; returns the endpoint (kept alive) and the
/// connection, or the handshake's error.
async fn dial(
    ns: SocketAddr,
    cfg: quinn::ClientConfig,
) -> (quinn::Endpoint, Result<quinn::Connection, quinn::ConnectionError>) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep.connect(ns, certs::SERVER_NAME).unwrap().await;
    (ep, conn)
}

/// Test 1 of issue 6, at the TLS level: no certificate, a self-signed one,
/// another cluster's: refused before any request is read, one log line
/// each, naming the peer's address and the reason.
#[test]
fn peers_without_the_clusters_certificate_are_refused() {
    let c = Cluster::local();
    let ns: SocketAddr = env_of(&c, "KDIPC_NAMESERVER").parse().unwrap();
    let ca = PathBuf::from(env_of(&c, "KDIPC_CERT_DIR")).join("ca.pem");
    let other = std::env::temp_dir().join(format!("kdipc-hostile-{}-other", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    certs::init(&other).unwrap();

    let cases = [
        ("no certificate", Identity::Nothing, "peer sent no certificates"),
        ("self-signed", Identity::SelfSigned, "invalid peer certificate: UnknownIssuer"),
        ("another cluster's", Identity::From(other.clone()), "invalid peer certificate: UnknownIssuer"),
    ];
    for (i, (what, id, reason)) in cases.into_iter().enumerate() {
        let cfg = raw_client(&ca, id);
        let (local, why) = rt().block_on(async {
            let (ep, conn) = dial(ns, cfg).await;
            let local = ep.local_addr().unwrap();
            // TLS 1.3: the client may finish its side of the handshake
            // before the server has checked its certificate; whatever it
            // sends then is never read, and the connection is closed.
            let why = match conn {
                Err(e) => e,
                Ok(conn) => {
                    if let Ok(mut s) = conn.open_uni().await {
                        let mut buf = frame(&Msg::Hello { node: None });
                        buf.extend(frame(&Msg::Call { id: 0, call: Call::Register { pid: 1 } }));
                        let _ = s.write_all(&buf).await;
                        let _ = s.finish();
                    }
                    tokio::time::timeout(SOON, conn.closed())
                        .await
                        .unwrap_or_else(|_| panic!("{what}: the nameserver kept the connection open"))
                }
            };
            ep.close(0u32.into(), b"");
            (local, why)
        });
        assert!(
            !matches!(why, quinn::ConnectionError::ApplicationClosed(_)),
            "{what}: closed after the handshake, not refused in it: {why}"
        );
        let log = wait_log(&c, "refused connection", i + 1);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("refused connection")).collect();
        assert_eq!(lines.len(), i + 1, "{what}: want one more refusal line:\n{log}");
        let line = lines[i];
        assert!(line.contains(&local.to_string()), "{what}: the line names no peer {local}: {line}");
        assert!(line.contains(reason), "{what}: want `{reason}`: {line}");
        assert!(line.contains("WARN"), "{what}: not a warning: {line}");
    }
    let log = c.ns_log();
    assert_eq!(count(&log, "node joined"), 0, "a refused peer was served:\n{log}");
    assert_eq!(count(&log, "malformed"), 0, "a refused peer's bytes were read:\n{log}");
    std::fs::remove_dir_all(&other).unwrap();
}

/// Reads length-prefixed frames from the nameserver's stream to us.
struct Replies {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl Replies {
    async fn next(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let msg = wire::decode(&self.buf[4..4 + len]).unwrap();
                    self.buf.drain(..4 + len);
                    return msg;
                }
            }
            let chunk = tokio::time::timeout(SOON, self.recv.read_chunk(64 * 1024, true))
                .await
                .expect("no answer from the nameserver")
                .unwrap()
                .expect("the nameserver closed its stream");
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// The answer to call `id`, skipping other messages.
    async fn reply(&mut self, id: u64) -> Reply {
        loop {
            if let Msg::Reply { id: got, reply } = self.next().await {
                if got == id {
                    return reply;
                }
            }
        }
    }
}

/// A certified node: registered, with its stream to the nameserver and
/// the nameserver's stream to it.
async fn register(
    ns: SocketAddr,
    cfg: quinn::ClientConfig,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream, Replies) {
    let (ep, conn) = dial(ns, cfg).await;
    let conn = conn.expect("a certified client is accepted");
    let mut send = conn.open_uni().await.unwrap();
    let mut buf = frame(&Msg::Hello { node: None });
    buf.extend(frame(&Msg::Call { id: 0, call: Call::Register { pid: std::process::id() as i32 } }));
    send.write_all(&buf).await.unwrap();
    let recv = tokio::time::timeout(SOON, conn.accept_uni()).await.unwrap().unwrap();
    let mut replies = Replies { recv, buf: Vec::new() };
    assert!(matches!(replies.reply(0).await, Reply::Registered { .. }));
    (ep, conn, send, replies)
}

/// Waits for the nameserver to close `conn` as malformed.
async fn closed_as_malformed(conn: &quinn::Connection, what: &str) {
    let why = tokio::time::timeout(SOON, conn.closed())
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
    match why {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(u64::from(a.error_code), 1, "{what}: {a:?}");
            assert_eq!(&a.reason[..], b"malformed message", "{what}");
        }
        other => panic!("{what}: closed otherwise: {other}"),
    }
}

/// The hostile-input end-to-end test.
#[test]
fn malformed_frames_close_that_connection_and_the_nameserver_keeps_serving() {
    let c = Cluster::local();
    let ns: SocketAddr = env_of(&c, "KDIPC_NAMESERVER").parse().unwrap();
    let dir = PathBuf::from(env_of(&c, "KDIPC_CERT_DIR"));
    let certified = || certs::load(&dir).unwrap().client;

    // Raw byte streams, each on a fresh connection: Hello first where the
    // garbage must come after a valid start.
    let hello = frame(&Msg::Hello { node: None });
    let wrong_version =
        postcard::to_allocvec(&Frame { version: 9999, msg: Msg::Hello { node: None } }).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", [&[16, 0, 0, 0][..], &[0xff; 16]].concat(), "malformed input: undecodable frame"),
        ("garbage after Hello", [&hello[..], &[3, 0, 0, 0, 0xfe, 0xfe, 0xfe]].concat(), "undecodable frame"),
        ("truncated", [&hello[..], &[100, 0, 0, 0], &[1; 10]].concat(), "stream ended inside a frame"),
        ("oversized", [&hello[..], &[0xff, 0xff, 0xff, 0xff]].concat(), "exceeds the limit"),
        (
            "another version",
            [&(wrong_version.len() as u32).to_le_bytes()[..], &wrong_version].concat(),
            "protocol version 9999",
        ),
    ];
    let mut seen = 0;
    for (what, bytes, reason) in cases {
        rt().block_on(async {
            let (ep, conn) = dial(ns, certified()).await;
            let conn = conn.expect("a certified client is accepted");
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let _ = s.finish();
            closed_as_malformed(&conn, what).await;
            ep.close(0u32.into(), b"");
        });
        seen += 1;
        let log = wait_log(&c, "malformed input", seen);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("malformed input")).collect();
        assert_eq!(lines.len(), seen, "{what}: want exactly one more line:\n{log}");
        assert!(lines[seen - 1].contains(reason), "{what}: want `{reason}`: {}", lines[seen - 1]);
    }

    // Well-formed but impossible: a page outside a real segment. And a
    // semaphore number beyond the set, which is the program's error
    // (EFBIG, as the kernel says), not the peer's: it stays connected.
    rt().block_on(async {
        let (ep, conn, mut send, mut replies) = register(ns, certified()).await;
        let get = Call::ShmGet { key: 0, size: 8192, flags: libc::IPC_CREAT | 0o600, cred: me() };
        send.write_all(&frame(&Msg::Call { id: 1, call: get })).await.unwrap();
        let Reply::Id(seg) = replies.reply(1).await else { panic!("no segment") };
        let semget = SemCall::Get { key: 0, nsems: 2, flags: libc::IPC_CREAT | 0o600, cred: me() };
        send.write_all(&frame(&Msg::Call { id: 2, call: Call::Sem(semget) })).await.unwrap();
        let Reply::Id(set) = replies.reply(2).await else { panic!("no set") };
        let ops = vec![SemOp { num: 2, op: -1, flg: libc::IPC_NOWAIT as i16 }];
        let op = SemCall::Op { id: set, ops, cred: me() };
        send.write_all(&frame(&Msg::Call { id: 3, call: Call::Sem(op) })).await.unwrap();
        assert!(matches!(replies.reply(3).await, Reply::Err(Errno(libc::EFBIG))));
        let request = CoherenceMsg::Request { seg, page: 2, write: false, requester: 1, ahead: false };
        send.write_all(&frame(&Msg::Coherence(request))).await.unwrap();
        closed_as_malformed(&conn, "page outside the segment").await;
        ep.close(0u32.into(), b"");
    });
    seen += 1;
    let log = wait_log(&c, "malformed input", seen);
    assert_eq!(count(&log, "malformed input"), seen, "{log}");
    assert_eq!(count(&log, "page 2 outside segment"), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // The nameserver still serves: a real program on two nodes.
    let outs = c.run_ranks("pattern", 2, &[support::fresh_key(), "16".into(), "2".into()], T);
    for (rank, o) in outs.iter().enumerate() {
        o.assert_ok(&format!("pattern rank {rank}"));
    }
}

/// The log without its colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Nodes accept connections from their peers too: a live node refuses
/// another cluster's peer the same way, and its program goes on.
#[test]
fn a_node_refuses_another_clusters_peer_too() {
    let c = Cluster::local();
    let ca = PathBuf::from(env_of(&c, "KDIPC_CERT_DIR")).join("ca.pem");
    let other = std::env::temp_dir().join(format!("kdipc-hostile-{}-node", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    certs::init(&other).unwrap();
    let key = support::fresh_key();
    let rank = |r: &str| {
        let mut cmd = c.command(0, &support::prog("pattern"));
        cmd.args([r, "2", &key, "4", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    // Rank 0 alone waits at its first barrier: a live node.
    let first = rank("0");
    let log = plain(&wait_log(&c, "node joined", 1));
    let addr: SocketAddr = log
        .lines()
        .find(|l| l.contains("node joined"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no node address in the log:\n{log}"))
        .parse()
        .unwrap();
    let local = rt().block_on(async {
        let (ep, conn) = dial(addr, raw_client(&ca, Identity::From(other.clone()))).await;
        let local = ep.local_addr().unwrap();
        if let Ok(conn) = conn {
            let why =
                tokio::time::timeout(SOON, conn.closed()).await.expect("the node kept the connection open");
            assert!(!matches!(why, quinn::ConnectionError::ApplicationClosed(_)), "{why}");
        }
        ep.close(0u32.into(), b"");
        local
    });
    let outs = support::wait_all(vec![first, rank("1")], T, Path::new("/dev/null"));
    for (r, o) in outs.iter().enumerate() {
        o.assert_ok(&format!("pattern rank {r}"));
    }
    let refused: Vec<String> = plain(&outs[0].stderr)
        .lines()
        .filter(|l| l.contains("refused connection"))
        .map(String::from)
        .collect();
    assert_eq!(refused.len(), 1, "want one refusal line from the node:\n{}", outs[0].stderr);
    assert!(
        refused[0].contains(&local.to_string()) && refused[0].contains("UnknownIssuer"),
        "{}",
        refused[0]
    );
    std::fs::remove_dir_all(&other).unwrap();
}

/// Issue 6, failure: a node declared dead (its lease ran out, e.g. a cut
/// link that healed) is refused when it speaks again under its old id:
/// the nameserver closes that connection ("declared dead") with one log
/// line, and nothing it sends is served.
#[test]
fn a_node_declared_dead_is_refused_under_its_old_id() {
    let c = Cluster::local();
    let ns: SocketAddr = env_of(&c, "KDIPC_NAMESERVER").parse().unwrap();
    let dir = PathBuf::from(env_of(&c, "KDIPC_CERT_DIR"));
    let certified = || certs::load(&dir).unwrap().client;
    rt().block_on(async {
        let (ep, conn, _send, _replies) = register(ns, certified()).await;
        let node = {
            let log = wait_log(&c, "node joined", 1);
            let line = plain(&log).lines().find(|l| l.contains("node joined")).unwrap().to_string();
            line.split_whitespace().find_map(|w| w.strip_prefix("node=")).unwrap().parse::<u32>().unwrap()
        };
        conn.close(7u32.into(), b"gone");
        ep.wait_idle().await;
        wait_log(&c, "node left", 1);
        // The same node id on a new connection.
        let (ep, conn) = dial(ns, certified()).await;
        let conn = conn.expect("a certified client is accepted");
        let mut s = conn.open_uni().await.unwrap();
        let mut buf = frame(&Msg::Hello { node: Some(node) });
        let get = Call::ShmGet { key: 0, size: 4096, flags: libc::IPC_CREAT | 0o600, cred: me() };
        buf.extend(frame(&Msg::Call { id: 1, call: get }));
        s.write_all(&buf).await.unwrap();
        let why = tokio::time::timeout(SOON, conn.closed()).await.expect("the connection stayed open");
        match why {
            quinn::ConnectionError::ApplicationClosed(a) => assert_eq!(&a.reason[..], b"declared dead"),
            other => panic!("closed otherwise: {other}"),
        }
        ep.close(0u32.into(), b"");
    });
    let log = wait_log(&c, "refusing a node declared dead", 1);
    assert_eq!(count(&log, "refusing a node declared dead"), 1, "{log}");
    assert_eq!(count(&log, "segment"), 0, "the dead node's call was served:\n{log}");
}

/// A node that never sends its report after a death would hold up the
/// recovery of the dead node's pages for everyone: after the lease the
/// nameserver declares it dead too (and serves it nothing from then on).
#[test]
fn a_node_that_never_reports_after_a_death_is_declared_dead() {
    let c = Cluster::local_env(&[("KDIPC_LEASE_MS", "1000")]);
    let ns: SocketAddr = env_of(&c, "KDIPC_NAMESERVER").parse().unwrap();
    let dir = PathBuf::from(env_of(&c, "KDIPC_CERT_DIR"));
    let certified = || certs::load(&dir).unwrap().client;
    rt().block_on(async {
        let (ep_a, conn_a, _sa, _ra) = register(ns, certified()).await;
        let (ep_b, conn_b, mut send_b, _rb) = register(ns, certified()).await;
        wait_log(&c, "node joined", 2);
        // A leaves; B is told (`NodeGone`) and keeps silent.
        conn_a.close(0u32.into(), b"bye");
        ep_a.wait_idle().await;
        let t0 = std::time::Instant::now();
        let log = wait_log(&c, "no recovery report within the lease", 1);
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(4), "declared after {waited:?}:\n{log}");
        // B speaks again (on the stream it registered on, before it had an
        // id): its connection is closed, nothing is served.
        let get = Call::ShmGet { key: 0, size: 4096, flags: libc::IPC_CREAT | 0o600, cred: me() };
        send_b.write_all(&frame(&Msg::Call { id: 1, call: get })).await.unwrap();
        let why = tokio::time::timeout(SOON, conn_b.closed()).await.expect("the connection stayed open");
        assert!(matches!(why, quinn::ConnectionError::ApplicationClosed(_)), "closed otherwise: {why}");
        ep_b.close(0u32.into(), b"");
        println!(
            "silent node declared dead {:.2} s after the death it did not report on",
            waited.as_secs_f64()
        );
    });
}
