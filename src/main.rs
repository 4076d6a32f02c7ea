//! The switchboard binary: parse the command line, set up logging, and call
//! into the library. No protocol logic lives here.

/// jemalloc, not glibc's malloc: under reconnect churn glibc's heap kept
/// freed per-connection buffers resident (the 10-minute soak's RSS rose
/// ~0.6 MiB a minute while the live heap stayed flat); jemalloc returns
/// them and the same soak stays flat (README, soak).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at start (`_RJEM_MALLOC_CONF` overrides them).
/// Freed pages are handed back at once: with jemalloc's default 10 s decay
/// a burst's freed pages stayed resident and raised the peak RSS, and with
/// a 100 ms decay they were purged later, by a background thread (1-4 ms of
/// the yardstick's 5 s idle phase) or without one by whichever thread next
/// allocated (0.5-3 ms of it). Purging at once costs no measurable CPU in
/// the yardstick's cells and lowers the peak (1,000 x 1,000: 35.2 MiB
/// against 39.4-39.9; README, Performance). No background thread: an idle
/// fleet costs no CPU at all.
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_SETTINGS: Option<&'static u8> =
    Some(&b"background_thread:false,dirty_decay_ms:0\0"[0]);

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
