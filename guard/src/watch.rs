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
    /// any of the files' contents may have changed (at most one pending).
    /// Needs no Tokio runtime: debouncing runs on its own thread.
    pub fn new(paths: &[PathBuf]) -> Result<(Self, mpsc::Receiver<()>), WatchError> {
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
        let initial = fingerprints(&files);
        std::thread::Builder::new()
            .name("list-watch".into())
            .spawn(move || debounce_loop(raw_rx, tx, files, initial))
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

fn debounce_loop(
    raw: std_mpsc::Receiver<notify::Result<notify::Event>>,
    tx: mpsc::Sender<()>,
    files: Vec<PathBuf>,
    mut last: Vec<Option<Fingerprint>>,
) {
    loop {
        // Wait for the first event of a burst; Err means the watcher was
        // dropped, so stop.
        match raw.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "list watcher error");
                continue;
            }
            Err(_) => return,
        }
        let start = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            match raw.recv_timeout(DEBOUNCE.min(left)) {
                Ok(_) => continue,
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let now = fingerprints(&files);
        if now == last {
            // An unrelated file in the same directory, or a touch that
            // changed nothing we compare.
            continue;
        }
        for (f, (a, b)) in files.iter().zip(last.iter().zip(&now)) {
            if a != b {
                tracing::info!(path = %f.display(), present = b.is_some(), "list file changed");
            }
        }
        last = now;
        match tx.try_send(()) {
            // Full: a reload is already pending and will read the new files.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
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
        let (_w, mut rx) = ListWatcher::new(std::slice::from_ref(&list)).unwrap();
        fs::write(&list, "a.example\nb.example\n").unwrap();
        expect_reload(&mut rx, "rewrite").await;
        expect_quiet(&mut rx, "after rewrite").await;
    }

    #[tokio::test]
    async fn rename_over_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        fs::write(&list, "a.example\n").unwrap();
        let (_w, mut rx) = ListWatcher::new(std::slice::from_ref(&list)).unwrap();
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
        let (_w, mut rx) = ListWatcher::new(std::slice::from_ref(&list)).unwrap();

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
        let (w, mut rx) = ListWatcher::new(std::slice::from_ref(&list)).unwrap();
        assert_eq!(w.dirs(), [dir.path().to_path_buf()]);
        fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        fs::write(dir.path().join("notes.txt"), "hello again\n").unwrap();
        expect_quiet(&mut rx, "unrelated file").await;
        // And the watcher still works afterwards.
        fs::write(&list, "changed.example\n").unwrap();
        expect_reload(&mut rx, "rewrite after unrelated").await;
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = ListWatcher::new(&[PathBuf::from("/nonexistent-dns-guard/lists/x.txt")])
            .err()
            .expect("should fail");
        assert!(
            err.to_string()
                .contains("cannot watch /nonexistent-dns-guard/lists"),
            "{err}"
        );
    }
}
