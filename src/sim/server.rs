//! The simulator's sockets: `/global` and single-use `/team/<id>/<token>`.
//! Each accepted websocket gets a task; the director steers it through a
//! control channel, and every message it writes is booked in the ledger
//! only once the write succeeded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::Shared;
use super::ledger::{Fault, GlobalCtl, SocketCtl};
use crate::protocol::{
    GlobalClientEvent, GlobalServerEvent, TeamClientEvent, TeamId, TeamServerEvent,
    decode_global_client, decode_team_client, encode,
};

/// Where an accepted handshake goes.
enum Route {
    Global,
    Team(TeamId),
}

/// Accepts connections until the listener fails.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(handshake(stream, shared.clone()));
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
pub(super) fn text(event: &impl serde::Serialize) -> Message {
    Message::text(encode(event))
}

fn close_frame(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: "".into(),
    }))
}

/// Drops the socket with RST: the halves are rejoined to reach the stream.
fn reset(
    sink: futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>,
    stream: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
) {
    if let Ok(ws) = sink.reunite(stream) {
        let _ = ws.get_ref().set_zero_linger();
    }
}

/// How long a socket keeps reading after it sent a close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn serve_global(ws: WebSocketStream<TcpStream>, shared: Arc<Shared>) {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    let (id, delay, replay) = {
        let mut ledger = shared.lock();
        ledger.next_socket += 1;
        let id = ledger.next_socket;
        ledger.global = Some(GlobalCtl {
            id,
            ctl,
            waiters: VecDeque::new(),
        });
        ledger.global_connects += 1;
        let pending = std::mem::take(&mut ledger.pending_global_drops);
        ledger.survived(Fault::GlobalDrop, pending);
        let delay = shared.roll_delayed_hello(&mut ledger, None);
        // Re-derive what the client must know: every joined team, and every
        // team that left while its socket is still open (a team.left written
        // on a Global that was then reset may never have arrived).
        let replay: Vec<GlobalServerEvent> = ledger
            .teams
            .iter()
            .filter_map(|(&team_id, t)| {
                if t.joined {
                    Some(GlobalServerEvent::TeamJoin { team_id })
                } else if t.open_sockets > 0 && t.left_at.is_some() {
                    Some(GlobalServerEvent::TeamLeft { team_id })
                } else {
                    None
                }
            })
            .collect();
        (id, delay, replay)
    };
    shared.started.get_or_init(Instant::now);
    shared.global_seen.notify_one();
    let (mut sink, mut stream) = ws.split();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut greeting = vec![text(&GlobalServerEvent::Hello)];
    greeting.extend(replay.iter().map(text));
    for frame in greeting {
        if sink.feed(frame).await.is_err() {
            return end_global(&shared, id);
        }
    }
    let _ = sink.flush().await;
    let mut closing: Option<Instant> = None;
    loop {
        let close_deadline = closing.map(|t| t + CLOSE_WAIT);
        tokio::select! {
            ctl = ctl_rx.recv() => match ctl {
                Some(SocketCtl::Send(frame)) => {
                    if sink.send(frame).await.is_err() { break; }
                }
                Some(SocketCtl::Close(code)) => {
                    let _ = sink.send(close_frame(code)).await;
                    closing = Some(Instant::now());
                }
                Some(SocketCtl::Reset) => { reset(sink, stream); break; }
                Some(_) => {}
                None => break,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(raw))) => {
                    let answer = on_global_frame(&shared, id, raw.as_str());
                    if let Some(answer) = answer
                        && sink.send(answer).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => client_closed(&shared, frame),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = sleep_until(close_deadline) => break,
        }
    }
    end_global(&shared, id);
}

