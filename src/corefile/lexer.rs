//! Tokeniser matching Caddy v1's `caddyfile` lexer, which CoreDNS uses.
//!
//! Caddy rules kept on purpose: tokens are split on Unicode whitespace; `#` starts a comment
//! even in the middle of a word (`foo#bar` is `foo`); a `"` only opens a quoted string at the
//! start of a token; inside quotes the only escape is `\"` (any other backslash is kept as is)
//! and newlines are allowed; `\r` outside quotes is dropped. Differences: an unterminated
//! quote is an error (Caddy silently accepts it), and the lexer records whether a token was
//! quoted so that a quoted `"{"` or `"import"` stays a plain word.

use std::path::Path;
use std::sync::Arc;

use super::{CorefileError, Pos};

/// One lexed word with its origin.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub text: String,
    pub pos: Pos,
    /// Line and column just after the token, for "expected ... here" errors at the end of input.
    pub end: (u32, u32),
    pub quoted: bool,
    /// First token on its physical line: Caddy decides where a directive's arguments end by
    /// line breaks, not by separators.
    pub line_start: bool,
}

impl Token {
    /// An unquoted token with exactly this text (a brace or a keyword).
    pub fn is_bare(&self, s: &str) -> bool {
        !self.quoted && self.text == s
    }

    pub fn end_pos(&self) -> Pos {
        Pos::new(self.pos.file.clone(), self.end.0, self.end.1)
    }
}

/// Splits `text` (the content of `file`) into tokens.
pub(crate) fn lex(text: &str, file: &Arc<Path>) -> Result<Vec<Token>, CorefileError> {
    let mut tokens = Vec::new();
    let (mut line, mut col) = (1u32, 1u32);
    let mut cur: Option<(String, u32, u32, bool)> = None; // text, line, col, quoted
    let mut in_quote = false;
    let mut escaped = false;
    let mut comment = false;
    let mut newline_seen = true;

    let finish = |tokens: &mut Vec<Token>,
                  cur: &mut Option<(String, u32, u32, bool)>,
                  newline_seen: &mut bool,
                  end: (u32, u32)| {
        if let Some((text, l, c, quoted)) = cur.take() {
            tokens.push(Token {
                text,
                pos: Pos::new(file.clone(), l, c),
                end,
                quoted,
                line_start: *newline_seen,
            });
            *newline_seen = false;
        }
    };

    for ch in text.chars() {
        let (here_line, here_col) = (line, col);
        if ch == '\n' {
            line = line.saturating_add(1);
            col = 1;
        } else {
            col = col.saturating_add(1);
        }

        if in_quote {
            let Some((buf, ..)) = cur.as_mut() else {
                in_quote = false;
                continue;
            };
            if escaped {
                // Caddy only unescapes `\"`; every other backslash stays.
                if ch != '"' {
                    buf.push('\\');
                }
                buf.push(ch);
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_quote = false;
                finish(&mut tokens, &mut cur, &mut newline_seen, (line, col));
            } else {
                buf.push(ch);
            }
            continue;
        }

        if ch.is_whitespace() {
            if ch == '\r' {
                continue;
            }
            finish(
                &mut tokens,
                &mut cur,
                &mut newline_seen,
                (here_line, here_col),
            );
            if ch == '\n' {
                comment = false;
                newline_seen = true;
            }
            continue;
        }
        if comment {
            continue;
        }
        if ch == '#' {
            comment = true;
            finish(
                &mut tokens,
                &mut cur,
                &mut newline_seen,
                (here_line, here_col),
            );
            continue;
        }
        match cur.as_mut() {
            Some((buf, ..)) => buf.push(ch),
            None if ch == '"' => {
                in_quote = true;
                cur = Some((String::new(), here_line, here_col, true));
            }
            None => cur = Some((ch.to_string(), here_line, here_col, false)),
        }
    }

    if in_quote {
        let (l, c) = cur.as_ref().map(|t| (t.1, t.2)).unwrap_or((line, col));
        return Err(CorefileError::at(
            &Pos::new(file.clone(), l, c),
            "unterminated quoted string: expected a closing '\"' before the end of the file",
        ));
    }
    finish(&mut tokens, &mut cur, &mut newline_seen, (line, col));
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<(String, u32, u32, bool)> {
        let file: Arc<Path> = Arc::from(Path::new("Corefile"));
        lex(s, &file)
            .unwrap()
            .into_iter()
            .map(|t| (t.text, t.pos.line, t.pos.col, t.line_start))
            .collect()
    }

    #[test]
    fn splits_comments_and_quotes_like_caddy() {
        let got = words(".:53 {\n  log foo#bar baz\n  x \"a \\\"b\\\" \\n\"c\n}");
        let texts: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            texts,
            vec![".:53", "{", "log", "foo", "x", "a \"b\" \\n", "c", "}"]
        );
        assert_eq!(got[2], ("log".into(), 2, 3, true));
        assert_eq!(got[3], ("foo".into(), 2, 7, false));
        assert_eq!(got[5].1, 3);
        assert_eq!(got[5].2, 5);
    }

    #[test]
    fn multiline_quote_does_not_start_a_line() {
        let got = words("a \"b\nc\" d\ne");
        assert_eq!(got[2], ("d".into(), 2, 4, false));
        assert_eq!(got[3], ("e".into(), 3, 1, true));
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let file: Arc<Path> = Arc::from(Path::new("Corefile"));
        let err = lex("a {\n  b \"oops\n}\n", &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Corefile:2:5: unterminated quoted string: expected a closing '\"' before the end of the file"
        );
    }
}
