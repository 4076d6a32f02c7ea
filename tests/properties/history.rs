//! What a random history is made of: a setup (the core's configuration)
//! and a list of acts, each something the network, the server, the process
//! or time can do. Acts name sockets and requests by position (`which`),
//! resolved against what exists when the act runs, so that almost every act
//! does something whatever came before it, and a shrunk history still reads.

use std::fmt;

use proptest::prelude::*;
use switchboard::Config;
use switchboard::core::HostPattern;
use switchboard::testkit::test_config;

/// Teams the histories use: few, so that joins, leaves and answers collide.
pub const TEAMS: u8 = 6;

/// A team id no history ever joins.
pub const UNKNOWN_TEAM: u8 = 99;

/// The core's configuration for one history, on top of the test kit's.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `max_requests_in_flight`.
    pub cap: usize,
    /// `max_events_per_step`: small ones leave events for later ticks.
    pub events_per_tick: usize,
    /// `max_teams`: small ones refuse joins.
    pub max_teams: usize,
    /// A `wss://` Global: plaintext team URLs are refused.
    pub secure: bool,
    /// Team URLs must point to `sim` or `*.sim`.
    pub hosts: bool,
    /// The core's seed.
    pub seed: u64,
}

impl Setup {
    /// The configuration this setup gives the core.
    pub fn config(&self) -> Config {
        let mut config = test_config();
        config.max_requests_in_flight = self.cap;
        config.max_events_per_step = self.events_per_tick;
        config.max_teams = self.max_teams;
        if self.secure {
            config.global_url = "wss://sim/global".into();
        }
        if self.hosts {
            config.team_hosts = ["sim", "*.sim"]
                .iter()
                .map(|h| h.parse::<HostPattern>().expect("valid pattern"))
                .collect();
        }
        config
    }
}

/// A `ws_url` the server hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Url {
    /// `https://sim/team/N`: usable in every setup.
    Good,
    /// `http://sim/team/N`: refused by a `wss://` Global.
    Plain,
    /// `ws://other.sim/t/N`: a subdomain, allowed by the host list.
    Subdomain,
    /// `ws://elsewhere/t/N`: refused by the host list.
    OtherHost,
    /// `ftp://sim/t/N`.
    BadScheme,
    /// `ws://` with no host.
    NoHost,
    /// `sim/t/N`, no scheme.
    NoScheme,
}

impl Url {
    /// The URL text for `team`.
    pub fn text(self, team: u64) -> String {
        match self {
            Url::Good => format!("https://sim/team/{team}"),
            Url::Plain => format!("http://sim/team/{team}"),
            Url::Subdomain => format!("ws://other.sim/t/{team}"),
            Url::OtherHost => format!("ws://elsewhere/t/{team}"),
            Url::BadScheme => format!("ftp://sim/t/{team}"),
            Url::NoHost => "ws://".to_owned(),
            Url::NoScheme => format!("sim/t/{team}"),
        }
    }
}

/// A bad frame, one of every class of bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// A binary frame.
    Binary,
    /// Not JSON.
    NotJson,
    /// JSON, not an object.
    NotObject,
    /// An object with no `type`.
    MissingType,
    /// A `type` this connection does not know (a team event on Global, a
    /// Global event on a team socket, or nonsense).
    UnknownType,
    /// A known event missing a field.
    MissingField,
    /// A known event with an ill-typed field.
    IllTyped,
}

/// Which `unique_id` a pong echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PongId {
    /// The newest ping on that socket.
    Newest,
    /// The oldest ping on that socket.
    Oldest,
    /// The newest, as a string.
    NewestAsString,
    /// One never sent.
    Unknown,
}

/// How a socket ends, short of the core aborting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The peer sent a close frame with this code.
    Remote(u16),
    /// Our close handshake completed.
    Local,
    /// TCP reset.
    Reset,
    /// A frame over the size limit.
    TooLarge,
    /// Our outbound queue overflowed.
    Overflow,
    /// The peer stalled a write or a message.
    Stalled,
    /// Another transport error.
    Error,
}