/// The client closed a socket; after `goodbye` it must use 1000.
fn client_closed(shared: &Shared, frame: Option<CloseFrame>) {
    let mut ledger = shared.lock();
    if ledger.goodbye_sent && frame.is_some_and(|f| u16::from(f.code) == 1000) {
        ledger.closed_after_goodbye += 1;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn end_global(shared: &Shared, id: u64) {
    let mut ledger = shared.lock();
    if ledger.global.as_ref().is_some_and(|g| g.id == id) {
        ledger.global = None;
    }
}

/// Acts on one client frame on Global; returns the answer to send, if any.
fn on_global_frame(shared: &Shared, id: u64, raw: &str) -> Option<Message> {
    let mut ledger = shared.lock();
    match decode_global_client(raw) {
        Ok(GlobalClientEvent::TeamConnect { team_id }) => {
            let refusal = |message: &str| {
                text(&GlobalServerEvent::Error {
                    message: message.to_owned(),
                    received_message: Some(json!({"type": "team.connect", "team_id": team_id})),
                    team_id: Some(team_id),
                })
            };
            let joined = ledger.teams.get(&team_id).is_some_and(|t| t.joined);
            if !joined {
                return Some(refusal("team is not joined"));
            }
            if shared.roll(&mut ledger, Fault::ConnectError) {
                ledger.injected(Fault::ConnectError, Some(team_id));
                return Some(refusal("team not ready, try again"));
            }
            ledger.next_token += 1;
            let token = ledger.next_token;
            ledger.tokens.insert(token, (team_id, false));
            // Alternate schemes: the brief's own example uses http://.
            let scheme = if token.is_multiple_of(2) {
                "http"
            } else {
                "ws"
            };
            let ws_url = format!("{scheme}://{}/team/{team_id}/{token}", shared.addr);
            Some(text(&GlobalServerEvent::TeamConnect { team_id, ws_url }))
        }
        Ok(GlobalClientEvent::Healthcheck { stats }) => {
            let waiter = match ledger.global.as_mut() {
                Some(global) if global.id == id => global.waiters.pop_front(),
                // A reply on a Global we dropped: its asker is gone.
                _ => return None,
            };
            match waiter {
                Some(waiter) => {
                    ledger.check_reply(&stats, waiter.sent_at);
                    let _ = waiter.reply.send(stats.to_vec());
                }
                None => ledger.violation("healthcheck reply nobody asked for".into()),
            }
            None
        }
        Err(error) => {
            ledger.violation(format!("client sent bad frame on Global: {error}"));
            None
        }
    }
}

/// Per-socket sending state for a team.
struct Stream {
    rng: fastrand::Rng,
    credit: f64,
    last: Instant,
}

async fn serve_team(ws: WebSocketStream<TcpStream>, team: TeamId, shared: Arc<Shared>) {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    let (id, delay) = {
        let mut ledger = shared.lock();
        ledger.next_socket += 1;
        let id = ledger.next_socket;
        let delay = shared.roll_delayed_hello(&mut ledger, Some(team));
        let Some(truth) = ledger.teams.get_mut(&team) else {
            return;
        };
        truth.open_sockets += 1;
        truth.socket = Some((id, ctl));
        truth.zombie = false;
        truth.paused = false;
        truth.slow_until = None;
        truth.note(format!("socket {id} open"));
        let overlap = truth.open_sockets;
        let history: Vec<String> = truth.history.iter().cloned().collect();
        ledger.max_open = ledger.max_open.max(overlap);
        if overlap > 1 {
            ledger.violation(format!(
                "team {team}: {overlap} sockets open at once (last events: {})",
                history.join(", ")
            ));
        }
        ledger.team_recovered(team);
        (id, delay)
    };
    let (mut sink, mut stream) = ws.split();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut out = Stream {
        rng: fastrand::Rng::with_seed(shared.seed ^ (team.0 << 24) ^ id),
        credit: 0.0,
        last: Instant::now(),
    };
    let mut sending = sink.send(text(&TeamServerEvent::Hello)).await.is_ok();
    let mut zombie = false;
    let mut slow_until: Option<Instant> = None;
    let mut closing: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reading = slow_until.is_none();
        tokio::select! {
            ctl = ctl_rx.recv() => match ctl {
                Some(SocketCtl::Send(frame)) => {
                    if sink.send(frame).await.is_err() { break; }
                }
                Some(SocketCtl::Close(code)) => {
                    sending = false;
                    let _ = sink.send(close_frame(code)).await;
                    closing = Some(Instant::now());
                }
                Some(SocketCtl::Reset) => { reset(sink, stream); break; }
                Some(SocketCtl::Zombie) => zombie = true,
                Some(SocketCtl::Pause(ack)) => {
                    // Handled between writes: once acknowledged, nothing
                    // this socket wrote is still unbooked.
                    sending = false;
                    let _ = ack.send(());
                }
                Some(SocketCtl::Oversize(bytes)) => {
                    sending = false;
                    let huge = TeamServerEvent::Message { text: "x".repeat(bytes) };
                    if sink.send(text(&huge)).await.is_err() { break; }
                }
                Some(SocketCtl::SlowRead(d)) => slow_until = Some(Instant::now() + d),
                Some(SocketCtl::Leave) => {
                    sending = false;
                    if sink.send(text(&TeamServerEvent::TeamLeft { team_id: team })).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            frame = stream.next(), if reading => match frame {
                Some(Ok(Message::Text(raw))) => {
                    if zombie { continue; }
                    match decode_team_client(raw.as_str()) {
                        Ok(TeamClientEvent::Ping { unique_id }) => {
                            if sink.send(text(&TeamServerEvent::Pong { unique_id })).await.is_err() {
                                break;
                            }
                        }
                        Err(error) => shared
                            .lock()
                            .violation(format!("team {team}: client sent bad frame: {error}")),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    sending = false;
                    client_closed(&shared, frame);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = sleep_until(slow_until) => slow_until = None,
            _ = sleep_until(closing.map(|t| t + CLOSE_WAIT)) => break,
            _ = ticker.tick(), if sending && !zombie => {
                if !write_due_messages(&shared, team, &mut out, &mut sink).await {
                    break;
                }
            }
        }
    }
    let mut ledger = shared.lock();
    if let Some(truth) = ledger.teams.get_mut(&team) {
        truth.note(format!("socket {id} closed"));
        truth.open_sockets = truth.open_sockets.saturating_sub(1);
        truth.last_closed_at = Some(Instant::now());
        if truth.socket.as_ref().is_some_and(|(s, _)| *s == id) {
            truth.socket = None;
            truth.zombie = false;
        }
    }
}

/// Writes the messages due since the last tick, as the scenario's rate and
/// the team's quota allow, and books them once flushed.
async fn write_due_messages(
    shared: &Shared,
    team: TeamId,
    out: &mut Stream,
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>,
) -> bool {
    let now = Instant::now();
    out.credit += shared.scenario.rate * now.duration_since(out.last).as_secs_f64();
    out.last = now;
    let due = out.credit.floor() as u64;
    if due == 0 {
        return true;
    }
    out.credit -= due as f64;
    // Decide what to write, and book it as in flight before writing: the
    // client may count it before this task books it as written.
    let (start, n, props) = {
        let mut ledger = shared.lock();
        let Some(truth) = ledger.teams.get_mut(&team) else {
            return true;
        };
        if !truth.wants_messages() {
            return true;
        }
        let n = due.min(truth.quota - truth.written);
        let props: Vec<bool> = (0..n)
            .map(|_| out.rng.f64() < shared.scenario.props_fraction)
            .collect();
        let props_n = props.iter().filter(|p| **p).count() as u64;
        truth.in_flight = n;
        truth.props_in_flight = props_n;
        (truth.written, n, props)
    };
    let mut ok = true;
    for (i, is_props) in props.iter().enumerate() {
        let body = if *is_props {
            format!("message {} for team {team}: props to you", start + i as u64)
        } else {
            format!("message {} for team {team}", start + i as u64)
        };
        if sink
            .feed(text(&TeamServerEvent::Message { text: body }))
            .await
            .is_err()
        {
            ok = false;
            break;
        }
    }
    ok = ok && sink.flush().await.is_ok();
    let mut ledger = shared.lock();
    if let Some(truth) = ledger.teams.get_mut(&team) {
        if ok {
            truth.written += n;
            truth.props += truth.props_in_flight;
        }
        truth.in_flight = 0;
        truth.props_in_flight = 0;
    }
    ok
}
