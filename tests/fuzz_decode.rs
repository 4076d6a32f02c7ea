//! Fuzzing the decoders (issue 9): no input panics one, the fast team
//! decoder agrees with the reference decoder on every input (and decides
//! most good frames itself, so agreement is tested, not given), bytes that
//! are not UTF-8 never reach a decoder, and no input makes a decoder
//! allocate more than a small multiple of its own length.
//!
//! `cargo test --test fuzz_decode` runs a few hundred cases per property from
//! a fixed seed. A long run, with a seed of your choice:
//! `PROPTEST_CASES=N PROPTEST_RNG_SEED=S cargo test --release --test fuzz_decode -- --nocapture`
//! (each property prints how many cases it ran, and how long it took).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestRunner};
use switchboard::protocol::{
    DecodeError, TeamFrame, TeamServerEventRef, decode_global, decode_global_client, decode_team,
    decode_team_client, decode_team_frame, decode_team_frame_fast, decode_team_ref, reference,
};

mod common;
mod decode {
    pub mod yardstick;
}

use common::script::{answer_connect, connect_one};
use serde_json::json;
use switchboard::testkit::client::start;
use switchboard::testkit::server::{DEADLINE, Server};

// ---------------------------------------------------------------------------
// Allocation accounting

/// The system allocator, counting this thread's live heap bytes and their
/// peak, so that a test can see what one decode allocates.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// `grown` bytes become live, then `freed` bytes stop being live.
fn note(grown: usize, freed: usize) {
    // try_with: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        let high = live.get() + grown as isize;
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(high)));
        live.set(high - freed as isize);
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread locals, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note(layout.size(), 0);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note(layout.size(), 0);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        note(0, layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as a move: old and new block both live for a moment.
            note(new_size, layout.size());
        }
        new
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f`; returns its result and the most heap it held at once, in bytes
/// beyond what the thread held before (its result included).
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, usize::try_from(peak - base).unwrap_or(0))
}

/// The bound on a team decoder's peak heap for a frame of `len` bytes: the
/// reference decoder may hold an unescaped key, `type` or `text`, its
/// nesting stack, or an error message that quotes the input, each at most
/// the frame's length and grown by doubling. Measured worst (the nesting
/// stack of `[[[[…`, realloc counted as a move): 3·len + 1 KiB.
fn team_bound(len: usize) -> usize {
    4 * len + 4096
}

/// The bound for the Global decoders: an `error` keeps its
/// `received_message` as a `serde_json::Value`, 32 bytes per JSON value
/// however short its text (`[0,0,…]` is two bytes a value), in vectors grown
/// by doubling. Measured worst (that very shape): 48·len + 1 KiB.
fn global_bound(len: usize) -> usize {
    64 * len + 4096
}

// ---------------------------------------------------------------------------
// The checks every input goes through

/// What the fast decoder must say, from what the reference decoder says.
/// The props test here is `str::contains`, not the crate's classifier.
fn expected(event: TeamServerEventRef<'_>, keep_text: bool) -> TeamFrame<'_> {
    match event {
        TeamServerEventRef::Message { text } => TeamFrame::Message {
            props: text.contains("props"),
            text: keep_text.then_some(text),
        },
        TeamServerEventRef::Hello => TeamFrame::Hello,
        TeamServerEventRef::Pong { unique_id } => TeamFrame::Pong { unique_id },
        TeamServerEventRef::TeamLeft { team_id } => TeamFrame::TeamLeft { team_id },
    }
}

const CLASSES: [&str; 7] = [
    "binary",
    "not_json",
    "not_object",
    "missing_type",
    "unknown_type",
    "missing_field",
    "bad_field",
];

fn typed(error: &DecodeError) -> Result<(), TestCaseError> {
    prop_assert!(CLASSES.contains(&error.class()), "{error:?}");
    prop_assert!(!error.to_string().is_empty());
    if let DecodeError::UnknownType(kind) = error {
        prop_assert!(kind.len() <= 64, "echoed type of {} bytes", kind.len());
    }
    Ok(())
}

thread_local! {
    /// Inputs checked on this thread, and of those, how many the fast path
    /// decided itself: where it declines, the reference decides and
    /// agreement holds by construction, so only its hits test it.
    static FAST: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// (checked, fast-path hits) on this thread since the last call.
fn take_fast_share() -> (u64, u64) {
    FAST.with(|fast| fast.replace((0, 0)))
}

/// Every decoder on `text`: no panic (a panic fails the case), every error
/// typed, the fast team decoder equal to the reference one, heap bounded.
fn check(text: &str) -> Result<(), TestCaseError> {
    let hit = decode_team_frame_fast(text, false).is_some();
    FAST.with(|fast| {
        let (checked, hits) = fast.get();
        fast.set((checked + 1, hits + u64::from(hit)));
    });
    let len = text.len();
    for keep_text in [false, true] {
        let (got, peak) = peak_heap(|| decode_team_frame(text, keep_text));
        held("decode_team_frame", peak, len, team_bound(len))?;
        let want = reference::decode_team_ref(text).map(|event| expected(event, keep_text));
        prop_assert_eq!(&got, &want, "keep_text {} on {:?}", keep_text, text);
        if let Err(error) = &got {
            typed(error)?;
        }
    }
    let (team, peak) = peak_heap(|| decode_team(text));
    held("decode_team", peak, len, team_bound(len))?;
    prop_assert_eq!(
        &team,
        &reference::decode_team(text),
        "decode_team on {:?}",
        text
    );
    prop_assert_eq!(
        decode_team_ref(text),
        reference::decode_team_ref(text),
        "decode_team_ref on {:?}",
        text
    );
    let (global, peak) = peak_heap(|| decode_global(text));
    held("decode_global", peak, len, global_bound(len))?;
    let (global_client, peak) = peak_heap(|| decode_global_client(text));
    held("decode_global_client", peak, len, global_bound(len))?;
    let (team_client, peak) = peak_heap(|| decode_team_client(text));
    held("decode_team_client", peak, len, team_bound(len))?;
    for error in [global.err(), global_client.err(), team_client.err()]
        .iter()
        .flatten()
    {
        typed(error)?;
    }
    Ok(())
}

/// The worst heap each decoder held, as (bytes beyond 1 KiB) / frame length,
/// with the peak and the length: printed after each run, for the bound's
/// margin to be seen rather than assumed.
static WORST: Mutex<BTreeMap<&str, (f64, usize, usize)>> = Mutex::new(BTreeMap::new());

fn held(decoder: &'static str, peak: usize, len: usize, bound: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        peak <= bound,
        "{decoder} held {peak} bytes for a {len}-byte frame"
    );
    let ratio = peak.saturating_sub(1024) as f64 / len.max(1) as f64;
    let mut worst = WORST.lock().unwrap_or_else(|poison| poison.into_inner());
    let entry = worst.entry(decoder).or_insert((-1.0, 0, 0));
    if ratio > entry.0 {
        *entry = (ratio, peak, len);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators: JSON as text, so that it can be what serde_json's Value
// cannot hold (repeated keys, numbers in any spelling, lone surrogates,
// any whitespace), and sometimes not JSON at all.

fn ws() -> impl Strategy<Value = &'static str> {
    select(&["", "", "", " ", "\n", "\t", "\r\n  ", " \t "][..])
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "7",
    "1.0",
    "7.0",
    "-1",
    "1.5",
    "0.0",
    "-0.0",
    "1e0",
    "1E2",
    "1e+2",
    "2.5e-3",
    "1e400",
    "-1e400",
    "1e-400",
    "1e19",
    "1.8446744073709552e19",
    "18446744073709551615",
    "18446744073709551616",
    "18446744073709551615.0",
    "-9223372036854775808",
    "9007199254740993",
    "123456789012345678901234567890",
];

/// Numbers JSON does not allow.
const BAD_NUMBERS: &[&str] = &[
    "01",
    "1.",
    ".5",
    "+1",
    "1e",
    "-",
    "0x10",
    "NaN",
    "-Infinity",
];

fn number(bad: bool) -> BoxedStrategy<String> {
    let good = prop_oneof![
        6 => select(NUMBERS).prop_map(String::from),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        // Mapped, not filtered: a long run would hit proptest's reject limit.
        1 => any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "0.5".into() }),
    ];
    spoiled(bad, good, select(BAD_NUMBERS).prop_map(String::from))
}

/// `good`, or in a bad frame sometimes `spoiler`.
fn spoiled<T: fmt::Debug + Clone + 'static>(
    bad: bool,
    good: impl Strategy<Value = T> + 'static,
    spoiler: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if bad {
        prop_oneof![8 => good, 1 => spoiler].boxed()
    } else {
        good.boxed()
    }
}

/// Pieces of JSON string content, escapes written as JSON writes them.
const PIECES: &[&str] = &[
    "props",
    "Props",
    "PROPS",
    r"pr\u006fps",
    r"pr\u006Fps",
    r"\u0070rops",
    r"prop\u0073",
    "p",
    "r",
    "o",
    "s",
    "prop",
    "rops",
    " ",
    "hello",
    r#"\""#,
    r"\\",
    r"\/",
    r"\b\f\n\r\t",
    r"\u00e9",
    "é",
    "😀",
    r"\ud83d\ude00",
    r"\ud800",
    r"\udc00",
    r"\ud83d",
    r"\ud83d\u0041",
    r"\ud83d\ud83d",
    "\u{feff}",
    r"\ufeff",
    "\u{ffff}",
    r"\uffff",
    "\u{200f}",
    "\u{202e}",
    "\u{200e}",
    r"\u0000",
    "\u{7f}",
    r"\u001f",
];

/// String content JSON does not allow.
const BAD_PIECES: &[&str] = &[
    "\u{1}", "\n", "\\", r"\x", r"\u12", r"\uZZZZ", r"\U0041", "\"",
];

fn string_lit(bad: bool) -> BoxedStrategy<String> {
    let piece = prop_oneof![
        16 => select(PIECES).prop_map(String::from),
        4 => "[a-zA-Z0-9 .,!?'()-]{0,12}",
        2 => any::<char>().prop_map(|c| match c {
            '"' | '\\' | '\0'..='\x1f' => String::from("x"),
            c => String::from(c),
        }),
        // Long enough to cross the decoder's 256-byte props window.
        1 => "[a-z]{200,300}",
    ];
    let piece = spoiled(bad, piece, select(BAD_PIECES).prop_map(String::from));
    vec(piece, 0..8)
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()))
        .boxed()
}

/// Keys: every key the protocol uses, near misses, and any string.
const KEYS: &[&str] = &[
    r#""type""#,
    r#""text""#,
    r#""unique_id""#,
    r#""team_id""#,
    r#""ws_url""#,
    r#""message""#,
    r#""received_message""#,
    r#""stats""#,
    r#""extra""#,
    r#""id""#,
    r#""Type""#,
    r#""type ""#,
    r#""typ\u0065""#,
    r#""\u0074ype""#,
    r#""t\u0065xt""#,
    r#""""#,
];

fn key(bad: bool) -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(KEYS).prop_map(String::from),
        1 => string_lit(bad),
    ]
    .boxed()
}

fn scalar(bad: bool) -> BoxedStrategy<String> {
    prop_oneof![
        select(&["null", "true", "false"][..]).prop_map(String::from),
        number(bad),
        string_lit(bad),
    ]
    .boxed()
}

fn json_value(bad: bool) -> BoxedStrategy<String> {
    scalar(bad)
        .prop_recursive(4, 24, 5, move |inner| {
            prop_oneof![
                vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<_> =
                        items.iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
                    format!("[{}]", items.join(","))
                }),
                vec((ws(), key(bad), ws(), ws(), inner, ws()), 0..5).prop_map(|fields| {
                    let fields: Vec<_> = fields
                        .iter()
                        .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
        .boxed()
}

/// A value nested past the fast decoder's walk (64) and serde_json's
/// recursion limit (128): arrays and objects mixed as `shape`'s bits say.
fn deep(bad: bool) -> BoxedStrategy<String> {
    (1usize..=300, scalar(bad), any::<u64>())
        .prop_map(|(depth, leaf, shape)| {
            let array = |level: usize| shape >> (level % 64) & 1 == 1;
            let mut text = String::new();
            for level in 0..depth {
                text.push_str(if array(level) { "[" } else { r#"{"k":"# });
            }
            text.push_str(&leaf);
            for level in (0..depth).rev() {
                text.push(if array(level) { ']' } else { '}' });
            }
            text
        })
        .boxed()
}

const TYPES: &[&str] = &[
    "hello",
    "message",
    "pong",
    "team.left",
    "team.join",
    "team.connect",
    "goodbye",
    "healthcheck",
    "error",
    "ping",
    "bogus",
    "",
    "MESSAGE",
    "Hello",
    r"mess\u0061ge",
    "hello ",
    r"message\u0000",
    "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
];

fn type_value(bad: bool) -> BoxedStrategy<String> {
    prop_oneof![
        8 => select(TYPES).prop_map(|kind| format!("\"{kind}\"")),
        1 => json_value(bad),
        1 => string_lit(bad),
    ]
    .boxed()
}

const ID_STRINGS: &[&str] = &[
    r#""7""#,
    r#"" 7 ""#,
    r#""+7""#,
    r#""seven""#,
    r#""18446744073709551616""#,
    r#""-1""#,
    r#""7.0""#,
    r#""\u0037""#,
    r#""""#,
    "null",
];

fn id_value(bad: bool) -> BoxedStrategy<String> {
    prop_oneof![
        4 => number(bad),
        2 => select(ID_STRINGS).prop_map(String::from),
        1 => json_value(bad),
    ]
    .boxed()
}

fn field(bad: bool) -> BoxedStrategy<(String, String)> {
    prop_oneof![
        1 => type_value(bad).prop_map(|v| (r#""type""#.to_owned(), v)),
        1 => prop_oneof![6 => string_lit(bad), 1 => json_value(bad)]
            .prop_map(|v| (r#""text""#.to_owned(), v)),
        1 => id_value(bad).prop_map(|v| (r#""unique_id""#.to_owned(), v)),
        1 => id_value(bad).prop_map(|v| (r#""team_id""#.to_owned(), v)),
        4 => ("[a-z_]{1,8}".prop_map(|k| format!("\"{k}\"")), json_value(bad)),
        3 => (key(bad), json_value(bad)),
        1 => (key(bad), deep(bad)),
    ]
    .boxed()
}

fn object(bad: bool) -> BoxedStrategy<String> {
    // Mostly a team event with the field it needs, so that most frames are
    // good; then fields of any kind, and sometimes one of them twice.
    let event = prop_oneof![
        Just(("message", r#""text""#, string_lit(bad))),
        Just(("pong", r#""unique_id""#, id_value(bad))),
        Just(("team.left", r#""team_id""#, id_value(bad))),
        Just(("hello", r#""extra""#, json_value(bad))),
    ]
    .prop_flat_map(|(kind, field, value)| (Just(kind), Just(field), value));
    (
        prop::option::weighted(0.85, event),
        prop::bool::weighted(0.9),
        vec(field(bad), 0..3),
        prop::option::weighted(0.1, any::<Index>()),
    )
        .prop_map(|(event, needed, mut fields, repeat)| {
            if let Some((kind, field, value)) = event {
                fields.push((r#""type""#.to_owned(), format!("\"{kind}\"")));
                if needed {
                    fields.push((field.to_owned(), value));
                }
            }
            if let Some(at) = repeat
                && !fields.is_empty()
            {
                let twice = fields[at.index(fields.len())].clone();
                fields.push(twice);
            }
            fields
        })
        .prop_shuffle()
        .prop_flat_map(|fields| {
            let n = fields.len();
            (Just(fields), vec(ws(), 4 * n + 1))
        })
        .prop_map(|(fields, spaces)| {
            let mut spaces = spaces.into_iter();
            let mut space = || spaces.next().unwrap_or("");
            let fields: Vec<_> = fields
                .iter()
                .map(|(k, v)| format!("{}{k}{}:{}{v}{}", space(), space(), space(), space()))
                .collect();
            format!("{{{}{}}}", fields.join(","), space())
        })
        .boxed()
}

/// What the reference decoder also reads as an event: an array of eight.
fn array_of_eight(bad: bool) -> BoxedStrategy<String> {
    (type_value(bad), vec(json_value(bad), 6..=8))
        .prop_map(|(kind, rest)| format!("[{kind},{}]", rest.join(",")))
        .boxed()
}

/// Characters that make edits land on JSON's grammar.
const EDIT_CHARS: &[char] = &[
    '{', '}', '[', ']', '"', ':', ',', '\\', 'u', '0', '7', 'e', '-', '.', ' ', 'n', '\u{1}',
    '\u{feff}', 'é',
];

#[derive(Clone, Debug)]
enum Edit {
    Delete(Index),
    Insert(Index, char),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), select(EDIT_CHARS)).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// A char boundary at or before `at`'s share of `text`.
fn boundary(text: &str, at: &Index) -> usize {
    let mut at = at.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, edit: &Edit) {
    match edit {
        Edit::Delete(at) => {
            let at = boundary(text, at);
            if at < text.len() {
                text.remove(at);
            }
        }
        Edit::Insert(at, c) => {
            let at = boundary(text, at);
            text.insert(at, *c);
        }
        Edit::Truncate(at) => {
            let at = boundary(text, at);
            text.truncate(at);
        }
    }
}

/// A frame; a bad one (one in six) may hold bad numbers and strings
/// anywhere, which spoil the whole frame.
fn frame() -> BoxedStrategy<String> {
    let body = prop::bool::weighted(5.0 / 6.0).prop_flat_map(|good| {
        let bad = !good;
        prop_oneof![
            12 => object(bad),
            1 => json_value(bad),
            1 => deep(bad),
            1 => array_of_eight(bad),
        ]
    });
    (
        prop_oneof![30 => Just(""), 3 => select(&[" ", "\n\t"][..]), 1 => Just("\u{feff}")],
        body,
        prop_oneof![
            30 => Just(""),
            3 => select(&[" ", "\r\n"][..]),
            2 => select(&["x", ",", "}", "{}", "\0"][..]),
        ],
        prop::option::weighted(0.1, vec(edit(), 1..4)),
    )
        .prop_map(|(prefix, body, suffix, edits)| {
            let mut text = format!("{prefix}{body}{suffix}");
            for edit in edits.iter().flatten() {
                apply(&mut text, edit);
            }
            text
        })
        .boxed()
}

/// Message frames the fast decoder reads whole: plain keys, a good text,
/// extra fields nested less than 64 deep.
fn good_message() -> BoxedStrategy<String> {
    let text = vec(
        prop_oneof![
            8 => select(PIECES).prop_map(|piece| {
                let unpaired = [r"\ud800", r"\udc00", r"\ud83d", r"\ud83d\u0041", r"\ud83d\ud83d"];
                String::from(if unpaired.contains(&piece) { "x" } else { piece })
            }),
            2 => "[a-zA-Z0-9 .,!?'()-]{0,12}",
            1 => "[a-z]{200,300}",
        ],
        0..8,
    )
    .prop_map(|pieces| format!("\"{}\"", pieces.concat()));
    (
        text,
        vec(("[a-z_]{1,8}", json_value(false)), 0..3),
        any::<bool>(),
    )
        .prop_map(|(text, extra, text_first)| {
            let mut fields = vec![
                r#""type":"message""#.to_owned(),
                format!(r#""text":{text}"#),
            ];
            if text_first {
                fields.swap(0, 1);
            }
            // Unknown keys only: a known one might repeat.
            for (key, value) in extra {
                fields.push(format!(r#""x_{key}":{value}"#));
            }
            format!("{{{}}}", fields.join(","))
        })
        .boxed()
}

// ---------------------------------------------------------------------------
// Running

/// proptest's configuration from the environment (`PROPTEST_CASES`, …), but
/// from a fixed seed unless `PROPTEST_RNG_SEED` names one: a plain
/// `cargo test` is deterministic.
fn config() -> Config {
    let mut config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz_decode.proptest-regressions",
        ))),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5EED_DEC0);
    }
    config
}

/// Runs `test` on `cases` values of `strategy` (or `PROPTEST_CASES`).
fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut config = config();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    let mut runner = TestRunner::new(config.clone());
    let cases = Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&strategy, |value| {
        cases.set(cases.get() + 1);
        test(value)
    });
    eprintln!(
        "{name}: {} cases (seed {}) in {:.1?}",
        cases.get(),
        config.rng_seed,
        started.elapsed()
    );
    let worst = WORST.lock().unwrap_or_else(|poison| poison.into_inner());
    for (decoder, (ratio, peak, len)) in worst.iter() {
        eprintln!(
            "  worst heap so far, {decoder}: 1 KiB + {ratio:.2} x len ({peak} bytes for {len})"
        );
    }
    drop(worst);
    if let Err(failure) = result {
        panic!("{name}: {failure}");
    }
}

#[test]
fn any_text_is_decoded_without_panic_and_alike() {
    let json_chars = vec(
        select(
            &[
                "{",
                "}",
                "[",
                "]",
                "\"",
                ":",
                ",",
                "\\",
                "u",
                "0",
                "7",
                "e",
                "-",
                ".",
                " ",
                "null",
                "true",
                r#""type""#,
                r#""text""#,
                r#""message""#,
                r#""hello""#,
                "props",
            ][..],
        ),
        0..48,
    )
    .prop_map(|parts| parts.concat());
    let strategy = prop_oneof![
        any::<String>(),
        vec(any::<char>(), 0..64).prop_map(String::from_iter),
        json_chars,
    ];
    run("any text", 4096, strategy, |text| check(&text));
}

#[test]
fn generated_json_is_decoded_alike() {
    // How many inputs were good team frames, and how many bad by class: a
    // differential test that only ever compares errors has no teeth.
    let verdicts = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let _ = take_fast_share();
    run("generated json", 4096, frame(), |text| {
        let verdict = match decode_team_frame(&text, false) {
            Ok(TeamFrame::Message { .. }) => "ok_message",
            Ok(TeamFrame::Hello) => "ok_hello",
            Ok(TeamFrame::Pong { .. }) => "ok_pong",
            Ok(TeamFrame::TeamLeft { .. }) => "ok_team_left",
            Err(error) => error.class(),
        };
        *verdicts.borrow_mut().entry(verdict).or_insert(0u64) += 1;
        check(&text)
    });
    let verdicts = verdicts.into_inner();
    let (checked, hits) = take_fast_share();
    eprintln!("generated json verdicts: {verdicts:?}; fast path decided {hits} of {checked}");
    let good: u64 = verdicts
        .iter()
        .filter(|(verdict, _)| verdict.starts_with("ok_"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        good * 8 >= verdicts.values().sum::<u64>(),
        "too few good frames"
    );
    // The differential test has teeth only where the fast path answers.
    assert!(
        hits * FAST_SHARE_OF_GOOD.1 >= good * FAST_SHARE_OF_GOOD.0,
        "fast path decided {hits} of {checked} inputs, {good} of them good"
    );
}

/// The least share of good generated frames the fast path must decide
/// itself (numerator, denominator): 814 of 891 (91%) from the fixed seed.
const FAST_SHARE_OF_GOOD: (u64, u64) = (3, 4);

/// Text frames as bytes, some not UTF-8: the websocket layer's check, which
/// the transport relies on to fail such a connection (see
/// `tests/e2e_hostile.rs`), refuses exactly those; the rest reach the
/// decoders and pass every check, as does the lossy repair of the rest.
#[test]
fn bytes_that_are_not_utf8_are_refused_before_the_decoders() {
    // A lone continuation byte, an overlong '/', a surrogate, past
    // U+10FFFF, never valid, a sequence cut short.
    const SPOILS: &[&[u8]] = &[
        &[0x80],
        &[0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xf5, 0x80, 0x80, 0x80],
        &[0xff],
        &[0xe2, 0x82],
    ];
    let spoil = select(SPOILS);
    let strategy = (
        prop_oneof![frame(), good_message()],
        vec((any::<Index>(), spoil), 0..3),
    )
        .prop_map(|(text, spoils)| {
            let mut bytes = text.into_bytes();
            for (at, bad) in spoils {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, bad.iter().copied());
            }
            bytes
        });
    let invalid = Cell::new(0u64);
    run("bytes", 2048, strategy, |bytes| {
        let utf8 = std::str::from_utf8(&bytes);
        let websocket =
            tokio_tungstenite::tungstenite::Utf8Bytes::try_from(bytes::Bytes::from(bytes.clone()));
        prop_assert_eq!(utf8.is_ok(), websocket.is_ok(), "{:?}", bytes);
        match utf8 {
            Ok(text) => check(text),
            Err(_) => {
                invalid.set(invalid.get() + 1);
                check(&String::from_utf8_lossy(&bytes))
            }
        }
    });
    eprintln!("bytes: {} inputs not UTF-8", invalid.get());
    assert!(
        invalid.get() >= 512,
        "only {} inputs not UTF-8",
        invalid.get()
    );
}

/// A whole, unmasked text frame (server to client) holding `body`,
/// whatever its bytes.
fn text_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match body.len() {
        len @ 0..=125 => frame.push(len as u8),
        len => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(body);
    frame
}

/// End to end, over real sockets: a text frame that is not UTF-8 fails
/// the team's socket (RFC 6455; docs/PROTOCOL.md): the client ends it
/// (with close code 1007, or no close frame), asks for the team's URL
/// again and reconnects, and counts nothing of that frame, not even its
/// `props`. The messages before it on the same write are counted, those
/// on the next socket too, each once; the bad frame is not bad input (the
/// socket is gone, not the frame counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_drops_the_socket_and_counts_nothing() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, mut team) = connect_one(&mut server, 1).await;
    // One write: two good messages, the bad frame (a lone continuation
    // byte and an overlong '/' inside a message with props), and a good
    // message the client must never read.
    let mut bytes = Vec::new();
    bytes.extend(text_frame(br#"{"type":"message","text":"one"}"#));
    bytes.extend(text_frame(br#"{"type":"message","text":"props two"}"#));
    bytes.extend(text_frame(
        b"{\"type\":\"message\",\"text\":\"props \x80\xc0\xaf\"}",
    ));
    bytes.extend(text_frame(
        br#"{"type":"message","text":"props never read"}"#,
    ));
    team.send_bytes(bytes);
    let code = team.closed_by_client().await;
    assert!(matches!(code, None | Some(1007)), "closed with {code:?}");
    let second = answer_connect(&mut server, &mut global, 1).await;
    second.send(json!({"type": "message", "text": "props three"}));
    let started = std::time::Instant::now();
    loop {
        global.send(json!({"type": "healthcheck"}));
        let reply = global.expect("healthcheck").await;
        let line = &reply["stats"][0];
        if line["message_count"] == 3 && line["connected"] == true {
            assert_eq!(line["props_count"], 2, "{reply}");
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never counted: {reply}");
    }
    global.send(json!({"type": "goodbye"}));
    let outcome = client.finish().await;
    let t = &outcome.snapshot.teams[0];
    assert_eq!(
        (t.counters.message_count, t.counters.props_count),
        (3, 2),
        "{t:?}"
    );
    assert_eq!((t.health.connects, t.health.reconnects), (2, 1), "{t:?}");
    assert_eq!(t.health.bad_frames, 0, "{t:?}");
    let why = format!("{:?}", t.history);
    assert!(why.to_lowercase().contains("utf-8"), "{why}");
    drop(second);
}

/// The checks `benches/decode.rs` makes before timing, which `cargo test`
/// would otherwise never run.
#[test]
fn the_decode_benchmarks_checks_hold() {
    decode::yardstick::check();
}

#[test]
fn counting_a_message_allocates_nothing() {
    // The props finder is built on first use; that is once per process.
    let _ = decode_team_frame(r#"{"type":"message","text":"props"}"#, false);
    run("good message", 1024, good_message(), |text| {
        let (frame, peak) = peak_heap(|| decode_team_frame(&text, false));
        prop_assert!(
            matches!(frame, Ok(TeamFrame::Message { text: None, .. })),
            "{frame:?} for {text:?}"
        );
        prop_assert_eq!(peak, 0, "allocated for {:?}", text);
        prop_assert!(
            decode_team_frame_fast(&text, false).is_some(),
            "the fast path declined {:?}",
            text
        );
        check(&text)
    });
}

/// Large hostile shapes, each near a quarter of the 1 MiB frame cap: the
/// heap a decoder holds stays within its bound.
#[test]
fn hostile_shapes_stay_within_the_heap_bound() {
    const N: usize = 64 * 1024;
    let shapes = [
        "[".repeat(4 * N),
        format!(r#"{{"type":"hello","x":{}}}"#, "[".repeat(4 * N)),
        format!(r#"{{"type":"hello","x":[{}0]}}"#, "0,".repeat(2 * N)),
        format!(
            r#"{{"type":"message","text":"{}"}}"#,
            r"\u00e9".repeat(N / 2)
        ),
        format!(r#"{{"type":"message","text":"{}"}}"#, r"\n".repeat(2 * N)),
        format!(
            r#"{{"t\u0065xt":"{}","type":"message"}}"#,
            "a".repeat(4 * N)
        ),
        format!(r#"{{"type":"{}"}}"#, r"\u00e9".repeat(N / 2)),
        format!(r#""{}""#, "a".repeat(4 * N)),
        format!(
            r#"{{"type":"pong","unique_id":"{}"}}"#,
            r"\u0037".repeat(N / 2)
        ),
        format!(
            r#"{{"type":"error","message":"m","received_message":[{}0]}}"#,
            "0,".repeat(2 * N)
        ),
        format!(
            r#"{{"type":"error","message":"m","received_message":{{{}"z":0}}}}"#,
            (0..N / 4)
                .map(|i| format!(r#""{i:x}":0,"#))
                .collect::<String>()
        ),
        format!(
            r#"{{"type":"healthcheck","stats":[{}]}}"#,
            vec![r#"{"id":1,"connected":true,"message_count":1,"props_count":1}"#; N / 64]
                .join(",")
        ),
    ];
    for shape in &shapes {
        let result = check(shape);
        assert!(result.is_ok(), "{:.80}…: {result:?}", shape);
    }
}
