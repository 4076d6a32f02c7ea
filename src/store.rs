//! The state file: every team's counters, durable across restarts and
//! `kill -9`, so a restart resumes each team where it stood.
//!
//! One redb database per Global URL. redb commits are atomic and fsynced
//! (copy-on-write B-trees, checksummed commit slots), so after a crash the
//! file holds exactly the last committed transaction; only a lost disk loses
//! counts. The file is stamped with a format marker, a schema version and the
//! Global URL it belongs to (redacted: no credential on disk), and
//! [`Store::open`] refuses anything else rather than overwrite or repair it.
//!
//! Disk I/O stays off the caller's thread: [`StoreWriter`] takes the latest
//! value of each changed team and commits them from its own OS thread at most
//! once per interval, so a crash loses at most the changes of the last
//! interval plus one commit. Each commit is logged at debug level with how
//! long it took: the "one commit" of that bound, measured where it happens
//! (`tests/restart.rs` takes its bound from these lines).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redb::{
    Builder, Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable,
    StorageError, TableDefinition, TableError,
};
use tracing::{debug, warn};

use crate::protocol::TeamId;
use crate::redact;

/// The value of the `format` key: what says this redb file is ours.
const FORMAT_MARKER: &str = "switchboard team counters";
/// The schema this build writes. A file with a higher one was written by a
/// newer switchboard and is refused, never downgraded.
pub const SCHEMA_VERSION: u64 = 1;

/// Text keys and values: the stamp stays readable with any redb tool.
const META: TableDefinition<&str, &str> = TableDefinition::new("switchboard_meta");
const KEY_FORMAT: &str = "format";
const KEY_VERSION: &str = "schema_version";
const KEY_GLOBAL_URL: &str = "global_url";
/// Team id → (joined, message_count, props_count).
const TEAMS: TableDefinition<u64, (bool, u64, u64)> = TableDefinition::new("teams");
/// Team id → (socket id, messages, props) of its [`crate::core::SocketMark`]:
/// kept beside the counts so that a leader resuming from this file adds
/// exactly what the workers read since (files without it read as no marks).
const MARKS: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("socket_marks");
/// Team id → its [`SavedTeam::unreported`] sockets, each (socket id,
/// messages, props), oldest first (files without it read as none).
const UNREPORTED: TableDefinition<u64, Vec<(u64, u64, u64)>> =
    TableDefinition::new("unreported_sockets");

/// redb's page cache grows up to this; the file for 10,000 teams is far smaller.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// One team as the state file keeps it: the core's own record of what
/// survives a restart.
pub use crate::core::SavedTeam;

/// Why the state file cannot be opened, read or written. Each displays as
/// one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a redb database (empty, text, random bytes).
    #[error("state file {}: not a switchboard state file ({reason}); refusing to touch it", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What redb or the check said.
        reason: String,
    },
    /// A redb database that fails redb's own checks.
    #[error("state file {}: corrupt ({reason}); refusing to touch it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb or the check said.
        reason: String,
    },
    /// A redb database without our marker: someone else's file.
    #[error("state file {}: a redb database that switchboard did not write (no \"{FORMAT_MARKER}\" marker); refusing to touch it", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Written by a newer switchboard.
    #[error("state file {}: schema version {found} is newer than this build's {SCHEMA_VERSION}; refusing to downgrade it", path.display())]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// The version the file carries.
        found: u64,
    },
    /// The file keeps the counts of another Global API (both URLs shown
    /// redacted, as they are compared).
    #[error("state file {}: belongs to Global URL {found}, not {expected}", path.display())]
    OtherGlobal {
        /// The file.
        path: PathBuf,
        /// The URL the file was created for.
        found: String,
        /// The URL this run connects to.
        expected: String,
    },
    /// Another process (or another `Store` in this one) has the file open.
    #[error("state file {}: locked: another process (or store) has it open", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The operating system refused an operation on the file or its folder.
    #[error("state file {}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A read or a commit failed after the file was opened.
    #[error("state file {}: {op}: {source}", path.display())]
    Db {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// The writer's thread could not be started.
    #[error("state file {}: cannot start the writer thread: {source}", path.display())]
    Spawn {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// [`StoreWriter::flush`] reached its deadline with changes unwritten.
    #[error("state file {}: flush stopped at its deadline with {pending} teams unwritten (last error: {last_error})", path.display())]
    FlushIncomplete {
        /// The file.
        path: PathBuf,
        /// Teams whose latest values are not on disk.
        pending: usize,
        /// The last commit error, or `none` when a commit was still running.
        last_error: String,
    },
}

/// What one commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// Teams written.
    pub teams: usize,
    /// Teams whose update carried a count below the stored one; the stored
    /// count was kept.
    pub regressions: usize,
}

