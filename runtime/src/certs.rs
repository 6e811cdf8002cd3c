//! Cluster credentials: a CA and the node credential it signed, in one
//! directory (`kdipc certs init DIR`, `KDIPC_CERT_DIR`). Every QUIC
//! connection is mutual TLS against that CA.
//!
//! Files: `ca.pem`, `ca.key`, `node.pem`, `node.key`. Keys are `0600`, the
//! directory `0700`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name every node certificate carries and every client checks.
pub const SERVER_NAME: &str = "kdipc";
/// ALPN protocol id.
pub const ALPN: &[u8] = b"kdipc/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("generating credentials: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("{0}: not a valid PEM file")]
    Pem(PathBuf),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    // A new file, so that `mode` applies (a left-over one keeps its own).
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Whether `dir` holds a complete set of credentials.
pub fn exists(dir: &Path) -> bool {
    ["ca.pem", "node.pem", "node.key"].iter().all(|f| dir.join(f).is_file())
}

/// Creates a new CA and a node credential signed by it in `dir`.
pub fn init(dir: &Path) -> Result<(), CertError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    // Also when it existed already.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A name of its own (from its random public key), so that a peer of
    // another cluster is refused as `UnknownIssuer`, not as a bad signature
    // of a CA with the same name.
    let tag: String = ca_key.public_key_raw().iter().skip(1).take(6).map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("KDIPC cluster CA {tag}"));
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let node_key = rcgen::KeyPair::generate()?;
    let mut node = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    node.distinguished_name.push(rcgen::DnType::CommonName, "KDIPC node");
    node.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let node_cert = node.signed_by(&node_key, &ca_cert, &ca_key)?;
    write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("node.key"), &node_key.serialize_pem(), 0o600)?;
    write_file(&dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    write_file(&dir.join("node.pem"), &node_cert.pem(), 0o644)?;
    Ok(())
}

/// TLS configurations for a node, loaded from `dir`.
pub struct TlsConfigs {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the credentials in `dir` into QUIC client and server
/// configurations that require and check a peer certificate from the CA.
pub fn load(dir: &Path) -> Result<TlsConfigs, CertError> {
    let tls = |e: &dyn std::fmt::Display| CertError::Tls(e.to_string());
    let ca_path = dir.join("ca.pem");
    let ca = CertificateDer::from_pem_file(&ca_path).map_err(|_| CertError::Pem(ca_path.clone()))?;
    let cert_path = dir.join("node.pem");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|_| CertError::Pem(cert_path.clone()))?;
    let key_path = dir.join("node.key");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| CertError::Pem(key_path.clone()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| tls(&e))?;
    let roots = Arc::new(roots);

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| tls(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls(&e))?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| tls(&e))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| tls(&e))?;
    let mut transport = quinn::TransportConfig::default();
    // The lease: a peer silent this long is dead. Keep-alives five times
    // per lease, so that a lost packet or two does not end a live peer.
    let lease = crate::config::lease();
    transport.keep_alive_interval(Some(lease / 5));
    transport.max_idle_timeout(Some(lease.try_into().map_err(|e| tls(&e))?));
    // A page is 4 KiB: start at the largest datagram any Ethernet path
    // carries (1500-byte MTU, IPv6) instead of 1200, and let path MTU
    // discovery go up to MAX_UDP_PAYLOAD where the path allows (loopback,
    // jumbo-frame LANs), so that a page takes 1–2 datagrams instead of 3.
    transport.initial_mtu(1452);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    // Acknowledge every 9th ack-eliciting packet (QUIC's ACK frequency
    // extension, which both ends speak) rather than every 2nd: between
    // nodes most packets are a request or its answer, which carries the
    // acknowledgement anyway, and each ACK-only packet costs a send on one
    // side and a receive and a wake-up on the other. Heat 1024², 2 ranks:
    // 28 % fewer sendmsg per rank; loss detection is unchanged (the probe
    // time-out already allows the peer's max_ack_delay).
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(8u32.into());
    transport.ack_frequency_config(Some(acks));
    let transport = Arc::new(transport);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok(TlsConfigs { server, client })
}

/// The largest UDP payload a node accepts and path MTU discovery looks
/// for. quinn sends up to 10 segments in one GSO datagram and does not cap
/// their sum, which must stay within a UDP datagram (65 507 bytes): with a
/// larger bound (e.g. 8 952) every GSO send failed once discovery got
/// there, quinn took it for a black hole and fell back to 1 200 bytes for
/// the rest of the connection. Until this bound was set on the endpoint
/// too (its default, 1 472, is what a node announces it accepts), the
/// discovery never went past 1 472. Loopback reaches it; a 1 500-byte
/// Ethernet path stays at 1 472.
pub const MAX_UDP_PAYLOAD: u16 = 6500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_keys_0600_and_loads() {
        let dir = std::env::temp_dir().join(format!("kdipc-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init(&dir).unwrap();
        assert!(exists(&dir));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("node.key")), 0o600);
        load(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
