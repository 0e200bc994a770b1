//! One test's log lines, in a test binary whose tests run in parallel on other threads.
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
//! code under test logs) into that capture's buffer and skips every other thread's.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, Once};

use tracing::Metadata;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    filter: Targets,
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// Ends this thread's capture when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// Captures this thread's events that `filter` (`info,kube_runtime::watcher=error`: a
/// default level and per-target levels) enables, as formatted lines without colours, until the
/// guard drops.
pub fn capture(filter: &str) -> (Arc<Mutex<Vec<u8>>>, Guard) {
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
    let filter: Targets = filter
        .parse()
        .unwrap_or_else(|e| panic!("log filter {filter:?}: {e}"));
    let buf = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|c| {
        *c.borrow_mut() = Some(Capture {
            buf: buf.clone(),
            filter,
        })
    });
    (buf, Guard(()))
}

/// Whether this thread captures `meta`: asked per event (a dynamic filter; `filter_fn`'s answer
/// would be cached per callsite, for every thread).
fn captured(meta: &Metadata<'_>) -> bool {
    CAPTURE.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|c| c.filter.would_enable(meta.target(), meta.level()))
    })
}

/// Writes to the capture of the thread that formats the event (the one that emitted it).
struct ThreadWriter;

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = ThreadWriter;

    fn make_writer(&'a self) -> ThreadWriter {
        ThreadWriter
    }
}

impl io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(c) = c.borrow().as_ref() {
                c.buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
            }
        });
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
