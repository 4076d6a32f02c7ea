//! A team socket: hello, then messages at the scenario's rate, each booked
//! in the ledger only once its write succeeded; pings answered; faults and
//! leaves as the director tells it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Shared;
use super::faults::Fault;
use super::inject::strikes;
use super::server::{
    CLOSE_WAIT, Sink, SocketCtl, Source, client_closed, close_frame, reset, sleep_until, text,
};
use super::survival::Recovery;
use crate::protocol::{TeamClientEvent, TeamId, TeamServerEvent, decode_team_client};

/// How often a team socket writes what is due.
const WRITE_TICK: Duration = Duration::from_millis(10);

/// Most messages one socket writes per tick: a stalled task catches up at
/// most this much, and no rate can make one batch unbounded.
const MAX_BATCH: u64 = 1000;

/// The fastest rate a socket can keep, messages per second.
pub fn max_rate() -> f64 {
    MAX_BATCH as f64 / WRITE_TICK.as_secs_f64()
}

/// Longest wait for an older socket of the team to drain before a new one
/// is booked (a task busy writing a batch answers well within it).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Per-socket sending state.
struct Stream {
    rng: fastrand::Rng,
    credit: f64,
    last: Instant,
}

/// Serves one team socket until it ends.
pub(crate) async fn serve_team(ws: WebSocketStream<TcpStream>, team: TeamId, shared: Arc<Shared>) {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    // The client closes a socket before it opens the next, but this
    // server may not have read that close yet: the older socket takes in
    // what is already there before the two are judged to overlap.
    let older = shared
        .lock()
        .teams
        .get(&team)
        .and_then(|t| t.socket.clone());
    if let Some((_, older)) = older {
        let (ack, acked) = tokio::sync::oneshot::channel();
        if older.send(SocketCtl::Drain(ack)).is_ok() {
            let _ = tokio::time::timeout(DRAIN_WAIT, acked).await;
        }
    }
    let (id, delayed) = {
        let mut ledger = shared.lock();
        let id = ledger.socket_id();
        ledger.team_socket_opened(team, id, ctl);
        let delayed = strikes(&shared, &mut ledger, Fault::DelayedHello, Some(team)).then(|| {
            ledger.injected(
                Fault::DelayedHello,
                Recovery::KeptTeamSocket {
                    team,
                    socket: id,
                    armed: None,
                },
            )
        });
        (id, delayed)
    };
    let (mut sink, mut stream) = ws.split();
    if delayed.is_some() {
        tokio::time::sleep(shared.scenario.delayed_hello_for).await;
    }
    let mut out = Stream {
        rng: fastrand::Rng::with_seed(shared.seed ^ (team.0 << 24) ^ id),
        credit: 0.0,
        last: Instant::now(),
    };
    let mut sending = sink.send(text(&TeamServerEvent::Hello)).await.is_ok();
    if sending && let Some(watch) = delayed {
        shared.lock().armed(watch, team);
    }
    let mut zombie = false;
    let mut slow_until: Option<Instant> = None;
    let mut closing: Option<Instant> = None;
    let mut ticker = tokio::time::interval(WRITE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reading = slow_until.is_none();
        tokio::select! {
            ctl = ctl_rx.recv() => match ctl {
                Some(SocketCtl::Send(frame)) => {
                    if sink.send(frame).await.is_err() { break; }
                }
                Some(SocketCtl::Inject(frame, watch)) => {
                    if sink.send(frame).await.is_err() { break; }
                    shared.lock().armed(watch, team);
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
                Some(SocketCtl::Drain(ack)) => {
                    if !drain(&shared, &mut stream, &mut sending) { break; }
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
                if !write_due_messages(&shared, team, id, &mut out, &mut sink).await {
                    break;
                }
            }
        }
    }
    shared.lock().team_socket_closed(team, id);
}

/// Reads what the client already sent, without waiting: its close frame is
/// booked, other frames are let go. Returns whether the socket is still
/// open.
fn drain(shared: &Shared, stream: &mut Source, sending: &mut bool) -> bool {
    loop {
        match stream.next().now_or_never() {
            None => return true,
            Some(Some(Ok(Message::Close(frame)))) => {
                *sending = false;
                client_closed(shared, frame);
            }
            Some(Some(Ok(_))) => {}
            Some(Some(Err(_)) | None) => return false,
        }
    }
}

/// Writes the messages due since the last tick on `socket`, as the
/// scenario's rate and the team's quota allow, and books them once flushed.
async fn write_due_messages(
    shared: &Shared,
    team: TeamId,
    socket: u64,
    out: &mut Stream,
    sink: &mut Sink,
) -> bool {
    let now = Instant::now();
    out.credit += shared.scenario.rate * now.duration_since(out.last).as_secs_f64();
    out.credit = out.credit.min(MAX_BATCH as f64);
    out.last = now;
    let due = out.credit.floor() as u64;
    if due == 0 {
        return true;
    }
    out.credit -= due as f64;
    // Decide what to write, and book it as in flight before writing: the
    // client may count it before this task books it as written.
    let (start, props) = {
        let mut ledger = shared.lock();
        let streaming = ledger.streaming;
        let Some(truth) = ledger.teams.get_mut(&team) else {
            return true;
        };
        // Only the team's current socket streams: the truth books one write
        // in flight per team.
        let current = truth.socket_id() == Some(socket);
        if !(streaming && current && truth.joined && !truth.paused && !truth.zombie) {
            return true;
        }
        let n = due.min(truth.remaining());
        let props: Vec<bool> = (0..n)
            .map(|_| out.rng.f64() < shared.scenario.props_fraction)
            .collect();
        truth.in_flight = n;
        truth.props_in_flight = props.iter().filter(|p| **p).count() as u64;
        (truth.written, props)
    };
    if props.is_empty() {
        return true;
    }
    let mut ok = true;
    let stamp = shared.scenario.stamp;
    for (i, is_props) in props.iter().enumerate() {
        let body = if *is_props {
            format!("message {} for team {team}: props to you", start + i as u64)
        } else {
            format!("message {} for team {team}", start + i as u64)
        };
        let body = if stamp {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("t={nanos} {body}")
        } else {
            body
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
    if ok {
        ledger.timing.wrote(now);
    }
    if let Some(truth) = ledger.teams.get_mut(&team) {
        if ok {
            truth.written += truth.in_flight;
            truth.props += truth.props_in_flight;
        }
        truth.in_flight = 0;
        truth.props_in_flight = 0;
    }
    ok
}
