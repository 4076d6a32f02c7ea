//! The `/global` socket: hello and the replayed joins, then team URLs on
//! request, healthcheck replies into the ledger, and what the director
//! sends.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use super::tls::SimStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::inject::{delay_global_hello, refuse_connect};
use super::ledger::Ledger;
use super::shared::Shared;
use super::socket::{
    CLOSE_WAIT, Sink, SocketCtl, Source, close_code, close_frame, reset, sleep_until, text,
};
use crate::protocol::{GlobalClientEvent, GlobalServerEvent, TeamId, decode_global_client};

/// Serves one Global connection until it ends.
pub(crate) async fn serve_global(ws: WebSocketStream<SimStream>, shared: Arc<Shared>) {
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let (id, delayed, replay) = {
        let mut ledger = shared.lock();
        let id = ledger.socket_id();
        ledger.global_opened(id, ctl);
        let delayed = delay_global_hello(&shared, &mut ledger, id);
        (id, delayed, replay(&ledger))
    };
    shared.started.get_or_init(Instant::now);
    shared.global_seen.notify_one();
    let (mut sink, stream) = ws.split();
    if delayed {
        tokio::time::sleep(shared.scenario.delayed_hello_for).await;
    }
    if greet(&mut sink, replay).await {
        serve(&shared, id, ctl_rx, sink, stream).await;
    }
    shared.lock().global_closed(id);
}

/// What a new Global must be told: every joined team, and every team that
/// left while its socket is still open (a team.left written on a Global
/// that was then reset may never have arrived).
fn replay(ledger: &Ledger) -> Vec<GlobalServerEvent> {
    ledger
        .teams()
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
        .collect()
}

/// Sends hello and the `replay`, in one flush; whether they went out.
async fn greet(sink: &mut Sink, replay: Vec<GlobalServerEvent>) -> bool {
    let mut greeting = vec![text(&GlobalServerEvent::Hello)];
    greeting.extend(replay.iter().map(text));
    for frame in greeting {
        if sink.feed(frame).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// Serves orders and client frames on Global `id` until it ends.
async fn serve(
    shared: &Shared,
    id: u64,
    mut ctl_rx: mpsc::UnboundedReceiver<SocketCtl>,
    mut sink: Sink,
    mut stream: Source,
) {
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
                Some(SocketCtl::Reset) => return reset(sink, stream),
                Some(_) => {}
                None => break,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(raw))) => {
                    let answer = on_frame(shared, id, raw.as_str());
                    if let Some(answer) = answer
                        && sink.send(answer).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => shared.lock().client_closed(close_code(frame)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = sleep_until(close_deadline) => break,
        }
    }
}

/// Acts on one client frame on Global `id`; returns the answer, if any.
fn on_frame(shared: &Shared, id: u64, raw: &str) -> Option<Message> {
    let mut ledger = shared.lock();
    match decode_global_client(raw) {
        Ok(GlobalClientEvent::TeamConnect { team_id }) => {
            Some(answer_connect(shared, &mut ledger, team_id))
        }
        Ok(GlobalClientEvent::Healthcheck { stats }) => {
            ledger.healthcheck_reply(id, stats.to_vec());
            None
        }
        Err(error) => {
            ledger.violation(format!("client sent bad frame on Global: {error}"));
            None
        }
    }
}

/// The answer to a `team.connect` for `team_id`: a fresh single-use URL,
/// or an `error` for a team not joined (or refused by a connect-error).
fn answer_connect(shared: &Shared, ledger: &mut Ledger, team_id: TeamId) -> Message {
    ledger.connect_requested(team_id);
    let refusal = |message: &str| {
        text(&GlobalServerEvent::Error {
            message: message.to_owned(),
            received_message: Some(json!({"type": "team.connect", "team_id": team_id})),
            team_id: Some(team_id),
        })
    };
    let Some(written) = ledger.team(team_id).filter(|t| t.joined).map(|t| t.written) else {
        return refusal("team is not joined");
    };
    if refuse_connect(shared, ledger, team_id, written) {
        return refusal("team not ready, try again");
    }
    let token = ledger.issue_token(team_id);
    // Alternate schemes: the brief's own example uses http://.
    let scheme = match (shared.tls.is_some(), token.is_multiple_of(2)) {
        (false, true) => "http",
        (false, false) => "ws",
        (true, true) => "https",
        (true, false) => "wss",
    };
    let ws_url = format!("{scheme}://{}/team/{team_id}/{token}", shared.addr);
    text(&GlobalServerEvent::TeamConnect { team_id, ws_url })
}
