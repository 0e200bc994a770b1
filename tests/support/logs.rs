//! Capturing the tracing output of servers run inside a test, to assert on what they log.

use std::sync::{Arc, Mutex, OnceLock};

/// Captured log output; clones share the buffer.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }

    /// The first line that `pred` accepts.
    pub fn find(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.text().lines().find(|l| pred(l)).map(str::to_string)
    }

    fn subscriber(&self, filter: &str) -> impl tracing::Subscriber + Send + Sync {
        let w = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_env_filter(filter)
            .finish()
    }
}

/// This thread's tracing events (`filter` as in `RUST_LOG`) while the guard lives. On a
/// current-thread runtime that is every task the test spawns, so tests in one binary do not
/// see each other's lines.
pub fn capture(filter: &str) -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let guard = tracing::subscriber::set_default(logs.subscriber(filter));
    (logs, guard)
}

/// Every thread's events, for servers on multi-thread runtimes: one capture for the whole
/// test binary (the first call's `filter` wins), so look for lines only your test causes.
pub fn global(filter: &str) -> Logs {
    static GLOBAL: OnceLock<Logs> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let logs = Logs::default();
            let _ = tracing::subscriber::set_global_default(logs.subscriber(filter));
            logs
        })
        .clone()
}
