//! [`Peer`]: the core stepped by a scripted transport, no sockets.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::bridge::{CloseReason, ConnId, ConnKind, NetCommand, NetEvent};
use crate::core::Core;
use crate::core::{AdoptedSocket, Config};
use crate::protocol::{
    GlobalClientEvent, GlobalServerEvent, TeamClientEvent, TeamId, TeamServerEvent,
    decode_global_client, decode_team_client, encode,
};
use crate::reader::{Frame, Reader};

/// The config the test kit uses unless told otherwise: short, round numbers
/// so scenarios read easily (tick 10ms, ping every 1s, pong timeout 500ms,
/// backoff 100ms..1s, timeouts 2s).
pub fn test_config() -> Config {
    Config {
        global_url: "ws://sim/global".into(),
        tick: Duration::from_millis(10),
        ping_interval: Duration::from_secs(1),
        pong_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        close_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A core plus the transport's view of it.
pub struct Peer {
    /// The core under test.
    pub core: Core,
    /// Every command the core emitted, in order.
    pub commands: Vec<NetCommand>,
    /// The newest Global connection id the core opened.
    pub global: Option<ConnId>,
    /// The newest connection id opened for each team.
    pub teams: BTreeMap<TeamId, ConnId>,
    /// Whether websocket pings (`Probe`) are answered, as every healthy
    /// websocket server's library does. Off to play a black-holed peer.
    pub answer_probes: bool,
    /// How many commands `take_new` has already returned.
    seen: usize,
    /// The read side of every connection the core opened.
    readers: HashMap<ConnId, Reader>,
}

impl Peer {
    /// A peer around a core built from [`test_config`] and `seed`.
    pub fn new(seed: u64) -> Peer {
        Peer::with_config(&test_config(), seed)
    }

    /// A peer around a core built from `config` and `seed`.
    ///
    /// # Panics
    /// If `config` is invalid: this is test code.
    pub fn with_config(config: &Config, seed: u64) -> Peer {
        Peer {
            core: Core::new(config, seed).expect("test config is valid"),
            commands: Vec::new(),
            global: None,
            teams: BTreeMap::new(),
            answer_probes: true,
            seen: 0,
            readers: HashMap::new(),
        }
    }

    /// A peer whose core holds `teams` open team links (ids `1..=teams`),
    /// joined, requested and opened in three ticks.
    pub fn connected_fleet(config: &Config, seed: u64, teams: u64) -> Peer {
        let config = Config {
            max_requests_in_flight: config.max_requests_in_flight.max(teams as usize),
            ..config.clone()
        };
        let mut peer = Peer::with_config(&config, seed);
        peer.open_global();
        for id in 1..=teams {
            peer.global_says(GlobalServerEvent::TeamJoin {
                team_id: TeamId(id),
            });
        }
        peer.step();
        for id in 1..=teams {
            peer.global_says(GlobalServerEvent::TeamConnect {
                team_id: TeamId(id),
                ws_url: format!("ws://sim/t/{id}"),
            });
        }
        peer.step();
        for id in 1..=teams {
            let conn = peer.team_conn(TeamId(id));
            peer.push(NetEvent::Opened { conn });
        }
        peer.step();
        peer
    }

    /// A peer with Global open and `teams` joined and connected, in order.
    pub fn with_teams(seed: u64, teams: &[TeamId]) -> Peer {
        let mut peer = Peer::new(seed);
        peer.open_global();
        for &team in teams {
            peer.join(team);
            peer.connect_team(team);
        }
        peer
    }

    /// Steps until `done` holds, checked before each tick as
    /// [`Core::step_until`] does.
    ///
    /// # Panics
    /// After 100,000 ticks, naming `what` it was waiting for.
    pub fn step_until(&mut self, what: &str, done: impl Fn(&Peer) -> bool) {
        for _ in 0..100_000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("never happened: {what}");
    }

    /// Steps until the core sends one more `team.connect` for `team`.
    pub fn step_until_requested(&mut self, team: TeamId) {
        let count = |peer: &Peer| peer.requests().iter().filter(|t| **t == team).count();
        let before = count(self);
        self.step_until("team re-requested", |peer| count(peer) > before);
    }

    /// Hands over every run still pending (as a socket does once nothing
    /// more is buffered), runs one tick and records its commands.
    pub fn step(&mut self) {
        self.flush_runs();
        self.core.step();
        self.record();
    }

    fn flush_runs(&mut self) {
        let pending: Vec<NetEvent> = self
            .readers
            .values_mut()
            .filter_map(Reader::flush)
            .collect();
        for event in pending {
            self.push(event);
        }
    }

    /// Runs `n` ticks.
    pub fn step_n(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Runs the core at this instant until no work is pending, recording
    /// its commands.
    ///
    /// # Panics
    /// If it is still busy after 1,000 steps.
    pub fn settle(&mut self) {
        self.flush_runs();
        self.core.settle(1_000).expect("the core settles");
        self.record();
    }

    /// Jumps core time straight to the next deadline and runs one step
    /// there; returns that deadline, or `None` if the core has none.
    pub fn jump_to_next_deadline(&mut self) -> Option<Duration> {
        let at = self.core.next_deadline()?;
        self.flush_runs();
        self.core.step_by(at.saturating_sub(self.core.now()));
        self.record();
        Some(at)
    }

    /// Runs ticks covering `d` of core time.
    pub fn advance(&mut self, d: Duration) {
        let target = self.core.now() + d;
        while self.core.now() < target {
            self.step();
        }
    }

    fn record(&mut self) {
        for command in self.core.drain_commands() {
            if let NetCommand::Probe { conn } = command
                && self.answer_probes
            {
                self.push(NetEvent::Alive { conn });
            }
            // As the transport does: an aborted socket hands over what it
            // read, then reports its end.
            if let NetCommand::Abort { conn } = command {
                self.closed(conn, CloseReason::Aborted);
            }
            if let NetCommand::Open { conn, kind, .. } = &command {
                self.readers.insert(*conn, Reader::new(*conn, *kind));
                match kind {
                    ConnKind::Global => self.global = Some(*conn),
                    ConnKind::Team(team) => {
                        self.teams.insert(*team, *conn);
                    }
                }
            }
            self.commands.push(command);
        }
    }

    /// Commands emitted since the last call.
    pub fn take_new(&mut self) -> Vec<NetCommand> {
        let new = self.commands[self.seen..].to_vec();
        self.seen = self.commands.len();
        new
    }

    /// Hands an event to the core for the next step.
    pub fn push(&mut self, event: NetEvent) {
        self.core.handle(event);
    }

    /// Takes over sockets a worker kept open through a change of leader
    /// ([`Core::adopt`]); each one adopted gets a reader, as the worker's
    /// socket has one. Returns the sockets the core refused.
    ///
    /// # Errors
    /// As [`Core::adopt`].
    pub fn adopt(
        &mut self,
        sockets: &[AdoptedSocket],
    ) -> Result<Vec<ConnId>, crate::core::RestoreError> {
        let refused = self.core.adopt(sockets)?;
        for s in sockets
            .iter()
            .filter(|s| s.open && !refused.contains(&s.conn))
        {
            self.readers
                .insert(s.conn, Reader::new(s.conn, ConnKind::Team(s.team)));
            self.teams.insert(s.team, s.conn);
        }
        Ok(refused)
    }

    /// The current Global connection id.
    ///
    /// # Panics
    /// If the core never opened one.
    pub fn global_conn(&self) -> ConnId {
        self.global.expect("the core opened Global")
    }

    /// The newest connection id of `team`.
    ///
    /// # Panics
    /// If the core never opened one for it.
    pub fn team_conn(&self, team: TeamId) -> ConnId {
        self.teams[&team]
    }

    /// Steps until the core asks to open Global, then opens it and says `hello`.
    pub fn open_global(&mut self) {
        let before = self.global;
        self.step_until("Global (re)opened", |peer| peer.global != before);
        let conn = self.global_conn();
        self.push(NetEvent::Opened { conn });
        self.global_says(GlobalServerEvent::Hello);
        self.step();
    }

    /// Feeds one frame to `conn`'s reader, as its socket would, and queues
    /// what it completes for the next tick.
    ///
    /// # Panics
    /// If the core never opened `conn`.
    pub fn frame(&mut self, conn: ConnId, frame: Frame<'_>) {
        let reader = self
            .readers
            .get_mut(&conn)
            .expect("a connection the core opened");
        let events: Vec<NetEvent> = reader.frame(frame).into_iter().flatten().collect();
        for event in events {
            self.push(event);
        }
    }

    /// Delivers a Global event on the current Global connection, as JSON.
    pub fn global_says(&mut self, event: GlobalServerEvent) {
        self.global_text(&encode(&event));
    }

    /// Delivers a raw text frame on the current Global connection.
    pub fn global_text(&mut self, text: &str) {
        let conn = self.global_conn();
        self.frame(conn, Frame::Text(text));
    }

    /// Delivers a team event on the team's newest connection, as JSON.
    pub fn team_says(&mut self, team: TeamId, event: TeamServerEvent) {
        self.team_text(team, &encode(&event));
    }

    /// Delivers a raw text frame on the team's newest connection.
    pub fn team_text(&mut self, team: TeamId, text: &str) {
        let conn = self.team_conn(team);
        self.frame(conn, Frame::Text(text));
    }

    /// `team.join`, then one tick.
    pub fn join(&mut self, team: TeamId) {
        self.global_says(GlobalServerEvent::TeamJoin { team_id: team });
        self.step();
    }

    /// Answers the team's `team.connect` with a URL, opens the socket the
    /// core asks for, and says `hello` on it.
    pub fn connect_team(&mut self, team: TeamId) {
        self.global_says(GlobalServerEvent::TeamConnect {
            team_id: team,
            ws_url: format!("http://sim/team/{team}"),
        });
        self.step();
        let conn = self.team_conn(team);
        self.push(NetEvent::Opened { conn });
        self.team_says(team, TeamServerEvent::Hello);
        self.step();
    }

    /// A `message` on the team's socket (not stepped).
    pub fn message(&mut self, team: TeamId, text: &str) {
        self.team_says(
            team,
            TeamServerEvent::Message {
                text: text.to_owned(),
            },
        );
    }

    /// `count` messages on the team's socket, the first `props` of them
    /// with props (not stepped): they reach the core as runs.
    pub fn messages(&mut self, team: TeamId, count: u32, props: u32) {
        let conn = self.team_conn(team);
        let plain = encode(&TeamServerEvent::Message {
            text: "hello".into(),
        });
        let with_props = encode(&TeamServerEvent::Message {
            text: "props to you".into(),
        });
        for i in 0..count {
            let text = if i < props { &with_props } else { &plain };
            self.frame(conn, Frame::Text(text));
        }
    }

    /// The transport reports that `conn` closed: whatever its reader still
    /// holds is handed over first, as a socket task does.
    pub fn closed(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(run) = self.readers.get_mut(&conn).and_then(Reader::flush) {
            self.push(run);
        }
        self.push(NetEvent::Closed { conn, reason });
    }

    /// `team.connect` requests the core sent, in order.
    pub fn requests(&self) -> Vec<TeamId> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                NetCommand::Send { text, .. } => match decode_global_client(text.as_str()) {
                    Ok(GlobalClientEvent::TeamConnect { team_id }) => Some(team_id),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Pings the core sent on `conn`, in order.
    pub fn pings_on(&self, conn: ConnId) -> Vec<u64> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                NetCommand::Send { conn: on, text } if *on == conn => {
                    match decode_team_client(text.as_str()) {
                        Ok(TeamClientEvent::Ping { unique_id }) => Some(unique_id),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }
}
