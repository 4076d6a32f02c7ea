//! One websocket: the only code that does byte I/O on an open socket. A task
//! per socket drives one unsplit stream by hand: each time it is polled it
//! writes what the core queued, reads what the peer sent (frames → the
//! [`Reader`] → bridge events), and checks its two deadlines. Reading never
//! waits on a write, and a write never waits on reading; nothing is locked.
//!
//! It reports exactly one terminal event, and before it hands over whatever
//! it had read: when the core aborts it too. Should the task panic, a guard
//! ([`LastWord`]) still reports the link closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::debug;

use super::dial::{DialConfig, Socket, dial};
use super::mailbox::{Mailbox, Outgoing};
use crate::bridge::{CloseReason, ConnId, ConnKind, NetEvent};
use crate::inbox::EventSender;
use crate::reader::{Frame, Reader};
use crate::tap::{SocketTap, Tap};

/// Most frames read in one poll before the task yields to its neighbours.
const READ_BURST: u32 = 1024;

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

/// An open connection and everything its task carries between polls.
struct Connection {
    socket: Socket,
    reader: Reader,
    events: EventSender,
    mailbox: Arc<Mailbox>,
    /// Events read and not yet handed over (waiting for a credit).
    handover: [Option<NetEvent>; 2],
    /// An outbound item taken from the queue, waiting for the socket.
    next_out: Option<Outgoing>,
    /// Frames given to the socket and not yet flushed.
    unflushed: bool,
    /// Our close frame is out: nothing more is written.
    closing: bool,
    /// The close code the peer sent, if it sent one.
    remote_code: Option<u16>,
    /// Since when a write could not drain.
    write_blocked_since: Option<Instant>,
    /// A write that cannot drain, or a message that does not complete,
    /// within this long ends the connection.
    stall: Duration,
    /// Armed at (or before) the earliest deadline; re-armed when it fires.
    timer: Option<Pin<Box<Sleep>>>,
    /// Message texts for the tap's consumer, if there is one.
    tap: Option<Box<SocketTap>>,
}

