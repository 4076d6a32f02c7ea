//! The simulator over TLS (`sim --tls`): a certificate made at start for
//! the address it listens on, and the handshakes it has seen (full or
//! resumed).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::transport::wire::Wire;

/// A client that opened TCP and never finishes its handshake is let go
/// after this long (the client's own connect timeout is shorter).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or the ticketer.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// TLS handshakes the simulator completed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshakes {
    /// Full handshakes (a new session).
    pub full: u64,
    /// Resumed from a ticket the client kept.
    pub resumed: u64,
}

/// The server side of TLS for one simulator.
pub(crate) struct SimTls {
    acceptor: TlsAcceptor,
    certificate_pem: String,
    full: AtomicU64,
    resumed: AtomicU64,
}

impl SimTls {
    /// A self-signed certificate for `localhost` and `ip`, and a server
    /// that hands out TLS 1.3 tickets, so a client that keeps them resumes
    /// instead of negotiating again.
    pub fn new(ip: IpAddr) -> Result<SimTls, TlsSetupError> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), ip.to_string()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)?;
        // Stateless tickets: any number of clients can resume, where the
        // default in-memory cache keeps 256 sessions.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(SimTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate_pem: certified.cert.pem(),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// The certificate, PEM: what a client trusts (`connect --ca-file`).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> Handshakes {
        Handshakes {
            full: self.full.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
        }
    }

    /// Runs the server's handshake on `tcp` (bounded), counting its kind.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<SimStream> {
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let counter = match tls.get_ref().1.handshake_kind() {
            Some(HandshakeKind::Resumed) => &self.resumed,
            _ => &self.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Wire::Tls(Box::new(tls)))
    }
}

/// An accepted connection, before or under TLS.
pub(crate) type SimStream = Wire<TlsStream<TcpStream>>;
