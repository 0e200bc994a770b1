//! The file source: Kubernetes objects from YAML/JSON files, re-read when they change. A file
//! that fails to parse is reported with its path and the object that failed, and the last good
//! state keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::objects::{self, LoadError, ObjectSet};
use super::snapshot::Store;
use super::view::ClusterView;

/// The demo cluster compiled in: what `clusterdns serve` answers with no arguments.
pub const EMBEDDED_DEMO: &str = include_str!("../../manifests/examples/demo-cluster.yaml");

/// The poll behind inotify: it sees what inotify cannot (filesystems without it, edits through
/// symlinks into other directories), and a stat of a few files per interval costs nothing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// Quiet time after a change event before reading: coalesces the events of one save (truncate,
/// writes, close) and of a directory swap.
const SETTLE: Duration = Duration::from_millis(10);
/// Quiet time after writes into a file that is still open: the writer may not be done.
const SETTLE_WRITING: Duration = Duration::from_millis(100);
/// After a failed reload, one more try this much later: the file may have been read while
/// still being written, and its last write may have left no event or stat change behind.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

pub fn embedded_objects() -> Result<ObjectSet, LoadError> {
    let mut set = ObjectSet::default();
    set.add_text(EMBEDDED_DEMO, Path::new("<embedded demo-cluster.yaml>"))?;
    Ok(set)
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// A manifest file that had content in the last good load and is empty now. That is a file
/// being rewritten (`kubectl get ... > cluster.yaml` truncates it, then writes when the API
/// answers), not a cluster without those objects: a dump is never empty (`kind: List` with no
/// items at least). To drop a file's objects, remove it or write an empty List.
fn emptied<'a>(last_good: &Fingerprint, now: &'a Fingerprint) -> Option<&'a Path> {
    now.iter()
        .find(|(f, _, len)| {
            *len == 0 && f.is_file() && last_good.iter().any(|(g, _, glen)| g == f && *glen > 0)
        })
        .map(|(f, _, _)| f.as_path())
}

/// What one reload did.
enum Reload {
    Loaded {
        services: usize,
        pods: usize,
    },
    /// A file is empty: see [`emptied`].
    Emptied(PathBuf),
    /// The files changed while they were read: what was read may be half of a write.
    ChangedWhileReading,
}

fn fingerprint(path: &Path) -> Fingerprint {
    let files = objects::manifest_files(path).unwrap_or_default();
    let mut fp: Fingerprint = files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (f, mtime, len)
        })
        .collect();
    // The directory itself: a file removed or added changes the listing.
    if let Ok(meta) = std::fs::metadata(path) {
        fp.push((path.to_owned(), meta.modified().ok(), meta.len()));
    }
    fp
}

