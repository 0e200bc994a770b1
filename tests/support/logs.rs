//! Capturing the tracing output of servers run inside a test, to assert on what they log.
//!
//! Not `tracing::subscriber::set_default`: while exactly one `Dispatch` exists in the process,
//! tracing-core decides whether a callsite is enabled with the default subscriber of whichever
//! thread reaches it first, and caches the answer for every thread (tokio-rs/tracing#3611).
//! When another test's thread, which has no subscriber, reaches the `info!` of "source current
//! again" first, that callsite is off for good and the capturing test never sees its line:
//! reliability_peers' outage test timed out that way waiting for a recovery that had happened.
//!
//! So one global subscriber, installed once, is enabled wherever a capture is: it formats the
//! events of a thread that installed one (the current-thread runtime of the test, where the
//! code under test logs) into that capture's buffer, those of other threads into the global
//! capture when a test asked for one, and skips the rest.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, Once, OnceLock};

use tracing::Metadata;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

/// Captured log output; clones share the buffer.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }

    /// The first line that `pred` accepts.
    pub fn find(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.text().lines().find(|l| pred(l)).map(str::to_string)
    }

    fn append(&self, b: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
    }
}

struct Capture {
    logs: Logs,
    filter: Targets,
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// The capture of every thread without its own (`global`).
static GLOBAL: OnceLock<Capture> = OnceLock::new();

/// Ends this thread's capture when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

fn parse(filter: &str) -> Targets {
    filter
        .parse()
        .unwrap_or_else(|e| panic!("log filter {filter:?}: {e}"))
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(ThreadWriter)
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                captured(meta)
            }));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in a test binary");
    });
}

/// Captures this thread's events that `filter` (`info,kube_runtime::watcher=error`: a
/// default level and per-target levels) enables, as formatted lines without colours, until the
/// guard drops. On a current-thread runtime that is every task the test spawns, so tests in one
/// binary do not see each other's lines.
pub fn capture(filter: &str) -> (Logs, Guard) {
    install();
    let logs = Logs::default();
    let filter = parse(filter);
    CAPTURE.with(|c| {
        *c.borrow_mut() = Some(Capture {
            logs: logs.clone(),
            filter,
        })
    });
    (logs, Guard(()))
}

/// Every thread's events that no thread capture takes, for servers on multi-thread runtimes:
/// one capture for the whole test binary (the first call's `filter` wins), so look for lines
/// only your test causes.
pub fn global(filter: &str) -> Logs {
    install();
    GLOBAL
        .get_or_init(|| Capture {
            logs: Logs::default(),
            filter: parse(filter),
        })
        .logs
        .clone()
}

/// Whether this thread captures `meta`: asked per event (a dynamic filter; `filter_fn`'s answer
/// would be cached per callsite, for every thread).
fn captured(meta: &Metadata<'_>) -> bool {
    CAPTURE.with(|c| match c.borrow().as_ref() {
        Some(c) => c.filter.would_enable(meta.target(), meta.level()),
        None => GLOBAL
            .get()
            .is_some_and(|g| g.filter.would_enable(meta.target(), meta.level())),
    })
}

/// Writes to the capture of the thread that formats the event (the one that emitted it), else
/// to the global one.
struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = ThreadWriter;

    fn make_writer(&'a self) -> ThreadWriter {
        ThreadWriter
    }
}

impl io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        CAPTURE.with(|c| match c.borrow().as_ref() {
            Some(c) => c.logs.append(b),
            None => {
                if let Some(g) = GLOBAL.get() {
                    g.logs.append(b);
                }
            }
        });
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
