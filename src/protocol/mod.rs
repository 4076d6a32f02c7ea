//! Wire types for both connection kinds, and their decode/encode. Pure: no I/O.
//!
//! Every frame is a websocket text frame holding one JSON object whose `type`
//! names the event (see `docs/PROTOCOL.md`). Encoding uses serde's derive, so the
//! output is exactly `{"type":"…",…fields}`. Decoding never panics, never
//! copies a field it does not need, ignores unknown fields, and when the input
//! is bad it says precisely which event and which field were wrong, so that
//! bad input can be counted and logged by kind.
//!
//! [`reference`](mod@reference) holds the plain decoder that defines good and
//! bad input; [`decode_team_frame`] is the fast one for the team hot path.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

mod props;
pub mod reference;
mod team_frame;

pub use reference::{decode_global, decode_global_client, decode_team_client};
#[cfg(feature = "testkit")]
pub use team_frame::decode_team_frame_fast;
pub use team_frame::{TeamFrame, decode_team, decode_team_frame, decode_team_ref};

/// A team's identifier as the Global API assigns it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct TeamId(pub u64);

impl fmt::Display for TeamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Events the server sends on the Global connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum GlobalServerEvent {
    /// The Global connection is ready.
    #[serde(rename = "hello")]
    Hello,
    /// The run is over: close everything and exit.
    #[serde(rename = "goodbye")]
    Goodbye,
    /// A team joined; ask for its URL with a `team.connect`.
    #[serde(rename = "team.join")]
    TeamJoin {
        /// The team that joined.
        team_id: TeamId,
    },
    /// A team left; close its socket and never reconnect it.
    #[serde(rename = "team.left")]
    TeamLeft {
        /// The team that left.
        team_id: TeamId,
    },
    /// The answer to a client `team.connect`: where the team's socket lives.
    #[serde(rename = "team.connect")]
    TeamConnect {
        /// The team the URL belongs to.
        team_id: TeamId,
        /// Single-use websocket URL (may use `http`/`https` schemes).
        ws_url: String,
    },
    /// The server rejected something the client sent.
    #[serde(rename = "error")]
    Error {
        /// Human-readable description.
        message: String,
        /// The client frame that caused the error, as an object or as JSON text.
        #[serde(skip_serializing_if = "Option::is_none")]
        received_message: Option<serde_json::Value>,
        /// The team concerned, when the server says.
        #[serde(skip_serializing_if = "Option::is_none")]
        team_id: Option<TeamId>,
    },
    /// The server asks for the state of every team.
    #[serde(rename = "healthcheck")]
    Healthcheck,
}

impl GlobalServerEvent {
    /// If this is an `error` whose `received_message` was a `team.connect`,
    /// the team whose request failed. The message may be embedded as an object
    /// or as a JSON string; both are accepted because servers differ.
    pub fn failed_team_connect(&self) -> Option<TeamId> {
        let GlobalServerEvent::Error {
            received_message: Some(received),
            ..
        } = self
        else {
            return None;
        };
        let parsed;
        let object = match received {
            serde_json::Value::String(text) => {
                parsed = serde_json::from_str::<serde_json::Value>(text).ok()?;
                &parsed
            }
            other => other,
        };
        if object.get("type")?.as_str()? != "team.connect" {
            return None;
        }
        object.get("team_id")?.as_u64().map(TeamId)
    }
}

/// Events the client sends on the Global connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum GlobalClientEvent {
    /// Ask for a team's websocket URL.
    #[serde(rename = "team.connect")]
    TeamConnect {
        /// The team to connect.
        team_id: TeamId,
    },
    /// The reply to a server `healthcheck`.
    #[serde(rename = "healthcheck")]
    Healthcheck {
        /// One entry per team ever joined, sorted by id. Shared: a burst of
        /// requests in one tick shares one list instead of copying it.
        stats: std::sync::Arc<[TeamStats]>,
    },
}

