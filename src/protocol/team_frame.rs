//! The team-frame decoder on the hot path: one pass over the frame's bytes,
//! the `props` test run on the unescaped text as it is read, and no
//! allocation unless the caller asks to keep a text that holds escapes.
//!
//! It accepts only frames it can read completely: a JSON object in a subset
//! of JSON's grammar (keys without escapes, nesting at most [`MAX_DEPTH`]
//! deep, a plain `type` string naming a team event). Anything else, bad
//! input included, goes to the [`reference`](mod@reference) decoder, which
//! gives the verdict and the typed error. So its answer is, by construction,
//! the reference decoder's whenever it declines, and `tests/fuzz_decode.rs`
//! checks that it is the same whenever it does not.

use std::borrow::Cow;

use super::props::{OVERLAP, contains_props};
use super::reference::{self, FIELDS, field_value, ping_id};
use super::{DecodeError, TeamId, TeamServerEvent, TeamServerEventRef};

/// A frame received on a team connection, as the counting path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamFrame<'a> {
    /// A `message`.
    Message {
        /// Whether its unescaped text contains `props`.
        props: bool,
        /// Its unescaped text, when asked for (borrowed from the frame when
        /// it holds no escapes).
        text: Option<Cow<'a, str>>,
    },
    /// See [`TeamServerEvent::Hello`].
    Hello,
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

/// Decodes a text frame received on a team connection. With `keep_text`
/// false a `message` costs no allocation: only whether it counts towards
/// `props_count` is kept. Accepts and rejects exactly what the
/// [`reference`](mod@reference) decoder does, with the same errors.
pub fn decode_team_frame(text: &str, keep_text: bool) -> Result<TeamFrame<'_>, DecodeError> {
    if let Some(frame) = fast(text, keep_text) {
        return Ok(frame);
    }
    reference::decode_team_ref(text).map(|event| match event {
        TeamServerEventRef::Message { text } => TeamFrame::Message {
            props: contains_props(text.as_bytes()),
            text: keep_text.then_some(text),
        },
        TeamServerEventRef::Hello => TeamFrame::Hello,
        TeamServerEventRef::Pong { unique_id } => TeamFrame::Pong { unique_id },
        TeamServerEventRef::TeamLeft { team_id } => TeamFrame::TeamLeft { team_id },
    })
}

/// The fast path alone: the frame it read whole, or `None` where
/// [`decode_team_frame`] hands the frame to the reference decoder. Only
/// with the `testkit` feature, so that `tests/fuzz_decode.rs` can measure
/// how much of its input the fast path decides (where it declines,
/// agreement holds by construction); not part of the public API.
#[cfg(feature = "testkit")]
pub fn decode_team_frame_fast(text: &str, keep_text: bool) -> Option<TeamFrame<'_>> {
    fast(text, keep_text)
}

/// Decodes a text frame received on a team connection, borrowing from it.
pub fn decode_team_ref(text: &str) -> Result<TeamServerEventRef<'_>, DecodeError> {
    decode_team_frame(text, true).map(|frame| match frame {
        // Kept, since it was asked for; the default is never taken.
        TeamFrame::Message { text, .. } => TeamServerEventRef::Message {
            text: text.unwrap_or_default(),
        },
        TeamFrame::Hello => TeamServerEventRef::Hello,
        TeamFrame::Pong { unique_id } => TeamServerEventRef::Pong { unique_id },
        TeamFrame::TeamLeft { team_id } => TeamServerEventRef::TeamLeft { team_id },
    })
}

/// Decodes a text frame received on a team connection.
pub fn decode_team(text: &str) -> Result<TeamServerEvent, DecodeError> {
    decode_team_ref(text).map(TeamServerEventRef::into_owned)
}

/// Deepest nesting the fast path walks in a field it skips; deeper frames
/// go to the reference decoder, which needs no stack for them.
const MAX_DEPTH: usize = 64;

/// The team events the fast path decodes.
#[derive(Clone, Copy)]
enum Kind {
    Hello,
    Message,
    Pong,
    TeamLeft,
}