/// Loads `path` and publishes it, then re-reads it whenever a file changes, until `cancel`:
/// inotify events on the directories (seen within milliseconds; a directory watch also sees
/// renames over a file and ConfigMap `..data` swaps), and a poll every `interval` as a fallback.
/// A broken initial load is an error (there is no last good state to serve).
/// `keep_pods`: pods are kept only when answers or views need them (`pods verified`,
/// placement, the prober), as the API source watches them only then: in big clusters they are
/// most of the objects. Else only their addresses and nodes, and only when zone-aware answers
/// need them (`zone_first`, or a Service asking for in-zone traffic).
pub fn start(
    path: PathBuf,
    view: Arc<ClusterView>,
    interval: Duration,
    keep_pods: bool,
    zone_first: bool,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, LoadError> {
    let mut last = fingerprint(&path);
    let mut last_good = last.clone();
    let store = placements_if_needed(Store::load_path(&path, keep_pods)?, zone_first);
    info!(path = %path.display(), services = store.services.len(), pods = store.pods.len(), "loaded manifests");
    view.publish(Arc::new(store), true);
    release_freed_memory();
    let mut watch = match inotify::Watch::new(&path) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(path = %path.display(), "no inotify ({e}): changes are seen by polling every {interval:?}");
            None
        }
    };
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When to reload after change events (pushed back while events keep coming).
        let mut pending: Option<Instant> = None;
        let mut retry: Option<Instant> = None;
        loop {
            let wake = pending.or(retry);
            let is_retry;
            tokio::select! {
                _ = cancel.cancelled() => return,
                settle = async { watch.as_mut().unwrap().changed().await }, if watch.is_some() => {
                    match settle {
                        Ok(settle) => pending = Some(Instant::now() + settle),
                        Err(e) => {
                            warn!("inotify failed ({e}): changes are seen by polling");
                            watch = None;
                        }
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                    is_retry = pending.is_none();
                }
                _ = ticker.tick() => {
                    if pending.is_some() || fingerprint(&path) == last {
                        continue;
                    }
                    is_retry = false;
                }
            }
            pending = None;
            retry = None;
            last = fingerprint(&path);
            let (p, v, good) = (path.clone(), view.clone(), last_good.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                let before = fingerprint(&p);
                if let Some(f) = emptied(&good, &before) {
                    return Ok((Reload::Emptied(f.to_owned()), before));
                }
                let store = placements_if_needed(Store::load_path(&p, keep_pods)?, zone_first);
                if fingerprint(&p) != before {
                    return Ok((Reload::ChangedWhileReading, before));
                }
                let (services, pods) = (store.services.len(), store.pods.len());
                v.publish(Arc::new(store), true);
                release_freed_memory();
                Ok::<_, LoadError>((Reload::Loaded { services, pods }, before))
            })
            .await;
            match loaded {
                Ok(Ok((Reload::Loaded { services, pods }, read))) => {
                    last_good = read;
                    info!(path = %path.display(), services, pods, "manifests changed: reloaded")
                }
                Ok(Ok((Reload::Emptied(file), _))) => {
                    // Its next write brings an event (or a poll sees it); one retry covers a
                    // write that left none.
                    warn!(
                        "{} is empty (being rewritten?): still serving the last good state; \
                         remove the file or write an empty List to drop its objects",
                        file.display()
                    );
                    if !is_retry {
                        retry = Some(Instant::now() + RETRY_AFTER_ERROR);
                    }
                }
                Ok(Ok((Reload::ChangedWhileReading, _))) => {
                    pending = Some(Instant::now() + SETTLE_WRITING);
                }
                Ok(Err(e)) => {
                    error!("manifests not reloaded, still serving the last good state: {e}");
                    if !is_retry {
                        retry = Some(Instant::now() + RETRY_AFTER_ERROR);
                    }
                }
                Err(e) => error!("manifests not reloaded: {e}"),
            }
            if let Some(w) = watch.as_mut() {
                // New subdirectories, and a file replaced by a rename, need watches of their own.
                w.sync(&path);
            }
        }
    }))
}

/// Pod IP -> node serves only zone-aware answers: dropped after a load in which nothing asks
/// for them (as the API source then watches no pods).
fn placements_if_needed(mut store: Store, zone_first: bool) -> Store {
    if !zone_first && !store.services.values().any(|s| s.prefer_close) {
        store.pod_nodes = Arc::default();
    }
    store
}

/// Parsing a large dump allocates far more than the stripped result keeps; glibc holds the
/// freed memory in its arenas unless asked to give it back.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// inotify through libc (a few system calls; the `notify` crate would bring a thread and a
/// dependency tree for the same).
mod inotify {
    use std::collections::HashMap;
    use std::ffi::{CString, OsStr};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    use super::{SETTLE, SETTLE_WRITING};

    const DIR_EVENTS: u32 = libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_ATTRIB
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR;
    const FILE_EVENTS: u32 = libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_ATTRIB
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF;

    pub struct Watch {
        fd: AsyncFd<OwnedFd>,
        /// Watch descriptor -> what it watches.
        watches: HashMap<i32, Watched>,
    }

    #[derive(Clone, PartialEq)]
    enum Watched {
        /// A directory of manifests: every manifest file in it counts.
        Dir(PathBuf),
        /// The directory holding a single manifest file: only events naming that file (or a
        /// kubelet `..data` swap) count.
        Parent(PathBuf, std::ffi::OsString),
        /// The manifest file itself (writes in place, also through a symlink).
        File(PathBuf),
    }

    impl Watched {
        fn path(&self) -> &Path {
            match self {
                Watched::Dir(p) | Watched::Parent(p, _) | Watched::File(p) => p,
            }
        }
    }

