//! The reference decoder: one `RawValue` per known field, then a typed look
//! at the fields the event needs. Plain and slow; it is the slow path that
//! [`decode_team_frame`](super::decode_team_frame) falls back to for every
//! frame it does not accept itself, and the oracle it is tested against. Its
//! behaviour is the protocol's definition of good and bad input: change it
//! only on purpose.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{
    DecodeError, GlobalClientEvent, GlobalServerEvent, TeamClientEvent, TeamId, TeamServerEvent,
    TeamServerEventRef, clip,
};

/// Longest unknown `type` kept in a [`DecodeError`]; a peer must not be able
/// to make us hold (and log) an arbitrarily long string.
pub(super) const MAX_ECHOED_TYPE: usize = 64;

/// Every `type` the decoders below know, of either connection and either
/// direction: the `event` a [`DecodeError::MissingField`] or
/// [`DecodeError::BadField`] names is one of them (its `field` one of
/// [`FIELDS`]).
pub(super) const TYPES: [&str; 10] = [
    "hello",
    "goodbye",
    "healthcheck",
    "team.join",
    "team.left",
    "team.connect",
    "error",
    "message",
    "pong",
    "ping",
];

/// The keys [`RawFrame`] names. serde rejects a frame that gives one of
/// them twice (and no other key), so a faster decoder must know them too.
pub(super) const FIELDS: [&str; 8] = [
    "type",
    "team_id",
    "ws_url",
    "text",
    "unique_id",
    "message",
    "received_message",
    "stats",
];

/// Every field any event uses, borrowed raw from the frame. Unknown fields
/// are skipped by serde without being copied.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    team_id: Option<&'a RawValue>,
    #[serde(borrow)]
    ws_url: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    unique_id: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    received_message: Option<&'a RawValue>,
    #[serde(borrow)]
    stats: Option<&'a RawValue>,
}

/// Says what valid JSON that is not an event object holds, in the peer's
/// terms rather than serde's (which would name our private struct).
fn json_shape(text: &str, error: &serde_json::Error) -> String {
    let shape = match text.trim_start().chars().next() {
        Some('[') => "an array",
        Some('"') => "a string",
        Some('t' | 'f') => "a boolean",
        Some('n') => "null",
        Some('{') => {
            // An object that still failed: a key given twice.
            let detail = error.to_string();
            return match detail.find("duplicate field") {
                Some(at) => clip(&detail[at..], 80),
                None => "an object serde rejected".to_owned(),
            };
        }
        _ => "a number",
    };
    format!("got {shape}")
}

impl<'a> RawFrame<'a> {
    /// Parses the envelope and returns it with its `type`.
    fn parse(text: &'a str) -> Result<(Self, Cow<'a, str>), DecodeError> {
        let frame: RawFrame<'a> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                DecodeError::NotObject {
                    reason: json_shape(text, &e),
                }
            } else {
                DecodeError::NotJson {
                    reason: e.to_string(),
                }
            }
        })?;
        let kind = frame
            .kind
            .and_then(borrowed_str)
            .ok_or(DecodeError::MissingType)?;
        Ok((frame, kind))
    }

    /// A required field's raw value: absent and `null` are both missing.
    fn present<'r>(
        raw: Option<&'r RawValue>,
        event: &'static str,
        field: &'static str,
    ) -> Result<&'r RawValue, DecodeError> {
        raw.filter(|raw| raw.get() != "null")
            .ok_or(DecodeError::MissingField { event, field })
    }

    fn required<T: DeserializeOwned>(
        raw: Option<&RawValue>,
        event: &'static str,
        field: &'static str,
    ) -> Result<T, DecodeError> {
        field_value(Self::present(raw, event, field)?.get(), event, field)
    }

    fn optional<T: DeserializeOwned>(
        raw: Option<&RawValue>,
        event: &'static str,
        field: &'static str,
    ) -> Result<Option<T>, DecodeError> {
        match raw {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(_) => Self::required(raw, event, field).map(Some),
        }
    }

    fn team_id(&self, event: &'static str) -> Result<TeamId, DecodeError> {
        Self::required(self.team_id, event, "team_id")
    }
}

/// A JSON string borrowed from the frame when it holds no escapes (serde's
/// own `Cow<str>` always copies), owned otherwise; `None` if not a string.
fn borrowed_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

fn unknown(kind: &str) -> DecodeError {
    DecodeError::UnknownType(clip(kind, MAX_ECHOED_TYPE))
}