impl Kind {
    fn named(name: &str) -> Option<Kind> {
        Some(match name {
            "hello" => Kind::Hello,
            "message" => Kind::Message,
            "pong" => Kind::Pong,
            "team.left" => Kind::TeamLeft,
            _ => return None,
        })
    }
}

/// The frame if the fast path can read it whole and it is a good team frame;
/// `None` leaves the verdict to the reference decoder.
fn fast(text: &str, keep_text: bool) -> Option<TeamFrame<'_>> {
    let mut at = Cursor { text, at: 0 };
    let mut seen = 0u8;
    let mut kind = None;
    let mut message = None;
    let (mut unique_id, mut team_id) = (None, None);
    at.skip_ws();
    at.eat(b'{')?;
    at.skip_ws();
    // `{}` has no `type`: the reference decoder names that.
    loop {
        at.eat(b'"')?;
        let key = at.plain_str()?;
        at.skip_ws();
        at.eat(b':')?;
        at.skip_ws();
        if let Some(index) = FIELDS.iter().position(|field| *field == key) {
            let bit = 1 << index;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        match key {
            "type" => {
                at.eat(b'"')?;
                kind = Some(Kind::named(at.plain_str()?)?);
            }
            "text" if at.peek() == Some(b'"') => {
                at.at += 1;
                message = Some(at.text(keep_text)?);
            }
            "unique_id" => unique_id = Some(at.value_span()?),
            "team_id" => team_id = Some(at.value_span()?),
            _ => at.skip_value(0)?,
        }
        at.skip_ws();
        match at.next()? {
            b',' => at.skip_ws(),
            b'}' => break,
            _ => return None,
        }
    }
    at.skip_ws();
    if at.at != text.len() {
        return None;
    }
    Some(match kind? {
        Kind::Message => {
            let (props, text) = message?;
            TeamFrame::Message { props, text }
        }
        Kind::Hello => TeamFrame::Hello,
        Kind::Pong => TeamFrame::Pong {
            unique_id: ping_id(unique_id).ok()?,
        },
        Kind::TeamLeft => TeamFrame::TeamLeft {
            team_id: field_value(team_id?, "team.left", "team_id").ok()?,
        },
    })
}

