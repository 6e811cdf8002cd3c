//! QUIC transport: one connection per pair of nodes, reused; the messages
//! from one node to another travel on one unidirectional stream, so they
//! arrive in the order they were sent (the protocol relies on it).
//!
//! Whoever first needs to talk dials; the other side reuses the accepted
//! connection for its own stream (if both dial at once, each direction still
//! keeps to one stream). The first frame of every stream is
//! `Hello { node }`. A frame that does not decode closes the connection,
//! with a log line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::protocol::NodeId;
use crate::wire::{self, Msg, MAX_FRAME};

/// Something that arrived.
#[derive(Debug)]
pub enum Inbound {
    /// A message, from the node named in its stream's `Hello` (`None`:
    /// an unregistered node, on `conn`).
    Msg { from: Option<NodeId>, conn: quinn::Connection, msg: Msg },
    /// A connection to a node was lost.
    Lost { node: Option<NodeId>, conn: quinn::Connection },
    /// A node could not be reached at all.
    Gone { node: NodeId },
}

#[derive(Default)]
struct Shared {
    /// Connections by peer, for sending.
    conns: HashMap<NodeId, quinn::Connection>,
}

/// The QUIC side of a node.
pub struct Transport {
    endpoint: quinn::Endpoint,
    me: Option<NodeId>,
    shared: Arc<Mutex<Shared>>,
    addrs: HashMap<NodeId, SocketAddr>,
    out: HashMap<NodeId, mpsc::UnboundedSender<Msg>>,
    /// The tasks writing the streams in `out` (and streams given up,
    /// still delivering their last messages).
    writers: Vec<tokio::task::JoinHandle<()>>,
    /// [`Transport::closing`] was called: nothing more is sent.
    closed: bool,
    inbound: mpsc::UnboundedSender<Inbound>,
    /// Messages queued so far (see [`Transport::queued`]).
    queued: u64,
}

/// How a node closes its connections (QUIC application close codes; the
/// nameserver tells a node that left from one that died by them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goodbye {
    /// Every page given back and every hand-over done: nothing to recover.
    Clean = 0,
    /// Malformed input from the peer.
    Malformed = 1,
    /// Exiting with pages possibly still here (a detach that did not
    /// complete): recovered as after a death.
    Unclean = 2,
}

