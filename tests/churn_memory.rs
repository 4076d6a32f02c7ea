//! The soak's RSS question, asked of the core alone: under endless churn
//! (every team socket reset, re-requested, reopened and counting again,
//! round after round, pinged and answering, with the Global dropping every
//! tenth round) the core's heap stays flat once every team's bounded
//! history is full. A counting allocator measures live bytes; the harness
//! here keeps nothing per round (it drives `Core` directly, through the
//! socket's own `Reader`), so what grows is the core's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use switchboard::bridge::{CloseReason, ConnId, ConnKind, NetCommand, NetEvent};
use switchboard::protocol::{GlobalClientEvent, TeamId, decode_global_client};
use switchboard::reader::{Frame, Reader};
use switchboard::testkit::test_config;
use switchboard::{Config, Core};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const TEAMS: u64 = 2_000;

/// A transport that answers everything at once and remembers only the
/// sockets that are open.
struct Harness {
    core: Core,
    readers: HashMap<ConnId, Reader>,
    global: Option<ConnId>,
    teams: HashMap<TeamId, ConnId>,
}

impl Harness {
    fn feed(&mut self, conn: ConnId, text: &str) {
        let Some(reader) = self.readers.get_mut(&conn) else {
            return;
        };
        let mut events: Vec<NetEvent> = reader
            .frame(Frame::Text(text))
            .into_iter()
            .flatten()
            .collect();
        events.extend(reader.flush());
        self.core.handle_all(events);
    }

    fn step(&mut self) {
        self.core.step();
        // As the driver does after every step (the events are for the tap).
        self.core.drain_team_events();
        for command in self.core.drain_commands() {
            match command {
                NetCommand::Open { conn, kind, .. } => {
                    self.readers.insert(conn, Reader::new(conn, kind));
                    self.core.handle(NetEvent::Opened { conn });
                    match kind {
                        ConnKind::Global => {
                            self.global = Some(conn);
                            self.feed(conn, r#"{"type":"hello"}"#);
                            for id in 1..=TEAMS {
                                self.feed(
                                    conn,
                                    &format!(r#"{{"type":"team.join","team_id":{id}}}"#),
                                );
                            }
                        }
                        ConnKind::Team(team) => {
                            self.teams.insert(team, conn);
                            self.feed(conn, r#"{"type":"hello"}"#);
                        }
                    }
                }
                NetCommand::Send { conn, text } if Some(conn) != self.global => {
                    // A team socket's only sends are pings: answer each.
                    let pong = text.as_str().replace("\"ping\"", "\"pong\"");
                    self.feed(conn, &pong);
                }
                NetCommand::Send { conn, text } if Some(conn) == self.global => {
                    if let Ok(GlobalClientEvent::TeamConnect { team_id }) =
                        decode_global_client(text.as_str())
                    {
                        let answer = format!(
                            r#"{{"type":"team.connect","team_id":{team_id},"ws_url":"ws://sim/t/{team_id}"}}"#
                        );
                        self.feed(conn, &answer);
                    }
                }
                NetCommand::Close { conn, .. } | NetCommand::Abort { conn } => {
                    self.end(conn);
                }
                _ => {}
            }
        }
    }

    fn end(&mut self, conn: ConnId) {
        if self.readers.remove(&conn).is_some() {
            self.core.handle(NetEvent::Closed {
                conn,
                reason: CloseReason::Reset,
            });
        }
    }

    /// Every team counts a message and a props message, then every team
    /// socket is reset; steps until every team is open again.
    fn round(&mut self) {
        let open: Vec<(TeamId, ConnId)> = self.teams.drain().collect();
        for (_, conn) in &open {
            self.feed(*conn, r#"{"type":"message","text":"hi"}"#);
            self.feed(*conn, r#"{"type":"message","text":"props"}"#);
        }
        self.step();
        for (_, conn) in open {
            self.end(conn);
        }
        for _ in 0..1_000 {
            self.step();
            if self.teams.len() == TEAMS as usize
                && self.core.healthcheck().iter().all(|t| t.connected)
            {
                return;
            }
        }
        panic!("the fleet did not come back");
    }
}

#[test]
fn the_cores_heap_is_flat_under_endless_churn() {
    let config = Config {
        global_url: "ws://sim/global".into(),
        ping_interval: Duration::from_millis(20),
        pong_timeout: Duration::from_millis(30),
        ..test_config()
    };
    let mut h = Harness {
        core: Core::new(&config, 3).expect("config"),
        readers: HashMap::new(),
        global: None,
        teams: HashMap::new(),
    };
    while h.teams.len() < TEAMS as usize {
        h.step();
    }
    // Warm-up: every team's history fills (8 transitions), heaps and maps
    // reach their working size.
    for _ in 0..10 {
        h.round();
    }
    let warm = LIVE.load(Ordering::Relaxed);
    let mut most = warm;
    for round in 0..80 {
        // Ten ticks of pings and pongs, and every tenth round the Global
        // drops too (and replays every join on its return).
        for _ in 0..10 {
            h.step();
        }
        if round % 10 == 0
            && let Some(global) = h.global
        {
            h.end(global);
        }
        h.round();
        most = most.max(LIVE.load(Ordering::Relaxed));
    }
    let counted: u64 = h.core.healthcheck().iter().map(|t| t.message_count).sum();
    assert_eq!(counted, 90 * 2 * TEAMS, "every message counted");
    assert!(
        h.core.stats().pings_sent >= 10 * TEAMS,
        "the links were pinged"
    );
    eprintln!(
        "live heap after 10 rounds {} KiB; most over the next 80 rounds {} KiB ({} teams, {} reconnects)",
        warm / 1024,
        most / 1024,
        TEAMS,
        80 * TEAMS
    );
    // Maps and buffers breathe as they resize (a few hundred KiB here); a
    // leak of even one 16-byte allocation per reconnect would add 2.5 MiB.
    assert!(
        most - warm < 1 << 20,
        "the core's heap grew {} bytes past its warm size",
        most - warm
    );
}
