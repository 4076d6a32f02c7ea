//! What lands in the stream: the subjects, the JSON payloads, and the
//! message ids JetStream deduplicates on. Consumers (the worker example,
//! the tests) read the payloads with these same types.
//!
//! Subjects: `<prefix>.teams.<team_id>.message` for each message, and
//! `<prefix>.teams.<team_id>.<joined|connected|dropped|left|stopped>` for
//! the team's lifecycle.
//!
//! Message ids (`Nats-Msg-Id`) are fixed when a record is first taken from
//! the tap, so every retry carries the same one: `<run>:<conn>:<index>` for
//! a message (the socket and its position on it, unique within a run) and
//! `<run>:t<team>:e<n>` for the team's `n`th lifecycle event. Connection
//! ids restart at 1 in each process, so the run id keeps ids of different
//! runs apart.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::core::{Lifecycle, TeamEvent};
use crate::protocol::TeamId;
use crate::tap::Tapped;

/// One process run's id: its start time (µs since the epoch) and pid, in hex.
pub fn run_id() -> String {
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{micros:x}-{:x}", std::process::id())
}

/// The payload of a `message` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord<'a> {
    /// The publishing process's run id.
    #[serde(borrow)]
    pub run: Cow<'a, str>,
    /// The team.
    pub team_id: TeamId,
    /// The team's message sequence in this run: 1, 2, 3, … in the order
    /// the messages were read, gap-free.
    pub seq: u64,
    /// The message text.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// When it was read off the socket (RFC 3339, UTC).
    pub received_at: String,
}

/// The payload of a lifecycle record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRecord<'a> {
    /// The publishing process's run id.
    #[serde(borrow)]
    pub run: Cow<'a, str>,
    /// The team.
    pub team_id: TeamId,
    /// What happened (`joined`, `connected`, `dropped`, `left`, `stopped`).
    pub event: Cow<'a, str>,
    /// Why, when there was a reason (always for `dropped`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// The core's clock when it happened, ms since the run began.
    pub core_ms: u64,
    /// When the publisher took it (RFC 3339, UTC).
    pub time: String,
}

/// The subject of a team's messages.
pub fn message_subject(prefix: &str, team: TeamId) -> String {
    format!("{prefix}.teams.{team}.message")
}

/// The subject of a team's lifecycle event.
pub fn event_subject(prefix: &str, team: TeamId, kind: Lifecycle) -> String {
    format!("{prefix}.teams.{team}.{}", kind.name())
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A record ready to go: subject, message id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Where it goes.
    pub subject: String,
    /// Its `Nats-Msg-Id`.
    pub msg_id: String,
    /// The JSON payload.
    pub payload: bytes::Bytes,
}

/// Encodes a tapped message as the team's `seq`th.
pub fn encode_message(run: &str, prefix: &str, seq: u64, message: &Tapped) -> Encoded {
    let record = MessageRecord {
        run: Cow::Borrowed(run),
        team_id: message.team,
        seq,
        text: Cow::Borrowed(&message.text),
        received_at: rfc3339(message.received_at),
    };
    Encoded {
        subject: message_subject(prefix, message.team),
        msg_id: format!("{run}:{}:{}", message.conn.0, message.index),
        payload: json(&record),
    }
}

/// Encodes a team's `n`th lifecycle event, taken by the publisher at `time`.
pub fn encode_event(
    run: &str,
    prefix: &str,
    n: u64,
    event: &TeamEvent,
    time: SystemTime,
) -> Encoded {
    let record = TeamRecord {
        run: Cow::Borrowed(run),
        team_id: event.team,
        event: Cow::Borrowed(event.kind.name()),
        reason: event.reason.as_deref().map(Cow::Borrowed),
        core_ms: event.at,
        time: rfc3339(time),
    };
    Encoded {
        subject: event_subject(prefix, event.team, event.kind),
        msg_id: format!("{run}:t{}:e{n}", event.team),
        payload: json(&record),
    }
}

fn json(record: &impl Serialize) -> bytes::Bytes {
    // Plain structs of strings and integers: serialising cannot fail.
    serde_json::to_vec(record).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_record_reads_back_and_names_its_subject_and_id() {
        let event = TeamEvent {
            team: TeamId(7),
            at: 1234,
            kind: Lifecycle::Dropped,
            reason: Some("reset \"by peer\"".into()),
        };
        let encoded = encode_event("r1", "sb", 3, &event, SystemTime::UNIX_EPOCH);
        assert_eq!(encoded.subject, "sb.teams.7.dropped");
        assert_eq!(encoded.msg_id, "r1:t7:e3");
        let back: TeamRecord<'_> = serde_json::from_slice(&encoded.payload).unwrap();
        assert_eq!(back.team_id, TeamId(7));
        assert_eq!(back.event, "dropped");
        assert_eq!(back.reason.as_deref(), Some("reset \"by peer\""));
        assert_eq!(back.core_ms, 1234);
        assert_eq!(back.time, "1970-01-01T00:00:00.000000Z");
        assert_eq!(message_subject("sb", TeamId(7)), "sb.teams.7.message");
    }
}