/// An open state file, locked against other processes while it lives.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the state file for `global_url`, creating it (and its folders)
    /// if missing. Refuses, without writing to it, a file that is not a
    /// redb database, is corrupt, is not ours, has a newer schema, belongs to
    /// another Global URL, or is open in another process.
    ///
    /// A file left by a crash is recovered by redb (its last commit stands)
    /// before its stamp can be read; that is the one case in which opening
    /// writes to a file before checking it.
    pub fn open(path: &Path, global_url: &str) -> Result<Store, StoreError> {
        match fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(StoreError::NotADatabase {
                    path: path.to_owned(),
                    reason: "empty file".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(path, global_url)?,
            Err(source) => return Err(io_error(path, "stat", source)),
        }

        // Check the stamp read-only first, so that a file we refuse is left
        // byte for byte as it was: a writable open rewrites the header.
        let clean = probe(path, global_url)?;
        // The integrity check verifies every page's checksum, so a damaged
        // file is refused here rather than panicking redb later. With every
        // commit two-phase, a bad primary commit slot is an error, never a
        // silent fall back to the commit before it.
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        // Again after the writable open: a recovered file is checked only
        // now, and the file may have been swapped between the two opens.
        let txn = store.begin_read()?;
        check_stamp(path, &txn, global_url)?;
        drop(txn);
        // Said only now that it is true: a file that cannot be recovered
        // is refused above, in the error, and never called recovered.
        if !clean {
            warn!(path = %path.display(), "state file was not closed cleanly; recovered its last commit");
        }
        Ok(store)
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every saved team, sorted by id.
    pub fn load(&self) -> Result<Vec<SavedTeam>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(TEAMS)
            .map_err(|e| db_error(&self.path, "open teams table", e.into()))?;
        let rows = table
            .iter()
            .map_err(|e| db_error(&self.path, "read teams", e.into()))?;
        let marks = match txn.open_table(MARKS) {
            Ok(marks) => Some(marks),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_error(&self.path, "open marks table", e.into())),
        };
        let unreported = match txn.open_table(UNREPORTED) {
            Ok(table) => Some(table),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_error(&self.path, "open unreported table", e.into())),
        };
        let mut teams = Vec::new();
        for row in rows {
            let (id, value) = row.map_err(|e| db_error(&self.path, "read teams", e.into()))?;
            let (joined, message_count, props_count) = value.value();
            let socket = match &marks {
                Some(marks) => marks
                    .get(id.value())
                    .map_err(|e| db_error(&self.path, "read marks", e.into()))?
                    .map(|m| mark(m.value())),
                None => None,
            };
            let unreported = match &unreported {
                Some(table) => table
                    .get(id.value())
                    .map_err(|e| db_error(&self.path, "read unreported", e.into()))?
                    .map(|marks| marks.value().into_iter().map(mark).collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            teams.push(SavedTeam {
                id: TeamId(id.value()),
                joined,
                message_count,
                props_count,
                socket,
                unreported,
            });
        }
        Ok(teams)
    }

    /// Writes `teams` in one durable transaction: when this returns `Ok`
    /// they survive a crash. A count lower than the stored one is not
    /// written back over it (counts never go backwards on disk); such teams
    /// are counted in the report.
    pub fn save(&self, teams: &[SavedTeam]) -> Result<SaveReport, StoreError> {
        let path = &self.path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| db_error(path, "begin write", e.into()))?;
        // Two fsyncs instead of one, so that a damaged primary slot is
        // reported at open rather than silently rolled back (see `open`).
        txn.set_two_phase_commit(true);
        let mut report = SaveReport::default();
        {
            let mut table = txn
                .open_table(TEAMS)
                .map_err(|e| db_error(path, "open teams table", e.into()))?;
            let mut marks = txn
                .open_table(MARKS)
                .map_err(|e| db_error(path, "open marks table", e.into()))?;
            let mut unreported = txn
                .open_table(UNREPORTED)
                .map_err(|e| db_error(path, "open unreported table", e.into()))?;
            for team in teams {
                let old = table
                    .insert(
                        team.id.0,
                        (team.joined, team.message_count, team.props_count),
                    )
                    .map_err(|e| db_error(path, "write team", e.into()))?
                    .map(|guard| guard.value());
                if let Some((_, old_messages, old_props)) = old
                    && (old_messages > team.message_count || old_props > team.props_count)
                {
                    report.regressions += 1;
                    let kept = (
                        team.joined,
                        old_messages.max(team.message_count),
                        old_props.max(team.props_count),
                    );
                    table
                        .insert(team.id.0, kept)
                        .map_err(|e| db_error(path, "write team", e.into()))?;
                } else {
                    // With the counts they describe only (a regression
                    // keeps the old counts and their marks).
                    if let Some(mark) = team.socket {
                        marks
                            .insert(team.id.0, row(&mark))
                            .map_err(|e| db_error(path, "write mark", e.into()))?;
                    }
                    let waiting = if team.unreported.is_empty() {
                        unreported.remove(team.id.0).map(|_| ())
                    } else {
                        let rows: Vec<_> = team.unreported.iter().map(row).collect();
                        unreported.insert(team.id.0, rows).map(|_| ())
                    };
                    waiting.map_err(|e| db_error(path, "write unreported", e.into()))?;
                }
                report.teams += 1;
            }
        }
        txn.commit()
            .map_err(|e| db_error(path, "commit", e.into()))?;
        Ok(report)
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| db_error(&self.path, "begin read", e.into()))
    }
}

