//! Storms at fleet scale, in core time: the core stepped tick by tick with
//! production defaults, a scripted server around it (the test kit's `Peer`,
//! every frame through the socket's `Reader`) that answers each
//! `team.connect` after a round trip and opens each socket after a dial.
//! Shared by `tests/storms.rs`, which asserts the bounds, and
//! `benches/storm.rs`, which prints the figures.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use switchboard::Config;
use switchboard::bridge::{CloseReason, ConnId, ConnKind, NetCommand, NetEvent};
use switchboard::core::LinkState;
use switchboard::protocol::{GlobalClientEvent, GlobalServerEvent, TeamId, decode_global_client};
use switchboard::reader::Frame;
use switchboard::testkit::Peer;

/// How long the server takes to answer a `team.connect`.
pub const ROUND_TRIP: Duration = Duration::from_millis(50);

/// How long a socket takes to open.
pub const DIAL: Duration = Duration::from_millis(20);

/// Production defaults, with a URL the scripted server owns.
pub fn config() -> Config {
    Config {
        global_url: "ws://sim/global".into(),
        ..Config::default()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a team socket does once open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sockets {
    /// Says `hello` and stays.
    Stay,
    /// Says `hello` and drops at once (a server that accepts and hangs up).
    HelloAndDrop,
}

/// What one storm showed, in core time unless named wall.
#[derive(Clone, Debug)]
#[allow(dead_code)] // the tests read the bounds, benches/storm.rs prints the rest
pub struct Figures {
    /// Which storm.
    pub name: &'static str,
    /// Teams in the fleet.
    pub teams: u64,
    /// Most `team.connect` requests the core had in flight at once.
    pub peak_in_flight: usize,
    /// Most requests the server held unanswered at once.
    pub peak_held: usize,
    /// Requests the server received during the storm.
    pub requests: usize,
    /// Sockets it opened (handshakes) during the storm.
    pub handshakes: usize,
    /// The most requests it received in any one second.
    pub peak_requests_per_s: usize,
    /// The most handshakes in any one second.
    pub peak_handshakes_per_s: usize,
    /// Requests received by the end of each second of the storm.
    pub requests_by_second: Vec<usize>,
    /// From the storm's start until every team was open again.
    pub all_back: Option<Duration>,
    /// How long the storm ran.
    pub ran: Duration,
    /// Requests sent for a team before its backoff had run out.
    pub early: usize,
    /// Most requests for one team.
    pub most_per_team: usize,
    /// Wall time the storm took to step.
    pub wall: Duration,
}

/// The scripted server around a core.
pub struct Storm {
    /// The core and the transport's view of it.
    pub peer: Peer,
    sockets: Sockets,
    /// Answers due, with when.
    answers: VecDeque<(u64, TeamId)>,
    /// Sockets to open, with when.
    dials: VecDeque<(u64, ConnId, ConnKind)>,
    /// Requests received since the storm began, with when.
    requests: Vec<(u64, TeamId)>,
    /// Team sockets opened since the storm began, with when.
    handshakes: Vec<u64>,
    /// For each team in backoff when the storm began, when it ends.
    backoff_until: BTreeMap<TeamId, u64>,
    started: u64,
    peak_in_flight: usize,
    peak_held: usize,
    wall: Instant,
}

impl Storm {
    /// A core with `config`, its Global open and greeted.
    pub fn new(config: &Config, sockets: Sockets) -> Storm {
        let mut storm = Storm {
            peer: Peer::with_config(config, 9),
            sockets,
            answers: VecDeque::new(),
            dials: VecDeque::new(),
            requests: Vec::new(),
            handshakes: Vec::new(),
            backoff_until: BTreeMap::new(),
            started: 0,
            peak_in_flight: 0,
            peak_held: 0,
            wall: Instant::now(),
        };
        storm.peer.open_global();
        storm.peer.take_new();
        storm
    }

    fn now(&self) -> u64 {
        ms(self.peer.core.now())
    }

    /// Starts measuring: what happens from now on is the storm.
    pub fn begin(&mut self) {
        self.started = self.now();
        self.requests.clear();
        self.handshakes.clear();
        self.peak_in_flight = self.peer.core.requests_in_flight();
        self.peak_held = self.answers.len();
        self.wall = Instant::now();
    }

    /// `n` teams join in one burst.
    pub fn join(&mut self, n: u64) {
        for id in 1..=n {
            self.peer.global_says(GlobalServerEvent::TeamJoin {
                team_id: TeamId(id),
            });
        }
    }

    /// Every open team socket drops at once; remembers when each team's
    /// backoff ends.
    pub fn drop_every_team_socket(&mut self) {
        let teams: Vec<(TeamId, ConnId)> = self.peer.teams.iter().map(|(t, c)| (*t, *c)).collect();
        for (team, conn) in teams {
            if self.peer.core.team(team).is_some_and(|t| t.connected) {
                self.peer.closed(conn, CloseReason::Reset);
            }
        }
        self.tick();
        for (team, _) in self.peer.teams.clone() {
            if let Some(LinkState::Backoff { until }) = self.peer.core.team(team).map(|t| t.link) {
                self.backoff_until.insert(team, until);
            }
        }
    }

    /// The Global socket drops; the requests it carried die with it.
    pub fn drop_global(&mut self) {
        let conn = self.peer.global_conn();
        self.peer.closed(conn, CloseReason::Reset);
        self.answers.clear();
    }

    /// One tick: the server delivers what is due, the core steps, the
    /// server takes the commands.
    pub fn tick(&mut self) {
        let now = self.now();
        while self.answers.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, team)) = self.answers.pop_front() else {
                break;
            };
            self.peer.global_says(GlobalServerEvent::TeamConnect {
                team_id: team,
                ws_url: format!("ws://sim/team/{team}"),
            });
        }
        while self.dials.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, conn, kind)) = self.dials.pop_front() else {
                break;
            };
            self.peer.push(NetEvent::Opened { conn });
            match kind {
                ConnKind::Global => self.peer.global_says(GlobalServerEvent::Hello),
                ConnKind::Team(_) => {
                    self.handshakes.push(now);
                    self.peer.frame(conn, Frame::Text(r#"{"type":"hello"}"#));
                    if self.sockets == Sockets::HelloAndDrop {
                        self.peer.closed(conn, CloseReason::Reset);
                    }
                }
            }
        }
        self.peer.step();
        let now = self.now();
        for command in self.peer.take_new() {
            match command {
                NetCommand::Open { conn, kind, .. } => {
                    self.dials.push_back((now + ms(DIAL), conn, kind));
                }
                NetCommand::Send { conn, text } if Some(conn) == self.peer.global => {
                    if let Ok(GlobalClientEvent::TeamConnect { team_id }) =
                        decode_global_client(text.as_str())
                    {
                        self.requests.push((now, team_id));
                        self.answers.push_back((now + ms(ROUND_TRIP), team_id));
                    }
                }
                _ => {}
            }
        }
        self.peak_in_flight = self.peak_in_flight.max(self.peer.core.requests_in_flight());
        self.peak_held = self.peak_held.max(self.answers.len());
    }

    /// Whether all `n` teams are open.
    pub fn all_open(&self, n: u64) -> bool {
        self.peer
            .core
            .fleet()
            .in_state(switchboard::core::LinkKind::Open)
            == n
    }

    /// Ticks until all `n` teams are open, at most `limit` of core time.
    pub fn until_all_back(&mut self, n: u64, limit: Duration) -> Option<Duration> {
        let deadline = self.started + ms(limit);
        while self.now() <= deadline {
            if self.all_open(n) {
                return Some(Duration::from_millis(self.now() - self.started));
            }
            self.tick();
        }
        None
    }

    /// Ticks for `d` of core time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now() + ms(d);
        while self.now() < end {
            self.tick();
        }
    }

    /// Each team's requests since the storm began, in ms from its start.
    #[allow(dead_code)] // tests/storms.rs reads them; benches/storm.rs does not
    pub fn requests_by_team(&self) -> BTreeMap<TeamId, Vec<u64>> {
        let mut by_team: BTreeMap<TeamId, Vec<u64>> = BTreeMap::new();
        for (at, team) in &self.requests {
            by_team.entry(*team).or_default().push(at - self.started);
        }
        by_team
    }

    /// The figures of the storm so far.
    pub fn figures(&self, name: &'static str, teams: u64, all_back: Option<Duration>) -> Figures {
        let ran = self.now() - self.started;
        let seconds = ran.div_ceil(1000).max(1) as usize;
        let mut per_second = vec![0usize; seconds + 1];
        for (at, _) in &self.requests {
            per_second[((at - self.started) / 1000) as usize] += 1;
        }
        let mut requests_by_second = Vec::with_capacity(seconds);
        let mut total = 0;
        for n in per_second.iter().take(seconds) {
            total += n;
            requests_by_second.push(total);
        }
        let early = self
            .requests
            .iter()
            .filter(|(at, team)| self.backoff_until.get(team).is_some_and(|until| at < until))
            .count();
        let mut per_team: BTreeMap<TeamId, usize> = BTreeMap::new();
        for (_, team) in &self.requests {
            *per_team.entry(*team).or_default() += 1;
        }
        Figures {
            name,
            teams,
            peak_in_flight: self.peak_in_flight,
            peak_held: self.peak_held,
            requests: self.requests.len(),
            handshakes: self.handshakes.len(),
            peak_requests_per_s: busiest_second(self.requests.iter().map(|(at, _)| *at)),
            peak_handshakes_per_s: busiest_second(self.handshakes.iter().copied()),
            requests_by_second,
            all_back,
            ran: Duration::from_millis(ran),
            early,
            most_per_team: per_team.values().copied().max().unwrap_or(0),
            wall: self.wall.elapsed(),
        }
    }
}