    impl Watch {
        pub fn new(path: &Path) -> io::Result<Watch> {
            // SAFETY: plain system call; the descriptor is owned right after.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns; the OwnedFd keeps it open
            // for as long as the AsyncFd holds it.
            let fd = unsafe {
                AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), Interest::READABLE)
            }
            .map_err(io::Error::other)?;
            let mut watch = Watch {
                fd,
                watches: HashMap::new(),
            };
            watch.sync(path);
            if watch.watches.is_empty() {
                return Err(io::Error::other("nothing could be watched"));
            }
            Ok(watch)
        }

        /// What should be watched for `path` now.
        fn wanted(path: &Path) -> Vec<Watched> {
            if path.is_dir() {
                // The directories `manifest_files` reads: the root and its non-hidden subdirs.
                let mut out = Vec::new();
                let mut dirs = vec![path.to_owned()];
                while let Some(dir) = dirs.pop() {
                    if let Ok(entries) = std::fs::read_dir(&dir) {
                        for e in entries.flatten() {
                            let p = e.path();
                            if !e.file_name().to_string_lossy().starts_with('.') && p.is_dir() {
                                dirs.push(p);
                            }
                        }
                    }
                    out.push(Watched::Dir(dir));
                }
                out
            } else {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                };
                let name = path.file_name().unwrap_or_default().to_owned();
                vec![
                    Watched::Parent(parent, name),
                    Watched::File(path.to_owned()),
                ]
            }
        }

        /// Watches what `path` stands for now and drops watches no longer wanted. Failures
        /// are left to the poll (a missing file is seen when it comes back).
        pub fn sync(&mut self, path: &Path) {
            let wanted = Self::wanted(path);
            let stale: Vec<i32> = self
                .watches
                .iter()
                .filter(|(_, w)| !wanted.contains(w))
                .map(|(wd, _)| *wd)
                .collect();
            for wd in stale {
                self.watches.remove(&wd);
                // SAFETY: plain system call on our own descriptor.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
            }
            for w in wanted {
                let mask = match w {
                    Watched::File(_) => FILE_EVENTS,
                    _ => DIR_EVENTS,
                };
                let Ok(c) = CString::new(w.path().as_os_str().as_bytes()) else {
                    continue;
                };
                // Adding a watch again returns the same descriptor (and a replaced file's
                // new inode gets a new one).
                // SAFETY: `c` is a valid C string for the duration of the call.
                let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
                if wd >= 0 {
                    self.watches.retain(|_, old| *old != w);
                    self.watches.insert(wd, w);
                }
            }
        }

        /// Waits for events that may change what is loaded; returns how long to let things
        /// settle before reading.
        pub async fn changed(&mut self) -> io::Result<Duration> {
            // Aligned for `inotify_event`.
            let mut buf = [0u64; 1024];
            loop {
                let mut guard = self.fd.readable().await?;
                let read = guard.try_io(|fd| {
                    // SAFETY: reads into our own buffer, within its length.
                    let n = unsafe {
                        libc::read(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            std::mem::size_of_val(&buf),
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                let n = match read {
                    Ok(r) => r?,
                    Err(_would_block) => continue,
                };
                // SAFETY: the kernel wrote `n` bytes of events into `buf`.
                let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                let mut relevant = 0u32;
                let mut at = 0;
                let header = std::mem::size_of::<libc::inotify_event>();
                while at + header <= bytes.len() {
                    // SAFETY: a whole header lies within `bytes`; read_unaligned needs no
                    // alignment.
                    let ev: libc::inotify_event = unsafe {
                        std::ptr::read_unaligned(bytes[at..].as_ptr().cast::<libc::inotify_event>())
                    };
                    let name_end = (at + header + ev.len as usize).min(bytes.len());
                    let name = &bytes[at + header..name_end];
                    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                    if self.counts(&ev, OsStr::from_bytes(name)) {
                        relevant |= ev.mask;
                    }
                    at = name_end;
                }
                if relevant != 0 {
                    let done = libc::IN_CLOSE_WRITE
                        | libc::IN_CREATE
                        | libc::IN_DELETE
                        | libc::IN_MOVED_FROM
                        | libc::IN_MOVED_TO
                        | libc::IN_DELETE_SELF
                        | libc::IN_MOVE_SELF
                        | libc::IN_IGNORED
                        | libc::IN_Q_OVERFLOW;
                    return Ok(if relevant & done != 0 {
                        SETTLE
                    } else {
                        SETTLE_WRITING
                    });
                }
            }
        }

        /// Whether an event may change what is loaded (editor swap files and unrelated files
        /// next to a single manifest do not).
        fn counts(&self, ev: &libc::inotify_event, name: &OsStr) -> bool {
            if ev.mask & (libc::IN_Q_OVERFLOW | libc::IN_IGNORED) != 0 || name.is_empty() {
                return true; // lost events, a watch gone, or the watched thing itself
            }
            let lossy = name.to_string_lossy();
            // kubelet's ConfigMap volumes swap `..data` to a new `..<timestamp>` directory.
            if lossy.starts_with("..") {
                return true;
            }
            match self.watches.get(&ev.wd) {
                Some(Watched::Parent(_, file)) => name == file,
                Some(Watched::Dir(_)) => {
                    !lossy.starts_with('.')
                        && (ev.mask & libc::IN_ISDIR != 0
                            || [".yaml", ".yml", ".json"]
                                .iter()
                                .any(|e| lossy.ends_with(e)))
                }
                Some(Watched::File(_)) | None => true,
            }
        }
    }
}
