//! The one seam between the deterministic core and the network.
//!
//! [`NetEvent`]s flow into the core over a bounded crossbeam channel (the core
//! drains it with `try_recv`, as `bevy_time` does with its time channel);
//! [`NetCommand`]s flow out as a plain list the driver drains after each tick.
//! Frames are decoded on the I/O side, so a bad frame still arrives here, as
//! the typed [`DecodeError`], to be counted by the core.
//!
//! The contract the transport keeps: every [`NetCommand::Open`] is answered,
//! eventually, by exactly one of [`NetEvent::OpenFailed`] or
//! [`NetEvent::Opened`]; after `Opened` comes any number of
//! [`NetEvent::Received`] and then exactly one [`NetEvent::Closed`]. The core
//! does not rely on the "eventually": it keeps its own deadlines and forgets
//! a connection id it gave up on, ignoring whatever arrives for it later.

use std::fmt;

use serde::Serialize;

use crate::protocol::{
    DecodeError, GlobalClientEvent, GlobalServerEvent, TeamClientEvent, TeamId, TeamServerEvent,
};

/// Names one connection attempt. Fresh for every `Open`, never reused, so an
/// event from an abandoned attempt can never be mistaken for the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// What a connection is for; decides which decoder the transport uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConnKind {
    /// The one Global API connection.
    Global,
    /// One team's connection.
    Team(TeamId),
}

/// A decoded inbound frame, already split by connection kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A frame on the Global connection.
    Global(Result<GlobalServerEvent, DecodeError>),
    /// A frame on a team connection.
    Team(Result<TeamServerEvent, DecodeError>),
}

/// An outbound frame, typed by connection kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outbound {
    /// A frame for the Global connection.
    Global(GlobalClientEvent),
    /// A frame for a team connection.
    Team(TeamClientEvent),
}

impl Outbound {
    /// The frame's JSON text.
    pub fn encode(&self) -> String {
        crate::protocol::encode(self)
    }
}

/// Why a connection ended. Carried back so the core can log it and keep it
/// as the team's last error; every reason is handled the same way otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CloseReason {
    /// The peer sent a close frame with this code (1005 when it sent none).
    Remote {
        /// The close code.
        code: u16,
    },
    /// We closed it, as a `NetCommand` asked.
    Local,
    /// The TCP connection was reset or ended without a close frame.
    Reset,
    /// The peer sent a frame or message above the configured limit.
    TooLarge,
    /// The connection's outbound queue overflowed: the peer stopped reading.
    Overflow,
    /// Any other transport error.
    Error(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Remote { code } => write!(f, "closed by peer ({code})"),
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Reset => f.write_str("connection reset"),
            CloseReason::TooLarge => f.write_str("frame too large"),
            CloseReason::Overflow => f.write_str("outbound queue overflow"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Inbound: what happened on the network.
#[derive(Clone, Debug, PartialEq)]
pub enum NetEvent {
    /// The websocket handshake completed.
    Opened {
        /// Which attempt.
        conn: ConnId,
    },
    /// The attempt failed before the handshake completed.
    OpenFailed {
        /// Which attempt.
        conn: ConnId,
        /// Why, for logs.
        error: String,
    },
    /// A frame arrived.
    Received {
        /// On which connection.
        conn: ConnId,
        /// The decoded frame, or why it is bad input.
        frame: Inbound,
    },
    /// A run of consecutive `message` frames on a team connection, decoded
    /// and classified on the I/O side and handed over as one event: the
    /// core still does the counting, but pays for one event per run, not
    /// per message. A run never spans another frame, so order is kept.
    Messages {
        /// On which connection.
        conn: ConnId,
        /// Messages in the run.
        count: u32,
        /// Of those, whose text contains `props`.
        props: u32,
    },
    /// A websocket control frame (ping or pong) arrived: a sign of life
    /// with no protocol content.
    Alive {
        /// On which connection.
        conn: ConnId,
    },
    /// The connection ended.
    Closed {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

impl NetEvent {
    /// The connection this event concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            NetEvent::Opened { conn }
            | NetEvent::OpenFailed { conn, .. }
            | NetEvent::Received { conn, .. }
            | NetEvent::Messages { conn, .. }
            | NetEvent::Alive { conn }
            | NetEvent::Closed { conn, .. } => *conn,
        }
    }
}

/// Outbound: what the core wants done on the network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum NetCommand {
    /// Open a websocket. `url` is already normalised to `ws://` or `wss://`.
    Open {
        /// The id the transport must use in every event about this socket.
        conn: ConnId,
        /// Which decoder the transport applies to inbound frames.
        kind: ConnKind,
        /// Where to connect.
        url: String,
    },
    /// Send one frame.
    Send {
        /// On which connection.
        conn: ConnId,
        /// The frame.
        frame: Outbound,
    },
    /// Send a websocket-level ping (a control frame every RFC 6455 peer
    /// answers with a pong): how a silent Global link is probed, since the
    /// protocol's own `ping` exists only on team connections.
    Probe {
        /// Which connection.
        conn: ConnId,
    },
    /// Send a close frame with this code and wait (bounded) for the peer's.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Close code; 1000 for a normal close.
        code: u16,
    },
    /// Drop the connection at once, without a close handshake (dead link).
    Abort {
        /// Which connection.
        conn: ConnId,
    },
}

/// The normal websocket close code.
pub const CLOSE_NORMAL: u16 = 1000;

/// Sending half of the inbound bridge, held by the transport.
pub type EventSender = crossbeam_channel::Sender<NetEvent>;
/// Receiving half of the inbound bridge, held by the core.
pub type EventReceiver = crossbeam_channel::Receiver<NetEvent>;

/// A bounded inbound channel. When it is full the transport stops reading
/// sockets (TCP flow control then slows the peers) instead of growing memory.
pub fn event_channel(capacity: usize) -> (EventSender, EventReceiver) {
    crossbeam_channel::bounded(capacity)
}
