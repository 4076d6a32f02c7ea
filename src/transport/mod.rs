//! The transport: carries out [`NetCommand`]s on real sockets (tokio +
//! tokio-tungstenite, `wss://` through rustls) and reports [`NetEvent`]s
//! over the bridge. Frames are decoded here, on the I/O threads.
//!
//! Its methods are called from the driver thread and never block: opening a
//! socket spawns a task; sending is a `try_send` into that socket's bounded
//! queue. A socket whose queue is full has a peer that stopped reading it;
//! it is dropped and reported closed with [`CloseReason::Overflow`], so the
//! core re-requests it instead of our memory growing.

mod connection;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bridge::{CloseReason, ConnId, EventSender, NetCommand, NetEvent};
use connection::Outgoing;

/// Largest frame we will write: a healthcheck reply for ~900,000 teams.
/// Frames are written one at a time, so this is not memory held per socket.
const MAX_OUTBOUND_FRAME: usize = 64 << 20;

/// Socket-level limits and sizes.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest message (and frame) accepted from a peer, in bytes. A larger
    /// one closes that connection only.
    pub max_message_size: usize,
    /// tungstenite's read buffer per socket. Its default (128 KiB, allocated
    /// and zero-filled per socket) would cost ~1.4 GB at 10,000 idle teams;
    /// frames here are small, so 4 KiB.
    pub read_buffer_size: usize,
    /// Frames queued per socket before the peer is deemed not reading.
    pub outbound_queue: usize,
    /// Longest TCP + TLS + websocket handshake.
    pub connect_timeout: Duration,
    /// Longest wait for the peer's close frame after ours.
    pub close_timeout: Duration,
    /// TLS settings for `wss://`; `None` trusts the bundled web roots
    /// (webpki-roots). See [`tls_with_ca_file`] for a private CA.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_size: 1 << 20,
            read_buffer_size: 4 * 1024,
            outbound_queue: 1024,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

impl TransportConfig {
    /// The tungstenite limits derived from this config.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let mut config = WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            // Write eagerly: outbound frames are few and small, and an empty
            // buffer costs nothing per idle socket.
            .write_buffer_size(0)
            // Our own frames: a healthcheck reply grows with the fleet
            // (~70 bytes a team), so this is not tied to the inbound limit.
            .max_write_buffer_size(MAX_OUTBOUND_FRAME)
            .max_message_size(Some(self.max_message_size));
        config.max_frame_size = Some(self.max_message_size);
        config
    }
}

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no PEM certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A TLS client config trusting the bundled web roots plus every
/// certificate in the PEM file at `path`: for a Global API behind a
/// private CA (or, in tests, a self-signed certificate).
pub fn tls_with_ca_file(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let fail = |reason: String| TlsError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

struct Socket {
    queue: mpsc::Sender<Outgoing>,
    task: AbortHandle,
}

/// Live sockets, keyed by the core's connection ids.
pub struct Transport {
    runtime: Handle,
    events: EventSender,
    config: TransportConfig,
    sockets: HashMap<ConnId, Socket>,
}

impl Transport {
    /// A transport spawning its socket tasks on `runtime` and reporting to
    /// `events`.
    pub fn new(runtime: Handle, events: EventSender, config: TransportConfig) -> Transport {
        Transport {
            runtime,
            events,
            config,
            sockets: HashMap::new(),
        }
    }

    /// Carries out one command. Never blocks.
    pub fn execute(&mut self, command: NetCommand) {
        match command {
            NetCommand::Open { conn, kind, url } => {
                let (queue, outgoing) = mpsc::channel(self.config.outbound_queue);
                let task = self.runtime.spawn(connection::run(
                    conn,
                    kind,
                    url,
                    self.config.clone(),
                    outgoing,
                    self.events.clone(),
                ));
                self.sockets.insert(
                    conn,
                    Socket {
                        queue,
                        task: task.abort_handle(),
                    },
                );
            }
            NetCommand::Send { conn, frame } => self.enqueue(conn, Outgoing::Frame(frame)),
            NetCommand::Probe { conn } => self.enqueue(conn, Outgoing::Probe),
            NetCommand::Close { conn, code } => self.enqueue(conn, Outgoing::Close(code)),
            NetCommand::Abort { conn } => {
                if let Some(socket) = self.sockets.remove(&conn) {
                    socket.task.abort();
                }
            }
        }
    }

    fn enqueue(&mut self, conn: ConnId, item: Outgoing) {
        let Some(socket) = self.sockets.get(&conn) else {
            return;
        };
        match socket.queue.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The task ended; its Closed event is on its way.
                self.sockets.remove(&conn);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(socket) = self.sockets.remove(&conn) {
                    socket.task.abort();
                }
                tracing::warn!(%conn, "peer not reading: outbound queue full; dropping the socket");
                // Reported from here: the aborted task cannot report itself.
                let event = NetEvent::Closed {
                    conn,
                    reason: CloseReason::Overflow,
                };
                if self.events.try_send(event).is_err() {
                    tracing::error!(%conn, "bridge full: overflow close not reported");
                }
            }
        }
    }

    /// Forgets sockets whose tasks have ended. O(sockets): the driver calls
    /// it on a slow timer, not per tick.
    pub fn sweep(&mut self) {
        self.sockets.retain(|_, socket| !socket.task.is_finished());
    }

    /// Sockets whose tasks may still run.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is held.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Drops every socket at once (last resort at exit).
    pub fn abort_all(&mut self) {
        for (_, socket) in self.sockets.drain() {
            socket.task.abort();
        }
    }
}
