//! The Global link's state machine, and every transition of it in one place:
//! the systems say what happened, these methods keep the state, the
//! connection table and the backoff in step. What is due next, and when, is
//! decided once ([`GlobalLink::next_due`]) for both the systems that act on
//! it and [`crate::Core::next_deadline`].

use bevy_ecs::prelude::*;
use serde::Serialize;
use tracing::{info, warn};

use super::config::Settings;
use super::links::{Links, MAX_ERROR_LEN};
use super::resources::{LogLimiter, Shutdown};
use crate::bridge::ConnId;
use crate::protocol::clip;

/// Where the Global link stands. Times are core milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GlobalState {
    /// Not opened yet.
    Idle,
    /// Socket opening.
    Connecting {
        /// The attempt.
        conn: ConnId,
        /// When it is abandoned.
        deadline: u64,
    },
    /// Socket open. `ready` once the server said `hello` (or anything that
    /// shows it is talking): only then are `team.connect` requests sent.
    Open {
        /// The socket.
        conn: ConnId,
        /// Whether requests may be sent.
        ready: bool,
        /// When it opened.
        since: u64,
    },
    /// Waiting to reopen.
    Backoff {
        /// When to reopen.
        until: u64,
    },
    /// Close frame sent at shutdown.
    Closing {
        /// The socket.
        conn: ConnId,
        /// When it is dropped without waiting longer.
        deadline: u64,
    },
    /// Closed for good.
    Closed,
}

impl GlobalState {
    /// Every name [`GlobalState::name`] gives, in the order metrics list
    /// them.
    pub const NAMES: [&'static str; 7] = [
        "idle",
        "connecting",
        "opened",
        "open",
        "backoff",
        "closing",
        "closed",
    ];

    /// The state's name, for metrics and status pages (`opened`: open, no
    /// `hello` yet).
    pub fn name(&self) -> &'static str {
        match self {
            GlobalState::Idle => "idle",
            GlobalState::Connecting { .. } => "connecting",
            GlobalState::Open { ready: true, .. } => "open",
            GlobalState::Open { ready: false, .. } => "opened",
            GlobalState::Backoff { .. } => "backoff",
            GlobalState::Closing { .. } => "closing",
            GlobalState::Closed => "closed",
        }
    }
}

/// Work on the Global link that comes due at a time of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GlobalDue {
    /// Open (or reopen) the link.
    Open,
    /// The handshake took too long.
    ConnectTimeout,
    /// The link has been quiet for a ping interval: probe it.
    Probe,
    /// Nothing answered the probe within the pong timeout.
    Silent,
    /// The link stayed up and talking for a ping interval: forgive the
    /// failed attempts before it.
    Forgive,
    /// Our close at shutdown went unanswered.
    CloseTimeout,
}

/// The Global link as a resource: there is exactly one.
#[derive(Resource, Clone, Debug, Serialize)]
pub struct GlobalLink {
    state: GlobalState,
    attempts: u32,
    connects: u64,
    last_error: Option<String>,
    last_activity: u64,
    probe_sent_at: Option<u64>,
    /// The steps of the two above: a probe is answered by anything heard
    /// in a later step than its own (an event between ticks gets a step
    /// with no time in it, so milliseconds cannot tell).
    #[serde(skip)]
    last_activity_step: u64,
    #[serde(skip)]
    probe_step: u64,
}

impl Default for GlobalLink {
    fn default() -> Self {
        GlobalLink {
            state: GlobalState::Idle,
            attempts: 0,
            connects: 0,
            last_error: None,
            last_activity: 0,
            probe_sent_at: None,
            last_activity_step: 0,
            probe_step: 0,
        }
    }
}

impl GlobalLink {
    /// Where it stands.
    pub fn state(&self) -> GlobalState {
        self.state
    }

    /// Consecutive failed attempts, forgiven once a link proved stable.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Sockets opened over the run.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Why the last attempt or socket failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The open socket, if requests and replies may be sent on it.
    pub fn ready_conn(&self) -> Option<ConnId> {
        match self.state {
            GlobalState::Open {
                conn, ready: true, ..
            } => Some(conn),
            _ => None,
        }
    }

