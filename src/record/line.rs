//! The lines of a recording: a segment's header, a step, a run of idle
//! steps, and the end. See the [module doc](super) for the format.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codec;
use crate::bridge::NetEvent;
use crate::core::Config;
use crate::core::{AdoptedSocket, SavedTeam, Snapshot};

/// The format version this build writes.
pub const VERSION: u64 = 3;

/// The oldest version this build reads: version 1 named the step count
/// `tick` in headers and end lines, version 2 had no adopted sockets nor
/// late readings (see the [module doc](super)); their lines are otherwise
/// version 3's.
pub const OLDEST_READ: u64 = 1;

/// The key that makes a line a segment header (its value is the version).
const MAGIC: &str = "switchboard_recording";

/// The most idle steps one line holds: the recorder starts a new line past
/// it (11 minutes of steps at a 10 ms tick; a year idle costs about 50,000 lines of
/// 30 bytes), and replay refuses a longer run, so a line's replay time is
/// bounded (65,536 core steps).
pub const MAX_IDLE_RUN: u64 = 1 << 16;

/// The latest core time a step may reach, in ms: a century. No recorded
/// run lasts that long, and the core's ms arithmetic (a time plus a
/// timer) stays far from overflow; a line past it is refused.
pub const MAX_NOW_MS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// The most JSON values a step line may hold: far above a recorded step
/// (`max_events_per_step`, 65,536 by default, of a few values each) and a
/// bound on what parsing one builds (at most 32 bytes a value, 128 MiB),
/// whatever the line's length. Counted before anything is built.
pub const MAX_STEP_VALUES: usize = 1 << 22;

/// The first line of every segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The format version.
    #[serde(rename = "switchboard_recording")]
    pub version: u64,
    /// Which segment of the recording this is; 0 holds the start.
    pub segment: u64,
    /// Names the recording, so segments of another run are never chained.
    pub run: String,
    /// The run's configuration (segment 0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Config>,
    /// The run's seed (segment 0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The teams restored from a state file before the first step
    /// (segment 0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Vec<SavedTeam>>,
    /// The sockets a cluster's new leader adopted before the first step
    /// (segment 0 only, when there were any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Vec<AdoptedSocket>>,
    /// The core's step count when the segment began (later segments only).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "tick")]
    pub step: Option<u64>,
    /// The core's time, in ms, when the segment began (later segments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<u64>,
}

/// The last line of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Whether every step of the run is in the recording.
    pub end: Completeness,
    /// The core's step count at the end (after the last recorded step).
    #[serde(alias = "tick")]
    pub step: u64,
    /// The core's time at the end, in ms.
    pub now: u64,
    /// A local stop was asked after the last step, with no step after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
    /// How the run ended (complete recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_end: Option<String>,
    /// [`digest`] of the live run's final snapshot (complete recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_fnv1a: Option<String>,
    /// Why the recording stopped early (incomplete recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether a recording holds the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    /// Every step, to the end of the run.
    Complete,
    /// The recording stopped before the run did.
    Incomplete,
}

/// One step with input: the `step`th, it brought the core to `now`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The core's step count after it.
    pub step: u64,
    /// The core's time after the step, in ms.
    pub now: u64,
    /// A local stop was asked just before the step.
    pub stop: bool,
    /// The events the step ingested, in order.
    pub events: Vec<NetEvent>,
}

/// `count` steps in a row with no input, each advancing time equally; the
/// last was the `step`th and brought the core to `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle {
    /// The core's step count after the last of them.
    pub step: u64,
    /// The core's time after the last of them, in ms.
    pub now: u64,
    /// How many.
    pub count: u64,
}

/// Readings of ended sockets a cluster's leader took between two steps
/// (`Core::late_reports`), before the next step line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Late {
    /// The readings, in the order taken.
    pub late: Vec<AdoptedSocket>,
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A segment's first line.
    Header(Box<Header>),
    /// A step with input.
    Step(Step),
    /// Steps with none.
    Idle(Idle),
    /// Late readings the core took between two steps (a cluster's leader).
    Late(Late),
    /// The last line.
    End(End),
}

/// Appends `value` as one JSON line.
pub fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    // Our own types: every key a string, nothing fallible.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

/// Appends a step line.
pub fn write_step(out: &mut Vec<u8>, step: u64, now: u64, stop: bool, events: &[NetEvent]) {
    let _ = write!(out, "[{step},{now}");
    if stop {
        out.extend_from_slice(b",\"stop\"");
    }
    for event in events {
        out.push(b',');
        codec::encode(out, event);
    }
    out.extend_from_slice(b"]\n");
}

/// Appends an idle line.
pub fn write_idle(out: &mut Vec<u8>, idle: Idle) {
    let _ = writeln!(out, "[{},{},{}]", idle.step, idle.now, idle.count);
}

