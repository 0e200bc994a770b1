//! How `clusterdns serve` reports a start-up failure: one line, each layer adding what it
//! knows once (the path once, the OS error once), as `kubectl` and CoreDNS print them.

use std::process::Command;

/// Runs `clusterdns serve ARGS` to its exit; (exit code, stderr).
fn serve_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .arg("serve")
        .args(["--upstream", "none"])
        .args(args)
        .output()
        .expect("clusterdns runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report line: exit code 2, one `clusterdns:` line, `once` each appearing exactly once.
fn assert_reported_once(args: &[&str], once: &[&str]) -> String {
    let (code, stderr) = serve_fails(args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("clusterdns:"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    for text in once {
        assert_eq!(
            lines[0].matches(text).count(),
            1,
            "{text:?} should appear once in: {}",
            lines[0]
        );
    }
    lines[0].to_string()
}

#[test]
fn a_missing_kubeconfig_is_named_once_with_its_os_error_once() {
    let line = assert_reported_once(
        &["--kubeconfig", "/nonexistent/kubeconfig"],
        &["/nonexistent/kubeconfig", "No such file or directory"],
    );
    // kube-rs's own text quotes the path in two kinds of quotes.
    assert!(!line.contains("'\""), "{line}");
}

#[test]
fn a_missing_manifests_file_is_named_once_with_its_os_error_once() {
    assert_reported_once(
        &["--manifests", "/nonexistent/cluster.yaml"],
        &["/nonexistent/cluster.yaml", "No such file or directory"],
    );
}

#[test]
fn a_busy_port_is_reported_once() {
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let line = assert_reported_once(&["--dns-addr", &addr], &["Address already in use"]);
    assert!(line.contains("cannot bind"), "{line}");
}
