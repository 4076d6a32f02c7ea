//! Where a recording's segments live: `FILE` is the newest, `FILE.1` the
//! one before it, `FILE.2` the one before that, as log rotation names them.
//! A replay reads them oldest first.

use std::io;
use std::path::{Path, PathBuf};

/// The path of the segment `age` rotations old (0: `base` itself).
pub fn path(base: &Path, age: usize) -> PathBuf {
    if age == 0 {
        return base.to_path_buf();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{age}"));
    PathBuf::from(name)
}

/// How many rotated segments lie beside `base`: `FILE.1` … `FILE.n`,
/// counting up to the first missing one.
pub fn rotated(base: &Path) -> usize {
    (1..).take_while(|&age| path(base, age).exists()).count()
}

/// The segments of the recording at `base`, oldest first.
pub fn chain(base: &Path) -> Vec<PathBuf> {
    (0..=rotated(base))
        .rev()
        .map(|age| path(base, age))
        .collect()
}

/// Removes the rotated segments an earlier recording left at `base`: once
/// `base` is rewritten they belong to no recording.
pub fn remove_rotated(base: &Path) -> io::Result<usize> {
    let n = rotated(base);
    for age in 1..=n {
        std::fs::remove_file(path(base, age))?;
    }
    Ok(n)
}

/// Rotates: `FILE.(keep-1)` … `FILE` move up one age, and the segment
/// `keep` rotations old is removed. Returns whether a segment was removed.
pub fn rotate(base: &Path, keep: usize) -> io::Result<bool> {
    let oldest = path(base, keep);
    let removed = oldest.exists();
    if removed {
        std::fs::remove_file(&oldest)?;
    }
    for age in (0..keep).rev() {
        let from = path(base, age);
        if from.exists() {
            std::fs::rename(&from, path(base, age + 1))?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, text: &str) {
        std::fs::write(p, text).expect("write");
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).expect("read")
    }

    #[test]
    fn rotation_ages_segments_and_drops_the_oldest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("run.rec");
        touch(&base, "s0");
        assert!(!rotate(&base, 2).expect("rotate"));
        touch(&base, "s1");
        assert!(!rotate(&base, 2).expect("rotate"));
        touch(&base, "s2");
        assert_eq!(chain(&base), [path(&base, 2), path(&base, 1), base.clone()]);
        assert!(rotate(&base, 2).expect("rotate"));
        touch(&base, "s3");
        assert_eq!(read(&path(&base, 2)), "s1");
        assert_eq!(read(&path(&base, 1)), "s2");
        assert_eq!(read(&base), "s3");
        assert!(!path(&base, 3).exists());
        // keep 0: the segment is simply replaced.
        assert!(rotate(&base, 0).expect("rotate"));
        assert!(!base.exists());
        assert_eq!(remove_rotated(&base).expect("remove"), 2);
        assert_eq!(chain(&base), std::slice::from_ref(&base));
    }
}
