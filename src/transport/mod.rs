//! The transport: carries out [`NetCommand`]s on real sockets (tokio +
//! tokio-tungstenite, `wss://` through rustls) and reports [`NetEvent`](crate::NetEvent)s
//! over the bridge. Frames are decoded here, on the I/O threads.
//!
//! Its methods are called from the driver thread and never block: opening a
//! socket spawns a task; sending is a `try_send` into that socket's bounded
//! queue. A socket whose queue is full has a peer that stopped reading it;
//! it is dropped and reported closed with [`CloseReason::Overflow`], so the
//! core re-requests it instead of our memory growing.
//!
//! The transport keeps no timers of its own beyond two per-socket limits,
//! both the core's pong timeout: a write that cannot drain and a message
//! left incomplete end the socket. Handshakes and closes are timed by the
//! core, which aborts what takes too long.

mod connection;
mod dial;
mod guard;
mod mailbox;
pub(crate) mod wire;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bridge::{CloseReason, ConnId, NetCommand};
use crate::core::Config;
use crate::inbox::EventSender;
use crate::tap::Tap;
pub use guard::PartialBudget;
use mailbox::{Mailbox, Outgoing, PostError};

/// Socket-level limits and TLS, as an operator sets them.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest message (and frame) accepted from a peer, in bytes. A larger
    /// one closes that connection only.
    pub max_message_size: usize,
    /// tungstenite's read buffer per socket. Its default (128 KiB, allocated
    /// and zero-filled per socket) would cost ~1.3 GB (128 KiB x 10,000) at 10,000 idle teams;
    /// frames here are small, so 4 KiB.
    pub read_buffer_size: usize,
    /// Frames queued per socket before the peer is deemed not reading.
    /// Global's queue also has room for every `team.connect` the core may
    /// send in one tick (its in-flight cap), on top of this.
    pub outbound_queue: usize,
    /// Bytes of text queued per socket and not yet written before the peer
    /// is deemed not reading (a shared healthcheck reply counts once; twice
    /// the text being queued, if larger, so two of the largest replies
    /// always fit). A Global that asks for healthchecks and reads none of
    /// the replies is dropped once this much waits, not when the write
    /// stalls for a pong timeout: that took ~500 MiB at 10,000 teams.
    pub max_unsent_bytes: usize,
    /// Most bytes held in partially received messages, over all sockets: a
    /// socket that would take the total past it is dropped.
    pub max_partial_bytes: usize,
    /// TLS settings for `wss://`; `None` trusts the bundled web roots
    /// (webpki-roots). See [`tls_with_ca_file`] for a private CA.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The local address sockets connect from (`None`: the kernel's
    /// choice). One source address has ~28,000 ports towards one server
    /// address, so a worker past that binds its own.
    pub bind: Option<std::net::IpAddr>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_size: 1 << 20,
            read_buffer_size: 4 * 1024,
            outbound_queue: 1024,
            max_unsent_bytes: 16 << 20,
            max_partial_bytes: 64 << 20,
            tls: None,
            bind: None,
        }
    }
}

impl TransportConfig {
    /// The tungstenite limits derived from this config; `max_outbound` is
    /// the largest frame we may have to write (a healthcheck reply).
    pub fn websocket_config(&self, max_outbound: usize) -> WebSocketConfig {
        let mut config = WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            // Write eagerly: outbound frames are few and small, and an empty
            // buffer costs nothing per idle socket.
            .write_buffer_size(0)
            .max_write_buffer_size(max_outbound)
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

/// Live sockets, keyed by the core's connection ids.
pub struct Transport {
    runtime: Handle,
    events: EventSender,
    outbound_queue: usize,
    max_unsent_bytes: usize,
    /// Extra room on Global's queue: the core's in-flight request cap.
    global_burst: usize,
    stall: Duration,
    dial: Arc<dial::DialConfig>,
    tap: Option<Tap>,
    sockets: HashMap<ConnId, Arc<Mailbox>>,
}

impl Transport {
    /// A transport spawning its socket tasks on `runtime` and reporting to
    /// `events`, with the socket limits of `config` and the deadlines and
    /// frame cap that follow from the core's `core` config. With a `tap`,
    /// every message text goes to its consumer too.
    pub fn new(
        runtime: Handle,
        events: EventSender,
        config: &TransportConfig,
        core: &Config,
        tap: Option<Tap>,
    ) -> Transport {
        let max_outbound = crate::core::max_reply_bytes(core.max_teams);
        let tls = OnceLock::new();
        if let Some(custom) = &config.tls {
            let _ = tls.set(custom.clone());
        }
        Transport {
            runtime,
            events,
            outbound_queue: config.outbound_queue,
            max_unsent_bytes: config.max_unsent_bytes,
            global_burst: core.max_requests_in_flight,
            stall: core.pong_timeout,
            dial: Arc::new(dial::DialConfig {
                ws: config.websocket_config(max_outbound),
                partial: PartialBudget::new(config.max_partial_bytes),
                tls,
                bind: config.bind,
            }),
            tap,
            sockets: HashMap::new(),
        }
    }

    /// Carries out one command. Never blocks.
    pub fn execute(&mut self, command: NetCommand) {
        match command {
            NetCommand::Open { conn, kind, url } => {
                let (capacity, events) = match kind {
                    crate::bridge::ConnKind::Global => (
                        self.outbound_queue + self.global_burst,
                        self.events.urgent(),
                    ),
                    crate::bridge::ConnKind::Team(_) => (self.outbound_queue, self.events.clone()),
                };
                let mailbox = Mailbox::new(capacity, self.max_unsent_bytes);
                self.runtime.spawn(connection::run(connection::Task {
                    conn,
                    kind,
                    url,
                    config: self.dial.clone(),
                    stall: self.stall,
                    mailbox: mailbox.clone(),
                    events,
                    tap: self.tap.clone(),
                }));
                self.sockets.insert(conn, mailbox);
            }
            NetCommand::Send { conn, text } => self.enqueue(conn, Outgoing::Text(text)),
            NetCommand::Probe { conn } => self.enqueue(conn, Outgoing::Probe),
            NetCommand::Close { conn, code } => self.enqueue(conn, Outgoing::Close(code)),
            NetCommand::Abort { conn } => self.cancel(conn, CloseReason::Aborted),
        }
    }

    /// Ends a socket's task: it hands over what it read, then reports
    /// `reason` as its terminal event.
    fn cancel(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(mailbox) = self.sockets.remove(&conn) {
            mailbox.end(reason);
        }
    }

    fn enqueue(&mut self, conn: ConnId, item: Outgoing) {
        let Some(mailbox) = self.sockets.get(&conn) else {
            return;
        };
        match mailbox.post(item) {
            Ok(()) => {}
            Err(PostError::Ended) => {
                // The task ended; its terminal event is on its way.
                self.sockets.remove(&conn);
            }
            Err(PostError::Full) => {
                tracing::warn!(%conn, "peer not reading: outbound queue full; dropping the socket");
                self.cancel(conn, CloseReason::Overflow);
            }
        }
    }

    /// Forgets sockets whose tasks have ended. O(sockets): the driver calls
    /// it at most once a second, and only when it is awake anyway.
    pub fn sweep(&mut self) {
        self.sockets.retain(|_, mailbox| !mailbox.is_ended());
    }

    /// Ends every socket at once (last resort at exit; also on drop, so no
    /// task outlives the transport that owns it).
    pub fn abort_all(&mut self) {
        for (_, mailbox) in self.sockets.drain() {
            mailbox.end(CloseReason::Local);
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.abort_all();
    }
}