/// A transport being closed (see [`Transport::closing`]).
pub struct Closing {
    endpoint: quinn::Endpoint,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Closing {
    /// Waits (at most `within`) until every message sent so far is
    /// acknowledged by its receiver, then closes every connection and
    /// waits a moment for the close to go out. Without the first wait a
    /// hand-over sent just before exiting could die in the send buffer;
    /// without the second, peers would see a time-out instead of a close.
    pub async fn finish(self, why: Goodbye, within: Duration) {
        let drained = async {
            for w in self.writers {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(within, drained).await.is_err() {
            warn!("closing: messages still unacknowledged after {within:?}");
        }
        self.endpoint.close((why as u32).into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}

impl Transport {
    /// Binds a QUIC endpoint at `bind` and starts accepting connections.
    /// Must be called inside a tokio runtime.
    pub fn bind(
        bind: SocketAddr,
        tls: crate::certs::TlsConfigs,
        inbound: mpsc::UnboundedSender<Inbound>,
    ) -> std::io::Result<Transport> {
        let socket = std::net::UdpSocket::bind(bind)?;
        grow_buffers(&socket);
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        // What this node accepts, and so what a peer's MTU discovery may
        // reach (see `certs::MAX_UDP_PAYLOAD`).
        let mut config = quinn::EndpointConfig::default();
        config.max_udp_payload_size(crate::certs::MAX_UDP_PAYLOAD).map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::new(config, Some(tls.server), socket, runtime)?;
        endpoint.set_default_client_config(tls.client);
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), inbound.clone()));
        Ok(Transport {
            endpoint,
            me: None,
            shared,
            addrs: HashMap::new(),
            out: HashMap::new(),
            writers: Vec::new(),
            closed: false,
            inbound,
            queued: 0,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn set_me(&mut self, me: NodeId) {
        self.me = Some(me);
    }

    /// Where `node` listens.
    pub fn set_addr(&mut self, node: NodeId, addr: SocketAddr) {
        self.addrs.insert(node, addr);
    }

    /// Sends to `node` on this connection (a node that dialed us before it
    /// had an id).
    pub fn bind_conn(&mut self, node: NodeId, conn: quinn::Connection) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).conns.entry(node).or_insert(conn);
    }

    /// Sends to `node` on `conn` from now on (a new stream); returns the
    /// connection used so far.
    pub fn rebind(&mut self, node: NodeId, conn: quinn::Connection) -> Option<quinn::Connection> {
        self.out.remove(&node);
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).conns.insert(node, conn)
    }

    /// Forgets a peer: the next message to it opens a new stream.
    pub fn forget(&mut self, node: NodeId) {
        self.out.remove(&node);
        self.addrs.remove(&node);
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).conns.remove(&node);
    }

    /// How many messages were queued so far: the runtime compares it to
    /// know whether writer tasks have something to send.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Queues a message for `to`.
    pub fn send(&mut self, to: NodeId, msg: Msg) {
        if self.closed {
            return;
        }
        self.queued += 1;
        if let Some(tx) = self.out.get(&to) {
            if tx.send(msg).is_ok() {
                return;
            }
            self.out.remove(&to);
            warn!(node = to, "message to a peer whose stream closed is dropped");
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(msg);
        self.out.insert(to, tx);
        let conn = self.shared.lock().unwrap_or_else(|e| e.into_inner()).conns.get(&to).cloned();
        let dial = match conn {
            Some(c) => Dial::Have(c),
            None => match self.addrs.get(&to) {
                Some(&a) => Dial::To(a),
                None => {
                    warn!(node = to, "no address for node; message dropped");
                    self.out.remove(&to);
                    return;
                }
            },
        };
        self.writers.retain(|w| !w.is_finished());
        self.writers.push(tokio::spawn(writer(
            self.endpoint.clone(),
            self.me,
            to,
            dial,
            rx,
            self.shared.clone(),
            self.inbound.clone(),
        )));
    }

    /// Ends every stream: messages sent from now on are dropped; the
    /// returned [`Closing`] finishes the close.
    pub fn closing(&mut self) -> Closing {
        self.closed = true;
        self.out.clear();
        self.addrs.clear();
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).conns.clear();
        Closing { endpoint: self.endpoint.clone(), writers: std::mem::take(&mut self.writers) }
    }
}

/// Socket buffer size asked for (each direction).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Grows the socket's buffers from the default (≈ 208 KiB): a read-ahead
/// window answered at once (64 pages in ≈ 200 datagrams of 1 472 bytes, each
/// charged with more than its size) overflowed the receive buffer, and
/// every datagram dropped there cost a QUIC loss recovery (matmul n=1000:
/// ≈ 90 drops per run, fault p99 8 ms). The kernel caps `SO_RCVBUF` at
/// `net.core.rmem_max`; a process allowed to (`CAP_NET_ADMIN`) goes past
/// that cap with `SO_RCVBUFFORCE`. Failures only leave the default.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let set = |opt: libc::c_int| {
        let v = SOCKET_BUFFER;
        // SAFETY: setsockopt on a descriptor we own, with a pointer to an
        // int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_RCVBUFFORCE) {
        set(libc::SO_RCVBUF);
    }
    if !set(libc::SO_SNDBUFFORCE) {
        set(libc::SO_SNDBUF);
    }
}

enum Dial {
    Have(quinn::Connection),
    To(SocketAddr),
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => read_streams(conn, shared, inbound).await,
                Err(e) => warn!(%remote, "refused connection: {e}"),
            }
        });
    }
}

/// Reads every stream the peer opens on `conn`.
async fn read_streams(
    conn: quinn::Connection,
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    loop {
        match conn.accept_uni().await {
            Ok(recv) => {
                tokio::spawn(read_stream(conn.clone(), recv, shared.clone(), inbound.clone()));
            }
            Err(e) => {
                debug!(remote = %conn.remote_address(), "connection ended: {e}");
                return;
            }
        }
    }
}