impl Connection {
    /// Hands over queued events while credits last; false if some wait.
    fn hand_over(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        for slot in &mut self.handover {
            if slot.is_none() {
                continue;
            }
            match self.events.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(CloseReason::Local),
                Poll::Pending => return Ok(false),
            }
            if let Some(event) = slot.take() {
                self.events.send(event).map_err(|_| CloseReason::Local)?;
            }
        }
        Ok(true)
    }

    /// Writes what the core queued, then flushes. Never waits.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        loop {
            if self.next_out.is_none() {
                match self.mailbox.poll_take(cx) {
                    Some(item) => self.next_out = Some(item),
                    None => break,
                }
            }
            if self.closing {
                self.next_out = None;
                continue;
            }
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(close_reason(&e)),
                Poll::Pending => break,
            }
            let message = match self.next_out.take() {
                Some(Outgoing::Text(text)) => {
                    Message::Text(Utf8Bytes::try_from(text.bytes()).unwrap_or_default())
                }
                Some(Outgoing::Probe) => Message::Ping(Default::default()),
                Some(Outgoing::Close(code)) => {
                    self.closing = true;
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "".into(),
                    }))
                }
                None => continue,
            };
            Pin::new(&mut self.socket)
                .start_send(message)
                .map_err(|e| close_reason(&e))?;
            self.unflushed = true;
        }
        if self.unflushed {
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(close_reason(&e)),
                Poll::Pending => {}
            }
        }
        let blocked = self.unflushed || self.next_out.is_some();
        match (blocked, self.write_blocked_since) {
            (true, None) => self.write_blocked_since = Some(Instant::now()),
            (false, Some(_)) => self.write_blocked_since = None,
            _ => {}
        }
        Ok(())
    }

    /// Whether the tap's consumer has taken the message it held back; if
    /// so, tells the core reading goes on.
    fn tap_released(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let Some(tap) = self.tap.as_mut().filter(|t| t.is_holding()) else {
            return Ok(true);
        };
        if tap.poll_release(cx).is_pending() {
            return Ok(false);
        }
        let conn = self.reader.conn();
        self.events
            .send_final(NetEvent::Flow {
                conn,
                paused: false,
            })
            .map_err(|_| CloseReason::Local)?;
        Ok(true)
    }

    /// Reads what is buffered, up to a burst. `Err` when the connection is over.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        for _ in 0..READ_BURST {
            if !self.hand_over(cx)? || !self.tap_released(cx)? {
                // No credit, or the tap's consumer is behind: stop reading,
                // so TCP pushes back on the peer.
                return Ok(());
            }
            let message = match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(e))) => return Err(close_reason(&e)),
                Poll::Ready(None) => {
                    return Err(match self.remote_code {
                        _ if self.closing => CloseReason::Local,
                        Some(code) => CloseReason::Remote { code },
                        None => CloseReason::Reset,
                    });
                }
                Poll::Pending => {
                    // Nothing more buffered: the run goes now, not later.
                    self.handover[0] = self.reader.flush();
                    self.hand_over(cx)?;
                    return Ok(());
                }
            };
            let frame = match &message {
                Message::Text(text) => Frame::Text(text.as_str()),
                Message::Binary(bytes) => Frame::Binary(bytes.len()),
                Message::Ping(_) | Message::Pong(_) => Frame::Control,
                Message::Close(frame) => {
                    self.remote_code = Some(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
                    continue;
                }
                Message::Frame(_) => continue,
            };
            let mut pause = false;
            self.handover = match self.tap.as_mut() {
                None => self.reader.frame(frame),
                Some(tap) => {
                    let mut offer = |index: u64, text: &str| pause = tap.offer(index, text);
                    self.reader.frame_with(frame, Some(&mut offer))
                }
            };
            if pause {
                let conn = self.reader.conn();
                self.events
                    .send_final(NetEvent::Flow { conn, paused: true })
                    .map_err(|_| CloseReason::Local)?;
            }
        }
        // A full burst: hand over what it read, let other sockets run, then
        // carry on.
        if self.hand_over(cx)? {
            self.handover[0] = self.reader.flush();
            self.hand_over(cx)?;
        }
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// The earliest of the stall deadlines, if any. A stall limit past the
    /// clock's range (the pong timeout comes from configuration) is no
    /// deadline, never an overflow.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let write = self
            .write_blocked_since
            .and_then(|t| t.checked_add(self.stall))
            .map(|at| (at, CloseReason::PEER_NOT_READING));
        let partial = self
            .socket
            .get_ref()
            .partial_since()
            .and_then(|t| Instant::from_std(t).checked_add(self.stall))
            .map(|at| (at, CloseReason::MESSAGE_INCOMPLETE));
        match (write, partial) {
            (Some(w), Some(p)) => Some(if w.0 <= p.0 { w } else { p }),
            (w, p) => w.or(p),
        }
    }

    /// Ends the connection on a passed deadline; otherwise makes sure the
    /// timer fires no later than the next one.
    fn watch_deadlines(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        let Some((at, what)) = self.deadline() else {
            return Ok(());
        };
        if at <= Instant::now() {
            return Err(CloseReason::Stalled(what));
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at || timer.is_elapsed() {
            timer.as_mut().reset(at);
        }
        // Registers the wake-up; if it already fired, poll again at once.
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Ok(())
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Poll::Ready(reason) = self.mailbox.poll_end(cx) {
            return Poll::Ready(reason);
        }
        let step = self
            .write(cx)
            .and_then(|()| self.read(cx))
            .and_then(|()| self.watch_deadlines(cx));
        match step {
            Ok(()) => Poll::Pending,
            Err(reason) => Poll::Ready(reason),
        }
    }

    /// Hands over everything read, then the terminal event. Never waits.
    fn finish(mut self, conn: ConnId, reason: CloseReason) {
        if let Some(tap) = self.tap.as_mut() {
            tap.release_now();
        }
        let last = self.reader.flush();
        for event in self
            .handover
            .iter_mut()
            .filter_map(Option::take)
            .chain(last)
        {
            let _ = self.events.send_final(event);
        }
        debug!(%conn, %reason, "connection ended");
        let _ = self.events.send_final(NetEvent::Closed { conn, reason });
        self.mailbox.close();
    }
}

/// A task's terminal event, said even if the task never gets to say it: a
/// panic in a socket task (a bug) unwinds through this guard's `drop`,
/// which reports the link closed (or the open failed), so the core
/// re-requests it instead of counting a dead link as connected. A task
/// dropped unfinished (its runtime shutting down) says so the same way.
struct LastWord {
    conn: ConnId,
    events: EventSender,
    mailbox: Arc<Mailbox>,
    /// `Opened` went out: the terminal event is `Closed`, not `OpenFailed`.
    opened: bool,
    /// The task reported its own terminal event.
    said: bool,
}

impl LastWord {
    /// The task reported its terminal event itself.
    fn said(mut self) {
        self.said = true;
    }
}

impl Drop for LastWord {
    fn drop(&mut self) {
        if self.said {
            return;
        }
        let why = if std::thread::panicking() {
            "the socket task panicked"
        } else {
            "the socket task was dropped"
        };
        let conn = self.conn;
        let event = if self.opened {
            NetEvent::Closed {
                conn,
                reason: CloseReason::Error(why.into()),
            }
        } else {
            NetEvent::OpenFailed {
                conn,
                error: why.into(),
            }
        };
        let _ = self.events.send_final(event);
        self.mailbox.close();
    }
}

