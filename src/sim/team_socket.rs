//! A team socket: hello, then messages at the scenario's rate, each booked
//! in the ledger only once its write succeeded; pings answered; faults and
//! leaves as the director tells it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use super::tls::SimStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::faults::WatchId;
use super::inject::delay_team_hello;
use super::pace::{Pace, WRITE_TICK};
use super::shared::Shared;
use super::socket::{
    CLOSE_WAIT, Sink, SocketCtl, Source, close_code, close_frame, reset, sleep_until, text,
};
use crate::protocol::{TeamClientEvent, TeamId, TeamServerEvent, decode_team_client};

/// Longest wait for an older socket of the team to drain before a new one
/// is booked (a task busy writing a batch answers well within it).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// What the socket does after handling one event.
enum Next {
    /// Goes on serving.
    Serve,
    /// Ends.
    End,
    /// Ends with RST.
    Reset,
}

/// One team socket's task.
struct TeamSocket {
    shared: Arc<Shared>,
    team: TeamId,
    /// The socket's id.
    id: u64,
    sink: Sink,
    /// When messages are due.
    pace: Pace,
    /// Which messages carry `props`.
    rng: fastrand::Rng,
    /// Messages are still written (off once closing, leaving, paused).
    sending: bool,
    /// Told to play dead: nothing sent, nothing answered.
    zombie: bool,
    /// Not reading the client until then.
    slow_until: Option<Instant>,
    /// When this side sent its close frame.
    closing: Option<Instant>,
    /// A newer socket's drain order that found this one ending: answered
    /// (dropped) only once this socket is booked closed.
    parting: Option<oneshot::Sender<()>>,
}

/// Serves one team socket until it ends.
pub(crate) async fn serve_team(ws: WebSocketStream<SimStream>, team: TeamId, shared: Arc<Shared>) {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    drain_older(&shared, team).await;
    let (id, delayed) = {
        let mut ledger = shared.lock();
        let id = ledger.socket_id();
        ledger.team_socket_opened(team, id, ctl);
        (id, delay_team_hello(&shared, &mut ledger, team, id))
    };
    let (sink, stream) = ws.split();
    if delayed.is_some() {
        tokio::time::sleep(shared.scenario.delayed_hello_for).await;
    }
    let mut socket = TeamSocket {
        rng: fastrand::Rng::with_seed(shared.seed ^ (team.0 << 24) ^ id),
        pace: Pace::new(Instant::now()),
        shared: shared.clone(),
        team,
        id,
        sink,
        sending: true,
        zombie: false,
        slow_until: None,
        closing: None,
        parting: None,
    };
    socket.greet(delayed).await;
    let parting = socket.serve(&mut ctl_rx, stream).await;
    shared.lock().team_socket_closed(team, id);
    // A newer socket of the team waits for this one's drain: it goes on only
    // once this one is booked closed, or the two would seem to overlap.
    // Orders still queued are let go here for the same reason.
    drop((parting, ctl_rx));
}

/// The client closes a socket before it opens the next, but this server
/// may not have read that close yet: the team's older socket, if any,
/// takes in what is already there before the two are judged to overlap.
async fn drain_older(shared: &Shared, team: TeamId) {
    let older = shared.lock().team(team).and_then(|t| t.socket.clone());
    if let Some((_, older)) = older {
        let (ack, acked) = oneshot::channel();
        if older.send(SocketCtl::Drain(ack)).is_ok() {
            let _ = tokio::time::timeout(DRAIN_WAIT, acked).await;
        }
    }
}

impl TeamSocket {
    /// Sends hello; a delayed one (fault `delayed`) is reported written.
    async fn greet(&mut self, delayed: Option<WatchId>) {
        self.sending = self.sink.send(text(&TeamServerEvent::Hello)).await.is_ok();
        if self.sending
            && let Some(watch) = delayed
        {
            self.shared.lock().fault_frame_written(watch, self.team);
        }
    }

    /// Serves orders, client frames and the write tick until the socket
    /// ends; returns the drain order left to answer once it is booked closed.
    async fn serve(
        mut self,
        ctl_rx: &mut mpsc::UnboundedReceiver<SocketCtl>,
        mut stream: Source,
    ) -> Option<oneshot::Sender<()>> {
        let mut ticker = tokio::time::interval(WRITE_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reading = self.slow_until.is_none();
            let next = tokio::select! {
                ctl = ctl_rx.recv() => match ctl {
                    Some(ctl) => self.obey(ctl, &mut stream).await,
                    None => Next::End,
                },
                frame = stream.next(), if reading => self.on_frame(frame).await,
                _ = sleep_until(self.slow_until) => {
                    self.slow_until = None;
                    Next::Serve
                }
                _ = sleep_until(self.closing.map(|t| t + CLOSE_WAIT)) => Next::End,
                _ = ticker.tick(), if self.sending && !self.zombie => {
                    if self.write_due_messages().await { Next::Serve } else { Next::End }
                }
            };
            match next {
                Next::Serve => {}
                Next::End => return self.parting,
                Next::Reset => {
                    reset(self.sink, stream);
                    return self.parting;
                }
            }
        }
    }