/// One team's line in a `healthcheck` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamStats {
    /// The team.
    pub id: TeamId,
    /// True while the team's websocket is open.
    pub connected: bool,
    /// Every `message` received for the team over its whole life.
    pub message_count: u64,
    /// Those messages whose text contains `props`.
    pub props_count: u64,
}

/// Events the server sends on a team connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum TeamServerEvent {
    /// The team connection is ready.
    #[serde(rename = "hello")]
    Hello,
    /// A message for the team; counted.
    #[serde(rename = "message")]
    Message {
        /// Body of the message.
        text: String,
    },
    /// The answer to a client `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The ping's id, echoed (numbers and numeric strings are accepted).
        unique_id: u64,
    },
    /// The team left; close the socket and never reconnect.
    #[serde(rename = "team.left")]
    TeamLeft {
        /// The team that left.
        team_id: TeamId,
    },
}

impl TeamServerEvent {
    /// Whether a message text counts towards `props_count`: the exact,
    /// case-sensitive substring `props`, as the brief writes it.
    pub fn is_props(text: &str) -> bool {
        props::contains_props(text.as_bytes())
    }
}

/// Events the client sends on a team connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum TeamClientEvent {
    /// A liveness probe; the server answers with a `pong` echoing the id.
    #[serde(rename = "ping")]
    Ping {
        /// Fresh per ping.
        unique_id: u64,
    },
}

/// Why a frame is bad input. Each variant is one class of bad input, so the
/// core can count them separately and an operator can see what a peer did.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A binary frame; the protocol only uses text frames.
    #[error("binary frame of {len} bytes")]
    Binary {
        /// Its length.
        len: usize,
    },
    /// The text is not valid JSON.
    #[error("not JSON: {reason}")]
    NotJson {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// Valid JSON, but not an object (or an object with a repeated key).
    #[error("not a JSON object: {reason}")]
    NotObject {
        /// serde_json's description.
        reason: String,
    },
    /// The object has no string `type` field.
    #[error("missing or non-string `type`")]
    MissingType,
    /// A `type` this connection kind does not know.
    #[error("unknown type `{0}`")]
    UnknownType(String),
    /// A known event without one of its required fields.
    #[error("`{event}` without `{field}`")]
    MissingField {
        /// The event's `type`.
        event: &'static str,
        /// The field that is missing.
        field: &'static str,
    },
    /// A known event whose field has the wrong JSON type or range.
    #[error("`{event}` with ill-typed `{field}`")]
    BadField {
        /// The event's `type`.
        event: &'static str,
        /// The field that is wrong.
        field: &'static str,
    },
}

impl DecodeError {
    /// A short, stable name for the class of bad input, for counters and logs.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Binary { .. } => "binary",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotObject { .. } => "not_object",
            DecodeError::MissingType => "missing_type",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::BadField { .. } => "bad_field",
        }
    }

    /// The error whose [`class`](Self::class) is `class`, its detail (the
    /// length, the reason, the type, the event and field names) left empty
    /// for the caller to fill in, as a decoder of recorded errors does;
    /// `None` for a name that is no class.
    pub fn from_class(class: &str) -> Option<DecodeError> {
        Some(match class {
            "binary" => DecodeError::Binary { len: 0 },
            "not_json" => DecodeError::NotJson {
                reason: String::new(),
            },
            "not_object" => DecodeError::NotObject {
                reason: String::new(),
            },
            "missing_type" => DecodeError::MissingType,
            "unknown_type" => DecodeError::UnknownType(String::new()),
            "missing_field" => DecodeError::MissingField {
                event: "",
                field: "",
            },
            "bad_field" => DecodeError::BadField {
                event: "",
                field: "",
            },
            _ => return None,
        })
    }

    /// The decoders' own name equal to `name`, an event `type` or a field,
    /// as [`DecodeError::MissingField`] and [`DecodeError::BadField`] carry
    /// it: a decoder of recorded errors gets its `&'static str` here.
    pub(crate) fn known_name(name: &str) -> Option<&'static str> {
        reference::TYPES
            .iter()
            .chain(&reference::FIELDS)
            .find(|known| **known == name)
            .copied()
    }
}

