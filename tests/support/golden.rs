//! Golden query -> answer rows: loading a fixture, and comparing record lines.

use std::path::Path;

/// A YAML fixture, parsed into the test's row type (unknown fields rejected there).
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Record lines with runs of white space folded to one space, as the DNS client prints them
/// (fixtures may align their columns).
pub fn norm<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.as_ref().split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Notes a problem when a section a row states (`want`; None: not checked) differs from the
/// one received.
pub fn compare(problems: &mut Vec<String>, what: &str, got: Vec<String>, want: Option<&[String]>) {
    if let Some(want) = want {
        let want = norm(want);
        if got != want {
            problems.push(format!("{what} {got:#?}\n  want {want:#?}"));
        }
    }
}