/// A socket mark as the file keeps it: (socket id, messages, props).
fn row(mark: &crate::core::SocketMark) -> (u64, u64, u64) {
    (mark.conn.0, mark.messages, mark.props)
}

/// A socket mark from its [`row`].
fn mark((conn, messages, props): (u64, u64, u64)) -> crate::core::SocketMark {
    crate::core::SocketMark {
        conn: crate::bridge::ConnId(conn),
        messages,
        props,
    }
}

/// Checks the stamp of an existing file without writing to it. `Ok(false)`:
/// the file was left by a crash, and only a writable open can recover it and
/// then read its stamp.
fn probe(path: &Path, global_url: &str) -> Result<bool, StoreError> {
    // redb trusts the pages of a cleanly closed file and may panic on a
    // damaged one; a read that panics is a corrupt file, not a crash of ours.
    let read = std::panic::catch_unwind(|| {
        match Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open_read_only(path)
        {
            Ok(db) => {
                let txn = db
                    .begin_read()
                    .map_err(|e| db_error(path, "begin read", e.into()))?;
                check_stamp(path, &txn, global_url)?;
                Ok(true)
            }
            Err(DatabaseError::RepairAborted) => Ok(false),
            Err(e) => Err(open_error(path, e)),
        }
    });
    read.unwrap_or_else(|_| {
        Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "redb panicked reading it".into(),
        })
    })
}

/// Creates a stamped state file at `path`, or does nothing if one appeared
/// meanwhile. The file is built and stamped under a temporary name and
/// hard-linked into place, so `path` is never seen half-made: a crash here
/// cannot leave an unstamped database that the next start would refuse.
/// Folders it creates are 0700 and the file 0600: the counts are the
/// operator's business only.
fn create(path: &Path, global_url: &str) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut folders = fs::DirBuilder::new();
    folders.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folders, 0o700);
    folders
        .create(dir)
        .map_err(|e| io_error(path, "create folder", e))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(path.file_name().unwrap_or_default());
    temp_name.push(format!(".{}.creating", std::process::id()));
    let temp = dir.join(temp_name);
    let result = create_stamped(&temp, path, global_url).and_then(|()| {
        match fs::hard_link(&temp, path) {
            Ok(()) => {}
            // Another process created it first: open theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(path, "link new file into place", e)),
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(path, "sync folder", e))
    });
    let _ = fs::remove_file(&temp);
    result
}

