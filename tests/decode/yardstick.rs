//! The decode benchmark's inputs and the checks it makes before timing
//! them, shared by `benches/decode.rs` and `tests/fuzz_decode.rs` so that
//! `cargo test` runs the checks too (benches are not run by it).

use std::hint::black_box;
use switchboard::protocol::{TeamFrame, TeamServerEventRef, decode_team_frame, reference};

/// The load server's frames, as its `build_frames(messages, props_every)`
/// writes them; returns them and how many count towards `props_count`.
pub fn yardstick_frames(messages: u64, props_every: u64) -> (Vec<String>, u64) {
    let mut props = 0;
    let frames = (1..=messages)
        .map(|i| {
            if props_every > 0 && i % props_every == 0 {
                props += 1;
                match (i / props_every) % 3 {
                    0 => format!(
                        r#"{{"type":"message","text":"props to the whole team, message {i}"}}"#
                    ),
                    1 => format!(
                        r#"{{"text":"great \"launch\" today - props! ({i})","type":"message"}}"#
                    ),
                    _ => format!(
                        r#"{{"type":"message","text":"pr\u006fps, spelled with a JSON escape ({i})"}}"#
                    ),
                }
            } else if i % 7 == 0 {
                format!(r#"{{"type":"message","text":"Props and PROPS are not counted ({i})"}}"#)
            } else if i % 5 == 0 {
                format!(r#"{{"text":"a prop is not plural, caf\u00e9 ({i})","type":"message"}}"#)
            } else {
                format!(r#"{{"type":"message","text":"hello from the load server, message {i}"}}"#)
            }
        })
        .collect();
    (frames, props)
}

/// The counting path before: reference decode, then the old props test.
pub fn before(frame: &str) -> (u32, u32) {
    match reference::decode_team_ref(frame) {
        Ok(TeamServerEventRef::Message { text }) => (1, u32::from(text.contains("props"))),
        other => (u32::from(black_box(other).is_ok()), 0),
    }
}

/// The counting path now.
pub fn after(frame: &str) -> (u32, u32) {
    match decode_team_frame(frame, false) {
        Ok(TeamFrame::Message { props, .. }) => (1, u32::from(props)),
        other => (u32::from(black_box(other).is_ok()), 0),
    }
}

pub fn count(frames: &[String], decode: fn(&str) -> (u32, u32)) -> (u32, u32) {
    frames.iter().fold((0, 0), |(n, p), frame| {
        let (dn, dp) = decode(black_box(frame));
        (n + dn, p + dp)
    })
}

/// One frame of each shape the benchmark times alone.
pub const SINGLE: [(&str, &str); 6] = [
    (
        "plain",
        r#"{"type":"message","text":"hello from the load server, message 123"}"#,
    ),
    (
        "props",
        r#"{"type":"message","text":"props to the whole team, message 120"}"#,
    ),
    (
        "escaped_props",
        r#"{"type":"message","text":"pr\u006fps, spelled with a JSON escape (130)"}"#,
    ),
    (
        "text_first_escaped",
        r#"{"text":"a prop is not plural, caf\u00e9 (5)","type":"message"}"#,
    ),
    ("pong", r#"{"type":"pong","unique_id":1234567}"#),
    ("hello", r#"{"type":"hello"}"#),
];

/// What the benchmark asserts before it times anything: both counting
/// paths count the load server's mix as it expects, and agree on every
/// single frame; otherwise its numbers compare different things.
pub fn check() {
    let (mix, props) = yardstick_frames(1000, 10);
    for (name, path) in [
        ("before", before as fn(&str) -> (u32, u32)),
        ("after", after),
    ] {
        assert_eq!(
            count(&mix, path),
            (1000, props as u32),
            "{name}: (messages, props) counted in the load server's mix"
        );
    }
    for (name, frame) in SINGLE {
        assert_eq!(before(frame), after(frame), "{name}");
    }
}
