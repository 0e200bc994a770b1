//! The real binary as a child process: its stderr collected, its stdout read with a deadline.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Collects the child's stderr line by line on a thread, so its pipe never fills and a failing
/// test can print what the server said. The child must have been spawned with piped stderr.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Reads the child's stdout (piped) until every one of `want` has appeared in some line, with
/// a deadline; returns the lines read. The rest of stdout is drained on a thread.
pub fn wait_for_lines(child: &mut Child, want: &[&str], timeout: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The reader is gone once the lines were found: keep draining regardless.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines: Vec<String> = Vec::new();
    while !want.iter().all(|w| lines.iter().any(|l| l.contains(w))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no lines with {want:?} within {timeout:?}; got {lines:?}"),
        }
    }
    lines
}

/// [`wait_for_lines`] for one line; returns it.
pub fn wait_for_line(child: &mut Child, want: &str, timeout: Duration) -> String {
    let lines = wait_for_lines(child, &[want], timeout);
    lines.into_iter().last().expect("the line that matched")
}
