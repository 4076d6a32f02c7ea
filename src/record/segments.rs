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

/// The name the previous recording at `base` is kept under.
pub fn previous(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

/// What is at `base` when it is something other than a regular file (a
/// symlink, a device, a pipe, a folder), which is never renamed, written
/// or recorded to; `None` when nothing is there or a regular file is.
pub fn special(base: &Path) -> Option<&'static str> {
    let kind = std::fs::symlink_metadata(base).ok()?.file_type();
    if kind.is_file() {
        None
    } else if kind.is_symlink() {
        Some("a symbolic link")
    } else if kind.is_dir() {
        Some("a folder")
    } else {
        Some("a device, pipe or socket")
    }
}

/// Makes room for a new recording at `base`: the one there (with its
/// rotated segments) becomes `FILE.previous` (`FILE.previous.1`, …),
/// replacing the one kept before, so a restart after a crash does not
/// erase the recording of the crash. Returns whether one was kept. A
/// `base` that is not a regular file is left alone.
pub fn keep_previous(base: &Path) -> io::Result<bool> {
    if special(base).is_some() {
        return Ok(false);
    }
    let previous = previous(base);
    remove_rotated(&previous)?;
    match std::fs::remove_file(&previous) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let ages = rotated_ages(base)?;
    for &age in &ages {
        std::fs::rename(path(base, age), path(&previous, age))?;
    }
    match std::fs::rename(base, &previous) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(!ages.is_empty()),
        Err(error) => Err(error),
    }
}

/// Removes every rotated segment (`FILE.N`) beside `base`.
fn remove_rotated(base: &Path) -> io::Result<()> {
    for age in rotated_ages(base)? {
        std::fs::remove_file(path(base, age))?;
    }
    Ok(())
}

/// The ages of every `FILE.N` beside `base`, gaps or not: a segment left
/// past a gap would otherwise be chained in once rotation reached it.
fn rotated_ages(base: &Path) -> io::Result<Vec<usize>> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory: nothing there (creating the file will say why).
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut ages = Vec::new();
    for entry in entries {
        let file = entry?.file_name();
        let file = file.to_string_lossy();
        if let Some(age) = file
            .strip_prefix(&prefix)
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&age| age > 0)
        {
            ages.push(age);
        }
    }
    Ok(ages)
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
        assert_eq!(rotated(&base), 2);

        // A new recording: the old one (and a stray segment past a gap)
        // is kept as FILE.previous, whole.
        touch(&path(&base, 17), "left past a gap");
        touch(&dir.path().join("run.rec.bak"), "not a segment");
        assert!(keep_previous(&base).expect("keep"));
        let previous = previous(&base);
        assert_eq!(read(&path(&previous, 2)), "s1");
        assert_eq!(read(&path(&previous, 1)), "s2");
        assert_eq!(read(&path(&previous, 17)), "left past a gap");
        assert!(!base.exists() && rotated(&base) == 0);
        assert!(dir.path().join("run.rec.bak").exists());
        // The next one replaces it.
        touch(&base, "t0");
        assert!(keep_previous(&base).expect("keep"));
        assert_eq!(read(&previous), "t0");
        assert_eq!(rotated(&previous), 0);
        assert!(!path(&previous, 17).exists());
        assert!(!keep_previous(&base).expect("nothing to keep"));

        // A symlink (to a device, say) is never moved.
        let link = dir.path().join("link.rec");
        std::os::unix::fs::symlink(&previous, &link).expect("symlink");
        assert_eq!(special(&link), Some("a symbolic link"));
        assert!(!keep_previous(&link).expect("left alone"));
        assert!(std::fs::symlink_metadata(&link).is_ok());
        assert!(!segments_moved(&link));
    }

    fn segments_moved(base: &Path) -> bool {
        super::previous(base).exists()
    }
}
