//! Watches the bytes a socket reads for websocket messages that are begun
//! and not finished. A peer can send the first byte of a large frame (or the
//! first fragment of a message) and then nothing, while answering pings:
//! the websocket layer holds what it got, up to the message size limit, for
//! as long as the peer likes. This guard lets the socket task give such a
//! message a deadline, and keeps the bytes held in partial messages across
//! all sockets under one budget.
//!
//! It parses only frame headers (server frames: FIN, opcode, length, an
//! optional mask) and skips payloads, after first skipping the HTTP upgrade
//! response, so it follows the stream exactly as the websocket layer does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held in partial messages across all sockets, and the cap.
#[derive(Debug)]
pub struct PartialBudget {
    held: AtomicUsize,
    cap: usize,
}

impl PartialBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> Arc<PartialBudget> {
        Arc::new(PartialBudget {
            held: AtomicUsize::new(0),
            cap,
        })
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Where the parser is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parse {
    /// In the HTTP upgrade response: how much of `\r\n\r\n` was just seen.
    Http(u8),
    /// In a frame header: its bytes so far.
    Header { buf: [u8; 14], have: u8 },
    /// In a frame's payload: bytes still to come.
    Payload(u64),
}

/// The frame-boundary tracker, without I/O.
#[derive(Debug)]
pub(crate) struct Watch {
    parse: Parse,
    /// A data frame without FIN began a fragmented message not yet ended.
    fragmented: bool,
    /// Bytes read since the partial message began (0 when none is).
    partial: usize,
    since: Option<Instant>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            parse: Parse::Http(0),
            fragmented: false,
            partial: 0,
            since: None,
        }
    }

    /// Whether a message (or the upgrade response) is begun and not done.
    fn in_partial(&self) -> bool {
        self.fragmented || !matches!(self.parse, Parse::Header { have: 0, .. })
    }

    /// Follows `bytes` read from the socket.
    fn feed(&mut self, mut bytes: &[u8]) {
        let was = self.in_partial();
        let total = bytes.len();
        let mut last_boundary = None;
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Http(matched) => {
                    const END: &[u8] = b"\r\n\r\n";
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    *matched = if b == END[usize::from(*matched)] {
                        *matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    if usize::from(*matched) == END.len() {
                        self.parse = Parse::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                        last_boundary = Some(total - bytes.len());
                    }
                }
                Parse::Header { buf, have } => {
                    buf[usize::from(*have)] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    if let Some((fin, opcode, len)) = header(buf, *have) {
                        match opcode {
                            0x1 | 0x2 if !fin => self.fragmented = true,
                            0x0 if fin => self.fragmented = false,
                            _ => {}
                        }
                        self.parse = if len == 0 {
                            Parse::Header {
                                buf: [0; 14],
                                have: 0,
                            }
                        } else {
                            Parse::Payload(len)
                        };
                        if len == 0 && !self.fragmented {
                            last_boundary = Some(total - bytes.len());
                        }
                    }
                }
                Parse::Payload(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.parse = Parse::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                        if !self.fragmented {
                            last_boundary = Some(total - bytes.len());
                        }
                    }
                }
            }
        }
        let now_partial = self.in_partial();
        self.partial = match (now_partial, last_boundary) {
            (false, _) => 0,
            // A new partial began after the last message that completed.
            (true, Some(at)) => total - at,
            (true, None) => self.partial + total,
        };
        match (was, now_partial, last_boundary) {
            (_, false, _) => self.since = None,
            (false, true, _) | (true, true, Some(_)) => self.since = Some(Instant::now()),
            (true, true, None) => {}
        }
    }
}

/// FIN, opcode and payload length once the header in `buf[..have]` is whole.
fn header(buf: &[u8; 14], have: u8) -> Option<(bool, u8, u64)> {
    let have = usize::from(have);
    if have < 2 {
        return None;
    }
    let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0f);
    let masked = buf[1] & 0x80 != 0;
    let (len, len_bytes) = match buf[1] & 0x7f {
        126 => (None, 2),
        127 => (None, 8),
        n => (Some(u64::from(n)), 0),
    };
    let need = 2 + len_bytes + if masked { 4 } else { 0 };
    if have < need {
        return None;
    }
    let len = len.unwrap_or_else(|| {
        buf[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    });
    Some((fin, opcode, len))
}

