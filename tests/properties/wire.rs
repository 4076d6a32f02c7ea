//! The network and the server, as the core sees them: a scripted transport
//! that keeps the transport's contract (every `Open` ends in exactly one
//! terminal event, `OpenFailed` or `Opened … Closed`, even after an `Abort`;
//! nothing after it), and feeds every frame through the same [`Reader`] a
//! socket task uses, so messages reach the core in runs as they do from a
//! socket. It also plays the server's side of Global: it remembers the
//! requests it received, and can answer them.

use std::collections::BTreeMap;

use switchboard::bridge::{CloseReason, ConnId, ConnKind, NetCommand, NetEvent};
use switchboard::protocol::{GlobalClientEvent, TeamClientEvent, TeamId, decode_global_client};
use switchboard::protocol::{GlobalServerEvent, decode_team_client, encode};
use switchboard::reader::{Frame, Reader};

use super::history::{Bad, Ending, PongId, Url};

/// Where a socket stands, as the transport sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Dialling: no event yet.
    Opening,
    /// `Opened` was handed over.
    Open,
}

/// One socket the core asked for, not yet ended.
pub struct Sock {
    /// Global or a team's.
    pub kind: ConnKind,
    /// Dialling or open.
    pub phase: Phase,
    /// The core asked for a normal close.
    pub closing: bool,
    /// The core asked for it to be dropped.
    pub aborted: bool,
    reader: Reader,
    /// `ping` ids the core sent on it, oldest first, and how many are answered.
    pings: Vec<u64>,
    ponged: usize,
    /// Websocket probes the core sent and the peer has not answered.
    probes: u32,
    /// The peer said `hello` on it.
    greeted: bool,
    /// Whether each message fed to it had props, in order: the oracle the
    /// reader's runs are checked against.
    props: Vec<bool>,
}

/// Messages a run handed over for a team: `(team, messages, props)`.
pub type Counted = Option<(TeamId, u64, u64)>;

/// The transport and the server.
#[derive(Default)]
pub struct Wire {
    /// Sockets not yet ended.
    pub socks: BTreeMap<ConnId, Sock>,
    /// `team.connect` requests the server received and has not answered,
    /// with the Global socket each came on.
    pub requests: Vec<(TeamId, ConnId)>,
    /// The next this many Global sockets fail to open.
    pub refuse_global: u8,
    /// The server answers everything at once.
    pub eager: bool,
    /// Peers never answer a close frame.
    pub ignore_closes: bool,
    /// Events produced and not yet handed to the core, each with what it
    /// counts (from the oracle, not from the reader).
    pub out: Vec<(NetEvent, Counted)>,
    /// The most requests for one team the server held at once: the
    /// server's view of "in flight" (a request the core gave up on after
    /// `request_timeout` still waits here).
    pub max_held_per_team: usize,
}

impl Wire {
    /// Takes the commands of a step, as the transport does.
    pub fn apply(&mut self, commands: &[NetCommand]) {
        for command in commands {
            match command {
                NetCommand::Open { conn, kind, .. } => {
                    self.socks.insert(
                        *conn,
                        Sock {
                            kind: *kind,
                            phase: Phase::Opening,
                            closing: false,
                            aborted: false,
                            reader: Reader::new(*conn, *kind),
                            pings: Vec::new(),
                            ponged: 0,
                            probes: 0,
                            greeted: false,
                            props: Vec::new(),
                        },
                    );
                }
                NetCommand::Send { conn, text } => {
                    let Some(sock) = self.socks.get_mut(conn) else {
                        continue;
                    };
                    match sock.kind {
                        ConnKind::Global => {
                            if let Ok(GlobalClientEvent::TeamConnect { team_id }) =
                                decode_global_client(text.as_str())
                            {
                                self.requests.push((team_id, *conn));
                                let held = self.requests.iter().filter(|r| r.0 == team_id).count();
                                self.max_held_per_team = self.max_held_per_team.max(held);
                            }
                        }
                        ConnKind::Team(_) => {
                            if let Ok(TeamClientEvent::Ping { unique_id }) =
                                decode_team_client(text.as_str())
                            {
                                sock.pings.push(unique_id);
                            }
                        }
                    }
                }
                NetCommand::Probe { conn } => {
                    if let Some(sock) = self.socks.get_mut(conn) {
                        sock.probes += 1;
                    }
                }
                NetCommand::Close { conn, .. } => {
                    if let Some(sock) = self.socks.get_mut(conn) {
                        sock.closing = true;
                    }
                }
                NetCommand::Abort { conn } => {
                    if let Some(sock) = self.socks.get_mut(conn) {
                        sock.aborted = true;
                    }
                }
            }
        }
    }