fn create_stamped(temp: &Path, path: &Path, global_url: &str) -> Result<(), StoreError> {
    // A leftover from a crashed creation by a process with our pid.
    let _ = fs::remove_file(temp);
    // Made empty and 0600 first (never through a link planted since): redb
    // initialises an empty file and keeps its mode.
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(temp)
        .map_err(|e| io_error(path, "create file", e))?;
    let db = Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(temp)
        .map_err(|e| open_error(path, e))?;
    let stamp = || -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_two_phase_commit(true);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_FORMAT, FORMAT_MARKER)?;
            meta.insert(KEY_VERSION, SCHEMA_VERSION.to_string().as_str())?;
            // Redacted: no secret on disk, and a rotated token (or
            // password) still finds its counts.
            meta.insert(KEY_GLOBAL_URL, redact::url(global_url).as_str())?;
            txn.open_table(TEAMS)?;
        }
        txn.commit()?;
        Ok(())
    };
    stamp().map_err(|e| db_error(path, "stamp new file", e))?;
    db.close()
        .map_err(|e| db_error(path, "close new file", e.into()))
}

/// Reads the stamp and says whether the file is ours, for this Global URL,
/// in a schema this build understands.
fn check_stamp(path: &Path, txn: &ReadTransaction, global_url: &str) -> Result<(), StoreError> {
    let foreign = || StoreError::Foreign {
        path: path.to_owned(),
    };
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_))
        | Err(TableError::TableTypeMismatch { .. })
        | Err(TableError::TableIsMultimap(_)) => return Err(foreign()),
        Err(TableError::Storage(e)) => return Err(storage_error(path, e)),
        Err(e) => return Err(db_error(path, "open meta table", e.into())),
    };
    let get = |key: &str| -> Result<Option<String>, StoreError> {
        meta.get(key)
            .map(|value| value.map(|v| v.value().to_owned()))
            .map_err(|e| storage_error(path, e))
    };
    if get(KEY_FORMAT)?.as_deref() != Some(FORMAT_MARKER) {
        return Err(foreign());
    }
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let version = get(KEY_VERSION)?.ok_or_else(|| corrupt("no schema version".into()))?;
    let version: u64 = version
        .parse()
        .map_err(|_| corrupt(format!("schema version {version:?} is not a number")))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(corrupt(format!("unknown schema version {version}")));
    }
    // Compared redacted: files written before the stamp was redacted hold
    // the URL whole, and must still open (and never be quoted whole).
    let found = get(KEY_GLOBAL_URL)?.ok_or_else(|| corrupt("no Global URL".into()))?;
    let (found, expected) = (redact::url(&found), redact::url(global_url));
    if found != expected {
        return Err(StoreError::OtherGlobal {
            path: path.to_owned(),
            found,
            expected,
        });
    }
    match txn.open_table(TEAMS) {
        Ok(_) => Ok(()),
        Err(TableError::Storage(e)) => Err(storage_error(path, e)),
        Err(e) => Err(corrupt(format!("teams table: {e}"))),
    }
}

fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    let path = path.to_owned();
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked { path }
        }
        DatabaseError::UpgradeRequired(version) => StoreError::NotADatabase {
            path,
            reason: format!("a redb file format {version} database"),
        },
        DatabaseError::Storage(e) => storage_error(&path, e),
        e => db_error(&path, "open", e.into()),
    }
}

fn storage_error(path: &Path, error: StorageError) -> StoreError {
    let path = path.to_owned();
    match error {
        // redb reports a missing magic number or an empty file this way.
        StorageError::Io(e) if e.kind() == io::ErrorKind::InvalidData => StoreError::NotADatabase {
            path,
            reason: e.to_string(),
        },
        StorageError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
            path,
            reason: format!("truncated: {e}"),
        },
        StorageError::Io(source) => StoreError::Io {
            path,
            op: "read",
            source,
        },
        StorageError::Corrupted(reason) => StoreError::Corrupt { path, reason },
        e => db_error(&path, "read", e.into()),
    }
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

