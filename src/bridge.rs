//! The one seam between the deterministic core and the network: plain data.
//!
//! [`NetEvent`]s go into the core (`Core::handle`, in the order they
//! arrived); [`NetCommand`]s come out as a plain list the driver drains
//! after each step. Frames are decoded on the I/O side, so a bad frame still
//! arrives here, as the typed [`DecodeError`], to be counted by the core.
//! How events travel from sockets to the driver is the driver's business
//! (the runtime's is [`crate::inbox`]).
//!
//! The contract the transport keeps: every [`NetCommand::Open`] is answered
//! by exactly one terminal event, [`NetEvent::OpenFailed`] or (after
//! [`NetEvent::Opened`] and any number of frames) [`NetEvent::Closed`], even
//! when the core aborted the connection; nothing follows it. The core keeps
//! its own deadlines, so it never waits on the "eventually".

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{DecodeError, GlobalServerEvent, TeamId};

/// Names one connection attempt. Fresh for every `Open`, never reused, so an
/// event from an abandoned attempt can never be mistaken for the current one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
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

/// A team frame other than a `message`: messages cross the bridge only as
/// runs ([`NetEvent::Messages`]), so the core has a single counting path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamControl {
    /// The team connection is ready.
    Hello,
    /// The answer to a `ping`.
    Pong {
        /// The ping's id.
        unique_id: u64,
    },
    /// The team left.
    TeamLeft {
        /// The team the server names.
        team_id: TeamId,
    },
}

/// A decoded inbound frame, already split by connection kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A frame on the Global connection.
    Global(Result<GlobalServerEvent, DecodeError>),
    /// A frame on a team connection, other than a `message`.
    Team(Result<TeamControl, DecodeError>),
}

/// The text of one outbound frame, encoded once by the core. Cloning shares
/// the buffer, so one healthcheck reply answers every request of a tick
/// without being encoded or copied again.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Built only from `String`s (see `From`), so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared buffer, for the socket.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is a clone of this text (one buffer, held once).
    pub fn shares_buffer(&self, other: &Text) -> bool {
        self.0.as_ptr() == other.0.as_ptr() && self.0.len() == other.0.len()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Bytes::from(text))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Serialised as the JSON it holds (so snapshots show the frame, not an
/// escaped string), or as a string if it is not JSON.
impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<serde_json::Value>(self.as_str()) {
            Ok(json) => json.serialize(serializer),
            Err(_) => serializer.serialize_str(self.as_str()),
        }
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
    /// A write could not drain, or a message stayed incomplete, for longer
    /// than the pong timeout: the peer stalled the socket.
    Stalled(&'static str),
    /// The core gave up on the connection and asked for it to be dropped.
    Aborted,
    /// The worker holding the socket (in a cluster) lost its lease, or
    /// was revoked: it closed its sockets itself (it fences itself before
    /// its lease can lapse), so the team may be opened elsewhere.
    WorkerLost,
    /// Any other transport error.
    Error(String),
}

impl CloseReason {
    /// Why [`CloseReason::Stalled`]: our writes could not drain.
    pub const PEER_NOT_READING: &'static str = "peer not reading";
    /// Why [`CloseReason::Stalled`]: a message was begun and not finished.
    pub const MESSAGE_INCOMPLETE: &'static str = "message left incomplete";
    /// Every reason a [`CloseReason::Stalled`] carries.
    pub(crate) const STALLS: [&'static str; 2] = [Self::PEER_NOT_READING, Self::MESSAGE_INCOMPLETE];

    /// A short, stable name for the kind of end, for counters.
    pub fn class(&self) -> &'static str {
        match self {
            CloseReason::Remote { .. } => "remote_close",
            CloseReason::Local => "local_close",
            CloseReason::Reset => "reset",
            CloseReason::TooLarge => "too_large",
            CloseReason::Overflow => "overflow",
            CloseReason::Stalled(_) => "stalled",
            CloseReason::Aborted => "aborted",
            CloseReason::WorkerLost => "worker_lost",
            CloseReason::Error(_) => "error",
        }
    }

    /// The reason whose [`class`](Self::class) is `class`, its detail (the
    /// close code, what stalled, the error text) left empty for the caller
    /// to fill in, as a decoder of recorded reasons does; `None` for a name
    /// that is no class.
    pub fn from_class(class: &str) -> Option<CloseReason> {
        Some(match class {
            "remote_close" => CloseReason::Remote { code: 0 },
            "local_close" => CloseReason::Local,
            "reset" => CloseReason::Reset,
            "too_large" => CloseReason::TooLarge,
            "overflow" => CloseReason::Overflow,
            "stalled" => CloseReason::Stalled(""),
            "aborted" => CloseReason::Aborted,
            "worker_lost" => CloseReason::WorkerLost,
            "error" => CloseReason::Error(String::new()),
            _ => return None,
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Remote { code } => write!(f, "closed by peer ({code})"),
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Reset => f.write_str("connection reset"),
            CloseReason::TooLarge => f.write_str("frame too large"),
            CloseReason::Overflow => f.write_str("outbound queue overflow"),
            CloseReason::Stalled(what) => write!(f, "stalled: {what}"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::WorkerLost => f.write_str("worker lost"),
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
    /// A frame arrived (other than a `message`: those come in runs).
    Received {
        /// On which connection.
        conn: ConnId,
        /// The decoded frame, or why it is bad input. Boxed: these are
        /// rare next to runs of messages, and the largest variant would
        /// otherwise size every event.
        frame: Box<Inbound>,
    },
    /// A run of consecutive `message` frames on a team connection, decoded
    /// and classified on the I/O side and handed over as one event: the
    /// core still does the counting, but pays for one event per run, not
    /// per message. A run never spans another frame, so order is kept. The
    /// only way messages reach the core (see [`crate::reader`]).
    Messages {
        /// On which connection.
        conn: ConnId,
        /// Index on this connection of the run's first message (0-based).
        first: u64,
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
    /// The socket stopped reading because the message tap's consumer is
    /// behind (`paused`), or started again. A paused link is not dead: the
    /// peer's frames wait in TCP because we chose not to read them.
    Flow {
        /// On which connection.
        conn: ConnId,
        /// Whether reading is paused.
        paused: bool,
    },
    /// In a cluster, the worker holding the socket went quiet (its lease
    /// unrenewed for as long as makes a worker fence itself: it is closing
    /// its sockets, or not running), or was heard again. Sent by the
    /// leader, never by a socket. A quiet socket is still the team's (no
    /// other may open until its worker is lost), but is not reported
    /// `connected`.
    Quiet {
        /// Which connection.
        conn: ConnId,
        /// Whether its worker is quiet.
        quiet: bool,
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
            | NetEvent::Flow { conn, .. }
            | NetEvent::Quiet { conn, .. }
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
    /// Send one text frame.
    Send {
        /// On which connection.
        conn: ConnId,
        /// The frame, encoded.
        text: Text,
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

impl NetCommand {
    /// The connection this command concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            NetCommand::Open { conn, .. }
            | NetCommand::Send { conn, .. }
            | NetCommand::Probe { conn }
            | NetCommand::Close { conn, .. }
            | NetCommand::Abort { conn } => *conn,
        }
    }
}

/// The normal websocket close code.
pub const CLOSE_NORMAL: u16 = 1000;