    fn emit(&mut self, event: NetEvent) {
        self.out.push((event, None));
    }

    /// Feeds one frame to `conn`'s reader and queues what it completes.
    /// `props`: for each message frame, whether it has props.
    fn frame(&mut self, conn: ConnId, frame: Frame<'_>, props: Option<bool>) -> Result<(), String> {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return Ok(());
        };
        if let Some(p) = props {
            sock.props.push(p);
        }
        let events: Vec<NetEvent> = sock.reader.frame(frame).into_iter().flatten().collect();
        for event in events {
            self.run_out(conn, event)?;
        }
        Ok(())
    }

    /// Queues an event, checking a run against the oracle and noting what
    /// it counts.
    fn run_out(&mut self, conn: ConnId, event: NetEvent) -> Result<(), String> {
        let counted = match &event {
            NetEvent::Messages {
                first,
                count,
                props,
                ..
            } => {
                let sock = &self.socks[&conn];
                let ConnKind::Team(team) = sock.kind else {
                    return Err(format!("a run of messages on Global {conn}"));
                };
                let (from, to) = (*first as usize, *first as usize + *count as usize);
                let Some(flags) = sock.props.get(from..to) else {
                    return Err(format!(
                        "run {from}..{to} on {conn} but only {} messages fed",
                        sock.props.len()
                    ));
                };
                let expected = flags.iter().filter(|p| **p).count() as u64;
                if expected != u64::from(*props) {
                    return Err(format!(
                        "run {from}..{to} on {conn} says {props} props, {expected} were fed"
                    ));
                }
                Some((team, u64::from(*count), expected))
            }
            _ => None,
        };
        self.out.push((event, counted));
        Ok(())
    }

    /// Hands over every run a reader holds, as a socket does once nothing
    /// more is buffered.
    pub fn flush_runs(&mut self) -> Result<(), String> {
        let conns: Vec<ConnId> = self.socks.keys().copied().collect();
        for conn in conns {
            if let Some(run) = self.socks.get_mut(&conn).and_then(|s| s.reader.flush()) {
                self.run_out(conn, run)?;
            }
        }
        Ok(())
    }

    /// Sockets dialling, by id.
    pub fn opening(&self) -> Vec<ConnId> {
        self.socks
            .iter()
            .filter(|(_, s)| s.phase == Phase::Opening)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Open sockets (aborted or closing ones included), by id.
    pub fn open(&self) -> Vec<ConnId> {
        self.socks
            .iter()
            .filter(|(_, s)| s.phase == Phase::Open)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Open team sockets, by id.
    pub fn open_teams(&self) -> Vec<ConnId> {
        self.socks
            .iter()
            .filter(|(_, s)| s.phase == Phase::Open && matches!(s.kind, ConnKind::Team(_)))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The open Global socket the server talks on: the newest one the
    /// core has not given up on.
    pub fn global(&self) -> Option<ConnId> {
        self.socks
            .iter()
            .rev()
            .find(|(_, s)| s.kind == ConnKind::Global && s.phase == Phase::Open && !s.aborted)
            .map(|(c, _)| *c)
    }

    /// The dialling socket `conn` opens (a refused Global one fails).
    pub fn open_one(&mut self, conn: ConnId, hello: bool) -> Result<(), String> {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return Ok(());
        };
        if sock.kind == ConnKind::Global && self.refuse_global > 0 {
            self.refuse_global -= 1;
            return self.fail_one(conn);
        }
        sock.phase = Phase::Open;
        self.emit(NetEvent::Opened { conn });
        if hello {
            self.hello(conn)?;
        }
        Ok(())
    }

    /// `hello` on `conn`.
    pub fn hello(&mut self, conn: ConnId) -> Result<(), String> {
        if let Some(sock) = self.socks.get_mut(&conn) {
            sock.greeted = true;
        }
        self.frame(conn, Frame::Text(r#"{"type":"hello"}"#), None)
    }

    /// The dialling socket `conn` fails: its one terminal event.
    pub fn fail_one(&mut self, conn: ConnId) -> Result<(), String> {
        if self.socks.remove(&conn).is_some() {
            self.forget_requests(conn);
            self.emit(NetEvent::OpenFailed {
                conn,
                error: "connection refused".into(),
            });
        }
        Ok(())
    }

    /// The open socket `conn` ends: what its reader holds, then its one
    /// terminal event. One the core aborted ends `Aborted`.
    pub fn end_one(&mut self, conn: ConnId, end: Ending) -> Result<(), String> {
        let Some(sock) = self.socks.get(&conn) else {
            return Ok(());
        };
        let reason = if sock.aborted {
            CloseReason::Aborted
        } else {
            match end {
                Ending::Remote(code) => CloseReason::Remote { code },
                Ending::Local => CloseReason::Local,
                Ending::Reset => CloseReason::Reset,
                Ending::TooLarge => CloseReason::TooLarge,
                Ending::Overflow => CloseReason::Overflow,
                Ending::Stalled => CloseReason::Stalled("write"),
                Ending::Error => CloseReason::Error("broken pipe".into()),
            }
        };
        self.flush_one(conn)?;
        self.socks.remove(&conn);
        self.forget_requests(conn);
        self.emit(NetEvent::Closed { conn, reason });
        Ok(())
    }

    fn flush_one(&mut self, conn: ConnId) -> Result<(), String> {
        if let Some(run) = self.socks.get_mut(&conn).and_then(|s| s.reader.flush()) {
            self.run_out(conn, run)?;
        }
        Ok(())
    }

    /// A Global socket that ended takes the requests it carried with it.
    fn forget_requests(&mut self, conn: ConnId) {
        self.requests.retain(|(_, on)| *on != conn);
    }

    /// A Global frame from the server, on its current Global socket.
    pub fn global_says(&mut self, event: &GlobalServerEvent) -> Result<(), String> {
        self.global_text(&encode(event))
    }

    /// A raw text frame on the current Global socket.
    pub fn global_text(&mut self, text: &str) -> Result<(), String> {
        match self.global() {
            Some(conn) => self.frame(conn, Frame::Text(text), None),
            None => Ok(()),
        }
    }

    /// Answers the `which`-th held request on the current Global socket.
    pub fn answer(&mut self, which: u8, url: Url) -> Result<(), String> {
        let Some((team, _)) = self.take_request(which) else {
            return Ok(());
        };
        self.global_says(&GlobalServerEvent::TeamConnect {
            team_id: team,
            ws_url: url.text(team.0),
        })
    }

    /// Refuses the `which`-th held request with an `error`.
    pub fn refuse(&mut self, which: u8, as_text: bool) -> Result<(), String> {
        let Some((team, _)) = self.take_request(which) else {
            return Ok(());
        };
        let request = serde_json::json!({"type": "team.connect", "team_id": team.0});
        let received = if as_text {
            serde_json::Value::String(request.to_string())
        } else {
            request
        };
        self.global_says(&GlobalServerEvent::Error {
            message: "team not ready".into(),
            received_message: Some(received),
            team_id: Some(team),
        })
    }

    fn take_request(&mut self, which: u8) -> Option<(TeamId, ConnId)> {
        let global = self.global()?;
        let held: Vec<usize> = (0..self.requests.len())
            .filter(|&i| self.requests[i].1 == global)
            .collect();
        if held.is_empty() {
            return None;
        }
        let at = held[usize::from(which) % held.len()];
        Some(self.requests.remove(at))
    }

    /// `n` messages on `conn`, `props` of them with props, every third of
    /// those spelt with a JSON escape when `escaped`. Other texts are close
    /// misses: `Props`, `prop s`, and an escape that does not spell it.
    pub fn messages(
        &mut self,
        conn: ConnId,
        n: u16,
        props: u16,
        escaped: bool,
    ) -> Result<(), String> {
        const PLAIN: [&str; 4] = [
            r#"{"type":"message","text":"hello"}"#,
            r#"{"text":"Props to you","type":"message"}"#,
            r#"{"type":"message","text":"prop s","extra":[1,{"props":true}]}"#,
            r#"{"type":"message","text":"pr\u006f ps"}"#,
        ];
        const PROPS: [&str; 3] = [
            r#"{"type":"message","text":"props"}"#,
            r#"{"type":"message","text":"nice props \ud83c\udf89"}"#,
            r#"{"text":"propsprops","type":"message"}"#,
        ];
        const ESCAPED: &str = r#"{"type":"message","text":"pr\u006fps"}"#;
        for i in 0..n {
            let with = i < props;
            let text = match (with, escaped && i % 3 == 0) {
                (true, true) => ESCAPED,
                (true, false) => PROPS[usize::from(i) % PROPS.len()],
                (false, _) => PLAIN[usize::from(i) % PLAIN.len()],
            };
            self.frame(conn, Frame::Text(text), Some(with))?;
        }
        Ok(())
    }

    /// A team frame on `conn`.
    pub fn team_text(&mut self, conn: ConnId, text: &str) -> Result<(), String> {
        self.frame(conn, Frame::Text(text), None)
    }

    /// A pong on `conn`.
    pub fn pong(&mut self, conn: ConnId, id: PongId) -> Result<(), String> {
        let Some(sock) = self.socks.get(&conn) else {
            return Ok(());
        };
        let text = match (id, sock.pings.first(), sock.pings.last()) {
            (PongId::Newest, _, Some(id)) => format!(r#"{{"type":"pong","unique_id":{id}}}"#),
            (PongId::Oldest, Some(id), _) => format!(r#"{{"type":"pong","unique_id":{id}}}"#),
            (PongId::NewestAsString, _, Some(id)) => {
                format!(r#"{{"type":"pong","unique_id":"{id}"}}"#)
            }
            _ => r#"{"type":"pong","unique_id":987654321}"#.to_owned(),
        };
        self.team_text(conn, &text)
    }

    /// `team.left` on `conn`, naming its own team or another.
    pub fn leave_on_socket(&mut self, conn: ConnId, other: bool) -> Result<(), String> {
        let Some(ConnKind::Team(team)) = self.socks.get(&conn).map(|s| s.kind) else {
            return Ok(());
        };
        let id = if other { team.0 + 1 } else { team.0 };
        self.team_text(conn, &format!(r#"{{"type":"team.left","team_id":{id}}}"#))
    }

    /// A bad frame of class `bad` on `conn`.
    pub fn bad(&mut self, conn: ConnId, bad: Bad) -> Result<(), String> {
        let global = self.socks.get(&conn).map(|s| s.kind) == Some(ConnKind::Global);
        let text = match (bad, global) {
            (Bad::Binary, _) => return self.frame(conn, Frame::Binary(7), None),
            (Bad::NotJson, _) => "{not json",
            (Bad::NotObject, _) => "[1,2]",
            (Bad::MissingType, _) => r#"{"team_id":1}"#,
            (Bad::UnknownType, true) => r#"{"type":"message","text":"props on Global"}"#,
            (Bad::UnknownType, false) => r#"{"type":"team.join","team_id":1}"#,
            (Bad::MissingField, true) => r#"{"type":"team.connect","team_id":1}"#,
            (Bad::MissingField, false) => r#"{"type":"message","text":null}"#,
            (Bad::IllTyped, true) => r#"{"type":"team.join","team_id":"one"}"#,
            (Bad::IllTyped, false) => r#"{"type":"message","text":3}"#,
        };
        self.frame(conn, Frame::Text(text), None)
    }

    /// A websocket ping or pong on `conn`.
    pub fn control(&mut self, conn: ConnId) -> Result<(), String> {
        self.frame(conn, Frame::Control, None)
    }

    /// What an eager server and a healthy network do after a step: every
    /// dialling socket opens with `hello` (a refused Global one fails, an
    /// aborted one fails), every close is answered, every aborted socket
    /// ends, every ping and probe is answered, every held request is
    /// answered with a usable URL.
    pub fn react(&mut self) -> Result<(), String> {
        let conns: Vec<ConnId> = self.socks.keys().copied().collect();
        for conn in conns {
            let Some(sock) = self.socks.get(&conn) else {
                continue;
            };
            match (sock.phase, sock.aborted, sock.closing) {
                (Phase::Opening, true, _) => self.fail_one(conn)?,
                (Phase::Opening, false, _) => self.open_one(conn, true)?,
                (Phase::Open, true, _) => self.end_one(conn, Ending::Reset)?,
                (Phase::Open, false, true) if !self.ignore_closes => {
                    self.end_one(conn, Ending::Remote(1000))?;
                }
                (Phase::Open, false, true) => {}
                (Phase::Open, false, false) => {
                    // A server that opened without a greeting gives it now.
                    if !self.socks[&conn].greeted {
                        self.hello(conn)?;
                    }
                    let sock = &self.socks[&conn];
                    let (pings, probes) = (sock.pings[sock.ponged..].to_vec(), sock.probes);
                    for id in pings {
                        self.team_text(conn, &format!(r#"{{"type":"pong","unique_id":{id}}}"#))?;
                    }
                    for _ in 0..probes {
                        self.control(conn)?;
                    }
                    if let Some(sock) = self.socks.get_mut(&conn) {
                        sock.ponged = sock.pings.len();
                        sock.probes = 0;
                    }
                }
            }
        }
        while self
            .global()
            .is_some_and(|g| self.requests.iter().any(|r| r.1 == g))
        {
            self.answer(0, Url::Good)?;
        }
        Ok(())
    }
}