/// One thing that happens.
#[derive(Clone, Debug)]
pub enum Act {
    // ---- the Global server ----
    /// `team.join`.
    Join(u8),
    /// `team.left` on Global.
    LeaveOnGlobal(u8),
    /// `team.left` then `team.join` on Global, back to back.
    Rejoin(u8),
    /// Answers the `which`-th request the server holds (as it saw them
    /// arrive on the current Global socket).
    Answer { which: u8, url: Url },
    /// A `team.connect` answer nobody may have asked for: stale, duplicate,
    /// or for a team never joined.
    AnswerTeam { team: u8, url: Url },
    /// Refuses the `which`-th request the server holds with an `error`
    /// whose `received_message` is that `team.connect` (as an object, or
    /// as JSON text).
    Refuse { which: u8, as_text: bool },
    /// An `error` about a `team.connect` for `team`, asked for or not.
    RefuseTeam { team: u8 },
    /// An `error` about something else, with or without `received_message`.
    OtherError { received: bool },
    /// `healthcheck`.
    Healthcheck,
    /// A bad frame on Global.
    BadGlobal(Bad),
    /// `goodbye`.
    Goodbye,
    /// The next `n` Global sockets the core opens fail to open.
    RefuseGlobalOpens(u8),
    /// The Global socket ends.
    DropGlobal(Ending),
    // ---- sockets ----
    /// The `which`-th opening socket opens (a team's, or Global's), saying
    /// `hello` or not.
    Open { which: u8, hello: bool },
    /// The `which`-th opening socket fails to open.
    OpenFail { which: u8 },
    /// The `which`-th open socket ends (Global's included). One the core
    /// aborted ends `Aborted`, whatever `end` says.
    End { which: u8, end: Ending },
    /// `n` messages on the `which`-th open team socket (aborted or closing
    /// ones included: they still hand over what they read), `props` of them
    /// with props, spelt with a JSON escape or not.
    Messages {
        which: u8,
        n: u16,
        props: u16,
        escaped: bool,
    },
    /// A `hello` on the `which`-th open team socket.
    Hello { which: u8 },
    /// A `pong` on the `which`-th open team socket.
    Pong { which: u8, id: PongId },
    /// `team.left` on the `which`-th open team socket, naming its own team
    /// or another.
    LeaveOnSocket { which: u8, other: bool },
    /// A bad frame on the `which`-th open team socket.
    BadTeam { which: u8, bad: Bad },
    /// A websocket ping or pong on the `which`-th open socket (Global's
    /// included): a sign of life.
    Control { which: u8 },
    /// From now on the server answers everything at once (opens, requests,
    /// pings, probes, closes) — or stops doing so.
    Eager(bool),
    /// From now on the peers never answer a close frame (the core drops
    /// such a socket after `close_timeout`) — or answer again.
    IgnoreCloses(bool),
    // ---- the process ----
    /// Hands the changed teams to the state store.
    Commit,
    /// A clean restart: the store is saved, a new core resumes from it.
    Restart,
    /// A crash: a new core resumes from what the store last held.
    Crash,
    // ---- time ----
    /// One tick.
    Step,
    /// `n` ticks in one step (a driver that slept).
    Ticks(u8),
    /// One step of `ms` (a driver whose tick overran).
    StepBy(u16),
    /// Every consequence at this instant.
    Settle,
    /// A jump to the core's next deadline.
    Jump,
}

/// A history: what the property tests generate and shrink, printed one act
/// per line.
#[derive(Clone)]
pub struct History {
    /// The configuration.
    pub setup: Setup,
    /// What happens, in order.
    pub acts: Vec<Act>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "History {{ setup: {:?}, acts: [", self.setup)?;
        for act in &self.acts {
            writeln!(f, "    {act:?},")?;
        }
        write!(f, "] }}")
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![3 => Just(512usize), 1 => 1usize..=3],
        prop_oneof![3 => Just(65_536usize), 1 => 1usize..=4],
        prop_oneof![4 => Just(100_000usize), 1 => 1usize..=4],
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(cap, events_per_tick, max_teams, secure, hosts, seed)| Setup {
                cap,
                events_per_tick,
                max_teams,
                secure,
                hosts,
                seed,
            },
        )
}

fn team() -> impl Strategy<Value = u8> {
    prop_oneof![9 => 1..=TEAMS, 1 => Just(UNKNOWN_TEAM)]
}

fn url() -> impl Strategy<Value = Url> {
    prop_oneof![
        8 => Just(Url::Good),
        2 => Just(Url::Plain),
        1 => Just(Url::Subdomain),
        1 => Just(Url::OtherHost),
        1 => Just(Url::BadScheme),
        1 => Just(Url::NoHost),
        1 => Just(Url::NoScheme),
    ]
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        Just(Bad::Binary),
        Just(Bad::NotJson),
        Just(Bad::NotObject),
        Just(Bad::MissingType),
        Just(Bad::UnknownType),
        Just(Bad::MissingField),
        Just(Bad::IllTyped),
    ]
}