/// The typed value of a field that is present, from its raw JSON text.
pub(super) fn field_value<T: DeserializeOwned>(
    raw: &str,
    event: &'static str,
    field: &'static str,
) -> Result<T, DecodeError> {
    serde_json::from_str(raw).map_err(|_| DecodeError::BadField { event, field })
}

/// A `unique_id`, from its raw JSON text: a number or a string holding one.
pub(super) fn ping_id(raw: Option<&str>) -> Result<u64, DecodeError> {
    const EVENT: &str = "pong";
    const FIELD: &str = "unique_id";
    let raw = raw.ok_or(DecodeError::MissingField {
        event: EVENT,
        field: FIELD,
    })?;
    if let Ok(id) = serde_json::from_str::<u64>(raw) {
        return Ok(id);
    }
    // 7.0 is 7: some encoders write every number as a float.
    if let Ok(f) = serde_json::from_str::<f64>(raw)
        && f >= 0.0
        && f.fract() == 0.0
        && f < u64::MAX as f64
    {
        return Ok(f as u64);
    }
    serde_json::from_str::<Cow<'_, str>>(raw)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or(DecodeError::BadField {
            event: EVENT,
            field: FIELD,
        })
}

/// Decodes a text frame received on the Global connection.
pub fn decode_global(text: &str) -> Result<GlobalServerEvent, DecodeError> {
    let (raw, kind) = RawFrame::parse(text)?;
    Ok(match kind.as_ref() {
        "hello" => GlobalServerEvent::Hello,
        "goodbye" => GlobalServerEvent::Goodbye,
        "healthcheck" => GlobalServerEvent::Healthcheck,
        "team.join" => GlobalServerEvent::TeamJoin {
            team_id: raw.team_id("team.join")?,
        },
        "team.left" => GlobalServerEvent::TeamLeft {
            team_id: raw.team_id("team.left")?,
        },
        "team.connect" => GlobalServerEvent::TeamConnect {
            team_id: raw.team_id("team.connect")?,
            ws_url: RawFrame::required(raw.ws_url, "team.connect", "ws_url")?,
        },
        "error" => GlobalServerEvent::Error {
            message: RawFrame::required(raw.message, "error", "message")?,
            received_message: RawFrame::optional(
                raw.received_message,
                "error",
                "received_message",
            )?,
            team_id: RawFrame::optional(raw.team_id, "error", "team_id")?,
        },
        other => return Err(unknown(other)),
    })
}

/// Decodes a text frame received on a team connection, borrowing from it.
pub fn decode_team_ref(text: &str) -> Result<TeamServerEventRef<'_>, DecodeError> {
    let (raw, kind) = RawFrame::parse(text)?;
    Ok(match kind.as_ref() {
        "hello" => TeamServerEventRef::Hello,
        "message" => {
            let (event, field) = ("message", "text");
            let text = RawFrame::present(raw.text, event, field)?;
            TeamServerEventRef::Message {
                text: borrowed_str(text).ok_or(DecodeError::BadField { event, field })?,
            }
        }
        "pong" => TeamServerEventRef::Pong {
            unique_id: ping_id(raw.unique_id.map(RawValue::get))?,
        },
        "team.left" => TeamServerEventRef::TeamLeft {
            team_id: raw.team_id("team.left")?,
        },
        other => return Err(unknown(other)),
    })
}

/// Decodes a text frame received on a team connection.
pub fn decode_team(text: &str) -> Result<TeamServerEvent, DecodeError> {
    decode_team_ref(text).map(TeamServerEventRef::into_owned)
}

/// Decodes a frame a client sent on the Global connection (used by servers,
/// such as the simulator).
pub fn decode_global_client(text: &str) -> Result<GlobalClientEvent, DecodeError> {
    let (raw, kind) = RawFrame::parse(text)?;
    Ok(match kind.as_ref() {
        "team.connect" => GlobalClientEvent::TeamConnect {
            team_id: raw.team_id("team.connect")?,
        },
        "healthcheck" => GlobalClientEvent::Healthcheck {
            stats: RawFrame::required(raw.stats, "healthcheck", "stats")?,
        },
        other => return Err(unknown(other)),
    })
}

/// Decodes a frame a client sent on a team connection (used by servers).
pub fn decode_team_client(text: &str) -> Result<TeamClientEvent, DecodeError> {
    let (raw, kind) = RawFrame::parse(text)?;
    Ok(match kind.as_ref() {
        "ping" => TeamClientEvent::Ping {
            unique_id: RawFrame::required(raw.unique_id, "ping", "unique_id")?,
        },
        other => return Err(unknown(other)),
    })
}