fn db_error(path: &Path, op: &'static str, source: redb::Error) -> StoreError {
    StoreError::Db {
        path: path.to_owned(),
        op,
        source: Box::new(source),
    }
}

/// Where the state of `global_url` lives by default:
/// `$XDG_STATE_HOME/switchboard/<slug>-<hash>.redb`, else
/// `$HOME/.local/state/switchboard/...`, else `<slug>-<hash>.redb` in the
/// current directory. The slug makes the name readable; the hash, of the
/// full URL, makes it unique per URL. A URL spelled differently (a trailing
/// slash, a query) is another file: [`Store::open`] checks the stamp anyway.
pub fn default_path(global_url: &str) -> PathBuf {
    state_path(
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
        global_url,
    )
}

fn state_path(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    global_url: &str,
) -> PathBuf {
    // The XDG spec says to ignore relative values.
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let name = file_name(global_url);
    if let Some(base) = xdg_state_home.and_then(absolute) {
        base.join("switchboard").join(name)
    } else if let Some(home) = home.and_then(absolute) {
        home.join(".local/state/switchboard").join(name)
    } else {
        PathBuf::from(name)
    }
}

/// `ws://user:pw@Example.com:8080/api/global?x=1` →
/// `example.com-8080-api-global-<8 hex>.redb`: host, port and path, never
/// the credentials.
fn file_name(global_url: &str) -> String {
    let rest = global_url
        .split_once("://")
        .map_or(global_url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut slug = String::new();
    for c in host_port.chars().chain(['/']).chain(path.chars()) {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(64).collect();
    let slug = if slug.is_empty() {
        "global".into()
    } else {
        slug
    };
    let hash = crate::fnv::fnv1a_64(global_url.as_bytes());
    format!("{slug}-{:08x}.redb", (hash >> 32) ^ (hash & 0xffff_ffff))
}

/// What the writer has done so far, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Successful commits.
    pub commits: u64,
    /// Team rows written, over all commits.
    pub teams_written: u64,
    /// Duration of the last successful commit.
    pub last_commit: Duration,
    /// Longest successful commit.
    pub max_commit: Duration,
    /// Failed commits (each retried).
    pub errors: u64,
    /// Team rows whose update carried a lower count than the file held; the
    /// file kept the higher one. Nonzero means a bug upstream.
    pub regressions: u64,
    /// Calls to [`StoreWriter::update`] with at least one team.
    pub updates: u64,
    /// Every update up to this one (counting from 1) is on disk.
    pub updates_durable: u64,
    /// Teams waiting for the next commit.
    pub pending: usize,
}

/// Commits team changes from its own OS thread, at most once per interval,
/// so that callers never wait for the disk.
///
/// Pending changes are a map from team to its latest value: an update
/// replaces the pending value of each team it names (latest wins), so the
/// pending set never holds more entries than there are teams, however long
/// the disk stalls, and nothing is dropped.
#[derive(Debug)]
pub struct StoreWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<WriterState>,
    wake: Condvar,
    /// Commits to fail before touching the file: the unit tests' way to
    /// drive the retry path.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicU32,
}

#[derive(Debug, Default)]
struct WriterState {
    pending: HashMap<TeamId, SavedTeam>,
    /// Set by flush or drop: commit what is pending now, then stop; give up
    /// retrying at this instant.
    stop_by: Option<Instant>,
    /// The thread has closed the file and ended.
    done: bool,
    last_error: Option<String>,
    stats: WriterStats,
}

/// The least pause before retrying a failed commit, so that a short
/// interval does not turn a failing disk into a busy loop.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// At most one commit-error log line per this period; the rest are counted.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // The state stays consistent under a panic: every update is a merge.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn injected_failure(&self, path: &Path) -> Option<StoreError> {
        self.fail_commits
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .ok()
            .map(|_| io_error(path, "commit", io::Error::other("injected failure")))
    }

    #[cfg(not(test))]
    fn injected_failure(&self, _path: &Path) -> Option<StoreError> {
        None
    }
}

