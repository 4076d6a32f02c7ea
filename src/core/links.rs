//! Connection transitions, in one place. Every change of a team's
//! [`LinkState`], and every connection the core opens or gives up, goes
//! through [`Links`], whose fields are private: no system can move a team or
//! touch a socket without the connection table, the request queue and the
//! deadline timers following.

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use tracing::debug;

use super::components::{AfterClose, Counters, Health, Link, LinkState};
use super::config::Settings;
use super::lifecycle::{Fleet, Transition, Transitions};
use super::reconcile::Reconcile;
use super::resources::{Clock, Connections, Jitter, Outbox, Owner, UrlRequests};
use super::saved::SocketMark;
use super::timers::{Due, Timers};
use super::url_policy::TeamUrlError;
use crate::bridge::{CLOSE_NORMAL, ConnId, ConnKind, NetCommand, Text};
use crate::protocol::{GlobalClientEvent, TeamClientEvent, TeamId, clip, encode};

/// Heartbeat timers of an open link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Beat {
    /// Time to send the next ping.
    Ping,
    /// The pong timeout of the ping sent in step `sent_step` has run out.
    PongCheck {
        /// The step that sent that ping.
        sent_step: u64,
    },
}

/// The deadline of whatever state the link was in when the timer was set
/// (see [`LinkState::deadline`]); the epoch tells whether it still is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateDeadline;

/// Longest error text kept for a link (team or Global).
pub(crate) const MAX_ERROR_LEN: usize = 200;

/// Everything a connection transition touches.
#[derive(SystemParam)]
pub struct Links<'w> {
    clock: Res<'w, Clock>,
    settings: Res<'w, Settings>,
    jitter: ResMut<'w, Jitter>,
    conns: ResMut<'w, Connections>,
    outbox: ResMut<'w, Outbox>,
    requests: ResMut<'w, UrlRequests>,
    beats: ResMut<'w, Timers<Beat>>,
    deadlines: ResMut<'w, Timers<StateDeadline>>,
    fleet: ResMut<'w, Fleet>,
    transitions: ResMut<'w, Transitions>,
    reconcile: ResMut<'w, Reconcile>,
}

