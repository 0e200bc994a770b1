//! What the repository tracks: sources, not build products. Checked with `git` itself, so a
//! generated file that slips into a commit (or a .gitignore line that goes missing) fails here.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .ok()
        .filter(|o| o.status.success() || o.status.code() == Some(1))
}

/// True when the crate is a git checkout (a source tarball has nothing to check).
fn in_git() -> bool {
    git(&["rev-parse", "--is-inside-work-tree"])
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

#[test]
fn no_compiled_python_is_tracked_and_pycache_is_ignored() {
    if !in_git() {
        eprintln!("not a git checkout: nothing to check");
        return;
    }
    let listed = git(&["ls-files"]).expect("git ls-files");
    let tracked: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|p| p.contains("__pycache__/") || p.ends_with(".pyc"))
        .map(str::to_string)
        .collect();
    assert!(tracked.is_empty(), "compiled Python tracked: {tracked:?}");
    // A new bench run must not show up as a change either.
    let ignored = git(&[
        "check-ignore",
        "-q",
        "--no-index",
        "bench/__pycache__/run.cpython-311.pyc",
    ])
    .expect("git check-ignore");
    assert_eq!(
        ignored.status.code(),
        Some(0),
        "bench/__pycache__/ is not ignored by .gitignore"
    );
}