impl StoreWriter {
    /// Starts the writer thread, which owns `store` until it stops.
    pub fn spawn(store: Store, interval: Duration) -> Result<StoreWriter, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(WriterState::default()),
            wake: Condvar::new(),
            #[cfg(test)]
            fail_commits: Default::default(),
        });
        let path = store.path.clone();
        let thread = thread::Builder::new()
            .name("state-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(store, &shared, interval)
            })
            .map_err(|source| StoreError::Spawn {
                path: path.clone(),
                source,
            })?;
        Ok(StoreWriter {
            shared,
            thread: Some(thread),
            path,
        })
    }

    /// Queues the latest values of `teams`. Never waits for the disk: the
    /// lock it takes is held only for this merge and for the writer to swap
    /// the pending map out.
    pub fn update(&self, teams: &[SavedTeam]) {
        if teams.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        let was_empty = state.pending.is_empty();
        for team in teams {
            state.pending.insert(team.id, team.clone());
        }
        state.stats.updates += 1;
        state.stats.pending = state.pending.len();
        drop(state);
        if was_empty {
            self.shared.wake.notify_all();
        }
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.lock().stats
    }

    /// Commits everything pending, retrying failed commits until `deadline`,
    /// then stops the thread and closes the file. `Ok` means every update is
    /// on disk and the file is closed.
    pub fn flush(mut self, deadline: Instant) -> Result<WriterStats, StoreError> {
        let mut state = self.shared.lock();
        state.stop_by = Some(deadline);
        self.shared.wake.notify_all();
        while !state.done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let done = state.done;
        let stats = state.stats;
        let last_error = state.last_error.clone();
        drop(state);
        if done && let Some(thread) = self.thread.take() {
            // Already past its last statement: this returns at once.
            let _ = thread.join();
        }
        if done && stats.pending == 0 {
            Ok(stats)
        } else {
            Err(StoreError::FlushIncomplete {
                path: self.path.clone(),
                pending: stats.pending,
                last_error: last_error.unwrap_or_else(|| "none".into()),
            })
        }
    }
}

impl Drop for StoreWriter {
    /// Asks the thread for one last commit and returns at once: a drop
    /// never waits for the disk. Call [`StoreWriter::flush`] to know the
    /// outcome.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let mut state = self.shared.lock();
            state.stop_by.get_or_insert_with(Instant::now);
            drop(state);
            self.shared.wake.notify_all();
        }
    }
}

/// Marks the writer done when its thread ends, even by a panic, so that a
/// flush never waits for a thread that is gone.
struct DoneGuard<'a>(&'a Shared);

impl Drop for DoneGuard<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            tracing::error!("state writer thread panicked; no further commits");
        }
        self.0.lock().done = true;
        self.0.wake.notify_all();
    }
}

fn write_loop(store: Store, shared: &Shared, interval: Duration) {
    let _done = DoneGuard(shared);
    let mut writer = Writer {
        store,
        shared,
        interval,
        last_commit_start: None,
        spare: HashMap::new(),
        teams: Vec::new(),
        failed_last: false,
        last_log: None,
        unlogged_errors: 0,
    };
    while let Some(updates) = writer.next_batch() {
        match writer.commit() {
            (Ok(report), took) => writer.committed(&report, took, updates),
            (Err(error), _) => writer.failed(&error),
        }
    }
    // Closes the file before the guard says the writer is done.
    drop(writer);
}

/// What the writer thread does next.
enum Next {
    /// Commit what is pending now.
    Commit,
    /// Wait for an update, or until then.
    WaitUntil(Option<Instant>),
    /// Stopping, and nothing more will be tried.
    Stop,
}

/// The writer thread's state between commits.
struct Writer<'a> {
    store: Store,
    shared: &'a Shared,
    interval: Duration,
    last_commit_start: Option<Instant>,
    /// The map of the last batch, emptied, swapped in for the next one: the
    /// callers' merges find it already sized for every team.
    spare: HashMap<TeamId, SavedTeam>,
    teams: Vec<SavedTeam>,
    failed_last: bool,
    last_log: Option<Instant>,
    unlogged_errors: u64,
}

