//! The read side of one connection, without the socket: frames in, bridge
//! events out. The socket task feeds it what it reads; the test kit feeds it
//! the frames a scripted server sends; so every test counts messages through
//! the code a socket does, batched the way a socket batches them.
//!
//! Consecutive `message` frames become one [`NetEvent::Messages`] run; any
//! other frame first ends the run, so the core sees events in frame order.

use crate::bridge::{ConnId, ConnKind, Inbound, NetEvent, TeamControl};
use crate::protocol::{DecodeError, TeamFrame, decode_global, decode_team_frame};

/// Most messages in one run: bounds how many messages one event carries.
pub const MAX_RUN: u32 = 1024;

/// Called with each message's index on its connection and its text.
pub type OnMessage<'a> = dyn FnMut(u64, &str) + 'a;

/// One websocket frame as the socket delivered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text frame (UTF-8 already checked by the websocket layer).
    Text(&'a str),
    /// A binary frame of this many bytes: bad input for this protocol.
    Binary(usize),
    /// A websocket ping or pong: a sign of life, nothing more.
    Control,
}

/// The read state of one connection.
#[derive(Debug)]
pub struct Reader {
    conn: ConnId,
    kind: ConnKind,
    /// Messages read on this connection so far (the next one's index).
    read: u64,
    /// Of those, how many are in the run not yet handed over, and with props.
    run: u32,
    run_props: u32,
}

impl Reader {
    /// A reader for a fresh connection.
    pub fn new(conn: ConnId, kind: ConnKind) -> Reader {
        Reader {
            conn,
            kind,
            read: 0,
            run: 0,
            run_props: 0,
        }
    }

    /// Takes one frame; returns the events it completes, in order: the run
    /// it ended (or filled), then its own event.
    pub fn frame(&mut self, frame: Frame<'_>) -> [Option<NetEvent>; 2] {
        self.frame_with(frame, None)
    }

    /// [`Reader::frame`], also giving each message's index on this
    /// connection and its text to `on_message` (the message tap).
    pub fn frame_with(
        &mut self,
        frame: Frame<'_>,
        on_message: Option<&mut OnMessage<'_>>,
    ) -> [Option<NetEvent>; 2] {
        let inbound = match frame {
            Frame::Text(text) => match self.kind {
                ConnKind::Team(_) => match decode_team_frame(text, on_message.is_some()) {
                    Ok(TeamFrame::Message { props, text }) => {
                        if let (Some(on_message), Some(text)) = (on_message, text) {
                            on_message(self.read, &text);
                        }
                        self.read += 1;
                        self.run += 1;
                        self.run_props += u32::from(props);
                        let full = (self.run >= MAX_RUN).then(|| self.flush()).flatten();
                        return [full, None];
                    }
                    Ok(TeamFrame::Hello) => Inbound::Team(Ok(TeamControl::Hello)),
                    Ok(TeamFrame::Pong { unique_id }) => {
                        Inbound::Team(Ok(TeamControl::Pong { unique_id }))
                    }
                    Ok(TeamFrame::TeamLeft { team_id }) => {
                        Inbound::Team(Ok(TeamControl::TeamLeft { team_id }))
                    }
                    Err(error) => Inbound::Team(Err(error)),
                },
                ConnKind::Global => Inbound::Global(decode_global(text)),
            },
            Frame::Binary(len) => {
                let error = DecodeError::Binary { len };
                match self.kind {
                    ConnKind::Global => Inbound::Global(Err(error)),
                    ConnKind::Team(_) => Inbound::Team(Err(error)),
                }
            }
            Frame::Control => return [self.flush(), Some(NetEvent::Alive { conn: self.conn })],
        };
        let received = NetEvent::Received {
            conn: self.conn,
            frame: Box::new(inbound),
        };
        [self.flush(), Some(received)]
    }

    /// Hands over the run not yet handed over, if any: the socket calls it
    /// when nothing more is buffered, so a run never waits for more input.
    pub fn flush(&mut self) -> Option<NetEvent> {
        if self.run == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.run);
        let props = std::mem::take(&mut self.run_props);
        Some(NetEvent::Messages {
            conn: self.conn,
            first: self.read - u64::from(count),
            count,
            props,
        })
    }

    /// The connection this reader belongs to.
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TeamId;

    fn team_reader() -> Reader {
        Reader::new(ConnId(1), ConnKind::Team(TeamId(1)))
    }

    fn feed(reader: &mut Reader, frames: &[Frame<'_>]) -> Vec<NetEvent> {
        let mut out: Vec<NetEvent> = frames
            .iter()
            .flat_map(|&f| reader.frame(f))
            .flatten()
            .collect();
        out.extend(reader.flush());
        out
    }

    #[test]
    fn messages_become_runs_ended_by_any_other_frame() {
        let mut reader = team_reader();
        let events = feed(
            &mut reader,
            &[
                Frame::Text(r#"{"type":"message","text":"props"}"#),
                Frame::Text(r#"{"text":"pr\u006fps","type":"message"}"#),
                Frame::Text(r#"{"type":"message","text":"Props"}"#),
                Frame::Control,
                Frame::Text(r#"{"type":"message","text":"x"}"#),
                Frame::Text(r#"{"type":"hello"}"#),
            ],
        );
        let conn = ConnId(1);
        assert_eq!(
            events,
            vec![
                NetEvent::Messages {
                    conn,
                    first: 0,
                    count: 3,
                    props: 2
                },
                NetEvent::Alive { conn },
                NetEvent::Messages {
                    conn,
                    first: 3,
                    count: 1,
                    props: 0
                },
                NetEvent::Received {
                    conn,
                    frame: Box::new(Inbound::Team(Ok(TeamControl::Hello)))
                },
            ]
        );
    }

    #[test]
    fn a_run_is_handed_over_when_full() {
        let mut reader = team_reader();
        let frame = Frame::Text(r#"{"type":"message","text":"a"}"#);
        let frames = vec![frame; MAX_RUN as usize + 1];
        let events = feed(&mut reader, &frames);
        let counts: Vec<(u64, u32)> = events
            .iter()
            .map(|e| match e {
                NetEvent::Messages { first, count, .. } => (*first, *count),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(counts, vec![(0, MAX_RUN), (u64::from(MAX_RUN), 1)]);
    }

    #[test]
    fn bad_frames_are_typed_and_end_the_run() {
        let mut reader = team_reader();
        let events = feed(
            &mut reader,
            &[
                Frame::Text(r#"{"type":"message","text":"a"}"#),
                Frame::Text("{nope"),
                Frame::Binary(4),
                Frame::Text(r#"{"type":"message"}"#),
            ],
        );
        assert!(matches!(events[0], NetEvent::Messages { count: 1, .. }));
        let frame = |i: usize| match &events[i] {
            NetEvent::Received { frame, .. } => (**frame).clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            frame(1),
            Inbound::Team(Err(DecodeError::NotJson { .. }))
        ));
        assert!(matches!(
            frame(2),
            Inbound::Team(Err(DecodeError::Binary { len: 4 }))
        ));
        assert!(matches!(
            frame(3),
            Inbound::Team(Err(DecodeError::MissingField { .. }))
        ));
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn global_frames_are_decoded_as_global_events() {
        let mut reader = Reader::new(ConnId(2), ConnKind::Global);
        let events = feed(
            &mut reader,
            &[Frame::Text(r#"{"type":"message","text":"a"}"#)],
        );
        assert!(matches!(
            &events[0],
            NetEvent::Received { frame, .. }
                if matches!(&**frame, Inbound::Global(Err(DecodeError::UnknownType(t))) if t == "message")
        ));
    }
}
