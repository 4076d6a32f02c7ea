//! One [`NetEvent`] as one compact JSON array, and back, exactly.
//!
//! Every event is `[TAG, CONN, …]`, TAG one letter:
//!
//! | event | encoding |
//! |---|---|
//! | `Opened` | `["o",c]` |
//! | `OpenFailed` | `["f",c,"error text"]` |
//! | `Messages` | `["m",c,first,count,props]` |
//! | `Alive` | `["a",c]` |
//! | `Flow` | `["p",c,paused]` |
//! | `Quiet` | `["q",c,quiet]` |
//! | `Closed` | `["x",c,CLASS]`, or `["x",c,CLASS,detail]` for `remote_close` (the code), `stalled` and `error` (the text); CLASS is [`CloseReason::class`] |
//! | Global frame | `["g",c,{the frame as the server sends it}]` |
//! | Global bad input | `["G",c,CLASS,…]`: [`DecodeError::class`], then `binary` the length, `not_json`/`not_object`/`unknown_type` the text, `missing_field`/`bad_field` the event and field names |
//! | Team frame | `["t",c,"hello"]`, `["t",c,"pong",id]`, `["t",c,"team.left",id]` |
//! | Team bad input | `["T",c,CLASS,…]`, as `G` |
//!
//! The names a [`DecodeError`] and [`CloseReason::Stalled`] carry are
//! `&'static str` in memory; decoding maps them back to the names the
//! protocol's decoders and the transport use (`DecodeError::known_name`,
//! `CloseReason::STALLS`), and a name it does not know is an error (the
//! line is named by the caller), never a leak. The classes are read with
//! [`CloseReason::from_class`] and [`DecodeError::from_class`], a Global
//! frame with the protocol's own decoder: no name is written twice.

use std::io::Write as _;

use serde_json::Value;

use crate::bridge::{CloseReason, ConnId, Inbound, NetEvent, TeamControl};
use crate::protocol::{self, DecodeError, GlobalServerEvent, TeamId};

/// A value in a recording that is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadEvent(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, BadEvent> {
    Err(BadEvent(what.into()))
}

fn unknown_name(name: &str) -> BadEvent {
    BadEvent(format!("unknown name {name:?} (not one this build knows)"))
}

/// The decoders' own event or field name equal to `name`.
fn decoder_name(name: &str) -> Result<&'static str, BadEvent> {
    DecodeError::known_name(name).ok_or_else(|| unknown_name(name))
}

/// The transport's own stall reason equal to `what`.
fn stall(what: &str) -> Result<&'static str, BadEvent> {
    CloseReason::STALLS
        .into_iter()
        .find(|known| *known == what)
        .ok_or_else(|| unknown_name(what))
}

/// Whether every static name `event` carries is one decoding knows.
pub fn names_known(event: &NetEvent) -> bool {
    match event {
        NetEvent::Closed {
            reason: CloseReason::Stalled(what),
            ..
        } => stall(what).is_ok(),
        NetEvent::Received { frame, .. } => match &**frame {
            Inbound::Global(Err(
                DecodeError::MissingField { event, field } | DecodeError::BadField { event, field },
            ))
            | Inbound::Team(Err(
                DecodeError::MissingField { event, field } | DecodeError::BadField { event, field },
            )) => decoder_name(event).is_ok() && decoder_name(field).is_ok(),
            _ => true,
        },
        _ => true,
    }
}

/// Appends `event`'s encoding to `out`.
pub fn encode(out: &mut Vec<u8>, event: &NetEvent) {
    // Writing to a Vec cannot fail; neither can serialising a string or
    // the protocol's own event types.
    let _ = write_event(out, event);
}

fn string(out: &mut Vec<u8>, text: &str) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, text).map_err(std::io::Error::other)
}

