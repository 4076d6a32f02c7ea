//! One websocket: the only code that does byte I/O. A task per socket runs
//! a reader (frames → decoded `NetEvent`s) and a writer (queued frames →
//! socket) side by side, so a peer that stops reading never stops us from
//! reading it, and reports exactly one terminal event when it ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::debug;

use super::TransportConfig;
use crate::bridge::{CloseReason, ConnId, ConnKind, EventSender, Inbound, NetEvent, Outbound};
use crate::protocol::{DecodeError, decode_global, decode_team};

/// What the transport asks a connection task to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Send a frame.
    Frame(Outbound),
    /// Send a websocket ping.
    Probe,
    /// Send a close frame, then wait (bounded) for the peer's.
    Close(u16),
}

/// Hands an event to the core, waiting (without blocking the worker) while
/// the bridge is full: reading stops, and TCP flow control slows the peer.
/// Returns false when the core is gone.
async fn emit(events: &EventSender, mut event: NetEvent) -> bool {
    let mut pause = Duration::from_micros(200);
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            Err(crossbeam_channel::TrySendError::Full(back)) => {
                event = back;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

fn describe_connect_error(error: &tungstenite::Error) -> String {
    if let tungstenite::Error::Io(io) = error
        && io.raw_os_error() == Some(24)
    {
        return "out of file descriptors (EMFILE): raise the open-files limit (ulimit -n)".into();
    }
    if let tungstenite::Error::Http(response) = error {
        return format!("handshake refused: HTTP {}", response.status());
    }
    crate::protocol::clip(&error.to_string(), 200)
}

fn close_reason(error: &tungstenite::Error) -> CloseReason {
    use std::io::ErrorKind;
    match error {
        tungstenite::Error::Capacity(_) => CloseReason::TooLarge,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            CloseReason::Reset
        }
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => CloseReason::Reset,
        tungstenite::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            ) =>
        {
            CloseReason::Reset
        }
        other => CloseReason::Error(crate::protocol::clip(&other.to_string(), 200)),
    }
}

fn decode(kind: ConnKind, text: &str) -> Inbound {
    match kind {
        ConnKind::Global => Inbound::Global(decode_global(text)),
        ConnKind::Team(_) => Inbound::Team(decode_team(text)),
    }
}

fn bad(kind: ConnKind, error: DecodeError) -> Inbound {
    match kind {
        ConnKind::Global => Inbound::Global(Err(error)),
        ConnKind::Team(_) => Inbound::Team(Err(error)),
    }
}

/// Runs one connection from connect to close. Sends exactly one of
/// `OpenFailed` or `Opened … Closed`, unless the task is aborted.
pub(crate) async fn run(
    conn: ConnId,
    kind: ConnKind,
    url: String,
    config: TransportConfig,
    mut outgoing: mpsc::Receiver<Outgoing>,
    events: EventSender,
) {
    let ws_config = config.websocket_config();
    // Boxed: the handshake's state is kilobytes and would otherwise stay
    // inline in this task for the socket's whole life.
    let connecting = Box::pin(tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(ws_config),
        true,
        None,
    ));
    let socket = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok((socket, _response))) => socket,
        Ok(Err(error)) => {
            let error = describe_connect_error(&error);
            emit(&events, NetEvent::OpenFailed { conn, error }).await;
            return;
        }
        Err(_) => {
            let error = "connect timeout".to_owned();
            emit(&events, NetEvent::OpenFailed { conn, error }).await;
            return;
        }
    };
    if !emit(&events, NetEvent::Opened { conn }).await {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let closing = AtomicBool::new(false);

    let reader = async {
        let mut remote_code = None;
        while let Some(message) = stream.next().await {
            let frame = match message {
                Ok(Message::Text(text)) => decode(kind, text.as_str()),
                Ok(Message::Binary(bytes)) => bad(kind, DecodeError::Binary { len: bytes.len() }),
                Ok(Message::Close(frame)) => {
                    remote_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    continue;
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {
                    if !emit(&events, NetEvent::Alive { conn }).await {
                        return CloseReason::Local;
                    }
                    continue;
                }
                Ok(Message::Frame(_)) => continue,
                Err(error) => return close_reason(&error),
            };
            if !emit(&events, NetEvent::Received { conn, frame }).await {
                return CloseReason::Local;
            }
        }
        match remote_code {
            _ if closing.load(Ordering::Relaxed) => CloseReason::Local,
            Some(code) => CloseReason::Remote { code },
            None => CloseReason::Reset,
        }
    };

    let writer = async {
        while let Some(first) = outgoing.recv().await {
            // Write everything already queued, then flush once.
            let mut next = Some(first);
            while let Some(item) = next.take() {
                let result = match item {
                    Outgoing::Frame(frame) => sink.feed(Message::text(frame.encode())).await,
                    Outgoing::Probe => sink.feed(Message::Ping(Default::default())).await,
                    Outgoing::Close(code) => {
                        closing.store(true, Ordering::Relaxed);
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: "".into(),
                        };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        // The reader finishes when the peer answers; this
                        // bounds how long we wait for that.
                        tokio::time::sleep(config.close_timeout).await;
                        return CloseReason::Local;
                    }
                };
                if let Err(error) = result {
                    return close_reason(&error);
                }
                next = outgoing.try_recv().ok();
            }
            if let Err(error) = sink.flush().await {
                return close_reason(&error);
            }
        }
        // The transport dropped our queue: it is shutting down.
        CloseReason::Local
    };

    let reason = tokio::select! {
        reason = reader => reason,
        reason = writer => reason,
    };
    debug!(%conn, %reason, "connection ended");
    emit(&events, NetEvent::Closed { conn, reason }).await;
}