/// The most events in any window of one second (times in ms, sorted).
fn busiest_second(times: impl Iterator<Item = u64>) -> usize {
    let times: Vec<u64> = times.collect();
    let mut best = 0;
    let mut from = 0;
    for to in 0..times.len() {
        while times[to] - times[from] >= 1000 {
            from += 1;
        }
        best = best.max(to - from + 1);
    }
    best
}

/// Request waves needed for `n` teams with `cap` slots.
pub fn waves(n: u64, cap: usize) -> u64 {
    n.div_ceil(cap as u64)
}

/// The longest a wave of requests takes: the server's round trip, then the
/// tick in which the answers are read and the freed slots are used again.
pub fn wave(config: &Config) -> Duration {
    ROUND_TRIP + config.tick
}

/// (a) `n` teams join at once, from a connected Global.
pub fn all_join(n: u64, config: &Config) -> (Figures, Duration) {
    let mut storm = Storm::new(config, Sockets::Stay);
    storm.begin();
    storm.join(n);
    // Waves of `cap` requests, each a round trip plus a tick; the last
    // wave's sockets then dial and their `Opened` is read a tick later.
    let bound =
        wave(config) * waves(n, config.max_requests_in_flight) as u32 + DIAL + config.tick * 3;
    let back = storm.until_all_back(n, bound * 4);
    (storm.figures("all join at start", n, back), bound)
}