fn write_event(out: &mut Vec<u8>, event: &NetEvent) -> std::io::Result<()> {
    match event {
        NetEvent::Opened { conn } => write!(out, "[\"o\",{}]", conn.0),
        NetEvent::OpenFailed { conn, error } => {
            write!(out, "[\"f\",{},", conn.0)?;
            string(out, error)?;
            out.write_all(b"]")
        }
        NetEvent::Messages {
            conn,
            first,
            count,
            props,
        } => write!(out, "[\"m\",{},{first},{count},{props}]", conn.0),
        NetEvent::Alive { conn } => write!(out, "[\"a\",{}]", conn.0),
        NetEvent::Flow { conn, paused } => write!(out, "[\"p\",{},{paused}]", conn.0),
        NetEvent::Quiet { conn, quiet } => write!(out, "[\"q\",{},{quiet}]", conn.0),
        NetEvent::Closed { conn, reason } => {
            write!(out, "[\"x\",{},\"{}\"", conn.0, reason.class())?;
            match reason {
                CloseReason::Remote { code } => write!(out, ",{code}")?,
                CloseReason::Stalled(what) => {
                    out.write_all(b",")?;
                    string(out, what)?;
                }
                CloseReason::Error(text) => {
                    out.write_all(b",")?;
                    string(out, text)?;
                }
                CloseReason::Local
                | CloseReason::Reset
                | CloseReason::TooLarge
                | CloseReason::Overflow
                | CloseReason::Aborted
                | CloseReason::WorkerLost => {}
            }
            out.write_all(b"]")
        }
        NetEvent::Received { conn, frame } => match &**frame {
            Inbound::Global(Ok(event)) => {
                write!(out, "[\"g\",{},", conn.0)?;
                serde_json::to_writer(&mut *out, event).map_err(std::io::Error::other)?;
                out.write_all(b"]")
            }
            Inbound::Global(Err(error)) => write_decode_error(out, "G", *conn, error),
            Inbound::Team(Ok(control)) => match control {
                TeamControl::Hello => write!(out, "[\"t\",{},\"hello\"]", conn.0),
                TeamControl::Pong { unique_id } => {
                    write!(out, "[\"t\",{},\"pong\",{unique_id}]", conn.0)
                }
                TeamControl::TeamLeft { team_id } => {
                    write!(out, "[\"t\",{},\"team.left\",{}]", conn.0, team_id.0)
                }
            },
            Inbound::Team(Err(error)) => write_decode_error(out, "T", *conn, error),
        },
    }
}

fn write_decode_error(
    out: &mut Vec<u8>,
    tag: &str,
    conn: ConnId,
    error: &DecodeError,
) -> std::io::Result<()> {
    write!(out, "[\"{tag}\",{},\"{}\"", conn.0, error.class())?;
    match error {
        DecodeError::Binary { len } => write!(out, ",{len}")?,
        DecodeError::NotJson { reason } | DecodeError::NotObject { reason } => {
            out.write_all(b",")?;
            string(out, reason)?;
        }
        DecodeError::UnknownType(kind) => {
            out.write_all(b",")?;
            string(out, kind)?;
        }
        DecodeError::MissingField { event, field } | DecodeError::BadField { event, field } => {
            out.write_all(b",")?;
            string(out, event)?;
            out.write_all(b",")?;
            string(out, field)?;
        }
        DecodeError::MissingType => {}
    }
    out.write_all(b"]")
}

/// The positional fields of one encoded event.
struct Fields<'a> {
    items: &'a [Value],
    tag: &'a str,
}

impl<'a> Fields<'a> {
    /// Exactly `n` items in all, tag and connection included.
    fn arity(&self, n: usize) -> Result<(), BadEvent> {
        if self.items.len() == n {
            Ok(())
        } else {
            bad(format!(
                "event {:?} has {} items, expected {n}",
                self.tag,
                self.items.len()
            ))
        }
    }

    fn u64(&self, i: usize, what: &str) -> Result<u64, BadEvent> {
        match self.items.get(i).and_then(Value::as_u64) {
            Some(n) => Ok(n),
            None => bad(format!(
                "event {:?}: {what} is not a whole number",
                self.tag
            )),
        }
    }

    fn u32(&self, i: usize, what: &str) -> Result<u32, BadEvent> {
        u32::try_from(self.u64(i, what)?)
            .or_else(|_| bad(format!("event {:?}: {what} is out of range", self.tag)))
    }

    fn str(&self, i: usize, what: &str) -> Result<&'a str, BadEvent> {
        match self.items.get(i).and_then(Value::as_str) {
            Some(text) => Ok(text),
            None => bad(format!("event {:?}: {what} is not a string", self.tag)),
        }
    }

    fn bool(&self, i: usize, what: &str) -> Result<bool, BadEvent> {
        match self.items.get(i).and_then(Value::as_bool) {
            Some(b) => Ok(b),
            None => bad(format!("event {:?}: {what} is not a boolean", self.tag)),
        }
    }
}