impl Writer<'_> {
    /// Waits until something is pending and a commit is due, and takes the
    /// pending teams; the count of updates they hold. `None` once stopping
    /// is over.
    fn next_batch(&mut self) -> Option<u64> {
        let shared = self.shared;
        let mut state = shared.lock();
        loop {
            let now = Instant::now();
            match self.next(&state, now) {
                Next::Commit => break,
                Next::WaitUntil(at) => state = wait(shared, state, at.map(|at| at - now)),
                Next::Stop => return None,
            }
        }
        state.stats.pending = 0;
        std::mem::swap(&mut state.pending, &mut self.spare);
        Some(state.stats.updates)
    }

    fn next(&self, state: &WriterState, now: Instant) -> Next {
        if let Some(stop_by) = state.stop_by {
            // Stopping: one immediate attempt, retries until stop_by.
            if state.pending.is_empty() || (self.failed_last && now >= stop_by) {
                return Next::Stop;
            }
            let retry_at = self
                .last_commit_start
                .filter(|_| self.failed_last)
                .map_or(now, |t| (t + RETRY_PAUSE).min(stop_by));
            return if now >= retry_at {
                Next::Commit
            } else {
                Next::WaitUntil(Some(retry_at))
            };
        }
        if state.pending.is_empty() {
            return Next::WaitUntil(None);
        }
        let pause = if self.failed_last {
            self.interval.max(RETRY_PAUSE)
        } else {
            self.interval
        };
        let due = self.last_commit_start.map_or(now, |t| t + pause);
        if now >= due {
            Next::Commit
        } else {
            Next::WaitUntil(Some(due))
        }
    }

    /// Writes the batch taken; what came of it, and how long it took.
    fn commit(&mut self) -> (Result<SaveReport, StoreError>, Duration) {
        self.teams.clear();
        self.teams.extend(self.spare.drain().map(|(_, team)| team));
        // Keys in order: the B-tree is written front to back.
        self.teams.sort_unstable_by_key(|t| t.id);
        let start = Instant::now();
        self.last_commit_start = Some(start);
        let result = match self.shared.injected_failure(&self.store.path) {
            Some(error) => Err(error),
            None => self.store.save(&self.teams),
        };
        (result, start.elapsed())
    }

    /// The batch, holding `updates` updates, is on disk.
    fn committed(&mut self, report: &SaveReport, took: Duration, updates: u64) {
        self.failed_last = false;
        // Before the lock: callers' updates never wait on a log write.
        debug!(
            teams = report.teams,
            took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            "state committed"
        );
        let mut state = self.shared.lock();
        let stats = &mut state.stats;
        stats.commits += 1;
        stats.teams_written += report.teams as u64;
        stats.regressions += report.regressions as u64;
        stats.last_commit = took;
        stats.max_commit = stats.max_commit.max(took);
        stats.updates_durable = updates;
        if report.regressions > 0 {
            warn!(
                teams = report.regressions,
                "state update carried lower counts than the file; kept the file's"
            );
        }
    }

    /// The batch was not written: back into the pending map, under any
    /// newer values that arrived meanwhile; warned about at most every
    /// [`ERROR_LOG_PERIOD`].
    fn failed(&mut self, error: &StoreError) {
        self.failed_last = true;
        let mut state = self.shared.lock();
        for team in &self.teams {
            state.pending.entry(team.id).or_insert_with(|| team.clone());
        }
        state.stats.pending = state.pending.len();
        state.stats.errors += 1;
        state.last_error = Some(error.to_string());
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_PERIOD)
        {
            warn!(
                %error,
                pending = state.pending.len(),
                suppressed = self.unlogged_errors,
                "state commit failed; retrying"
            );
            self.last_log = Some(now);
            self.unlogged_errors = 0;
        } else {
            self.unlogged_errors += 1;
        }
    }
}

