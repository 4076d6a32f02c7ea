//! What of a team survives a restart. At the bottom of the core's files:
//! the resources, the state store and the recorder all hold it.

use serde::{Deserialize, Serialize};

use crate::protocol::TeamId;

/// What of a team survives a restart: its counts, and whether it was joined
/// (a restart reconnects it). Written by the state store, given back to
/// [`crate::Core::restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTeam {
    /// The team.
    pub id: TeamId,
    /// Joined and not left: a restart reconnects it.
    pub joined: bool,
    /// `message` events received over the team's whole life.
    pub message_count: u64,
    /// Those whose text contains `props`.
    pub props_count: u64,
}