/// Why a `ws_url` (or the Global URL) cannot be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("no scheme in {0:?}")]
    NoScheme(String),
    /// A scheme other than ws, wss, http, https.
    #[error("unsupported scheme {0:?}")]
    Scheme(String),
    /// Nothing after the scheme, or characters no URL may hold.
    #[error("malformed url {0:?}")]
    Malformed(String),
}

/// Longest URL echoed back in an error.
const MAX_ECHOED_URL: usize = 128;

/// Clips `text` to at most `max` bytes on a char boundary, so no peer can
/// make us hold or log an arbitrarily long string it sent.
pub fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Maps a URL from the server to one a websocket client can open:
/// `http` becomes `ws`, `https` becomes `wss`, `ws`/`wss` stay as given
/// (schemes are case-insensitive); anything else is an error.
pub fn normalize_ws_url(url: &str) -> Result<String, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(UrlError::NoScheme(clip(
            &crate::redact::url(url),
            MAX_ECHOED_URL,
        )));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(UrlError::Scheme(clip(scheme, MAX_ECHOED_URL))),
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let bad_char = |c: char| c.is_whitespace() || c.is_control();
    if host_end == 0 || rest.chars().any(bad_char) {
        return Err(UrlError::Malformed(clip(
            &crate::redact::url(url),
            MAX_ECHOED_URL,
        )));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// A team server event whose message text is borrowed from the frame when
/// it can be: what the transport decodes, so that counting a message
/// allocates nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum TeamServerEventRef<'a> {
    /// See [`TeamServerEvent::Hello`].
    Hello,
    /// See [`TeamServerEvent::Message`].
    Message {
        /// Body of the message.
        text: Cow<'a, str>,
    },
    /// See [`TeamServerEvent::Pong`].
    Pong {
        /// The ping's id.
        unique_id: u64,
    },
    /// See [`TeamServerEvent::TeamLeft`].
    TeamLeft {
        /// The team that left.
        team_id: TeamId,
    },
}

impl TeamServerEventRef<'_> {
    /// The owned event.
    pub fn into_owned(self) -> TeamServerEvent {
        match self {
            TeamServerEventRef::Hello => TeamServerEvent::Hello,
            TeamServerEventRef::Message { text } => TeamServerEvent::Message {
                text: text.into_owned(),
            },
            TeamServerEventRef::Pong { unique_id } => TeamServerEvent::Pong { unique_id },
            TeamServerEventRef::TeamLeft { team_id } => TeamServerEvent::TeamLeft { team_id },
        }
    }
}

