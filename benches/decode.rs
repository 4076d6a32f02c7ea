//! What deciding one team frame costs: the reference decoder plus a
//! `str::contains` props test (the counting path before the fast decoder),
//! against `decode_team_frame(text, false)` (the counting path now), in one
//! sitting. `cargo bench --bench decode`.
//!
//! `yardstick_mix` is the message stream the external load server sends each
//! team (1,000 frames: every 10th with `props`, a third of those escaped as
//! `pr\u006fps`, escaped quotes, `caf\u00e9`, some with `text` before
//! `type`); criterion's time for it is per 1,000 frames. The other groups are
//! one frame each.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

#[path = "../tests/decode/yardstick.rs"]
mod yardstick;
use yardstick::{SINGLE, after, before, count, yardstick_frames};

fn decode(c: &mut Criterion) {
    // Both paths must count what the load server expects, and agree on
    // each single frame, or the numbers below compare wrong things.
    yardstick::check();
    let (mix, _) = yardstick_frames(1000, 10);
    let mut group = c.benchmark_group("yardstick_mix");
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("before", |b| b.iter(|| count(&mix, before)));
    group.bench_function("after", |b| b.iter(|| count(&mix, after)));
    group.finish();

    let mut group = c.benchmark_group("frame");
    for (name, frame) in SINGLE {
        group.bench_with_input(BenchmarkId::new("before", name), frame, |b, f| {
            b.iter(|| before(black_box(f)))
        });
        group.bench_with_input(BenchmarkId::new("after", name), frame, |b, f| {
            b.iter(|| after(black_box(f)))
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