fn end() -> impl Strategy<Value = Ending> {
    prop_oneof![
        prop_oneof![Just(1000u16), Just(1001), Just(1011), Just(4000)].prop_map(Ending::Remote),
        Just(Ending::Local),
        Just(Ending::Reset),
        Just(Ending::TooLarge),
        Just(Ending::Overflow),
        Just(Ending::Stalled),
        Just(Ending::Error),
    ]
}

fn pong_id() -> impl Strategy<Value = PongId> {
    prop_oneof![
        4 => Just(PongId::Newest),
        1 => Just(PongId::Oldest),
        1 => Just(PongId::NewestAsString),
        1 => Just(PongId::Unknown),
    ]
}

/// Most acts are cheap and local; a few runs are long enough to fill a
/// reader's run (1,024 messages) and spill into the next.
fn messages() -> impl Strategy<Value = Act> {
    (
        any::<u8>(),
        prop_oneof![9 => 1u16..=12, 1 => 1000u16..=1100],
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(|(which, n, props, escaped)| Act::Messages {
            which,
            n,
            props: props % (n + 1),
            escaped,
        })
}

fn act() -> impl Strategy<Value = Act> {
    let w = || any::<u8>();
    prop_oneof![
        // the Global server
        6 => team().prop_map(Act::Join),
        2 => team().prop_map(Act::LeaveOnGlobal),
        1 => team().prop_map(Act::Rejoin),
        5 => (w(), url()).prop_map(|(which, url)| Act::Answer { which, url }),
        1 => (team(), url()).prop_map(|(team, url)| Act::AnswerTeam { team, url }),
        1 => (w(), any::<bool>()).prop_map(|(which, as_text)| Act::Refuse { which, as_text }),
        1 => team().prop_map(|team| Act::RefuseTeam { team }),
        1 => any::<bool>().prop_map(|received| Act::OtherError { received }),
        2 => Just(Act::Healthcheck),
        1 => bad().prop_map(Act::BadGlobal),
        1 => (0u8..=4).prop_map(Act::RefuseGlobalOpens),
        1 => end().prop_map(Act::DropGlobal),
        // sockets
        6 => (w(), prop_oneof![4 => Just(true), 1 => Just(false)])
            .prop_map(|(which, hello)| Act::Open { which, hello }),
        1 => w().prop_map(|which| Act::OpenFail { which }),
        2 => (w(), end()).prop_map(|(which, end)| Act::End { which, end }),
        6 => messages(),
        1 => w().prop_map(|which| Act::Hello { which }),
        2 => (w(), pong_id()).prop_map(|(which, id)| Act::Pong { which, id }),
        1 => (w(), any::<bool>()).prop_map(|(which, other)| Act::LeaveOnSocket { which, other }),
        1 => (w(), bad()).prop_map(|(which, bad)| Act::BadTeam { which, bad }),
        1 => w().prop_map(|which| Act::Control { which }),
        2 => any::<bool>().prop_map(Act::Eager),
        1 => any::<bool>().prop_map(Act::IgnoreCloses),
        // the process
        1 => Just(Act::Commit),
        1 => Just(Act::Restart),
        // time
        6 => Just(Act::Step),
        2 => (1u8..=200).prop_map(Act::Ticks),
        2 => (0u16..=3000).prop_map(Act::StepBy),
        3 => Just(Act::Settle),
        3 => Just(Act::Jump),
    ]
}

/// Rare acts, kept out of `act()` so that most histories run long.
fn rare() -> impl Strategy<Value = Act> {
    prop_oneof![Just(Act::Goodbye), Just(Act::Crash)]
}

/// Histories of `len` acts, about one in a hundred of them rare.
pub fn history(len: std::ops::Range<usize>) -> impl Strategy<Value = History> {
    let one = prop_oneof![99 => act(), 1 => rare()];
    (setup(), prop::collection::vec(one, len)).prop_map(|(setup, acts)| History { setup, acts })
}

/// Histories of acts where the server is eager from the start: the fleet
/// gets connected, then things go wrong.
pub fn eager_history(len: std::ops::Range<usize>) -> impl Strategy<Value = History> {
    history(len).prop_map(|mut h| {
        h.acts.insert(0, Act::Eager(true));
        h
    })
}