/// Which kind of object line this is; every other key is skipped unread.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "switchboard_recording", borrow, default)]
    magic: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    end: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    late: Option<&'a serde_json::value::RawValue>,
}

/// Whether `bytes` claims to be a segment header (an object with the
/// format's key), whatever else may be wrong with it.
pub fn claims_header(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Kind<'_>>(bytes).is_ok_and(|kind| kind.magic.is_some())
}

/// Parses one line (without its newline). What it builds is bounded by
/// the line's length (headers and end lines are read straight into their
/// types) and, for a step line, by [`MAX_STEP_VALUES`].
pub fn parse(bytes: &[u8]) -> Result<Line, String> {
    let not_json = |e: serde_json::Error| format!("not a JSON value: {e}");
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            if values_over(bytes, MAX_STEP_VALUES) {
                return Err(format!(
                    "a step line of more than {MAX_STEP_VALUES} JSON values: no recorder writes one"
                ));
            }
            match serde_json::from_slice(bytes).map_err(not_json)? {
                Value::Array(items) => parse_step(&items),
                _ => Err("neither a step, a header nor an end line".into()),
            }
        }
        Some(b'{') => {
            let kind: Kind<'_> = serde_json::from_slice(bytes).map_err(not_json)?;
            if let Some(magic) = kind.magic {
                match serde_json::from_str::<u64>(magic.get()) {
                    Ok(OLDEST_READ..=VERSION) => {}
                    Ok(other) => {
                        return Err(format!(
                            "format version {other}; this build reads versions {OLDEST_READ} to {VERSION}"
                        ));
                    }
                    Err(_) => return Err(format!("`{MAGIC}` is not a version number")),
                }
                serde_json::from_slice(bytes)
                    .map(|header| Line::Header(Box::new(header)))
                    .map_err(|e| format!("bad segment header: {e}"))
            } else if kind.end.is_some() {
                serde_json::from_slice(bytes)
                    .map(Line::End)
                    .map_err(|e| format!("bad end line: {e}"))
            } else if kind.late.is_some() {
                serde_json::from_slice(bytes)
                    .map(Line::Late)
                    .map_err(|e| format!("bad late-readings line: {e}"))
            } else {
                Err("neither a step, a header nor an end line".into())
            }
        }
        _ => match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(e) => Err(not_json(e)),
            Ok(_) => Err("neither a step, a header nor an end line".into()),
        },
    }
}