    /// The open socket, ready or not.
    pub fn open_conn(&self) -> Option<ConnId> {
        match self.state {
            GlobalState::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The socket the link owns, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self.state {
            GlobalState::Connecting { conn, .. }
            | GlobalState::Open { conn, .. }
            | GlobalState::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// When the outstanding websocket probe was sent, if nothing has
    /// arrived since: a probe is answered by any frame at all.
    fn unanswered_probe(&self) -> Option<u64> {
        self.probe_sent_at
            .filter(|_| self.last_activity_step <= self.probe_step)
    }

    /// The next piece of work due on the link, and when. The one rule for
    /// both the systems (which act when it is due) and the driver (which
    /// sleeps until then). Once a shutdown began, only a closing link has
    /// anything due.
    pub fn next_due(&self, settings: &Settings, shutdown: &Shutdown) -> Option<(u64, GlobalDue)> {
        let ending = shutdown.cause.is_some();
        match self.state {
            GlobalState::Closing { deadline, .. } => Some((deadline, GlobalDue::CloseTimeout)),
            _ if ending => None,
            GlobalState::Idle => Some((0, GlobalDue::Open)),
            GlobalState::Backoff { until } => Some((until, GlobalDue::Open)),
            GlobalState::Connecting { deadline, .. } => Some((deadline, GlobalDue::ConnectTimeout)),
            GlobalState::Open { since, .. } => {
                let liveness = match self.unanswered_probe() {
                    Some(sent) => (sent + settings.pong_timeout, GlobalDue::Silent),
                    None => (
                        self.last_activity + settings.ping_interval,
                        GlobalDue::Probe,
                    ),
                };
                let forgive = (self.attempts > 0 && self.last_activity > since)
                    .then_some((since + settings.ping_interval, GlobalDue::Forgive));
                Some(forgive.map_or(liveness, |f| f.min(liveness)))
            }
            GlobalState::Closed => None,
        }
    }

    /// Opens a socket.
    pub(crate) fn open(&mut self, links: &mut Links) {
        let conn = links.open_global();
        let deadline = links.now() + links.settings().connect_timeout;
        self.state = GlobalState::Connecting { conn, deadline };
        info!(%conn, url = %crate::redact::Redacted(&links.settings().global_url), "opening Global link");
    }

    /// The attempt `conn` opened.
    pub(crate) fn opened(&mut self, conn: ConnId, now: u64, step: u64) {
        if matches!(self.state, GlobalState::Connecting { conn: c, .. } if c == conn) {
            self.state = GlobalState::Open {
                conn,
                ready: false,
                since: now,
            };
            self.connects += 1;
            self.heard(now, step);
            self.probe_sent_at = None;
            info!(%conn, "Global link open");
        }
    }

    /// Something arrived on the open socket.
    pub(crate) fn heard(&mut self, now: u64, step: u64) {
        self.last_activity = now;
        self.last_activity_step = step;
    }

    /// The server is talking (`hello`, or a `team.join` from one that
    /// skips it): requests may go out.
    pub(crate) fn mark_ready(&mut self) {
        if let GlobalState::Open { conn, since, .. } = self.state {
            self.state = GlobalState::Open {
                conn,
                ready: true,
                since,
            };
        }
    }

    /// Sends a websocket ping on a quiet link.
    pub(crate) fn probe(&mut self, links: &mut Links) {
        if let GlobalState::Open { conn, .. } = self.state {
            links.probe(conn);
            self.probe_sent_at = Some(links.now());
            self.probe_step = links.step();
        }
    }

    /// The link stayed up and talking for a ping interval.
    pub(crate) fn forgive(&mut self) {
        self.attempts = 0;
    }

    /// The socket or the attempt is gone (`abort`: we give up on it; else
    /// its terminal event arrived). Reopens after a backoff, unless the run
    /// is ending. In-flight requests are the caller's to requeue.
    pub(crate) fn lost(
        &mut self,
        links: &mut Links,
        shutdown: &Shutdown,
        limiter: &mut LogLimiter,
        error: &str,
        abort: bool,
    ) {
        if let Some(conn) = self.conn() {
            links.release(conn, abort);
        }
        if shutdown.cause.is_some() {
            self.state = GlobalState::Closed;
            return;
        }
        let delay = links.backoff_delay(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        self.last_error = Some(clip(&crate::redact::text(error), MAX_ERROR_LEN));
        self.state = GlobalState::Backoff {
            until: links.now() + delay,
        };
        // A flapping Global would otherwise log a line per attempt.
        if let Some(suppressed) = limiter.allow("global_lost", links.now()) {
            warn!(
                error,
                retry_in_ms = delay,
                attempts = self.attempts,
                suppressed,
                "Global link lost; reopening"
            );
        }
    }

    /// Shutdown: an open link gets a normal close (after this tick's
    /// replies), an opening one is dropped, one that is down stays down.
    pub(crate) fn close(&mut self, links: &mut Links) {
        match self.state {
            GlobalState::Open { conn, .. } => {
                links.close_conn(conn);
                self.state = GlobalState::Closing {
                    conn,
                    deadline: links.now() + links.settings().close_timeout,
                };
            }
            GlobalState::Connecting { conn, .. } => {
                links.release(conn, true);
                self.state = GlobalState::Closed;
            }
            GlobalState::Idle | GlobalState::Backoff { .. } => self.state = GlobalState::Closed,
            GlobalState::Closing { .. } | GlobalState::Closed => {}
        }
    }

    /// The closing socket is gone (`abort`: its close went unanswered).
    pub(crate) fn closed(&mut self, links: &mut Links, abort: bool) {
        if let GlobalState::Closing { conn, .. } = self.state {
            links.release(conn, abort);
            self.state = GlobalState::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GlobalState;
    use crate::bridge::ConnId;

    #[test]
    fn names_lists_every_name_the_states_give() {
        let conn = ConnId(1);
        let every = [
            GlobalState::Idle,
            GlobalState::Connecting { conn, deadline: 0 },
            GlobalState::Open {
                conn,
                ready: false,
                since: 0,
            },
            GlobalState::Open {
                conn,
                ready: true,
                since: 0,
            },
            GlobalState::Backoff { until: 0 },
            GlobalState::Closing { conn, deadline: 0 },
            GlobalState::Closed,
        ];
        for state in every {
            // Stops compiling when a state is added: list it above.
            match state {
                GlobalState::Idle
                | GlobalState::Connecting { .. }
                | GlobalState::Open { .. }
                | GlobalState::Backoff { .. }
                | GlobalState::Closing { .. }
                | GlobalState::Closed => {}
            }
            assert!(
                GlobalState::NAMES.contains(&state.name()),
                "{}",
                state.name()
            );
        }
        assert_eq!(GlobalState::NAMES.len(), every.len());
    }
}
