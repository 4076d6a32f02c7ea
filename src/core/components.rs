//! Per-team components: who the team is, where its connection stands, what
//! it has counted, and how healthy its link is.

use std::collections::VecDeque;

use bevy_ecs::prelude::*;
use serde::Serialize;

use crate::bridge::ConnId;
use crate::core::saved::SocketMark;
use crate::protocol::TeamId;

/// A team's identity. Teams are never despawned: a team that left stays in
/// healthcheck stats, and a later `team.join` revives the same entity.
#[derive(Component, Clone, Copy, Debug)]
pub struct Team {
    /// The Global API's id for the team.
    pub id: TeamId,
}

/// What happens once a closing socket is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterClose {
    /// The team left: stay down.
    Left,
    /// The team left and joined again while its old socket drained: ask for a
    /// new URL only once the old socket is gone (one socket per team at most).
    Rejoin,
    /// The run is ending.
    Stop,
}

/// The team connection's state machine. Times are milliseconds of core time.
///
/// ```text
///  Left ─join─▶ NeedsUrl ─▶ Requesting ─▶ Connecting ─▶ Open
///   ▲             ▲  ▲          │  │           │         │
///   │             │  └─requeue──┘  │           │         │  drop, error, timeout
///   │             └──── Backoff ◀──┴───────────┴─────────┘
///   │                                          │ team.left (from any joined state)
///   └──────── Closing{Left} ◀──────────────────┘
///               │ join while closing: Closing{Rejoin} ─(socket gone)─▶ NeedsUrl
///  goodbye/stop: every joined state ─▶ Closing{Stop} ─▶ Stopped (no socket: Stopped at once)
/// ```
///
/// `requeue`: the Global link dropped with the request unanswered; the team
/// asks again on the next Global link, without backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    /// Joined; a `team.connect` request waits for the Global link (and for a
    /// free request slot).
    NeedsUrl,
    /// `team.connect` sent on Global; waiting for the answer until `deadline`.
    Requesting {
        /// When the request is given up and retried.
        deadline: u64,
    },
    /// Socket opening.
    Connecting {
        /// The attempt.
        conn: ConnId,
        /// When the attempt is aborted and retried.
        deadline: u64,
    },
    /// Socket open: the team is `connected`, unless `quiet`.
    Open {
        /// The socket.
        conn: ConnId,
        /// When it opened.
        since: u64,
        /// In a cluster, the worker holding the socket went quiet
        /// ([`NetEvent::Quiet`](crate::bridge::NetEvent::Quiet)): still the
        /// team's socket, but not reported connected.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
    },
    /// Waiting to ask for a new URL after a failure.
    Backoff {
        /// When to ask again.
        until: u64,
    },
    /// Close frame sent; frames still arriving are still counted.
    Closing {
        /// The socket.
        conn: ConnId,
        /// When it is dropped without waiting any longer.
        deadline: u64,
        /// What the team does once the socket is gone.
        after: AfterClose,
    },
    /// Not joined: left, or not yet joined (the state a team is spawned in).
    Left,
    /// The run ended (goodbye or local shutdown).
    Stopped,
}

/// Which state a link is in, without the state's data: what fleet totals
/// are kept by, and what outputs name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// [`LinkState::NeedsUrl`].
    NeedsUrl,
    /// [`LinkState::Requesting`].
    Requesting,
    /// [`LinkState::Connecting`].
    Connecting,
    /// [`LinkState::Open`].
    Open,
    /// [`LinkState::Backoff`].
    Backoff,
    /// [`LinkState::Closing`].
    Closing,
    /// [`LinkState::Left`].
    Left,
    /// [`LinkState::Stopped`].
    Stopped,
}

impl LinkKind {
    /// Every kind, in the order outputs list them.
    pub const ALL: [LinkKind; 8] = [
        LinkKind::NeedsUrl,
        LinkKind::Requesting,
        LinkKind::Connecting,
        LinkKind::Open,
        LinkKind::Backoff,
        LinkKind::Closing,
        LinkKind::Left,
        LinkKind::Stopped,
    ];

    /// Joined teams without an open socket: asking, connecting or backing off.
    pub const RECONNECTING: [LinkKind; 4] = [
        LinkKind::NeedsUrl,
        LinkKind::Requesting,
        LinkKind::Connecting,
        LinkKind::Backoff,
    ];

    /// The kind's position in [`LinkKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name snapshots, metrics and the HTTP views write.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::NeedsUrl => "needs_url",
            LinkKind::Requesting => "requesting",
            LinkKind::Connecting => "connecting",
            LinkKind::Open => "open",
            LinkKind::Backoff => "backoff",
            LinkKind::Closing => "closing",
            LinkKind::Left => "left",
            LinkKind::Stopped => "stopped",
        }
    }
}

impl LinkState {
    /// Whether the team is reported `connected` (healthcheck, `/teams`, the
    /// final report): its socket is open and, in a cluster, the worker
    /// holding it is not quiet.
    pub fn connected(&self) -> bool {
        matches!(self, LinkState::Open { quiet: false, .. })
    }

    /// Which state this is, without its data.
    pub fn kind(&self) -> LinkKind {
        match self {
            LinkState::NeedsUrl => LinkKind::NeedsUrl,
            LinkState::Requesting { .. } => LinkKind::Requesting,
            LinkState::Connecting { .. } => LinkKind::Connecting,
            LinkState::Open { .. } => LinkKind::Open,
            LinkState::Backoff { .. } => LinkKind::Backoff,
            LinkState::Closing { .. } => LinkKind::Closing,
            LinkState::Left => LinkKind::Left,
            LinkState::Stopped => LinkKind::Stopped,
        }
    }

