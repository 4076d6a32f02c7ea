//! One websocket: the only code that does byte I/O. A task per socket
//! takes turns, on one unsplit stream, between reading (frames → decoded
//! `NetEvent`s, runs of messages batched) and writing its bounded queue,
//! and reports exactly one terminal event when it ends.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::debug;

use super::TransportConfig;
use crate::bridge::{CloseReason, ConnId, ConnKind, EventSender, Inbound, NetEvent, Outbound};
use crate::protocol::{
    DecodeError, TeamServerEvent, TeamServerEventRef, decode_global, decode_team_ref,
};

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
                pause = (pause * 2).min(Duration::from_millis(1));
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

/// Most frames read in one go before the outbound queue gets a turn, and
/// the most messages in one batch.
const READ_BURST: u32 = 1024;

/// What the reading side carries between frames.
struct Reader<'a> {
    conn: ConnId,
    kind: ConnKind,
    events: &'a EventSender,
    /// The run of `message` frames not yet handed over: (count, props).
    run: (u32, u32),
    /// The close code the peer sent, if it sent one.
    remote_code: Option<u16>,
}

impl Reader<'_> {
    /// Hands over the pending run of messages. False if the core is gone.
    async fn flush(&mut self) -> bool {
        let (count, props) = std::mem::take(&mut self.run);
        count == 0
            || emit(
                self.events,
                NetEvent::Messages {
                    conn: self.conn,
                    count,
                    props,
                },
            )
            .await
    }

    /// Hands over one event, after the run before it. False if the core is gone.
    async fn emit(&mut self, event: NetEvent) -> bool {
        self.flush().await && emit(self.events, event).await
    }

    /// Acts on one frame read from the socket. `Some(reason)` when the
    /// connection is over.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        closing: bool,
    ) -> Option<CloseReason> {
        let inbound = match frame {
            None => {
                return Some(match self.remote_code {
                    _ if closing => CloseReason::Local,
                    Some(code) => CloseReason::Remote { code },
                    None => CloseReason::Reset,
                });
            }
            Some(Err(error)) => return Some(close_reason(&error)),
            Some(Ok(Message::Text(text))) => match self.kind {
                ConnKind::Team(_) => match decode_team_ref(text.as_str()) {
                    Ok(TeamServerEventRef::Message { text }) => {
                        self.run.0 += 1;
                        self.run.1 += u32::from(TeamServerEvent::is_props(&text));
                        if self.run.0 >= READ_BURST && !self.flush().await {
                            return Some(CloseReason::Local);
                        }
                        return None;
                    }
                    decoded => Inbound::Team(decoded.map(TeamServerEventRef::into_owned)),
                },
                ConnKind::Global => Inbound::Global(decode_global(text.as_str())),
            },
            Some(Ok(Message::Binary(bytes))) => {
                bad(self.kind, DecodeError::Binary { len: bytes.len() })
            }
            Some(Ok(Message::Close(frame))) => {
                self.remote_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                return None;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                let alive = NetEvent::Alive { conn: self.conn };
                return (!self.emit(alive).await).then_some(CloseReason::Local);
            }
            Some(Ok(Message::Frame(_))) => return None,
        };
        let received = NetEvent::Received {
            conn: self.conn,
            frame: inbound,
        };
        (!self.emit(received).await).then_some(CloseReason::Local)
    }
}

fn bad(kind: ConnKind, error: DecodeError) -> Inbound {
    match kind {
        ConnKind::Global => Inbound::Global(Err(error)),
        ConnKind::Team(_) => Inbound::Team(Err(error)),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Writes `first` and everything else already queued, then flushes once.
/// A close frame ends writing: returns the time to stop waiting for the
/// peer's answer.
async fn write(
    socket: &mut Socket,
    first: Outgoing,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    close_timeout: Duration,
) -> Result<Option<Instant>, CloseReason> {
    let mut next = Some(first);
    while let Some(item) = next.take() {
        let result = match item {
            Outgoing::Frame(frame) => socket.feed(Message::text(frame.encode())).await,
            Outgoing::Probe => socket.feed(Message::Ping(Default::default())).await,
            Outgoing::Close(code) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "".into(),
                };
                // If this fails the read side sees the end soon enough.
                let _ = socket.send(Message::Close(Some(frame))).await;
                return Ok(Some(Instant::now() + close_timeout));
            }
        };
        result.map_err(|e| close_reason(&e))?;
        next = outgoing.try_recv().ok();
    }
    socket.flush().await.map_err(|e| close_reason(&e))?;
    Ok(None)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
    let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connecting = Box::pin(tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(ws_config),
        true,
        connector,
    ));
    let mut socket = match tokio::time::timeout(config.connect_timeout, connecting).await {
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
    let mut reader = Reader {
        conn,
        kind,
        events: &events,
        run: (0, 0),
        remote_code: None,
    };
    // Set once our close frame is out: how long we wait for the peer's.
    let mut closing: Option<Instant> = None;
    // One task, one unsplit stream: reading and writing take turns, which
    // costs nothing here (our frames are few and small) and saves the lock
    // a split stream takes on every poll.
    let reason = loop {
        tokio::select! {
            item = outgoing.recv(), if closing.is_none() => {
                let Some(item) = item else {
                    // The transport dropped our queue: it is shutting down.
                    break CloseReason::Local;
                };
                match write(&mut socket, item, &mut outgoing, config.close_timeout).await {
                    Ok(deadline) => closing = closing.or(deadline),
                    Err(reason) => break reason,
                }
            }
            frame = socket.next() => {
                // Take everything already buffered, up to a burst, so a run
                // of messages crosses the bridge as one event.
                let mut frame = frame;
                let mut budget = READ_BURST;
                let ended = loop {
                    if let Some(reason) = reader.on_frame(frame, closing.is_some()).await {
                        break Some(reason);
                    }
                    budget -= 1;
                    if budget == 0 {
                        break None;
                    }
                    // Only when the budget allows: a frame taken here must
                    // be handled, never dropped.
                    match socket.next().now_or_never() {
                        Some(next) => frame = next,
                        None => break None,
                    }
                };
                if !reader.flush().await {
                    break CloseReason::Local;
                }
                if let Some(reason) = ended {
                    break reason;
                }
            }
            _ = sleep_until(closing) => break CloseReason::Local,
        }
    };
    debug!(%conn, %reason, "connection ended");
    emit(&events, NetEvent::Closed { conn, reason }).await;
}