/// A stream whose reads are watched for partial messages.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    watch: Watch,
    budget: Arc<PartialBudget>,
    /// What this socket adds to the budget now.
    charged: usize,
}

impl<S> Guarded<S> {
    /// Wraps a freshly connected stream (before the websocket handshake).
    pub fn new(inner: S, budget: Arc<PartialBudget>) -> Guarded<S> {
        Guarded {
            inner,
            watch: Watch::new(),
            budget,
            charged: 0,
        }
    }

    /// When the message being received began, if one is partial.
    pub fn partial_since(&self) -> Option<Instant> {
        self.watch.since
    }

    /// Charges the budget for what this socket holds; an error if that
    /// takes the total over the cap (this socket is then the one dropped).
    fn charge(&mut self) -> io::Result<()> {
        let now = self.watch.partial;
        if now > self.charged {
            let add = now - self.charged;
            let before = self.budget.held.fetch_add(add, Ordering::Relaxed);
            self.charged = now;
            if before + add > self.budget.cap {
                return Err(io::Error::other(
                    "partial messages over their memory budget",
                ));
            }
        } else if now < self.charged {
            self.budget
                .held
                .fetch_sub(self.charged - now, Ordering::Relaxed);
            self.charged = now;
        }
        Ok(())
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.watch.feed(&buf.filled()[before..]);
            this.charge()?;
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    fn frame(fin: bool, opcode: u8, payload: usize) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload {
            n if n < 126 => out.push(n as u8),
            n if n < 65_536 => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend(std::iter::repeat_n(b'x', payload));
        out
    }

    fn watched(bytes: &[&[u8]]) -> Watch {
        let mut watch = Watch::new();
        for chunk in bytes {
            watch.feed(chunk);
        }
        watch
    }

    #[test]
    fn whole_frames_leave_nothing_partial() {
        let mut stream = UPGRADE.to_vec();
        for n in [0, 5, 125, 126, 70_000] {
            stream.extend(frame(true, 1, n));
        }
        stream.extend(frame(true, 9, 3));
        let watch = watched(&[&stream]);
        assert_eq!((watch.partial, watch.since), (0, None));
        // Byte by byte, the same.
        let mut watch = Watch::new();
        for b in &stream {
            watch.feed(std::slice::from_ref(b));
        }
        assert_eq!((watch.partial, watch.since), (0, None));
    }

    #[test]
    fn a_frame_cut_short_is_partial_until_it_completes() {
        let big = frame(true, 1, 1000);
        let watch = watched(&[UPGRADE, &big[..300]]);
        assert_eq!(watch.partial, 300);
        assert!(watch.since.is_some());
        let watch = watched(&[UPGRADE, &big[..300], &big[300..]]);
        assert_eq!((watch.partial, watch.since), (0, None));
    }

    #[test]
    fn a_fragmented_message_is_partial_across_frames_and_pings() {
        let first = frame(false, 1, 100);
        let ping = frame(true, 9, 0);
        let middle = frame(false, 0, 100);
        let last = frame(true, 0, 100);
        let watch = watched(&[UPGRADE, &first, &ping, &middle]);
        assert_eq!(watch.partial, first.len() + ping.len() + middle.len());
        let watch = watched(&[UPGRADE, &first, &ping, &middle, &last]);
        assert_eq!((watch.partial, watch.since), (0, None));
    }

    #[test]
    fn a_partial_after_complete_frames_counts_only_its_own_bytes() {
        let whole = frame(true, 1, 50);
        let cut = frame(true, 1, 50);
        let mut chunk = whole.clone();
        chunk.extend_from_slice(&cut[..10]);
        let watch = watched(&[UPGRADE, &chunk]);
        assert_eq!(watch.partial, 10);
    }

    #[test]
    fn the_budget_refuses_the_socket_that_goes_over_it() {
        let budget = PartialBudget::new(1_000);
        let mut a = Guarded::new((), budget.clone());
        let mut b = Guarded::new((), budget.clone());
        let big = frame(true, 1, 5_000);
        a.watch.feed(UPGRADE);
        a.watch.feed(&big[..800]);
        assert!(a.charge().is_ok());
        b.watch.feed(UPGRADE);
        b.watch.feed(&big[..800]);
        assert!(b.charge().is_err());
        drop(b);
        assert_eq!(budget.held(), 800);
        a.watch.feed(&big[800..]);
        assert!(a.charge().is_ok());
        assert_eq!(budget.held(), 0);
    }
}
