//! Watches the list files and says when they changed, so lists reload
//! without a restart. Kubernetes updates a mounted ConfigMap by swapping the
//! `..data` symlink, never by writing the file we were given, so we watch the
//! parent directories and compare what each path resolves to.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before looking: an editor's save or a
/// ConfigMap swap is several events within a few milliseconds.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A file rewritten without pause still gets checked this often.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// A file still being written (a download straight into the list's path)
/// is read once its writer has closed it and it has held still for one
/// `DEBOUNCE`, or after this long.
const SETTLE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the file watcher: {0}; check inotify limits (sysctl fs.inotify.max_user_instances)")]
    Init(#[source] notify::Error),
    #[error("cannot watch {dir}: {source}; check the directory exists, or raise fs.inotify.max_user_watches")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot start the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Keeps the watch alive; dropping it stops notifications and closes the
/// receiver.
pub struct ListWatcher {
    _watcher: RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl ListWatcher {
    /// Watches the directories holding `paths`. The receiver gets `()` after
    /// any of the files' contents may have changed since `since` (at most
    /// one pending): take the snapshot before the first load, so a change
    /// while the process starts is not missed. Needs no Tokio runtime:
    /// debouncing runs on its own thread.
    pub fn new(paths: &[PathBuf], since: Snapshot) -> Result<(Self, mpsc::Receiver<()>), WatchError> {
        let (raw_tx, raw_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            // Fails only once the debounce thread has gone; nothing to do.
            let _ = raw_tx.send(ev);
        })
        .map_err(WatchError::Init)?;

        let mut dirs = BTreeSet::new();
        for p in paths {
            dirs.insert(parent(p));
        }
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    dir: dir.clone(),
                    source,
                })?;
        }
        // A list symlinked from elsewhere (not a ConfigMap, whose targets
        // live under the watched directory) changes where it points to;
        // watch that directory too, best effort.
        for p in paths {
            if let Ok(real) = std::fs::canonicalize(p) {
                let rdir = parent(&real);
                let covered = dirs.iter().any(|d| {
                    rdir.starts_with(d) || canonical(d).is_some_and(|c| rdir.starts_with(c))
                });
                if !covered && watcher.watch(&rdir, RecursiveMode::NonRecursive).is_ok() {
                    dirs.insert(rdir);
                }
            }
        }

        let (tx, rx) = mpsc::channel(1);
        let files = paths.to_vec();
        let initial = since.0;
        std::thread::Builder::new()
            .name("list-watch".into())
            .spawn(move || {
                debounce_loop(raw_rx, tx, files, initial);
            })
            .map_err(WatchError::Thread)?;
        Ok((
            ListWatcher {
                _watcher: watcher,
                dirs: dirs.into_iter().collect(),
            },
            rx,
        ))
    }

    /// Directories being watched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn canonical(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p).ok()
}

/// What a list path resolves to now. A new inode catches rename-over and
/// symlink swaps; size, mtime and ctime catch in-place rewrites. `None`
/// while the file is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// What the list paths resolved to at one moment (`snapshot`).
pub struct Snapshot(Vec<Option<Fingerprint>>);

pub fn snapshot(paths: &[PathBuf]) -> Snapshot {
    Snapshot(fingerprints(paths))
}

