//! What one tick of the core costs with 10,000 connected teams: idle (no
//! timer due, no event), and amortised over a steady 15s ping interval.
//! `cargo bench --bench idle_tick`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::Config;
use switchboard::testkit::{Peer, test_config};

const TEAMS: u64 = 10_000;

fn fleet(ping: Duration) -> Peer {
    let config = Config {
        ping_interval: ping,
        pong_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let mut peer = Peer::connected_fleet(&config, 1, TEAMS);
    // Let the stale connect-phase deadlines drain (see tests/idle_cost.rs).
    peer.advance(Duration::from_secs(3));
    peer
}

fn idle_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick_10k_teams");
    let mut idle = fleet(Duration::from_secs(24 * 3600));
    group.bench_function("idle", |b| {
        b.iter(|| {
            idle.core.step();
            // Commands are drained every tick by the driver too.
            std::hint::black_box(idle.core.drain_commands());
        })
    });
    let mut pinging = fleet(Duration::from_secs(15));
    group.bench_function("pinging_every_15s", |b| {
        b.iter(|| {
            pinging.core.step();
            std::hint::black_box(pinging.core.drain_commands());
        })
    });
    group.finish();
}

criterion_group!(benches, idle_tick);
criterion_main!(benches);