impl Links<'_> {
    /// Core time, ms.
    pub fn now(&self) -> u64 {
        self.clock.now
    }

    /// The step being run (see [`Health::last_activity_step`]).
    pub fn step(&self) -> u64 {
        self.clock.step
    }

    /// The validated configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The `team.connect` queue, to read.
    pub fn requests(&self) -> &UrlRequests {
        &self.requests
    }

    /// Moves `link` to `state`, keeping the queues and timers in step.
    fn set(&mut self, entity: Entity, link: &mut Link, state: LinkState) {
        self.set_because(entity, link, state, None);
    }

    /// [`Links::set`], with the reason the history and events will give.
    fn set_because(
        &mut self,
        entity: Entity,
        link: &mut Link,
        state: LinkState,
        reason: Option<&str>,
    ) {
        self.note(entity, link.state, state, reason);
        match link.state {
            LinkState::NeedsUrl => self.requests.dequeue(entity),
            LinkState::Requesting { .. } => self.requests.answered(entity),
            _ => {}
        }
        link.epoch = link.epoch.wrapping_add(1);
        link.state = state;
        match state {
            LinkState::NeedsUrl => self.requests.enqueue(entity, self.clock.now),
            LinkState::Requesting { .. } => self.requests.sent(entity),
            _ => {}
        }
        if let Some(at) = state.deadline() {
            self.deadlines.set(at, entity, link.epoch, StateDeadline);
        }
    }

    /// Records a transition for the history, the events and the totals.
    fn note(&mut self, entity: Entity, from: LinkState, to: LinkState, reason: Option<&str>) {
        self.fleet.moved(from, to);
        self.transitions.0.push(Transition {
            entity,
            at: self.clock.now,
            from,
            to,
            reason: reason.map(|r| clip(r, MAX_ERROR_LEN)),
        });
    }

    /// The leader says the worker holding the team's open socket went
    /// quiet, or was heard again ([`NetEvent::Quiet`](crate::bridge::NetEvent::Quiet)).
    pub fn hush(&mut self, link: &mut Link, quiet: bool) {
        if let LinkState::Open { quiet: was, .. } = &mut link.state
            && *was != quiet
        {
            *was = quiet;
            self.fleet.hushed(quiet);
        }
    }

    /// Counts messages received for a team: the one counting path, for the
    /// team's counters and the fleet's totals alike.
    pub fn count(&mut self, counters: &mut Counters, conn: ConnId, messages: u64, props: u64) {
        counters.add(messages, props);
        counters.from_socket(conn, messages, props);
        self.fleet.counted(messages, props);
    }

    /// The next state deadline due now, if any.
    pub fn pop_due_deadline(&mut self) -> Option<Due<StateDeadline>> {
        self.deadlines.pop_due(self.clock.now)
    }

    /// Sweeps stale state deadlines out (see [`Timers::sweep`]).
    pub fn sweep_deadlines(&mut self, live: impl FnMut(&Due<StateDeadline>) -> bool) {
        self.deadlines.sweep(live);
    }

    /// Sweeps stale heartbeat timers out (see [`Timers::sweep`]).
    pub fn sweep_beats(&mut self, live: impl FnMut(&Due<Beat>) -> bool) {
        self.beats.sweep(live);
    }

    /// The next heartbeat timer due now, if any.
    pub fn pop_due_beat(&mut self) -> Option<Due<Beat>> {
        self.beats.pop_due(self.clock.now)
    }

    /// A jittered backoff delay for the `attempts`-th consecutive failure.
    pub fn backoff_delay(&mut self, attempts: u32) -> u64 {
        self.jitter.backoff(
            attempts,
            self.settings.backoff_min,
            self.settings.backoff_max,
        )
    }

    /// The longest-waiting team whose `team.connect` may go out now, if a
    /// request slot is free.
    pub fn next_to_request(&mut self) -> Option<Entity> {
        if self.requests.in_flight() >= self.settings.max_requests_in_flight {
            return None;
        }
        self.requests.pop()
    }

    /// Registers and opens the Global socket.
    pub(crate) fn open_global(&mut self) -> ConnId {
        let conn = self.conns.open(Owner::Global);
        self.outbox.0.push(NetCommand::Open {
            conn,
            kind: ConnKind::Global,
            url: self.settings.global_url.clone(),
        });
        conn
    }

    /// Sends a websocket-level ping on `conn`.
    pub(crate) fn probe(&mut self, conn: ConnId) {
        self.outbox.0.push(NetCommand::Probe { conn });
    }

    /// Sends a normal close on `conn`.
    pub(crate) fn close_conn(&mut self, conn: ConnId) {
        self.outbox.0.push(NetCommand::Close {
            conn,
            code: CLOSE_NORMAL,
        });
    }

    /// The core is done with `conn`: with `abort`, it gives up on it (drop
    /// it; what it already read still counts until its terminal event);
    /// else its terminal event arrived.
    pub(crate) fn release(&mut self, conn: ConnId, abort: bool) {
        if abort {
            self.conns.retire(conn);
            self.outbox.0.push(NetCommand::Abort { conn });
        } else {
            self.conns.ended(conn);
        }
    }

    /// A team restored from saved state: its link starts where it was
    /// (joined: asking for a URL at once; else left), without a transition
    /// to tell (nothing happened: the team carries on).
    pub(crate) fn restore(
        &mut self,
        entity: Entity,
        link: &mut Link,
        joined: bool,
        counters: &Counters,
    ) {
        self.fleet.admitted();
        self.fleet
            .counted(counters.message_count, counters.props_count);
        if joined {
            self.fleet.moved(LinkState::Left, LinkState::NeedsUrl);
            link.state = LinkState::NeedsUrl;
            self.requests.enqueue(entity, self.clock.now);
        }
    }

    /// Ids handed out from now on are larger than `conn`.
    pub(crate) fn skip_past(&mut self, conn: ConnId) {
        self.conns.skip_past(conn);
    }

    /// The ids handed out so far were earlier leaders': late reports of
    /// them are held to the restored marks.
    pub(crate) fn own_from_now(&mut self) {
        let next = self.conns.next_id();
        self.reconcile.own_from(next);
    }

    /// A restored team's counts include `mark`.
    pub(crate) fn restored_mark(&mut self, team: TeamId, mark: SocketMark) {
        self.reconcile.restored(team, mark);
    }

    /// A restored team's counts include `mark` of a socket an earlier
    /// leader gave up, whose late report had not come.
    pub(crate) fn restored_unreported(&mut self, team: TeamId, mark: SocketMark) {
        self.conns.skip_past(mark.conn);
        self.reconcile
            .gave_up(mark.conn, team, (mark.messages, mark.props));
    }

    /// The core gave `conn` up with its lost worker: what it counted of
    /// it is kept for the worker's late report.
    pub(crate) fn gave_up(&mut self, team: TeamId, counters: &Counters, conn: ConnId) {
        let counted = match counters.socket {
            Some(mark) if mark.conn == conn => (mark.messages, mark.props),
            _ => (0, 0),
        };
        self.reconcile.gave_up(conn, team, counted);
    }

    /// Counts what `report`, a socket's whole reading, adds to `team`'s
    /// counts (nothing it or an earlier leader counted already).
    pub(crate) fn reported(&mut self, team: TeamId, counters: &mut Counters, report: SocketMark) {
        let (messages, props) = self.reconcile.unseen(report, team);
        if messages > 0 || props > 0 {
            self.count(counters, report.conn, messages, props);
        }
    }

    /// A joined team without a socket takes over `conn`, a socket a worker
    /// kept open through a change of leader: it is open from now, pinged
    /// as any. False (nothing done) for a team with a socket already.
    pub(crate) fn adopt(
        &mut self,
        entity: Entity,
        link: &mut Link,
        health: &mut Health,
        conn: ConnId,
    ) -> bool {
        if !link.state.is_joined() || link.state.conn().is_some() {
            return false;
        }
        self.conns.adopt(conn, Owner::Team(entity));
        self.reconcile.adopted(conn);
        let now = self.clock.now;
        health.heard(now, self.clock.step);
        health.pings_in_flight.clear();
        self.set_because(
            entity,
            link,
            LinkState::Open {
                conn,
                since: now,
                quiet: false,
            },
            Some("adopted: kept open by its worker"),
        );
        self.beats.set(
            now + self.settings.ping_interval,
            entity,
            link.epoch,
            Beat::Ping,
        );
        true
    }

    /// `team.join`: a team not joined starts asking for a URL. Returns false
    /// when the join changes nothing (already joined: duplicate join).
    pub fn join(&mut self, entity: Entity, link: &mut Link) -> bool {
        match link.state {
            LinkState::Left => {
                self.set(entity, link, LinkState::NeedsUrl);
                true
            }
            LinkState::Closing {
                conn,
                deadline,
                after: AfterClose::Left,
            } => {
                // Keep the epoch: the close deadline still applies.
                let rejoin = LinkState::Closing {
                    conn,
                    deadline,
                    after: AfterClose::Rejoin,
                };
                self.note(entity, link.state, rejoin, None);
                link.state = rejoin;
                true
            }
            _ => false,
        }
    }

    /// Sends `team.connect` for a team in `NeedsUrl` on the Global link.
    pub fn request(&mut self, entity: Entity, team: TeamId, link: &mut Link, global: ConnId) {
        self.outbox.0.push(NetCommand::Send {
            conn: global,
            text: Text::from(encode(&GlobalClientEvent::TeamConnect { team_id: team })),
        });
        let deadline = self.clock.now + self.settings.request_timeout;
        self.set(entity, link, LinkState::Requesting { deadline });
    }

    /// A `team.connect` answer for a team in `Requesting`: open its socket.
    /// A URL that cannot be opened, or that the policy refuses, fails the
    /// attempt like a refused connect.
    pub fn connect(
        &mut self,
        entity: Entity,
        team: TeamId,
        link: &mut Link,
        health: &mut Health,
        ws_url: &str,
    ) -> Result<(), TeamUrlError> {
        let url = match self.settings.team_urls.admit(ws_url) {
            Ok(url) => url,
            Err(error) => {
                let detail = format!("ws_url refused: {error}");
                self.fail(entity, link, health, "bad_url", &detail, false);
                return Err(error);
            }
        };
        let conn = self.conns.open(Owner::Team(entity));
        self.outbox.0.push(NetCommand::Open {
            conn,
            kind: ConnKind::Team(team),
            url,
        });
        let deadline = self.clock.now + self.settings.connect_timeout;
        self.set(entity, link, LinkState::Connecting { conn, deadline });
        Ok(())
    }

    /// The socket of a `Connecting` team opened: it is connected; start pinging.
    pub fn opened(&mut self, entity: Entity, link: &mut Link, health: &mut Health) {
        let LinkState::Connecting { conn, .. } = link.state else {
            return;
        };
        let now = self.clock.now;
        health.connects += 1;
        health.heard(now, self.clock.step);
        health.paused = false;
        health.pings_in_flight.clear();
        let open = LinkState::Open {
            conn,
            since: now,
            quiet: false,
        };
        self.set(entity, link, open);
        self.beats.set(
            now + self.settings.ping_interval,
            entity,
            link.epoch,
            Beat::Ping,
        );
    }

    /// Sends a `ping` on an open link and sets its pong check and the next
    /// ping.
    pub fn ping(&mut self, entity: Entity, link: &Link, unique_id: u64) {
        let LinkState::Open { conn, .. } = link.state else {
            return;
        };
        let now = self.clock.now;
        self.outbox.0.push(NetCommand::Send {
            conn,
            text: Text::from(encode(&TeamClientEvent::Ping { unique_id })),
        });
        let (interval, timeout) = (self.settings.ping_interval, self.settings.pong_timeout);
        self.beats.set(
            now + timeout,
            entity,
            link.epoch,
            Beat::PongCheck {
                sent_step: self.clock.step,
            },
        );
        self.beats
            .set(now + interval, entity, link.epoch, Beat::Ping);
    }

    /// The link or the attempt failed without `team.left`: let go of the
    /// socket (`abort`: we give up on it; else its terminal event arrived),
    /// and ask again after a jittered backoff. `cause` is a short class
    /// (counted per class when an open link drops), `error` the detail.
    pub fn fail(
        &mut self,
        entity: Entity,
        link: &mut Link,
        health: &mut Health,
        cause: &'static str,
        error: &str,
        abort: bool,
    ) {
        if matches!(link.state, LinkState::Closing { .. }) {
            self.closed(entity, link, abort);
            return;
        }
        if !link.state.is_joined() {
            return;
        }
        if let Some(conn) = link.state.conn() {
            self.release(conn, abort);
        }
        if matches!(link.state, LinkState::Open { .. }) {
            health.reconnects += 1;
            self.fleet.reconnects += 1;
            *self.fleet.drops.entry(cause).or_default() += 1;
        }
        let delay = self.backoff_delay(health.attempts);
        health.attempts = health.attempts.saturating_add(1);
        // Served over HTTP and reported: never with a URL's credentials.
        health.last_error = Some(clip(&crate::redact::text(error), MAX_ERROR_LEN));
        health.pings_in_flight.clear();
        debug!(
            ?entity,
            error,
            delay_ms = delay,
            "team link failed; backing off"
        );
        let until = self.clock.now + delay;
        self.set_because(entity, link, LinkState::Backoff { until }, Some(error));
    }

    /// Closes the team's socket with a normal close, then does `after`. A team
    /// without a socket does `after` at once.
    pub fn close(&mut self, entity: Entity, link: &mut Link, after: AfterClose) {
        match link.state {
            LinkState::Connecting { conn, .. } | LinkState::Open { conn, .. } => {
                self.close_conn(conn);
                let deadline = self.clock.now + self.settings.close_timeout;
                self.set(
                    entity,
                    link,
                    LinkState::Closing {
                        conn,
                        deadline,
                        after,
                    },
                );
            }
            LinkState::Closing {
                conn,
                deadline,
                after: current,
            } => {
                // A stop does not undo a leave; otherwise the latest word
                // counts, and nothing follows a stop.
                let after = match (current, after) {
                    (AfterClose::Stop, _) | (AfterClose::Left, AfterClose::Stop) => current,
                    _ => after,
                };
                link.state = LinkState::Closing {
                    conn,
                    deadline,
                    after,
                };
            }
            _ => self.settle_after_close(entity, link, after),
        }
    }

    /// A `Closing` socket is gone (or, with `abort`, is given up on).
    pub fn closed(&mut self, entity: Entity, link: &mut Link, abort: bool) {
        let LinkState::Closing { conn, after, .. } = link.state else {
            return;
        };
        self.release(conn, abort);
        self.settle_after_close(entity, link, after);
    }

    fn settle_after_close(&mut self, entity: Entity, link: &mut Link, after: AfterClose) {
        let state = match after {
            AfterClose::Left => LinkState::Left,
            AfterClose::Rejoin => LinkState::NeedsUrl,
            AfterClose::Stop => LinkState::Stopped,
        };
        if link.state != state {
            self.set(entity, link, state);
        }
    }

    /// Backoff is over: queue a new `team.connect`.
    pub fn retry(&mut self, entity: Entity, link: &mut Link) {
        if matches!(link.state, LinkState::Backoff { .. }) {
            self.set(entity, link, LinkState::NeedsUrl);
        }
    }

    /// Teams whose `team.connect` is unanswered.
    pub fn requests_in_flight(&self) -> Vec<Entity> {
        self.requests.in_flight_teams()
    }

    /// The Global link dropped: a request sent on it will never be answered,
    /// so the team asks again on the next Global link, without backoff (the
    /// team itself did nothing wrong).
    pub fn requeue(&mut self, entity: Entity, link: &mut Link) {
        if matches!(link.state, LinkState::Requesting { .. }) {
            self.set(entity, link, LinkState::NeedsUrl);
        }
    }
}
