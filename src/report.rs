//! Errors as one line for people: the outermost message, then each cause the messages so far
//! do not already show. Many errors (ours with `{source}` in their text, kube-rs's, hyper's)
//! both print their cause and return it from `source()`, so printing the plain chain repeats
//! the same OS error two or three times on one line.

use std::error::Error;

/// `err` and its causes joined with `": "`, each text once.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot bind udp 127.0.0.1:53: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Bind { source: io }).context("serve");
        let line = one_line(e.as_ref());
        assert_eq!(
            line,
            format!("serve: cannot bind udp 127.0.0.1:53: {io_text}")
        );
        assert_eq!(line.matches(&io_text).count(), 1, "{line}");
    }

    #[test]
    fn causes_not_in_the_message_are_appended() {
        let e = anyhow::anyhow!("disk full")
            .context("cannot write x")
            .context("save");
        assert_eq!(one_line(e.as_ref()), "save: cannot write x: disk full");
    }
}