fn wait<'a>(
    shared: &'a Shared,
    state: MutexGuard<'a, WriterState>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, WriterState> {
    match timeout {
        Some(timeout) => {
            shared
                .wake
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
        None => shared
            .wake
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn team(id: u64, message_count: u64, props_count: u64) -> SavedTeam {
        SavedTeam {
            id: TeamId(id),
            joined: true,
            message_count,
            props_count,
            socket: None,
            unreported: Vec::new(),
        }
    }

    #[test]
    fn file_name_is_readable_stable_and_free_of_credentials() {
        assert_eq!(
            file_name("ws://127.0.0.1:8080/global"),
            "127.0.0.1-8080-global-3650d959.redb" // checked against a Python FNV-1a
        );
        let secret = file_name("wss://bot:hunter2@Example.COM/api/global?token=x");
        assert!(secret.starts_with("example.com-api-global-"), "{secret}");
        assert!(!secret.contains("hunter2") && !secret.contains("token"));
        // Same host and path, other query: another file.
        assert_ne!(
            file_name("ws://h/g?a=1"),
            file_name("ws://h/g?a=2"),
            "the hash covers the full URL"
        );
        assert_eq!(
            file_name("???"),
            format!("global-{}", &file_name("???")[7..])
        );
        assert!(file_name(&"x".repeat(500)).len() < 64 + 20);
    }

    #[test]
    fn state_path_prefers_xdg_then_home_then_the_current_directory() {
        let url = "ws://127.0.0.1:8080/global";
        let name = file_name(url);
        assert_eq!(
            state_path(Some("/xdg".into()), Some("/home/u".into()), url),
            Path::new("/xdg/switchboard").join(&name)
        );
        assert_eq!(
            state_path(Some("relative".into()), Some("/home/u".into()), url),
            Path::new("/home/u/.local/state/switchboard").join(&name)
        );
        assert_eq!(state_path(None, Some("".into()), url), PathBuf::from(&name));
    }

    /// What `tracing` logs while `f` runs on this thread.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (out, text)
    }

    #[test]
    fn a_truncated_state_file_is_refused_and_never_said_to_be_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let url = "ws://127.0.0.1:8080/global";
        let store = Store::open(&path, url).unwrap();
        store.save(&[team(1, 2, 3)]).unwrap();
        drop(store);
        let good = fs::read(&path).unwrap();
        fs::write(&path, &good[..good.len() / 2]).unwrap();
        let (opened, log) = logged(|| Store::open(&path, url));
        let error = opened.expect_err("a truncated file is refused");
        assert!(error.to_string().contains("refusing"), "{error}");
        assert!(!log.contains("recover"), "{log}");
    }

    #[test]
    fn save_keeps_the_higher_count_and_reports_the_regression() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, "ws://g").unwrap();
        store.save(&[team(1, 10, 4), team(2, 5, 5)]).unwrap();
        let report = store
            .save(&[team(1, 7, 6), team(2, 6, 5), team(3, 1, 0)])
            .unwrap();
        assert_eq!(
            report,
            SaveReport {
                teams: 3,
                regressions: 1
            }
        );
        assert_eq!(
            store.load().unwrap(),
            vec![team(1, 10, 6), team(2, 6, 5), team(3, 1, 0)]
        );
    }

    fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn writer_retries_failed_commits_without_losing_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let writer =
            StoreWriter::spawn(Store::open(&path, "ws://g").unwrap(), Duration::ZERO).unwrap();
        writer.shared.fail_commits.store(3, Ordering::Relaxed);
        writer.update(&[team(1, 5, 0), team(2, 1, 1)]);
        poll_until("a failed commit", || writer.stats().errors >= 1);
        writer.update(&[team(1, 6, 0), team(3, 1, 0)]);
        let stats = writer
            .flush(Instant::now() + Duration::from_secs(30))
            .unwrap();
        assert_eq!(stats.errors, 3);
        assert_eq!(stats.pending, 0);
        assert_eq!(stats.updates_durable, 2);
        let store = Store::open(&path, "ws://g").unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![team(1, 6, 0), team(2, 1, 1), team(3, 1, 0)]
        );
    }

    #[test]
    fn flush_gives_up_at_its_deadline_and_says_what_is_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let writer =
            StoreWriter::spawn(Store::open(&path, "ws://g").unwrap(), Duration::ZERO).unwrap();
        writer
            .shared
            .fail_commits
            .store(u32::MAX, Ordering::Relaxed);
        writer.update(&[team(1, 5, 0), team(2, 1, 1)]);
        let error = writer
            .flush(Instant::now() + Duration::from_millis(300))
            .unwrap_err();
        assert!(
            matches!(error, StoreError::FlushIncomplete { pending: 2, .. }),
            "{error}"
        );
        let line = error.to_string();
        assert!(
            line.contains("injected failure") && !line.contains('\n'),
            "{line}"
        );
    }
}
