//! This process's own figures as Linux's /proc gives them: resident memory
//! and its peak, open descriptors, CPU time; and the machine's memory.
//!
//! Each figure is `None` where /proc is missing or says something
//! unexpected (not Linux, a sandbox): every caller reports "n/a" or falls
//! back to a default, so a missing figure is never an error.

use std::time::Duration;

/// Resident memory now, bytes (`VmRSS` in /proc/self/status).
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS").and_then(kib_to_bytes)
}

/// The most resident memory this process has had, bytes (`VmHWM` in
/// /proc/self/status).
pub fn peak_resident_bytes() -> Option<u64> {
    status_kib("VmHWM").and_then(kib_to_bytes)
}

/// Descriptors this process holds open.
///
/// Listing /proc/self/fd opens a descriptor on it, which the listing shows
/// too; it exists only while counting, so it is left out: the figure is
/// what the process holds between two counts, as another process listing
/// /proc/PID/fd would see it.
pub fn open_descriptors() -> Option<usize> {
    let listed = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(listed.saturating_sub(1))
}

/// CPU time every thread of this process has run, summed (the first field
/// of each /proc/self/task/*/schedstat, in ns). `None` if any thread's
/// cannot be read.
pub fn cpu_time() -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns = ns.saturating_add(text.split_whitespace().next()?.parse().ok()?);
    }
    Some(Duration::from_nanos(ns))
}

/// This machine's memory, bytes (`MemTotal` in /proc/meminfo).
pub fn memory_total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemTotal").and_then(kib_to_bytes)
}

/// A `KEY:  1234 kB` line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, key)
}

/// The value of the `KEY:  1234 kB` line of a /proc file, in KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    line.split_whitespace().next()?.parse().ok()
}

fn kib_to_bytes(kib: u64) -> Option<u64> {
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kib_line_is_read_by_its_exact_key() {
        let status = "VmRSSx:\t1 kB\nVmRSS:\t  2048 kB\nVmHWM:\t4096 kB\n";
        assert_eq!(kib_field(status, "VmRSS"), Some(2048));
        assert_eq!(kib_field(status, "VmHWM"), Some(4096));
        assert_eq!(kib_field(status, "VmSwap"), None);
        assert_eq!(kib_field("VmRSS:\tlots kB\n", "VmRSS"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_descriptors_and_cpu_time() {
        let rss = resident_bytes().expect("VmRSS");
        assert!(rss > 0 && rss.is_multiple_of(1024));
        assert!(peak_resident_bytes().expect("VmHWM") >= rss);
        // Other tests open files meanwhile: only that it reads.
        assert!(open_descriptors().is_some());
        assert!(cpu_time().is_some());
        assert!(memory_total_bytes().expect("MemTotal") >= rss);
    }
}
