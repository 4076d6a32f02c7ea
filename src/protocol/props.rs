//! The one rule for `props_count`: a message counts when its unescaped text
//! contains the exact, case-sensitive substring `props` (see `docs/PROTOCOL.md`).

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// What a counted message must contain.
const NEEDLE: &[u8] = b"props";

/// Built once: a `Finder` picks its search strategy for the needle up front.
static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(NEEDLE));

/// Whether `text` (unescaped message text, or any window of it) contains
/// `props`. Bytes, not `str`, so that a decoder can ask about a window of
/// text it unescapes piecewise: `props` is ASCII, and UTF-8 never hides an
/// ASCII byte inside a multi-byte character, so a byte match is a char match.
pub(crate) fn contains_props(text: &[u8]) -> bool {
    FINDER.find(text).is_some()
}

/// How many bytes of one window must be searched again with the next, so that
/// a match straddling two windows is seen whole.
pub(crate) const OVERLAP: usize = NEEDLE.len() - 1;
