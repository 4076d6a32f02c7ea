//! What deciding one team frame costs: the reference decoder plus a
//! `str::contains` props test (the counting path before the fast decoder),
//! against `decode_team_frame(text, false)` (the counting path now), in one
//! sitting. `cargo bench --bench decode`.
//!
//! `yardstick_mix` is the message stream the external load server sends each
//! team (1,000 frames: every 10th with `props`, a third of those escaped as
//! `pr\u006fps`, escaped quotes, `caf\u00e9`, some with `text` before
//! `type`); criterion's time for it is per 1,000 frames. The other groups are
//! one frame each.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchboard::protocol::{TeamFrame, TeamServerEventRef, decode_team_frame, reference};

/// The load server's frames, as its `build_frames(messages, props_every)`
/// writes them; returns them and how many count towards `props_count`.
fn yardstick_frames(messages: u64, props_every: u64) -> (Vec<String>, u64) {
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
fn before(frame: &str) -> (u32, u32) {
    match reference::decode_team_ref(frame) {
        Ok(TeamServerEventRef::Message { text }) => (1, u32::from(text.contains("props"))),
        other => (u32::from(black_box(other).is_ok()), 0),
    }
}

/// The counting path now.
fn after(frame: &str) -> (u32, u32) {
    match decode_team_frame(frame, false) {
        Ok(TeamFrame::Message { props, .. }) => (1, u32::from(props)),
        other => (u32::from(black_box(other).is_ok()), 0),
    }
}

fn count(frames: &[String], decode: fn(&str) -> (u32, u32)) -> (u32, u32) {
    frames.iter().fold((0, 0), |(n, p), frame| {
        let (dn, dp) = decode(black_box(frame));
        (n + dn, p + dp)
    })
}

fn decode(c: &mut Criterion) {
    let (mix, props) = yardstick_frames(1000, 10);
    // Both paths must count what the load server expects, or the numbers
    // below compare wrong things.
    for path in [before as fn(&str) -> (u32, u32), after] {
        assert_eq!(count(&mix, path), (1000, props as u32));
    }
    let mut group = c.benchmark_group("yardstick_mix");
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("before", |b| b.iter(|| count(&mix, before)));
    group.bench_function("after", |b| b.iter(|| count(&mix, after)));
    group.finish();

    let single = [
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
    let mut group = c.benchmark_group("frame");
    for (name, frame) in single {
        assert_eq!(before(frame), after(frame), "{name}");
        group.bench_with_input(BenchmarkId::new("before", name), frame, |b, f| {
            b.iter(|| before(black_box(f)))
        });
        group.bench_with_input(BenchmarkId::new("after", name), frame, |b, f| {
            b.iter(|| after(black_box(f)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
