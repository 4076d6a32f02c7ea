//! One line per team, for `/teams` while the run goes and for the final
//! report at its end; and that report, as a table or as JSON.

use std::fmt::Write as _;

use serde::{Serialize, Serializer};

use crate::core::{LinkState, Snapshot, TeamSnapshot};
use crate::protocol::TeamId;

/// One team: a line of `/teams` and of the final report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TeamLine {
    /// The team.
    pub id: TeamId,
    /// Its link state, written by its [`LinkState::name`] (`open`,
    /// `backoff`, `left`, `stopped`, ...).
    #[serde(serialize_with = "state_name")]
    pub state: LinkState,
    /// Whether its socket is open, or was when the run began to end (by
    /// the end every socket is closed).
    pub connected: bool,
    /// Messages counted.
    pub messages: u64,
    /// Of those, with `props`.
    pub props: u64,
    /// Open links lost and re-requested.
    pub reconnects: u64,
    /// Round-trip time of the last answered ping, ms.
    pub rtt_ms: Option<u64>,
    /// In a cluster, the worker holding its socket (`/teams` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<std::sync::Arc<str>>,
}

impl TeamLine {
    /// The line of a team as the core sees it.
    pub fn of(team: &TeamSnapshot) -> TeamLine {
        TeamLine {
            id: team.id,
            state: team.link,
            connected: team.connected || team.health.connected_at_shutdown,
            messages: team.counters.message_count,
            props: team.counters.props_count,
            reconnects: team.health.reconnects,
            rtt_ms: team.health.rtt_ms,
            worker: None,
        }
    }
}

fn state_name<S: Serializer>(state: &LinkState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.name())
}

/// The whole fleet at the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every team ever joined, sorted by id.
    pub teams: Vec<TeamLine>,
    /// Sum of `messages`.
    pub messages: u64,
    /// Sum of `props`.
    pub props: u64,
}

impl Report {
    /// Builds the report from a core snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Report {
        let teams: Vec<TeamLine> = snapshot.teams.iter().map(TeamLine::of).collect();
        Report {
            messages: teams.iter().map(|t| t.messages).sum(),
            props: teams.iter().map(|t| t.props).sum(),
            teams,
        }
    }

    /// A fixed-width table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>8}  {:<10}  {:<9}  {:>10}  {:>8}  {:>10}  {:>8}",
            "team", "state", "connected", "messages", "props", "reconnects", "rtt_ms"
        );
        for t in &self.teams {
            let rtt = t.rtt_ms.map_or_else(|| "-".to_owned(), |r| r.to_string());
            let _ = writeln!(
                out,
                "{:>8}  {:<10}  {:<9}  {:>10}  {:>8}  {:>10}  {:>8}",
                t.id.0,
                t.state.name(),
                t.connected,
                t.messages,
                t.props,
                t.reconnects,
                rtt
            );
        }
        let _ = writeln!(
            out,
            "{:>8}  {:<10}  {:<9}  {:>10}  {:>8}",
            "total", "", "", self.messages, self.props
        );
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_link_state_and_nothing_else_of_it() {
        let line = TeamLine {
            id: TeamId(3),
            state: LinkState::Backoff { until: 9 },
            connected: false,
            messages: 2,
            props: 1,
            reconnects: 1,
            rtt_ms: Some(5),
            worker: None,
        };
        let json = serde_json::to_value(&line).expect("serialises");
        let want = serde_json::json!({"id": 3, "state": "backoff", "connected": false,
            "messages": 2, "props": 1, "reconnects": 1, "rtt_ms": 5});
        assert_eq!(json, want);
    }
}