/// Whether the JSON text `bytes` holds more than `max` values, counted
/// without parsing: every value but the first follows a `,` or `:` or
/// opens a container. Stops counting at `max`.
fn values_over(bytes: &[u8], max: usize) -> bool {
    let (mut values, mut in_string, mut escaped) = (1usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b':' | b'[' | b'{' => {
                values += 1;
                if values > max {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

fn parse_step(items: &[Value]) -> Result<Line, String> {
    let number = |i: usize, what: &str| {
        items
            .get(i)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("a step line's {what} is not a whole number"))
    };
    let step = number(0, "step")?;
    let now = number(1, "time")?;
    if now > MAX_NOW_MS {
        return Err(format!(
            "time {now}ms is past a century ({MAX_NOW_MS}ms): no recorder writes it"
        ));
    }
    match items.get(2) {
        None => Err("a step line with no input and no idle count".into()),
        Some(Value::Number(_)) => {
            if items.len() != 3 {
                return Err("an idle line has more than three items".into());
            }
            let count = number(2, "idle count")?;
            if count == 0 {
                return Err("an idle line of zero steps".into());
            }
            if count > MAX_IDLE_RUN {
                return Err(format!(
                    "an idle line of {count} steps: a recorder writes at most {MAX_IDLE_RUN} a line"
                ));
            }
            Ok(Line::Idle(Idle { step, now, count }))
        }
        Some(_) => {
            let stop = items[2] == Value::String("stop".into());
            let events = items[2 + usize::from(stop)..]
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    codec::decode(item).map_err(|e| format!("event {} of the step: {e}", i + 1))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !stop && events.is_empty() {
                return Err("a step line with no input".into());
            }
            Ok(Line::Step(Step {
                step,
                now,
                stop,
                events,
            }))
        }
    }
}

/// A short, stable fingerprint of a snapshot: FNV-1a (64 bit) of its JSON,
/// as hex. Stable across builds and platforms (unlike std's hasher), so a
/// replay on another machine can check it reached the live run's state.
pub fn digest(snapshot: &Snapshot) -> String {
    let json = serde_json::to_vec(snapshot).unwrap_or_default();
    format!("{:016x}", crate::fnv::fnv1a_64(&json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ConnId;

    fn line(out: &[u8]) -> &[u8] {
        out.strip_suffix(b"\n").expect("ends with a newline")
    }

    #[test]
    fn steps_and_idle_runs_round_trip() {
        let events = vec![
            NetEvent::Opened { conn: ConnId(1) },
            NetEvent::Alive { conn: ConnId(1) },
        ];
        for stop in [false, true] {
            let mut out = Vec::new();
            write_step(&mut out, 3, 30, stop, &events);
            assert_eq!(
                parse(line(&out)),
                Ok(Line::Step(Step {
                    step: 3,
                    now: 30,
                    stop,
                    events: events.clone()
                }))
            );
        }
        let mut out = Vec::new();
        write_step(&mut out, 4, 40, true, &[]);
        assert_eq!(out, b"[4,40,\"stop\"]\n");
        assert!(matches!(parse(line(&out)), Ok(Line::Step(s)) if s.stop && s.events.is_empty()));
        let idle = Idle {
            step: 9,
            now: 90,
            count: 5,
        };
        let mut out = Vec::new();
        write_idle(&mut out, idle);
        assert_eq!(out, b"[9,90,5]\n");
        assert_eq!(parse(line(&out)), Ok(Line::Idle(idle)));
    }

    #[test]
    fn headers_and_ends_round_trip() {
        let header = Header {
            version: VERSION,
            segment: 0,
            run: "r".into(),
            config: Some(Config::default()),
            seed: Some(u64::MAX),
            adopted: Some(vec![AdoptedSocket {
                team: crate::protocol::TeamId(3),
                conn: crate::bridge::ConnId(9),
                messages: 12,
                props: 2,
                open: true,
            }]),
            restored: Some(vec![SavedTeam {
                id: crate::protocol::TeamId(3),
                joined: true,
                message_count: 10,
                props_count: 2,
                socket: None,
                unreported: Vec::new(),
            }]),
            step: None,
            now: None,
        };
        let mut out = Vec::new();
        write_json(&mut out, &header);
        assert_eq!(parse(line(&out)), Ok(Line::Header(Box::new(header))));
        let end = End {
            end: Completeness::Complete,
            step: 5,
            now: 50,
            stop: true,
            run_end: Some("Forced".into()),
            snapshot_fnv1a: Some("00ff".into()),
            reason: None,
        };
        let mut out = Vec::new();
        write_json(&mut out, &end);
        assert_eq!(parse(line(&out)), Ok(Line::End(end)));
        let late = Late {
            late: vec![AdoptedSocket {
                team: crate::protocol::TeamId(4),
                conn: crate::bridge::ConnId(7),
                messages: 3,
                props: 0,
                open: false,
            }],
        };
        let mut out = Vec::new();
        write_json(&mut out, &late);
        assert_eq!(parse(line(&out)), Ok(Line::Late(late)));
    }

    /// Version 1 named the step count `tick`; its headers and end lines
    /// are read as they were written.
    #[test]
    fn version_1_lines_are_read() {
        let header = r#"{"switchboard_recording":1,"segment":2,"run":"r","tick":7,"now":70}"#;
        match parse(header.as_bytes()) {
            Ok(Line::Header(h)) => assert_eq!((h.version, h.step, h.now), (1, Some(7), Some(70))),
            other => panic!("{other:?}"),
        }
        let end = r#"{"end":"incomplete","tick":7,"now":70,"reason":"r"}"#;
        assert!(matches!(parse(end.as_bytes()), Ok(Line::End(e)) if e.step == 7));
        // One name or the other, not both.
        let both = r#"{"end":"incomplete","tick":7,"step":7,"now":70}"#;
        assert!(parse(both.as_bytes()).is_err());
    }

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert!(!values_over(b"[1,2,3]", 4));
        assert!(values_over(b"[1,2,3]", 3));
        assert!(!values_over(br#"[1,"a,b:[{\",c",{"k":2}]"#, 6));
        assert!(values_over(br#"[1,"a,b:[{\",c",{"k":2}]"#, 5));
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        for (text, says) in [
            ("[1,10]", "no input"),
            ("[1,10,0]", "zero steps"),
            ("[1,10,2,3]", "more than three"),
            ("[1,-10,2]", "time"),
            ("[1,10,\"stop\",[\"q\",1]]", "event 1"),
            (
                "{\"switchboard_recording\":4,\"segment\":0,\"run\":\"r\"}",
                "format version 4; this build reads versions 1 to 3",
            ),
            ("{\"late\":[{\"team\":1}]}", "bad late-readings line"),
            ("{\"end\":\"maybe\",\"step\":1,\"now\":1}", "bad end line"),
            ("{\"x\":1}", "neither"),
            ("[1,10,65537]", "at most 65536 a line"),
            ("[1,18446744073709551615,1]", "past a century"),
            ("[1,10,1,2,3]", "more than three"),
            ("7", "neither"),
            ("[1,10,[\"o\"", "not a JSON value"),
        ] {
            let error = parse(text.as_bytes()).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