/// Frames arriving on one stream: reads in large chunks and splits them.
/// `buf[pos..end]` holds what was read and not yet decoded; the buffer is
/// zeroed once, when it grows, not before every read (a read often returns
/// one packet's worth, and zeroing 64 KiB each time cost more than it).
struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    fn new(recv: quinn::RecvStream) -> Self {
        FrameReader { recv, buf: vec![0; READ_CHUNK], pos: 0, end: 0 }
    }

    /// The next frame; `Ok(None)` at the end of the stream.
    async fn next(&mut self) -> Result<Option<Msg>, String> {
        loop {
            let avail = &self.buf[self.pos..self.end];
            let mut need = 4;
            if avail.len() >= 4 {
                let len = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_FRAME {
                    return Err(format!("frame of {len} bytes exceeds the limit"));
                }
                if avail.len() >= 4 + len {
                    let msg = wire::decode(&avail[4..4 + len]).map_err(|e| e.to_string())?;
                    self.pos += 4 + len;
                    return Ok(Some(msg));
                }
                need = 4 + len;
            }
            // Move what is left to the front when the room behind it runs
            // low; grow when the frame being read cannot fit or there is
            // no room at all.
            if self.pos == self.end {
                (self.pos, self.end) = (0, 0);
            } else if self.pos > 0 && self.buf.len() - self.end < READ_CHUNK / 2 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            if self.end == self.buf.len() || self.buf.len() - self.pos < need {
                let len = (self.pos + need).max(self.end + READ_CHUNK);
                self.buf.resize(len, 0);
            }
            match self.recv.read(&mut self.buf[self.end..]).await {
                Ok(Some(n)) => self.end += n,
                Ok(None) if self.end == self.pos => return Ok(None),
                Ok(None) => return Err("stream ended inside a frame".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

async fn read_stream(
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    let mut frames = FrameReader::new(recv);
    let from = match frames.next().await {
        Ok(Some(Msg::Hello { node })) => node,
        Ok(_) => return bad(&conn, "stream does not start with Hello"),
        Err(e) => return bad(&conn, &e),
    };
    if let Some(n) = from {
        shared.lock().unwrap_or_else(|e| e.into_inner()).conns.entry(n).or_insert_with(|| conn.clone());
    }
    loop {
        match frames.next().await {
            Ok(Some(Msg::Hello { .. })) => return bad(&conn, "second Hello"),
            Ok(Some(msg)) => {
                if inbound.send(Inbound::Msg { from, conn: conn.clone(), msg }).is_err() {
                    return;
                }
            }
            // The peer finished the stream (it is closing, see
            // `Closing::finish`): it is lost when the connection ends,
            // after every message it sent here.
            Ok(None) => {
                conn.closed().await;
                let _ = inbound.send(Inbound::Lost { node: from, conn });
                return;
            }
            Err(e) => {
                if conn.close_reason().is_none() {
                    bad(&conn, &e);
                }
                let _ = inbound.send(Inbound::Lost { node: from, conn });
                return;
            }
        }
    }
}

/// Closes a connection whose peer sent something malformed.
pub fn bad(conn: &quinn::Connection, why: &str) {
    warn!(remote = %conn.remote_address(), "closing connection: malformed input: {why}");
    conn.close((Goodbye::Malformed as u32).into(), b"malformed message");
}

async fn writer(
    endpoint: quinn::Endpoint,
    me: Option<NodeId>,
    to: NodeId,
    dial: Dial,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Mutex<Shared>>,
    inbound: mpsc::UnboundedSender<Inbound>,
) {
    let conn = match dial {
        Dial::Have(c) => c,
        Dial::To(addr) => {
            let conn = match endpoint.connect(addr, crate::certs::SERVER_NAME) {
                Ok(connecting) => connecting.await,
                Err(e) => {
                    warn!(node = to, %addr, "cannot connect: {e}");
                    let _ = inbound.send(Inbound::Gone { node: to });
                    return;
                }
            };
            match conn {
                Ok(c) => {
                    info!(node = to, %addr, "connected");
                    tokio::spawn(read_streams(c.clone(), shared.clone(), inbound.clone()));
                    // Whoever closes it, the node hears that the peer is gone.
                    let (watch, lost) = (c.clone(), inbound.clone());
                    tokio::spawn(async move {
                        let why = watch.closed().await;
                        debug!(node = to, "connection closed: {why}");
                        let _ = lost.send(Inbound::Lost { node: Some(to), conn: watch });
                    });
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .conns
                        .entry(to)
                        .or_insert_with(|| c.clone());
                    c
                }
                Err(e) => {
                    warn!(node = to, %addr, "cannot connect: {e}");
                    let _ = inbound.send(Inbound::Gone { node: to });
                    return;
                }
            }
        }
    };
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            warn!(node = to, "cannot open stream: {e}");
            let _ = inbound.send(Inbound::Lost { node: Some(to), conn });
            return;
        }
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    wire::encode_into(&Msg::Hello { node: me }, &mut buf);
    while let Some(msg) = rx.recv().await {
        wire::encode_into(&msg, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(m) => wire::encode_into(&m, &mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            match conn.close_reason() {
                // The peer closed on purpose (it exited).
                Some(quinn::ConnectionError::ApplicationClosed(_)) => debug!(node = to, "send failed: {e}"),
                _ => warn!(node = to, "send failed: {e}"),
            }
            let _ = inbound.send(Inbound::Lost { node: Some(to), conn });
            return;
        }
        buf.clear();
    }
    // Until the peer has every byte (see `Closing::finish`).
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}
