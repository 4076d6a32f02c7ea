//! What of a team survives a restart. At the bottom of the core's files:
//! the resources, the state store and the recorder all hold it.

use serde::{Deserialize, Serialize};

use crate::bridge::ConnId;
use crate::protocol::TeamId;

/// What of a team survives a restart: its counts, and whether it was joined
/// (a restart reconnects it). Written by the state store, given back to
/// [`crate::Core::restore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTeam {
    /// The team.
    pub id: TeamId,
    /// Joined and not left: a restart reconnects it.
    pub joined: bool,
    /// `message` events received over the team's whole life.
    pub message_count: u64,
    /// Those whose text contains `props`.
    pub props_count: u64,
    /// How much of its latest socket's traffic the counts include: what a
    /// new leader needs to add exactly what a worker read after this copy
    /// (see [`crate::Core::adopt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketMark>,
    /// Earlier sockets given up with a lost worker whose late report has
    /// not come, each with what the counts include of it: a later socket
    /// is marked, but these were not read to their end (see
    /// [`crate::Core::late_reports`]). At most [`MOST_UNREPORTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreported: Vec<SocketMark>,
}

/// Given-up sockets a team keeps waiting for a late report: past this the
/// oldest is taken as read to its end (a report of it then adds nothing).
/// A worker reports an ended socket for two leases plus ten seconds, so
/// more than a few mean the reports will not come.
pub const MOST_UNREPORTED: usize = 4;

/// The messages counted from one socket, from its first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketMark {
    /// The socket (ids only grow, across leaders too: a larger one is a
    /// later socket).
    pub conn: ConnId,
    /// Messages counted from it.
    pub messages: u64,
    /// Of those, with `props`.
    pub props: u64,
}

impl SocketMark {
    /// What a socket that has now read `messages` (`props`) adds to counts
    /// that include this mark: all of it if it is a later socket, the rest
    /// if it is this one, nothing if it is an earlier one.
    pub fn unseen(mark: Option<SocketMark>, now: SocketMark) -> (u64, u64) {
        match mark {
            Some(m) if m.conn == now.conn => (
                now.messages.saturating_sub(m.messages),
                now.props.saturating_sub(m.props),
            ),
            Some(m) if m.conn > now.conn => (0, 0),
            _ => (now.messages, now.props),
        }
    }
}

/// A team socket a worker kept through a change of leader, as it reports
/// it to the new one: what it has read since it opened, and whether it is
/// still open (else it ended after the last copy of the counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedSocket {
    /// The team.
    pub team: TeamId,
    /// The socket, by the id the old leader gave it.
    pub conn: ConnId,
    /// Messages it has read.
    pub messages: u64,
    /// Of those, with `props`.
    pub props: u64,
    /// Still open.
    pub open: bool,
}

impl AdoptedSocket {
    /// Its reading as a mark.
    pub fn mark(&self) -> SocketMark {
        SocketMark {
            conn: self.conn,
            messages: self.messages,
            props: self.props,
        }
    }
}