/// Decodes one encoded event.
pub fn decode(value: &Value) -> Result<NetEvent, BadEvent> {
    let Some(items) = value.as_array() else {
        return bad("an event is not an array");
    };
    let Some(tag) = items.first().and_then(Value::as_str) else {
        return bad("an event does not start with its tag");
    };
    let f = Fields { items, tag };
    let conn = ConnId(f.u64(1, "the connection")?);
    let received = |frame: Inbound| NetEvent::Received {
        conn,
        frame: Box::new(frame),
    };
    Ok(match tag {
        "o" => {
            f.arity(2)?;
            NetEvent::Opened { conn }
        }
        "f" => {
            f.arity(3)?;
            NetEvent::OpenFailed {
                conn,
                error: f.str(2, "the error")?.to_owned(),
            }
        }
        "m" => {
            f.arity(5)?;
            NetEvent::Messages {
                conn,
                first: f.u64(2, "first")?,
                count: f.u32(3, "count")?,
                props: f.u32(4, "props")?,
            }
        }
        "a" => {
            f.arity(2)?;
            NetEvent::Alive { conn }
        }
        "p" => {
            f.arity(3)?;
            NetEvent::Flow {
                conn,
                paused: f.bool(2, "paused")?,
            }
        }
        "q" => {
            f.arity(3)?;
            NetEvent::Quiet {
                conn,
                quiet: f.bool(2, "quiet")?,
            }
        }
        "x" => NetEvent::Closed {
            conn,
            reason: close_reason(&f)?,
        },
        "g" => {
            f.arity(3)?;
            received(Inbound::Global(Ok(global_event(&items[2])?)))
        }
        "G" => received(Inbound::Global(Err(decode_error(&f)?))),
        "t" => received(Inbound::Team(Ok(team_control(&f)?))),
        "T" => received(Inbound::Team(Err(decode_error(&f)?))),
        other => return bad(format!("unknown event tag {other:?}")),
    })
}

fn close_reason(f: &Fields<'_>) -> Result<CloseReason, BadEvent> {
    let class = f.str(2, "the close class")?;
    let Some(mut reason) = CloseReason::from_class(class) else {
        return bad(format!("unknown close class {class:?}"));
    };
    match &mut reason {
        CloseReason::Remote { code } => {
            f.arity(4)?;
            *code = u16::try_from(f.u64(3, "the close code")?)
                .or_else(|_| bad("the close code is out of range"))?;
        }
        CloseReason::Stalled(what) => {
            f.arity(4)?;
            *what = stall(f.str(3, "what stalled")?)?;
        }
        CloseReason::Error(text) => {
            f.arity(4)?;
            *text = f.str(3, "the error")?.to_owned();
        }
        CloseReason::Local
        | CloseReason::Reset
        | CloseReason::TooLarge
        | CloseReason::Overflow
        | CloseReason::Aborted
        | CloseReason::WorkerLost => f.arity(3)?,
    }
    Ok(reason)
}

fn decode_error(f: &Fields<'_>) -> Result<DecodeError, BadEvent> {
    let class = f.str(2, "the bad-input class")?;
    let Some(mut error) = DecodeError::from_class(class) else {
        return bad(format!("unknown bad-input class {class:?}"));
    };
    match &mut error {
        DecodeError::Binary { len } => {
            f.arity(4)?;
            *len = usize::try_from(f.u64(3, "the length")?)
                .or_else(|_| bad("the length is out of range"))?;
        }
        DecodeError::NotJson { reason } | DecodeError::NotObject { reason } => {
            f.arity(4)?;
            *reason = f.str(3, "the reason")?.to_owned();
        }
        DecodeError::UnknownType(kind) => {
            f.arity(4)?;
            *kind = f.str(3, "the type")?.to_owned();
        }
        DecodeError::MissingField { event, field } | DecodeError::BadField { event, field } => {
            f.arity(5)?;
            *event = decoder_name(f.str(3, "the event name")?)?;
            *field = decoder_name(f.str(4, "the field name")?)?;
        }
        DecodeError::MissingType => f.arity(3)?,
    }
    Ok(error)
}