/// A fleet of `n` teams, all open, ready for a storm.
pub fn connected_fleet(n: u64, config: &Config) -> Storm {
    let mut storm = Storm::new(config, Sockets::Stay);
    storm.join(n);
    let back = storm.until_all_back(n, Duration::from_secs(60));
    assert!(back.is_some(), "the fleet connects");
    storm
}

/// (b) Global drops while every request slot is taken and the rest of
/// the `n` teams wait for one.
pub fn global_drop(n: u64, config: &Config) -> (Figures, Duration) {
    let mut storm = Storm::new(config, Sockets::Stay);
    storm.join(n);
    // The joins are read and the first wave goes out.
    storm.tick();
    storm.begin();
    storm.drop_global();
    // Global reopens within its first backoff ceiling, dials, says hello
    // (read a tick later); then the waves, as at the start.
    let bound = config.backoff_min
        + config.tick
        + DIAL
        + config.tick
        + wave(config) * waves(n, config.max_requests_in_flight) as u32
        + DIAL
        + config.tick * 3;
    let back = storm.until_all_back(n, bound * 4);
    (
        storm.figures("Global drop, every slot in flight", n, back),
        bound,
    )
}

/// (c) Every one of `n` open team sockets drops at once.
pub fn mass_drop(n: u64, config: &Config) -> (Figures, Duration) {
    let mut storm = connected_fleet(n, config);
    storm.begin();
    storm.drop_every_team_socket();
    // Each team waits out its first backoff (at most `backoff_min`: they
    // had not failed before), then the waves.
    let bound = config.backoff_min
        + wave(config) * waves(n, config.max_requests_in_flight) as u32
        + DIAL
        + config.tick * 3;
    let back = storm.until_all_back(n, bound * 4);
    (storm.figures("every team socket drops", n, back), bound)
}