    /// Carries out one order.
    async fn obey(&mut self, ctl: SocketCtl, stream: &mut Source) -> Next {
        let ok = |sent: Result<(), WsError>| if sent.is_ok() { Next::Serve } else { Next::End };
        match ctl {
            SocketCtl::Send(frame) => ok(self.sink.send(frame).await),
            SocketCtl::Inject(frame, watch) => {
                let sent = self.sink.send(frame).await;
                if sent.is_ok() {
                    self.shared.lock().fault_frame_written(watch, self.team);
                }
                ok(sent)
            }
            SocketCtl::Close(code) => {
                self.sending = false;
                let _ = self.sink.send(close_frame(code)).await;
                self.closing = Some(Instant::now());
                Next::Serve
            }
            SocketCtl::Reset => Next::Reset,
            SocketCtl::Zombie => {
                self.zombie = true;
                Next::Serve
            }
            SocketCtl::Pause(ack) => {
                // Handled between writes: once acknowledged, nothing this
                // socket wrote is still unbooked.
                self.sending = false;
                let _ = ack.send(());
                Next::Serve
            }
            SocketCtl::Drain(ack) => {
                if !self.drain(stream) {
                    self.parting = Some(ack);
                    return Next::End;
                }
                let _ = ack.send(());
                Next::Serve
            }
            SocketCtl::Oversize(bytes) => {
                self.sending = false;
                let huge = TeamServerEvent::Message {
                    text: "x".repeat(bytes),
                };
                ok(self.sink.send(text(&huge)).await)
            }
            SocketCtl::SlowRead(pause) => {
                self.slow_until = Some(Instant::now() + pause);
                Next::Serve
            }
            SocketCtl::Leave => {
                self.sending = false;
                let left = TeamServerEvent::TeamLeft { team_id: self.team };
                ok(self.sink.send(text(&left)).await)
            }
        }
    }

    /// Handles one frame from the client (or the end of its stream).
    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Next {
        match frame {
            Some(Ok(Message::Text(raw))) => {
                if self.zombie {
                    return Next::Serve;
                }
                match decode_team_client(raw.as_str()) {
                    Ok(TeamClientEvent::Ping { unique_id }) => {
                        let pong = text(&TeamServerEvent::Pong { unique_id });
                        if self.sink.send(pong).await.is_err() {
                            return Next::End;
                        }
                    }
                    Err(error) => self.shared.lock().violation(format!(
                        "team {}: client sent bad frame: {error}",
                        self.team
                    )),
                }
                Next::Serve
            }
            Some(Ok(Message::Close(frame))) => {
                self.sending = false;
                self.shared.lock().client_closed(close_code(frame));
                Next::Serve
            }
            Some(Ok(_)) => Next::Serve,
            Some(Err(_)) | None => Next::End,
        }
    }

    /// Reads what the client already sent, without waiting: its close frame
    /// is booked, other frames are let go. Returns whether the socket is
    /// still open.
    fn drain(&mut self, stream: &mut Source) -> bool {
        loop {
            match stream.next().now_or_never() {
                None => return true,
                Some(Some(Ok(Message::Close(frame)))) => {
                    self.sending = false;
                    self.shared.lock().client_closed(close_code(frame));
                }
                Some(Some(Ok(_))) => {}
                Some(Some(Err(_)) | None) => return false,
            }
        }
    }

    /// Writes the messages due since the last tick, as the scenario's rate
    /// and the team's quota allow, and books them once flushed. Returns
    /// whether the socket still works.
    async fn write_due_messages(&mut self) -> bool {
        let now = Instant::now();
        let due = self.pace.due(self.shared.scenario.rate, now);
        if due == 0 {
            return true;
        }
        let Some((start, props)) = self.book_in_flight(due) else {
            return true;
        };
        let flushed = self.send_batch(start, &props).await;
        self.shared.lock().batch_ended(self.team, flushed, now);
        flushed
    }

    /// Decides what of `due` to write, and books it as in flight before
    /// writing: the number of its first message, and which carry `props`.
    /// `None` if this socket writes nothing now.
    fn book_in_flight(&mut self, due: u64) -> Option<(u64, Vec<bool>)> {
        let mut ledger = self.shared.lock();
        let n = ledger.writable(self.team, self.id, due);
        if n == 0 {
            return None;
        }
        let fraction = self.shared.scenario.props_fraction;
        let props: Vec<bool> = (0..n).map(|_| self.rng.f64() < fraction).collect();
        let start = ledger.writing(self.team, &props);
        Some((start, props))
    }

    /// Writes a batch of messages numbered from `start`, then flushes;
    /// whether all of it went out.
    async fn send_batch(&mut self, start: u64, props: &[bool]) -> bool {
        for (i, &is_props) in props.iter().enumerate() {
            let body = self.message_text(start + i as u64, is_props);
            let message = text(&TeamServerEvent::Message { text: body });
            if self.sink.feed(message).await.is_err() {
                return false;
            }
        }
        self.sink.flush().await.is_ok()
    }

    /// The text of message `number`, stamped with the time it is written
    /// when the scenario says so.
    fn message_text(&self, number: u64, is_props: bool) -> String {
        let team = self.team;
        let body = if is_props {
            format!("message {number} for team {team}: props to you")
        } else {
            format!("message {number} for team {team}")
        };
        if !self.shared.scenario.stamp {
            return body;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("t={nanos} {body}")
    }
}
