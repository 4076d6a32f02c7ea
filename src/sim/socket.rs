//! What every simulator socket shares: the orders the director and the
//! injector give a live socket task ([`SocketCtl`]), the split websocket
//! types, and the frame helpers.

use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use super::tls::SimStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::faults::WatchId;
use crate::protocol::encode;

/// What a live socket task is told to do (by the plan, the injector and
/// the phases).
#[derive(Debug)]
pub(crate) enum SocketCtl {
    /// Send a raw frame.
    Send(Message),
    /// Send a frame carrying an injected fault to a team socket, and arm
    /// its recovery once the frame is written.
    Inject(Message, WatchId),
    /// Close with this code (after what is queued).
    Close(u16),
    /// Drop with RST.
    Reset,
    /// Stop sending and answering; keep reading to notice the end.
    Zombie,
    /// Stop reading for this long.
    SlowRead(Duration),
    /// Send `team.left` and stop sending.
    Leave,
    /// Stop sending; acknowledge once no write is in flight.
    Pause(oneshot::Sender<()>),
    /// A newer socket of the team is opening: take in what the client has
    /// already sent here (its close frame, its end of stream) without
    /// waiting, then acknowledge; a socket that turns out closed ends
    /// instead (dropping the acknowledgement).
    Drain(oneshot::Sender<()>),
    /// Send one message of this many bytes (above the client's limit).
    Oversize(usize),
}

/// A server-side websocket, split.
pub(crate) type Sink = SplitSink<WebSocketStream<SimStream>, Message>;
/// Its reading half.
pub(crate) type Source = SplitStream<WebSocketStream<SimStream>>;

/// How long a socket keeps reading after it sent a close frame.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One frame's worth of an event.
pub(crate) fn text(event: &impl serde::Serialize) -> Message {
    Message::text(encode(event))
}

/// A close frame with `code`.
pub(crate) fn close_frame(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: "".into(),
    }))
}

/// The code of a close frame the client sent, if it carried one.
pub(crate) fn close_code(frame: Option<CloseFrame>) -> Option<u16> {
    frame.map(|f| u16::from(f.code))
}

/// Drops the socket with RST: the halves are rejoined to reach the stream.
pub(crate) fn reset(sink: Sink, stream: Source) {
    if let Ok(ws) = sink.reunite(stream) {
        let _ = ws.get_ref().tcp().set_zero_linger();
    }
}

/// Sleeps until `at`, or forever for `None` (a disabled `select!` arm).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