/// Issue 8 item 3: a server that accepts every team socket, says hello and
/// drops it at once, for `run` of core time.
#[allow(dead_code)] // benches/storm.rs prints it; tests/storms.rs looks closer
pub fn hello_and_drop(n: u64, config: &Config, run: Duration) -> Figures {
    hello_and_drop_storm(n, config, run).figures("hello and drop at once", n, None)
}

/// The storm of [`hello_and_drop`], for a closer look.
pub fn hello_and_drop_storm(n: u64, config: &Config, run: Duration) -> Storm {
    let mut storm = Storm::new(config, Sockets::HelloAndDrop);
    storm.begin();
    storm.join(n);
    storm.run_for(run);
    storm
}

/// The most one failed attempt of one of `teams` teams can take, from its
/// request to the core knowing it failed and asking again (its backoff
/// aside): a wait for a free request slot (a wave for each full wave of
/// other teams ahead), the round trip and its reading tick, the dial, and a
/// tick each to read the open, read the drop and send the retry.
pub fn cycle(config: &Config, teams: u64) -> Duration {
    let slot_wait = wave(config) * (waves(teams, config.max_requests_in_flight) - 1) as u32;
    slot_wait + wave(config) + DIAL + config.tick * 3
}

/// The backoff envelope: how many requests one team sends, on average, by
/// each whole second up to `seconds`, if every failure is answered at once
/// (any real round trip only delays it). The first goes out at once; the
/// k-th retry waits the sum of k full-jitter delays, each uniform over
/// `0..=min(backoff_max, backoff_min·2^i)` ms as the core draws them. The
/// expectation is exact: sum over k of P(S_k ≤ t), S_k's distribution built
/// by convolving discrete uniforms on a 1 ms grid.
pub fn envelope(config: &Config, seconds: usize) -> Vec<f64> {
    let horizon = seconds * 1000;
    let (min, max) = (ms(config.backoff_min), ms(config.backoff_max));
    // P(S_k = t) for t in 0..=horizon; S_0 = 0.
    let mut pmf = vec![0.0f64; horizon + 1];
    pmf[0] = 1.0;
    let mut expected = vec![1.0f64; seconds + 1];
    for k in 0.. {
        let ceiling = min.saturating_mul(1u64 << k.min(32)).min(max) as usize;
        let width = (ceiling + 1) as f64;
        // Convolve with uniform{0..=ceiling} through prefix sums.
        let mut prefix = vec![0.0f64; horizon + 2];
        for t in 0..=horizon {
            prefix[t + 1] = prefix[t] + pmf[t];
        }
        for t in 0..=horizon {
            let lo = t.saturating_sub(ceiling);
            pmf[t] = (prefix[t + 1] - prefix[lo]) / width;
        }
        let mut cdf = 0.0;
        let mut mass = 0.0;
        for (t, p) in pmf.iter().enumerate() {
            cdf += p;
            if t % 1000 == 0 {
                expected[t / 1000] += cdf;
            }
            mass += p;
        }
        if mass < 1e-9 {
            break;
        }
    }
    expected
}

/// The floor under [`envelope`]: requests every one of `teams` teams has
/// surely sent by each whole second up to `seconds`, if each failure is
/// answered at once. Every jitter draw is taken at its ceiling
/// (`min(backoff_max, backoff_min·2^i)`) and every attempt takes its
/// longest [`cycle`]. A client that stops retrying, or backs off further
/// than its configured bounds, falls below it.
pub fn floor(config: &Config, teams: u64, seconds: usize) -> Vec<u64> {
    let (min, max) = (ms(config.backoff_min), ms(config.backoff_max));
    let cycle = ms(cycle(config, teams));
    let mut floor = vec![0u64; seconds + 1];
    // Request `k` (0-based) has surely gone out by `sent` ms.
    let mut sent = cycle;
    let mut k = 0u32;
    while let Some(from) = usize::try_from(sent.div_ceil(1000))
        .ok()
        .filter(|&second| second <= seconds)
    {
        for n in &mut floor[from..] {
            *n = u64::from(k) + 1;
        }
        sent += min.saturating_mul(1u64 << k.min(32)).min(max) + cycle;
        k += 1;
    }
    floor
}