/// Everything a connection task starts with.
pub(crate) struct Task {
    pub conn: ConnId,
    pub kind: ConnKind,
    pub url: String,
    pub config: Arc<DialConfig>,
    pub stall: Duration,
    pub mailbox: Arc<Mailbox>,
    pub events: EventSender,
    pub tap: Option<Tap>,
}

/// Runs one connection from dial to close: exactly one of `OpenFailed`, or
/// `Opened … Closed`, whatever happens, cancellation included.
pub(crate) async fn run(task: Task) {
    let Task {
        conn,
        kind,
        url,
        config,
        stall,
        mailbox,
        events,
        tap,
    } = task;
    let mut last_word = LastWord {
        conn,
        events: events.clone(),
        mailbox: mailbox.clone(),
        opened: false,
        said: false,
    };
    // Boxed: the handshake's state is kilobytes, and would otherwise stay
    // inline in this task for the socket's whole life.
    let dialing = Box::pin(async { dial(&url, &config).await });
    let ended = std::future::poll_fn(|cx| mailbox.poll_end(cx));
    let socket = tokio::select! {
        dialed = dialing => dialed,
        reason = ended => Err(format!("{reason} while connecting")),
    };
    let socket = match socket {
        Ok(socket) => socket,
        Err(error) => {
            let _ = events.send_final(NetEvent::OpenFailed { conn, error });
            mailbox.close();
            return last_word.said();
        }
    };
    if events.send_final(NetEvent::Opened { conn }).is_err() {
        mailbox.close();
        return last_word.said();
    }
    last_word.opened = true;
    #[cfg(test)]
    tests::inject_panic(&url);
    let mut connection = Connection {
        socket,
        reader: Reader::new(conn, kind),
        events,
        mailbox,
        handover: [None, None],
        next_out: None,
        unflushed: false,
        closing: false,
        remote_code: None,
        write_blocked_since: None,
        stall,
        timer: None,
        tap: match (tap, kind) {
            (Some(tap), ConnKind::Team(team)) => Some(Box::new(SocketTap::new(&tap, team, conn))),
            _ => None,
        },
    };
    let reason = std::future::poll_fn(|cx| connection.poll_end(cx)).await;
    connection.finish(conn, reason);
    last_word.said();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::testkit::client::start;
    use crate::testkit::server::Server;

    /// A socket task opened on a URL ending so panics right after `Opened`:
    /// the fault hook for the panic guard's test.
    const PANIC_PATH: &str = "/panic-after-open";

    pub(super) fn inject_panic(url: &str) {
        if url.ends_with(PANIC_PATH) {
            panic!("injected fault: a socket task panics");
        }
    }

    /// A panicking socket task must not leave its team looking connected:
    /// the guard reports it closed, and the core asks for it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_task_that_panics_gets_its_team_re_requested() {
        let mut server = Server::bind().await;
        let client = start(server.url("/global"), |_| {});
        let mut global = server.accept().await;
        global.send(json!({"type": "hello"}));
        global.send(json!({"type": "team.join", "team_id": 1}));
        global.expect("team.connect").await;
        let url = server.url(&format!("/team/1{PANIC_PATH}"));
        global.send(json!({"type": "team.connect", "team_id": 1, "ws_url": url}));
        let _doomed = server.accept().await;
        // Asked again (within the server's deadline, or `expect` fails).
        let again = global.expect("team.connect").await;
        assert_eq!(again["team_id"], 1);
        let url = server.url("/team/1");
        global.send(json!({"type": "team.connect", "team_id": 1, "ws_url": url}));
        let team = server.accept().await;
        team.send(json!({"type": "hello"}));
        team.send(json!({"type": "message", "text": "after the panic"}));
        let started = std::time::Instant::now();
        loop {
            global.send(json!({"type": "healthcheck"}));
            let reply = global.expect("healthcheck").await;
            if reply["stats"][0]["message_count"] == 1 && reply["stats"][0]["connected"] == true {
                break;
            }
            assert!(
                started.elapsed() < crate::testkit::server::DEADLINE,
                "{reply}"
            );
        }
        global.send(json!({"type": "goodbye"}));
        let outcome = client.finish().await;
        assert_eq!(outcome.report.teams[0].reconnects, 1);
    }

    /// Per-socket memory is per-team memory: ten thousand of these stay
    /// resident. Most of it is the websocket layer's own state.
    #[test]
    fn a_connection_stays_small() {
        let (ours, ws) = (
            std::mem::size_of::<super::Connection>(),
            std::mem::size_of::<super::Socket>(),
        );
        assert!(ours - ws <= 320, "{ours} bytes, {ws} of them the websocket");
        // A plain socket carries no TLS state inline (it is boxed).
        let wire = std::mem::size_of::<super::super::dial::Stream>();
        assert!(wire <= 128, "the stream under a websocket is {wire} bytes");
        assert!(std::mem::size_of::<crate::bridge::NetEvent>() <= 40);
    }
}
