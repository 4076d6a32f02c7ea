//! The simulator's listener: accepts websockets on `/global` and on
//! single-use `/team/<id>/<token>`, and hands each to its task. What the
//! director can tell a socket task to do is [`SocketCtl`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::Shared;
use super::global_socket::serve_global;
use super::survival::WatchId;
use super::team_socket::serve_team;
use crate::protocol::{TeamId, encode};

/// What the director tells a live socket task to do.
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
pub(crate) type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
/// Its reading half.
pub(crate) type Source = SplitStream<WebSocketStream<TcpStream>>;

/// How long a socket keeps reading after it sent a close frame.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where an accepted handshake goes.
enum Route {
    Global,
    Team(TeamId),
}

/// After a failed accept (out of descriptors, a connection aborted before
/// it was taken), wait this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections for as long as the simulator runs. A failed accept
/// is transient (descriptors free up as sockets close): it never ends the
/// loop, which would leave every later team unable to connect.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handshake(stream, shared.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "simulator: accept failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn route(shared: &Shared, request: &Request) -> Result<Route, ErrorResponse> {
    let refuse = |status: StatusCode| {
        let mut response = ErrorResponse::new(None);
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    if path == "/global" {
        return Ok(Route::Global);
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("team"), Some(id), Some(token), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(StatusCode::NOT_FOUND));
    };
    let (Ok(id), Ok(token)) = (id.parse::<u64>(), token.parse::<u64>()) else {
        return Err(refuse(StatusCode::NOT_FOUND));
    };
    let mut ledger = shared.lock();
    match ledger.tokens.get_mut(&token) {
        Some((team, used)) if team.0 == id && !*used => {
            *used = true;
            Ok(Route::Team(TeamId(id)))
        }
        _ => {
            ledger.violation(format!("team {id}: URL token {token} reused or unknown"));
            Err(refuse(StatusCode::FORBIDDEN))
        }
    }
}

async fn handshake(stream: TcpStream, shared: Arc<Shared>) {
    let mut routed = None;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |request: &Request, response: Response| {
        routed = Some(route(&shared, request)?);
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    match routed {
        Some(Route::Global) => serve_global(ws, shared).await,
        Some(Route::Team(team)) => serve_team(ws, team, shared).await,
        None => {}
    }
}

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

/// Drops the socket with RST: the halves are rejoined to reach the stream.
pub(crate) fn reset(sink: Sink, stream: Source) {
    if let Ok(ws) = sink.reunite(stream) {
        let _ = ws.get_ref().set_zero_linger();
    }
}

/// The client closed a socket; after `goodbye` it must use 1000.
pub(crate) fn client_closed(shared: &Shared, frame: Option<CloseFrame>) {
    let mut ledger = shared.lock();
    if ledger.goodbye_sent && frame.is_some_and(|f| u16::from(f.code) == 1000) {
        ledger.closed_after_goodbye += 1;
    }
}

/// Sleeps until `at`, or forever for `None` (a disabled `select!` arm).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
