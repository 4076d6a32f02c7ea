//! The `/global` socket: hello and the replayed joins, then team URLs on
//! request, healthcheck replies into the ledger, and what the director
//! sends.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Shared;
use super::faults::Fault;
use super::inject::strikes;
use super::server::{CLOSE_WAIT, SocketCtl, client_closed, close_frame, reset, sleep_until, text};
use super::survival::Recovery;
use crate::protocol::{GlobalClientEvent, GlobalServerEvent, decode_global_client};

/// Serves one Global connection until it ends.
pub(crate) async fn serve_global(ws: WebSocketStream<TcpStream>, shared: Arc<Shared>) {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    let (id, delayed, replay) = {
        let mut ledger = shared.lock();
        let id = ledger.socket_id();
        ledger.global_opened(id, ctl);
        let delayed = strikes(&shared, &mut ledger, Fault::DelayedHello, None);
        if delayed {
            let since = Instant::now();
            let kept = Recovery::KeptGlobal { global: id, since };
            ledger.injected(Fault::DelayedHello, kept);
        }
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
        (id, delayed, replay)
    };
    shared.started.get_or_init(Instant::now);
    shared.global_seen.notify_one();
    let (mut sink, mut stream) = ws.split();
    if delayed {
        tokio::time::sleep(shared.scenario.delayed_hello_for).await;
    }
    let mut greeting = vec![text(&GlobalServerEvent::Hello)];
    greeting.extend(replay.iter().map(text));
    for frame in greeting {
        if sink.feed(frame).await.is_err() {
            return shared.lock().global_closed(id);
        }
    }
    if sink.flush().await.is_err() {
        return shared.lock().global_closed(id);
    }
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
                    let answer = on_frame(&shared, id, raw.as_str());
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
    shared.lock().global_closed(id);
}

/// Acts on one client frame on Global `id`; returns the answer, if any.
fn on_frame(shared: &Shared, id: u64, raw: &str) -> Option<Message> {
    let mut ledger = shared.lock();
    match decode_global_client(raw) {
        Ok(GlobalClientEvent::TeamConnect { team_id }) => {
            ledger.connect_requested(team_id);
            let refusal = |message: &str| {
                text(&GlobalServerEvent::Error {
                    message: message.to_owned(),
                    received_message: Some(json!({"type": "team.connect", "team_id": team_id})),
                    team_id: Some(team_id),
                })
            };
            let Some(written) = ledger
                .teams
                .get(&team_id)
                .filter(|t| t.joined)
                .map(|t| t.written)
            else {
                return Some(refusal("team is not joined"));
            };
            if strikes(shared, &mut ledger, Fault::ConnectError, Some(team_id)) {
                ledger.injected(
                    Fault::ConnectError,
                    Recovery::Reconnect {
                        team: team_id,
                        before: written,
                        back_at: None,
                    },
                );
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
            ledger.healthcheck_reply(id, stats.to_vec());
            None
        }
        Err(error) => {
            ledger.violation(format!("client sent bad frame on Global: {error}"));
            None
        }
    }
}