    /// The state's name, as snapshots and metrics write it.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The state's name, with what follows a close: for histories.
    pub fn label(&self) -> &'static str {
        match self {
            LinkState::Closing {
                after: AfterClose::Left,
                ..
            } => "closing (left)",
            LinkState::Closing {
                after: AfterClose::Rejoin,
                ..
            } => "closing (rejoin)",
            LinkState::Closing {
                after: AfterClose::Stop,
                ..
            } => "closing (stop)",
            other => other.name(),
        }
    }

    /// The socket this state owns, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match *self {
            LinkState::Connecting { conn, .. }
            | LinkState::Open { conn, .. }
            | LinkState::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The deadline attached to this state, if any.
    pub fn deadline(&self) -> Option<u64> {
        match *self {
            LinkState::Requesting { deadline }
            | LinkState::Connecting { deadline, .. }
            | LinkState::Closing { deadline, .. } => Some(deadline),
            LinkState::Backoff { until } => Some(until),
            _ => None,
        }
    }

    /// Whether the team counts as joined for a restart: joined now, about
    /// to rejoin, or stopped by the end of the run (which is not leaving).
    pub fn was_joined(&self) -> bool {
        self.is_joined()
            || matches!(
                self,
                LinkState::Stopped
                    | LinkState::Closing {
                        after: AfterClose::Rejoin | AfterClose::Stop,
                        ..
                    }
            )
    }

    /// Whether `team.join` should leave the team alone: it is already
    /// connected, on its way to a connection, or will retry by itself.
    pub fn is_joined(&self) -> bool {
        matches!(
            self,
            LinkState::NeedsUrl
                | LinkState::Requesting { .. }
                | LinkState::Connecting { .. }
                | LinkState::Open { .. }
                | LinkState::Backoff { .. }
        )
    }
}

/// The team's link: its state plus an epoch that changes on every
/// transition, so a timer set in an earlier state is recognised as stale
/// without ever being searched for and removed.
#[derive(Component, Clone, Copy, Debug)]
pub struct Link {
    /// Where the connection stands.
    pub state: LinkState,
    /// Bumped on every state change.
    pub epoch: u32,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: LinkState::Left,
            epoch: 0,
        }
    }
}

/// The two counts the healthcheck reports. Kept across reconnects and
/// rejoins for the team's whole life.
#[derive(Component, Clone, Copy, Debug, Default, Serialize)]
pub struct Counters {
    /// Every `message` event received.
    pub message_count: u64,
    /// Those whose text contains `props`.
    pub props_count: u64,
    /// What the counts include of the latest socket counted from (saved
    /// with them: see [`SocketMark`]).
    #[serde(skip)]
    pub socket: Option<SocketMark>,
}

impl Counters {
    /// Counts `count` messages, `props` of them with props.
    pub fn add(&mut self, count: u64, props: u64) {
        self.message_count += count;
        self.props_count += props;
    }

    /// Notes `count` messages (`props` with props) counted from `conn`. A
    /// late run of an earlier socket leaves the mark on the later one.
    pub fn from_socket(&mut self, conn: ConnId, count: u64, props: u64) {
        match &mut self.socket {
            Some(mark) if mark.conn == conn => {
                mark.messages += count;
                mark.props += props;
            }
            Some(mark) if mark.conn > conn => {}
            _ => {
                self.socket = Some(SocketMark {
                    conn,
                    messages: count,
                    props,
                })
            }
        }
    }
}

/// Most pings a link keeps waiting for. A server that answers no ping but
/// keeps sending other frames is alive by the protocol's rule, so its
/// unanswered pings must not pile up.
pub const MAX_PINGS_IN_FLIGHT: usize = 16;

/// How the team's link has behaved.
#[derive(Component, Clone, Debug, Default, Serialize)]
pub struct Health {
    /// Consecutive failed attempts; drives the backoff. Forgiven once a link
    /// stayed up and heard something for a ping interval.
    pub attempts: u32,
    /// Links lost without `team.left` (dropped, timed out, dead), each re-requested.
    pub reconnects: u64,
    /// Sockets opened over the team's life.
    pub connects: u64,
    /// Pings sent and not yet answered: `(unique_id, sent_at)`, oldest first.
    #[serde(skip)]
    pub pings_in_flight: VecDeque<(u64, u64)>,
    /// When anything last arrived on the current socket.
    pub last_activity: u64,
    /// The step in which it arrived. A ping is answered by anything heard
    /// in a later step than the one that sent it: steps, not milliseconds,
    /// since an event between ticks gets a step with no time in it.
    #[serde(skip)]
    pub last_activity_step: u64,
    /// Restored from saved state as joined, and not announced by a
    /// `team.join` since: if Global refuses its `team.connect`, it left
    /// while we were down.
    pub resumed: bool,
    /// The socket stopped reading for backpressure (the message tap's
    /// consumer is behind): silence then is ours, not the peer's.
    pub paused: bool,
    /// When the last matching `pong` arrived.
    pub last_pong: Option<u64>,
    /// Round-trip time of the last answered ping, in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Frames from this team's sockets that were bad input.
    pub bad_frames: u64,
    /// Why the last attempt or link failed.
    pub last_error: Option<String>,
    /// Whether the link was open when the run began to shut down: the final
    /// report's `connected`, since every socket is closed by the end.
    pub connected_at_shutdown: bool,
}

impl Health {
    /// Something arrived on the team's socket at `now`, in step `step`.
    pub fn heard(&mut self, now: u64, step: u64) {
        self.last_activity = now;
        self.last_activity_step = step;
    }
}