/// A position in the frame. Every method that returns `Option` returns
/// `None` for input the fast path does not accept, and may then leave the
/// position anywhere.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// JSON's whitespace, and only it.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Where the next quote, backslash or control character is.
    fn next_special(&self) -> Option<usize> {
        special(&self.text.as_bytes()[self.at..]).map(|offset| self.at + offset)
    }

    /// The rest of a string without escapes, after its opening quote.
    fn plain_str(&mut self) -> Option<&'a str> {
        let start = self.at;
        let end = self.next_special()?;
        self.at = end;
        self.eat(b'"')?;
        // Both ends sit next to an ASCII quote: char boundaries.
        self.text.get(start..end)
    }

    /// The rest of a string value after its opening quote, unescaped:
    /// whether it contains `props`, and the text itself if `keep`.
    fn text(&mut self, keep: bool) -> Option<(bool, Option<Cow<'a, str>>)> {
        let start = self.at;
        let end = self.next_special()?;
        if self.text.as_bytes()[end] == b'"' {
            self.at = end + 1;
            let text = self.text.get(start..end)?;
            return Some((contains_props(text.as_bytes()), keep.then_some(text.into())));
        }
        if keep {
            let mut text = String::with_capacity(end - start + 16);
            self.unescape(&mut text)?;
            Some((contains_props(text.as_bytes()), Some(text.into())))
        } else {
            let mut window = PropsWindow::default();
            self.unescape(&mut window)?;
            Some((window.found(), None))
        }
    }

    /// Reads the rest of a string after its opening quote into `out`,
    /// unescaped as serde_json does when it reads a Rust string: surrogate
    /// escapes must pair.
    fn unescape(&mut self, out: &mut impl Unescaped) -> Option<()> {
        loop {
            let end = self.next_special()?;
            out.push_str(self.text.get(self.at..end)?);
            self.at = end;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => out.push_char(self.escape()?),
                _ => return None,
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self) -> Option<char> {
        Some(match self.next()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => match self.hex4()? {
                high @ 0xD800..=0xDBFF => {
                    self.eat(b'\\')?;
                    self.eat(b'u')?;
                    let low = self.hex4()?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                }
                unit => char::from_u32(unit)?,
            },
            _ => return None,
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.as_bytes().get(self.at..self.at + 4)?;
        let mut unit = 0;
        for digit in digits {
            unit = unit * 16 + char::from(*digit).to_digit(16)?;
        }
        self.at += 4;
        Some(unit)
    }

    /// Skips a value and returns its JSON text.
    fn value_span(&mut self) -> Option<&'a str> {
        let start = self.at;
        self.skip_value(0)?;
        self.text.get(start..self.at)
    }

    /// Skips one value, accepting no more than serde_json's `ignore_value`
    /// does (which is why strings skipped here need not pair surrogates).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.skip_str()
            }
            b'-' | b'0'..=b'9' => self.skip_number(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'[' if depth < MAX_DEPTH => {
                self.at += 1;
                self.skip_ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.next()? {
                        b',' => self.skip_ws(),
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'{' if depth < MAX_DEPTH => {
                self.at += 1;
                self.skip_ws();
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.eat(b'"')?;
                    self.skip_str()?;
                    self.skip_ws();
                    self.eat(b':')?;
                    self.skip_ws();
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.next()? {
                        b',' => self.skip_ws(),
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// Skips the rest of a string after its opening quote.
    fn skip_str(&mut self) -> Option<()> {
        loop {
            self.at = self.next_special()?;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        self.hex4()?;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.next()? {
            b'0' if !matches!(self.peek(), Some(b'0'..=b'9')) => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Skips ASCII digits; how many.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let rest = self.text.as_bytes().get(self.at..)?;
        rest.starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }
}

/// The offset of the first byte in `bytes` that ends a run of plain string
/// content: a quote, a backslash or a control character. Eight bytes at a
/// time, with the has-zero-byte trick; the lowest flagged byte is exact.
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    const fn zero_bytes(word: u64) -> u64 {
        word.wrapping_sub(ONES) & !word & HIGH
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
        .map(|at| offset + at)
}

/// Where unescaped text goes.
trait Unescaped {
    fn push_str(&mut self, text: &str);
    fn push_char(&mut self, c: char);
}

impl Unescaped for String {
    fn push_str(&mut self, text: &str) {
        String::push_str(self, text);
    }

    fn push_char(&mut self, c: char) {
        self.push(c);
    }
}

/// Searches unescaped text for `props` through a fixed window on the stack,
/// so that an escaped message is classified without an allocation.
struct PropsWindow {
    buffer: [u8; 256],
    len: usize,
    found: bool,
}

impl Default for PropsWindow {
    fn default() -> Self {
        PropsWindow {
            buffer: [0; 256],
            len: 0,
            found: false,
        }
    }
}

impl PropsWindow {
    fn push_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.found {
            let take = bytes.len().min(self.buffer.len() - self.len);
            self.buffer[self.len..self.len + take].copy_from_slice(&bytes[..take]);
            self.len += take;
            bytes = &bytes[take..];
            if self.len == self.buffer.len() {
                self.found = contains_props(&self.buffer);
                // Keep the tail: a match may straddle this window and the next.
                self.buffer.copy_within(self.len - OVERLAP.., 0);
                self.len = OVERLAP;
            }
        }
    }

    fn found(&self) -> bool {
        self.found || contains_props(&self.buffer[..self.len])
    }
}

impl Unescaped for PropsWindow {
    fn push_str(&mut self, text: &str) {
        self.push_bytes(text.as_bytes());
    }

    fn push_char(&mut self, c: char) {
        self.push_bytes(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_finds_the_first_quote_backslash_or_control() {
        for len in 0..40 {
            for at in 0..len {
                for byte in [b'"', b'\\', 0, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    // Later specials must not mask the first.
                    if at + 1 < len {
                        bytes[at + 1] = b'"';
                    }
                    assert_eq!(special(&bytes), Some(at), "{bytes:?}");
                }
            }
            let plain = "é ~\u{7f}".repeat(len);
            assert_eq!(special(plain.as_bytes()), None);
        }
    }

    #[test]
    fn props_straddling_window_boundaries_is_found() {
        for shift in 0..12 {
            let text = format!("{}props", "x".repeat(256 - OVERLAP - 2 + shift));
            let mut window = PropsWindow::default();
            window.push_str(&text[..text.len() - 3]);
            window.push_char('o');
            window.push_str(&text[text.len() - 2..]);
            assert!(window.found(), "shift {shift}");
            let mut window = PropsWindow::default();
            window.push_str(&text.replace("props", "prop"));
            assert!(!window.found(), "shift {shift}");
        }
    }

    #[test]
    fn fast_path_reads_the_common_frames_itself() {
        let frames = [
            r#"{"type":"message","text":"props to all"}"#,
            r#"{"text":"great \"launch\" - props!","type":"message"}"#,
            r#"{"type":"message","text":"pr\u006fps"}"#,
            r#"{"type":"message","text":"caf\u00e9 \ud83d\ude00","extra":[1,{"a":null}]}"#,
            r#" { "type" : "hello" } "#,
            r#"{"type":"pong","unique_id":7}"#,
            r#"{"type":"team.left","team_id":3}"#,
        ];
        for frame in frames {
            for keep in [false, true] {
                assert!(fast(frame, keep).is_some(), "{frame}");
            }
        }
    }

    #[test]
    fn fast_path_declines_what_it_cannot_judge_alone() {
        let frames = [
            r#"{"typ\u0065":"hello"}"#,
            r#"{"type":"hello","type":"hello"}"#,
            r#"{"type":"hello","stats":1,"stats":2}"#,
            r#"{"type":"message","text":"\ud800"}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","text":null}"#,
            r#"{"type":"goodbye"}"#,
            r#"{"type":"hello",}"#,
            r#"{"type":"hello"} x"#,
            r#"["hello",null,null,null,null,null,null,null]"#,
            "\u{feff}{\"type\":\"hello\"}",
        ];
        for frame in frames {
            assert!(fast(frame, false).is_none(), "{frame}");
        }
        let deep = format!(
            r#"{{"type":"hello","x":{}{}}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(fast(&deep, false).is_none());
        assert_eq!(decode_team_frame(&deep, false), Ok(TeamFrame::Hello));
    }

    #[test]
    fn a_repeated_known_key_is_rejected_and_a_repeated_unknown_one_is_not() {
        for field in FIELDS {
            let frame = format!(r#"{{"type":"hello","{field}":"hello","{field}":"hello"}}"#);
            let frame = frame.replacen(r#""type":"hello","#, "", usize::from(field == "type"));
            let verdict = decode_team_frame(&frame, false);
            assert!(
                matches!(verdict, Err(DecodeError::NotObject { .. })),
                "{frame}: {verdict:?}"
            );
            assert_eq!(
                reference::decode_team_ref(&frame).map(|_| ()),
                verdict.map(|_| ())
            );
        }
        let frame = r#"{"type":"hello","extra":1,"extra":2}"#;
        assert_eq!(decode_team_frame(frame, false), Ok(TeamFrame::Hello));
        assert!(fast(frame, false).is_some());
    }

    #[test]
    fn counting_does_not_keep_the_text() {
        assert_eq!(
            decode_team_frame(r#"{"type":"message","text":"pr\u006fps"}"#, false),
            Ok(TeamFrame::Message {
                props: true,
                text: None
            })
        );
        assert_eq!(
            decode_team_frame(r#"{"type":"message","text":"Props PROPS"}"#, true),
            Ok(TeamFrame::Message {
                props: false,
                text: Some("Props PROPS".into())
            })
        );
    }
}