fn fingerprints(files: &[PathBuf]) -> Vec<Option<Fingerprint>> {
    files
        .iter()
        .map(|f| {
            // `metadata` follows every symlink, e.g. list -> ..data/list.
            std::fs::metadata(f).ok().map(|m| Fingerprint {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        })
        .collect()
}

/// Sends a reload for each settled change of `files` from `last`; returns
/// once the watcher or the receiver has gone.
fn debounce_loop(
    raw: std_mpsc::Receiver<notify::Result<notify::Event>>,
    tx: mpsc::Sender<()>,
    files: Vec<PathBuf>,
    mut last: Vec<Option<Fingerprint>>,
) -> Option<()> {
    // A change between the snapshot and the watch sent no event we saw:
    // look once before waiting for one.
    let mut first = true;
    let mut writers = Writers::default();
    loop {
        if !std::mem::take(&mut first) && !burst(&raw, &mut writers)? {
            continue;
        }
        let now = fingerprints(&files);
        if now == last {
            // An unrelated file in the same directory, or a touch that
            // changed nothing we compare.
            continue;
        }
        let now = settled(&raw, &mut writers, &files, &last, now)?;
        for (f, (a, b)) in files.iter().zip(last.iter().zip(&now)) {
            if a != b {
                tracing::info!(path = %f.display(), present = b.is_some(), "list file changed");
            }
        }
        last = now;
        match tx.try_send(()) {
            // Full: a reload is already pending and will read the new files.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return None,
        }
    }
}

/// Waits for a burst of events and its end: `DEBOUNCE` of quiet, or
/// `MAX_DELAY` after its first event. `Some(false)` for a watcher error,
/// `None` once the watcher has gone.
fn burst(raw: &std_mpsc::Receiver<notify::Result<notify::Event>>, writers: &mut Writers) -> Option<bool> {
    match raw.recv().ok()? {
        Ok(ev) => writers.see(&ev),
        Err(e) => {
            tracing::warn!(error = %e, "list watcher error");
            return Some(false);
        }
    }
    let start = Instant::now();
    loop {
        let left = MAX_DELAY.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Some(true);
        }
        match raw.recv_timeout(DEBOUNCE.min(left)) {
            Ok(ev) => {
                if let Ok(ev) = ev {
                    writers.see(&ev);
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => return Some(true),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// `now` once the files hold still: the same fingerprints one `DEBOUNCE`
/// apart, and every file that changed since `last` closed by its writer (a
/// download that pauses between lines for longer than `DEBOUNCE` would
/// otherwise be read in part, and the names not yet written unblocked) and
/// ending in a newline (a writer that closed mid-line would have its last
/// name read cut short, a name it was never meant to block); or
/// `SETTLE_MAX` after the first look. `None` once the watcher has gone.
fn settled(
    raw: &std_mpsc::Receiver<notify::Result<notify::Event>>,
    writers: &mut Writers,
    files: &[PathBuf],
    last: &[Option<Fingerprint>],
    mut now: Vec<Option<Fingerprint>>,
) -> Option<Vec<Option<Fingerprint>>> {
    let start = Instant::now();
    let mut told = false;
    loop {
        // Events meanwhile are this same write; the fingerprints decide,
        // with the writers' opens and closes.
        let until = Instant::now() + DEBOUNCE;
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
            match raw.recv_timeout(left) {
                Ok(Ok(ev)) => writers.see(&ev),
                Ok(Err(_)) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        let again = fingerprints(files);
        let changed = || files.iter().zip(last.iter().zip(&again)).filter(|(_, (a, b))| a != b).map(|(f, _)| f);
        let unfinished = changed()
            .find(|f| writers.writing(f))
            .map(|f| (f, "is still open for writing"))
            .or_else(|| changed().find(|f| !ends_in_newline(f)).map(|f| (f, "does not end in a newline")));
        if again == now && unfinished.is_none() {
            return Some(now);
        }
        if start.elapsed() >= SETTLE_MAX {
            tracing::warn!("list files still changing, open for writing, or without a last newline, after {SETTLE_MAX:?}; reading them anyway");
            return Some(again);
        }
        if let (Some((f, why)), false) = (unfinished, std::mem::replace(&mut told, true)) {
            tracing::info!(path = %f.display(), "list file {why}: waiting for the rest (at most {SETTLE_MAX:?})");
        }
        now = again;
    }
}

/// The files a writer has changed and not yet closed, from inotify's
/// IN_MODIFY and IN_CLOSE_WRITE. Only writes made while we watch count: a
/// writer that opened the file before is not seen (the newline rule and
/// `SETTLE_MAX` still hold). A mark older than `SETTLE_MAX` counts for
/// nothing (a `truncate(2)` has no close; an overflowed inotify queue can
/// lose one), and at most `MAX_WRITERS` are kept.
#[derive(Default)]
struct Writers {
    open: std::collections::HashMap<PathBuf, Instant>,
}

/// Files marked at once, at most: far more than a list directory holds.
const MAX_WRITERS: usize = 1024;

impl Writers {
    fn see(&mut self, ev: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        if ev.need_rescan() {
            // Events were lost: a close among them would never come.
            self.open.clear();
            return;
        }
        for p in &ev.paths {
            match ev.kind {
                // Data written to a regular file: a symlink or a directory
                // made in the directory never gets a close.
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) =>
                {
                    if self.open.len() >= MAX_WRITERS {
                        self.open.retain(|_, at| at.elapsed() < SETTLE_MAX);
                    }
                    if self.open.len() < MAX_WRITERS {
                        self.open.insert(file_key(p), Instant::now());
                    }
                }
                // Closed, removed, or renamed (whatever has the name now was
                // written elsewhere).
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    self.open.remove(&file_key(p));
                }
                _ => {}
            }
        }
    }

    /// Whether `list` (or the file its symlinks lead to) is being written.
    fn writing(&self, list: &Path) -> bool {
        let marked = |p: &Path| self.open.get(&file_key(p)).is_some_and(|at| at.elapsed() < SETTLE_MAX);
        marked(list) || marked(&resolved(list))
    }
}

/// One name per file, however the path to it was spelled: its directory
/// with every symlink followed, and its own name (the file may be gone).
fn file_key(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => canonical(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
            .unwrap_or_else(|| dir.to_path_buf())
            .join(name),
        _ => p.to_path_buf(),
    }
}

/// `p` with every symlink followed, or `p` itself once gone.
fn resolved(p: &Path) -> PathBuf {
    canonical(p).unwrap_or_else(|| p.to_path_buf())
}

/// Whether `path` is empty or its last byte is a newline.
fn ends_in_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let last = std::fs::File::open(path).and_then(|mut f| {
        if f.seek(SeekFrom::End(0))? == 0 {
            return Ok(None);
        }
        f.seek(SeekFrom::End(-1))?;
        let mut b = [0u8];
        f.read_exact(&mut b)?;
        Ok(Some(b[0]))
    });
    // Gone or unreadable: the reload reports it.
    !matches!(last, Ok(Some(b)) if b != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use tokio::time::timeout;

    async fn expect_reload(rx: &mut mpsc::Receiver<()>, what: &str) {
        match timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(())) => {}
            Ok(None) => panic!("{what}: watcher channel closed"),
            Err(_) => panic!("{what}: no reload notification within 2 s"),
        }
    }

    fn watch(list: &Path) -> (ListWatcher, mpsc::Receiver<()>) {
        let paths = [list.to_path_buf()];
        ListWatcher::new(&paths, snapshot(&paths)).unwrap()
    }

    async fn expect_quiet(rx: &mut mpsc::Receiver<()>, what: &str) {
        if let Ok(r) = timeout(Duration::from_millis(800), rx.recv()).await {
            panic!("{what}: unexpected notification {r:?}");
        }
    }

    #[tokio::test]
    async fn plain_rewrite_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = watch(&list);
        fs::write(&list, "a.example\nb.example\n").unwrap();
        expect_reload(&mut rx, "rewrite").await;
        expect_quiet(&mut rx, "after rewrite").await;
    }

    #[tokio::test]
    async fn rename_over_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = watch(&list);
        let tmp = dir.path().join(".block.txt.tmp");
        // Same size, so only the inode tells them apart.
        fs::write(&tmp, "c.example\n").unwrap();
        fs::rename(&tmp, &list).unwrap();
        expect_reload(&mut rx, "rename-over").await;
    }

    #[tokio::test]
    async fn configmap_symlink_swap_reloads() {
        // The layout kubelet's AtomicWriter makes:
        //   block.txt -> ..data/block.txt, ..data -> ..2026_11_28_01
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("..2026_11_28_01")).unwrap();
        fs::write(d.join("..2026_11_28_01/block.txt"), "a.example\n").unwrap();
        symlink("..2026_11_28_01", d.join("..data")).unwrap();
        symlink("..data/block.txt", d.join("block.txt")).unwrap();
        let list = d.join("block.txt");
        let (_w, mut rx) = watch(&list);

        fs::create_dir(d.join("..2026_11_28_02")).unwrap();
        fs::write(d.join("..2026_11_28_02/block.txt"), "b.example\n").unwrap();
        symlink("..2026_11_28_02", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        fs::remove_dir_all(d.join("..2026_11_28_01")).unwrap();
        expect_reload(&mut rx, "..data swap").await;
        assert_eq!(fs::read_to_string(&list).unwrap(), "b.example\n");
    }

    #[tokio::test]
    async fn unrelated_file_does_not_reload() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (w, mut rx) = watch(&list);
        assert_eq!(w.dirs(), [dir.path().to_path_buf()]);
        fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        fs::write(dir.path().join("notes.txt"), "hello again\n").unwrap();
        expect_quiet(&mut rx, "unrelated file").await;
        // And the watcher still works afterwards.
        fs::write(&list, "changed.example\n").unwrap();
        expect_reload(&mut rx, "rewrite after unrelated").await;
    }

    /// A list downloaded straight into its path, a chunk every 100 ms for
    /// 3 s (past `MAX_DELAY`): one reload, once the last chunk is written.
    #[tokio::test]
    async fn a_file_still_being_written_is_not_read_half_way() {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = watch(&list);
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let (list, done) = (list.clone(), done.clone());
            std::thread::spawn(move || {
                let mut f = fs::File::create(&list).unwrap();
                for i in 0..30 {
                    writeln!(f, "n{i}.example").unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        match timeout(Duration::from_secs(6), rx.recv()).await {
            Ok(Some(())) => assert!(done.load(Ordering::SeqCst), "reloaded while the file was still being written"),
            other => panic!("no reload: {other:?}"),
        }
        writer.join().unwrap();
        expect_quiet(&mut rx, "after the download").await;
        assert_eq!(fs::read_to_string(&list).unwrap().lines().count(), 30);
    }

    /// A download that pauses between whole lines for longer than the quiet
    /// time (a slow mirror): read once its writer closes the file, not at
    /// the first pause with the names still to come unblocked.
    #[tokio::test]
    async fn a_file_open_for_writing_is_read_once_closed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = watch(&list);
        let mut f = fs::File::create(&list).unwrap();
        for i in 0..3 {
            writeln!(f, "n{i}.example").unwrap();
            f.flush().unwrap();
            expect_quiet(&mut rx, "a pause between lines, the file still open").await;
        }
        drop(f);
        expect_reload(&mut rx, "the file closed").await;
        expect_quiet(&mut rx, "after it").await;
    }

    /// A list symlink pointed elsewhere by unlink and symlink (`ln -sf`):
    /// the new link is created, never written or closed, and must not read
    /// as a file still being written (which would hold the reload 30 s).
    #[tokio::test]
    async fn a_symlink_pointed_elsewhere_reloads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("v1.txt"), "a.example\n").unwrap();
        fs::write(dir.path().join("v2.txt"), "b.example\n").unwrap();
        let list = dir.path().join("block.txt");
        symlink("v1.txt", &list).unwrap();
        let (_w, mut rx) = watch(&list);
        fs::remove_file(&list).unwrap();
        symlink("v2.txt", &list).unwrap();
        expect_reload(&mut rx, "the link re-pointed").await;
        assert_eq!(fs::read_to_string(&list).unwrap(), "b.example\n");
    }

    /// A download that pauses mid-line, longer than the quiet time: read
    /// once the line is whole, not with its last name cut short.
    #[tokio::test]
    async fn a_file_that_stops_mid_line_is_read_once_the_line_ends() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = watch(&list);
        let mut f = fs::File::create(&list).unwrap();
        write!(f, "accounts.example.com\naccounts.google.com").unwrap();
        f.flush().unwrap();
        expect_quiet(&mut rx, "a last line cut short").await;
        writeln!(f, ".phish.example").unwrap();
        drop(f);
        expect_reload(&mut rx, "the line whole").await;
        assert!(fs::read_to_string(&list).unwrap().ends_with(".phish.example\n"));
    }

    /// A change between the snapshot (taken before the first load) and the
    /// watch reloads once.
    #[tokio::test]
    async fn a_change_before_the_watch_started_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let paths = [list.clone()];
        let before = snapshot(&paths);
        fs::write(&list, "a.example\nb.example\n").unwrap();
        let (_w, mut rx) = ListWatcher::new(&paths, before).unwrap();
        expect_reload(&mut rx, "change during startup").await;
        expect_quiet(&mut rx, "after it").await;
    }

    #[test]
    fn missing_directory_is_an_error() {
        let paths = [PathBuf::from("/nonexistent-dns-guard/lists/x.txt")];
        let err = ListWatcher::new(&paths, snapshot(&paths))
            .err()
            .expect("should fail");
        assert!(
            err.to_string()
                .contains("cannot watch /nonexistent-dns-guard/lists"),
            "{err}"
        );
    }
}