fn team_control(f: &Fields<'_>) -> Result<TeamControl, BadEvent> {
    match f.str(2, "the team frame type")? {
        "hello" => f.arity(3).map(|()| TeamControl::Hello),
        "pong" => {
            f.arity(4)?;
            Ok(TeamControl::Pong {
                unique_id: f.u64(3, "the ping id")?,
            })
        }
        "team.left" => {
            f.arity(4)?;
            Ok(TeamControl::TeamLeft {
                team_id: TeamId(f.u64(3, "the team id")?),
            })
        }
        other => bad(format!("unknown team frame type {other:?}")),
    }
}

/// A Global frame as the server sent it, read by the protocol's own
/// decoder. Strict: a field the recorder would not write for the event it
/// decodes to (an unknown one, or a `null` the decoder takes for absent)
/// is corruption, since the recorder wrote this object itself.
fn global_event(value: &Value) -> Result<GlobalServerEvent, BadEvent> {
    let Some(object) = value.as_object() else {
        return bad("a Global frame is not an object");
    };
    let event = protocol::decode_global(&value.to_string())
        .or_else(|error| bad(format!("a Global frame that does not decode: {error}")))?;
    // Every field the event has came from the object: only extras can differ.
    let written = serde_json::to_value(&event).unwrap_or_default();
    if let Some(extra) = object.keys().find(|key| written.get(key).is_none()) {
        return bad(format!(
            "Global frame {:?} has a field the recorder does not write: {extra:?}",
            written.get("type").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    fn round_trip(event: NetEvent) {
        let mut out = Vec::new();
        encode(&mut out, &event);
        let text = String::from_utf8(out.clone()).expect("utf-8");
        let value: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(decode(&value), Ok(event.clone()), "through {text}");
        assert!(names_known(&event), "{event:?}");
    }

    fn received(conn: u64, frame: Inbound) -> NetEvent {
        NetEvent::Received {
            conn: ConnId(conn),
            frame: Box::new(frame),
        }
    }

    /// Every variant of every type an event holds, with awkward values.
    fn every_event() -> Vec<NetEvent> {
        let c = ConnId(u64::MAX);
        let mut events = vec![
            NetEvent::Opened { conn: ConnId(0) },
            NetEvent::OpenFailed {
                conn: c,
                error: "dns: \"no\" such host\n\u{1F600}".into(),
            },
            NetEvent::Messages {
                conn: c,
                first: u64::MAX,
                count: u32::MAX,
                props: 0,
            },
            NetEvent::Alive { conn: c },
            NetEvent::Flow {
                conn: c,
                paused: true,
            },
            NetEvent::Flow {
                conn: c,
                paused: false,
            },
            NetEvent::Quiet {
                conn: c,
                quiet: true,
            },
            NetEvent::Quiet {
                conn: c,
                quiet: false,
            },
        ];
        let reasons = [
            CloseReason::Remote { code: 1005 },
            CloseReason::Local,
            CloseReason::Reset,
            CloseReason::TooLarge,
            CloseReason::Overflow,
            CloseReason::Stalled("peer not reading"),
            CloseReason::Stalled("message left incomplete"),
            CloseReason::Aborted,
            CloseReason::Error("io: broken pipe \\ \u{0}".into()),
        ];
        events.extend(
            reasons
                .into_iter()
                .map(|reason| NetEvent::Closed { conn: c, reason }),
        );
        let globals = [
            GlobalServerEvent::Hello,
            GlobalServerEvent::Goodbye,
            GlobalServerEvent::Healthcheck,
            GlobalServerEvent::TeamJoin {
                team_id: TeamId(u64::MAX),
            },
            GlobalServerEvent::TeamLeft { team_id: TeamId(0) },
            GlobalServerEvent::TeamConnect {
                team_id: TeamId(7),
                ws_url: "http://h:1/t/7/\u{e9}".into(),
            },
            GlobalServerEvent::Error {
                message: "no".into(),
                received_message: None,
                team_id: None,
            },
            GlobalServerEvent::Error {
                message: String::new(),
                received_message: Some(serde_json::json!({
                    "z": 1.5, "type": "team.connect", "a": [null, -3, "x"], "team_id": 9
                })),
                team_id: Some(TeamId(9)),
            },
            GlobalServerEvent::Error {
                message: "as text".into(),
                received_message: Some(Value::String(r#"{"type":"team.connect"}"#.into())),
                team_id: None,
            },
        ];
        events.extend(
            globals
                .into_iter()
                .map(|event| received(1, Inbound::Global(Ok(event)))),
        );
        let errors = [
            DecodeError::Binary { len: usize::MAX },
            DecodeError::NotJson {
                reason: "EOF while parsing at line 1 column 3".into(),
            },
            DecodeError::NotObject {
                reason: "got an array".into(),
            },
            DecodeError::MissingType,
            DecodeError::UnknownType("\"weird\"".into()),
            DecodeError::MissingField {
                event: "team.connect",
                field: "ws_url",
            },
            DecodeError::BadField {
                event: "pong",
                field: "unique_id",
            },
        ];
        for error in errors {
            events.push(received(2, Inbound::Global(Err(error.clone()))));
            events.push(received(3, Inbound::Team(Err(error))));
        }
        for control in [
            TeamControl::Hello,
            TeamControl::Pong {
                unique_id: u64::MAX,
            },
            TeamControl::TeamLeft { team_id: TeamId(4) },
        ] {
            events.push(received(4, Inbound::Team(Ok(control))));
        }
        events
    }

    #[test]
    fn every_variant_round_trips_exactly() {
        for event in every_event() {
            round_trip(event);
        }
    }

    /// The names the real decoders put in their errors are all known: bad
    /// frames for every event and field they check.
    #[test]
    fn the_decoders_names_are_all_known() {
        let frames = [
            r#"{"type":"team.join"}"#,
            r#"{"type":"team.join","team_id":"x"}"#,
            r#"{"type":"team.left"}"#,
            r#"{"type":"team.left","team_id":-1}"#,
            r#"{"type":"team.connect","team_id":1}"#,
            r#"{"type":"team.connect","ws_url":"ws://h"}"#,
            r#"{"type":"team.connect","team_id":1,"ws_url":5}"#,
            r#"{"type":"error"}"#,
            r#"{"type":"error","message":1}"#,
            r#"{"type":"error","message":"m","team_id":"x"}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","text":1}"#,
            r#"{"type":"pong"}"#,
            r#"{"type":"pong","unique_id":"x"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"ping","unique_id":"x"}"#,
            r#"{"type":"healthcheck"}"#,
            r#"{"type":"healthcheck","stats":1}"#,
        ];
        let mut seen = 0;
        for frame in frames {
            let results = [
                protocol::decode_global(frame).err(),
                protocol::decode_team(frame).err(),
                protocol::decode_global_client(frame).err(),
                protocol::decode_team_client(frame).err(),
            ];
            for error in results.into_iter().flatten() {
                if matches!(
                    error,
                    DecodeError::MissingField { .. } | DecodeError::BadField { .. }
                ) {
                    seen += 1;
                    round_trip(received(1, Inbound::Team(Err(error))));
                }
            }
        }
        assert!(seen >= 15, "the bad frames exercised the decoders: {seen}");
    }

    #[test]
    fn an_unknown_name_or_shape_is_an_error_not_a_panic() {
        let cases = [
            r#"["T",1,"missing_field","team.zzz","team_id"]"#,
            r#"["x",1,"stalled","dreaming"]"#,
            r#"["x",1,"remote_close",70000]"#,
            r#"["m",1,0,5]"#,
            r#"["m",1,0,5,1,9]"#,
            r#"["m",-1,0,5,1]"#,
            r#"["q",1]"#,
            r#"{"o":1}"#,
            r#"["g",1,{"type":"team.join"}]"#,
            r#"["g",1,{"type":"hello","extra":1}]"#,
            r#"["g",1,{"type":"nope"}]"#,
            // The protocol reads a null as absent: no recorder writes one.
            r#"["g",1,{"type":"error","message":"m","received_message":null}]"#,
            r#"["g",1,{"type":"error","message":"m","team_id":null}]"#,
            r#"["t",1,"ping",3]"#,
            r#"[]"#,
        ];
        for case in cases {
            let value: Value = serde_json::from_str(case).expect("json");
            assert!(decode(&value).is_err(), "{case} should not decode");
        }
    }
}