/// Encodes any event as the JSON text of one frame.
pub fn encode<T: Serialize>(event: &T) -> String {
    // Serialising these types cannot fail: every map key is a string and no
    // field has a fallible Serialize impl.
    serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::reference::MAX_ECHOED_TYPE;
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_every_global_server_event() {
        assert_eq!(
            decode_global(r#"{"type":"hello"}"#),
            Ok(GlobalServerEvent::Hello)
        );
        assert_eq!(
            decode_global(r#"{"type":"goodbye"}"#),
            Ok(GlobalServerEvent::Goodbye)
        );
        assert_eq!(
            decode_global(r#"{"type":"healthcheck"}"#),
            Ok(GlobalServerEvent::Healthcheck)
        );
        assert_eq!(
            decode_global(r#"{"type":"team.join","team_id":1}"#),
            Ok(GlobalServerEvent::TeamJoin { team_id: TeamId(1) })
        );
        assert_eq!(
            decode_global(r#"{"type":"team.left","team_id":2}"#),
            Ok(GlobalServerEvent::TeamLeft { team_id: TeamId(2) })
        );
        // The brief's own example, with its http:// URL.
        assert_eq!(
            decode_global(
                r#"{"type": "team.connect", "team_id": 1, "ws_url": "http://localhost:8080/connect/to/team"}"#
            ),
            Ok(GlobalServerEvent::TeamConnect {
                team_id: TeamId(1),
                ws_url: "http://localhost:8080/connect/to/team".into()
            })
        );
        assert_eq!(
            decode_global(r#"{"type":"error","message":"nope"}"#),
            Ok(GlobalServerEvent::Error {
                message: "nope".into(),
                received_message: None,
                team_id: None
            })
        );
    }

    #[test]
    fn decodes_every_team_server_event() {
        assert_eq!(
            decode_team(r#"{"type":"hello"}"#),
            Ok(TeamServerEvent::Hello)
        );
        assert_eq!(
            decode_team(r#"{"type":"message","text":"some props here"}"#),
            Ok(TeamServerEvent::Message {
                text: "some props here".into()
            })
        );
        assert_eq!(
            decode_team(r#"{"type":"pong","unique_id":7}"#),
            Ok(TeamServerEvent::Pong { unique_id: 7 })
        );
        assert_eq!(
            decode_team(r#"{"type":"pong","unique_id":"7"}"#),
            Ok(TeamServerEvent::Pong { unique_id: 7 })
        );
        assert_eq!(
            decode_team(r#"{"type":"pong","unique_id":7.0}"#),
            Ok(TeamServerEvent::Pong { unique_id: 7 })
        );
        assert_eq!(
            decode_team(r#"{"type":"team.left","team_id":1}"#),
            Ok(TeamServerEvent::TeamLeft { team_id: TeamId(1) })
        );
    }

    #[test]
    fn plain_message_text_is_borrowed_and_escaped_text_owned() {
        let plain = decode_team_ref(r#"{"type":"message","text":"props here"}"#);
        assert!(matches!(
            plain,
            Ok(TeamServerEventRef::Message {
                text: Cow::Borrowed("props here")
            })
        ));
        let escaped = decode_team_ref(r#"{"type":"message","text":"a\nb"}"#);
        assert!(matches!(
            escaped,
            Ok(TeamServerEventRef::Message { text: Cow::Owned(ref t) }) if t == "a\nb"
        ));
    }

    #[test]
    fn escaped_text_is_unescaped_before_counting() {
        let Ok(TeamServerEvent::Message { text }) =
            decode_team(r#"{"type":"message","text":"pr\u006fps \"q\""}"#)
        else {
            panic!("should decode");
        };
        assert_eq!(text, "props \"q\"");
        assert!(TeamServerEvent::is_props(&text));
        assert!(!TeamServerEvent::is_props("PROPS and prop s"));
    }

    #[test]
    fn not_an_object_is_described_in_json_terms() {
        let reason = |text: &str| match decode_global(text) {
            Err(DecodeError::NotObject { reason }) => reason,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(reason("[1,2,3]"), "got an array");
        assert_eq!(reason("\"hi\""), "got a string");
        assert_eq!(reason("42"), "got a number");
        assert_eq!(reason("null"), "got null");
        assert_eq!(reason("true"), "got a boolean");
        assert!(reason(r#"{"type":"a","type":"b"}"#).starts_with("duplicate field `type`"));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            decode_global(r#"{"extra":{"deep":[1,2]},"type":"team.join","team_id":3,"x":null}"#),
            Ok(GlobalServerEvent::TeamJoin { team_id: TeamId(3) })
        );
    }

    #[test]
    fn error_names_the_failed_team_connect_in_either_form() {
        let as_object = decode_global(
            r#"{"type":"error","message":"no such team","received_message":{"type":"team.connect","team_id":9}}"#,
        )
        .unwrap();
        assert_eq!(as_object.failed_team_connect(), Some(TeamId(9)));
        let as_text = decode_global(
            r#"{"type":"error","message":"x","received_message":"{\"type\":\"team.connect\",\"team_id\":4}"}"#,
        )
        .unwrap();
        assert_eq!(as_text.failed_team_connect(), Some(TeamId(4)));
        let other = decode_global(
            r#"{"type":"error","message":"x","received_message":{"type":"healthcheck"}}"#,
        )
        .unwrap();
        assert_eq!(other.failed_team_connect(), None);
        let garbage =
            decode_global(r#"{"type":"error","message":"x","received_message":"{oops"}"#).unwrap();
        assert_eq!(garbage.failed_team_connect(), None);
    }

    #[test]
    fn every_class_of_bad_input_is_named() {
        use DecodeError::*;
        let cases: &[(&str, DecodeError)] = &[
            (
                "",
                NotJson {
                    reason: String::new(),
                },
            ),
            (
                "{not json",
                NotJson {
                    reason: String::new(),
                },
            ),
            (
                r#"{"type":"hello"} trailing"#,
                NotJson {
                    reason: String::new(),
                },
            ),
            (
                "[1,2]",
                NotObject {
                    reason: String::new(),
                },
            ),
            (
                "42",
                NotObject {
                    reason: String::new(),
                },
            ),
            (
                r#"{"type":"hello","type":"x"}"#,
                NotObject {
                    reason: String::new(),
                },
            ),
            ("{}", MissingType),
            (r#"{"type":7}"#, MissingType),
            (r#"{"type":"bogus"}"#, UnknownType("bogus".into())),
            (
                r#"{"type":"team.join"}"#,
                MissingField {
                    event: "team.join",
                    field: "team_id",
                },
            ),
            (
                r#"{"type":"team.join","team_id":null}"#,
                MissingField {
                    event: "team.join",
                    field: "team_id",
                },
            ),
            (
                r#"{"type":"team.join","team_id":"1"}"#,
                BadField {
                    event: "team.join",
                    field: "team_id",
                },
            ),
            (
                r#"{"type":"team.join","team_id":-1}"#,
                BadField {
                    event: "team.join",
                    field: "team_id",
                },
            ),
            (
                r#"{"type":"team.join","team_id":1.5}"#,
                BadField {
                    event: "team.join",
                    field: "team_id",
                },
            ),
            (
                r#"{"type":"team.connect","team_id":1}"#,
                MissingField {
                    event: "team.connect",
                    field: "ws_url",
                },
            ),
            (
                r#"{"type":"team.connect","team_id":1,"ws_url":5}"#,
                BadField {
                    event: "team.connect",
                    field: "ws_url",
                },
            ),
            (
                r#"{"type":"error"}"#,
                MissingField {
                    event: "error",
                    field: "message",
                },
            ),
            (
                r#"{"type":"error","message":"m","team_id":"x"}"#,
                BadField {
                    event: "error",
                    field: "team_id",
                },
            ),
        ];
        for (text, want) in cases {
            let got = decode_global(text).expect_err(text);
            assert_eq!(got.class(), want.class(), "{text}: {got}");
            if !matches!(want, NotJson { .. } | NotObject { .. }) {
                assert_eq!(&got, want, "{text}");
            }
        }
        let team_cases: &[(&str, DecodeError)] = &[
            (
                r#"{"type":"message"}"#,
                MissingField {
                    event: "message",
                    field: "text",
                },
            ),
            (
                r#"{"type":"message","text":3}"#,
                BadField {
                    event: "message",
                    field: "text",
                },
            ),
            (
                r#"{"type":"message","text":["props"]}"#,
                BadField {
                    event: "message",
                    field: "text",
                },
            ),
            (
                r#"{"type":"pong"}"#,
                MissingField {
                    event: "pong",
                    field: "unique_id",
                },
            ),
            (
                r#"{"type":"pong","unique_id":"seven"}"#,
                BadField {
                    event: "pong",
                    field: "unique_id",
                },
            ),
            (
                r#"{"type":"pong","unique_id":{}}"#,
                BadField {
                    event: "pong",
                    field: "unique_id",
                },
            ),
            // Global-only events are unknown on a team connection.
            (
                r#"{"type":"team.join","team_id":1}"#,
                UnknownType("team.join".into()),
            ),
            (r#"{"type":"goodbye"}"#, UnknownType("goodbye".into())),
        ];
        for (text, want) in team_cases {
            assert_eq!(&decode_team(text).expect_err(text), want, "{text}");
        }
        // Team-only events are unknown on Global.
        assert_eq!(
            decode_global(r#"{"type":"message","text":"hi"}"#),
            Err(UnknownType("message".into()))
        );
    }

    #[test]
    fn ws_urls_are_normalised_per_the_protocol() {
        let ok = [
            (
                "http://localhost:8080/connect/to/team",
                "ws://localhost:8080/connect/to/team",
            ),
            ("HTTPS://h/x?y=1", "wss://h/x?y=1"),
            ("ws://127.0.0.1:9/t", "ws://127.0.0.1:9/t"),
            ("wss://h", "wss://h"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_ws_url(input).as_deref(), Ok(want), "{input}");
        }
        assert!(matches!(
            normalize_ws_url("ftp://h/x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            normalize_ws_url("localhost:8080"),
            Err(UrlError::NoScheme(_))
        ));
        assert!(matches!(
            normalize_ws_url("ws:///path"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            normalize_ws_url("ws://h/a b"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(normalize_ws_url(""), Err(UrlError::NoScheme(_))));
    }

    #[test]
    fn unknown_type_is_truncated_on_a_char_boundary() {
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        let Err(DecodeError::UnknownType(kept)) = decode_team(&long) else {
            panic!("unknown type expected");
        };
        assert!(kept.len() <= MAX_ECHOED_TYPE);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn encodes_exactly_the_documented_json() {
        let connect = encode(&GlobalClientEvent::TeamConnect { team_id: TeamId(1) });
        assert_eq!(connect, r#"{"type":"team.connect","team_id":1}"#);
        let ping = encode(&TeamClientEvent::Ping { unique_id: 7 });
        assert_eq!(ping, r#"{"type":"ping","unique_id":7}"#);
        let health = encode(&GlobalClientEvent::Healthcheck {
            stats: vec![TeamStats {
                id: TeamId(1),
                connected: true,
                message_count: 100,
                props_count: 10,
            }]
            .into(),
        });
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&health).unwrap(),
            json!({"type":"healthcheck","stats":[{"id":1,"connected":true,"message_count":100,"props_count":10}]})
        );
    }

    #[test]
    fn server_events_round_trip_through_encode_and_decode() {
        let global = [
            GlobalServerEvent::Hello,
            GlobalServerEvent::Goodbye,
            GlobalServerEvent::Healthcheck,
            GlobalServerEvent::TeamJoin { team_id: TeamId(5) },
            GlobalServerEvent::TeamLeft { team_id: TeamId(5) },
            GlobalServerEvent::TeamConnect {
                team_id: TeamId(5),
                ws_url: "ws://h/t/5".into(),
            },
            GlobalServerEvent::Error {
                message: "bad".into(),
                received_message: Some(json!({"type":"team.connect","team_id":5})),
                team_id: Some(TeamId(5)),
            },
        ];
        for event in global {
            assert_eq!(decode_global(&encode(&event)), Ok(event));
        }
        let team = [
            TeamServerEvent::Hello,
            TeamServerEvent::Message {
                text: "props ✓".into(),
            },
            TeamServerEvent::Pong { unique_id: 99 },
            TeamServerEvent::TeamLeft { team_id: TeamId(5) },
        ];
        for event in team {
            assert_eq!(decode_team(&encode(&event)), Ok(event));
        }
        let health = GlobalClientEvent::Healthcheck { stats: [].into() };
        assert_eq!(decode_global_client(&encode(&health)), Ok(health));
        let ping = TeamClientEvent::Ping { unique_id: 3 };
        assert_eq!(decode_team_client(&encode(&ping)), Ok(ping));
    }
}
