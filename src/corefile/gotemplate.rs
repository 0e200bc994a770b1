//! The subset of Go's text/template that `template` records are written in, parsed once at
//! load so that an expression CoreDNS users could write but this server cannot render is a
//! Corefile error, not a SERVFAIL at query time.

use std::fmt;

/// What an action `{{ ... }}` renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Name,
    Zone,
    Class,
    Type,
    Remote,
    /// `index .Match N`: group N of the matching regex, 0 being the whole name.
    Match(usize),
    /// `.Group.NAME`: a named group of the matching regex.
    Group(String),
    /// `.Meta "KEY"`: metadata. No plugin here provides metadata, so as in CoreDNS without the
    /// `metadata` plugin it renders as the empty string.
    Meta(String),
    /// `.Question.Name`: the query name as asked, case kept.
    QuestionName,
    /// `.Question.Qtype` / `.Question.Qclass`: numbers, as Go prints a uint16.
    QuestionQtype,
    QuestionQclass,
    /// `.Message.Id`
    MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(Field),
}

/// The actions understood, for error messages.
pub const SUPPORTED: &str = "{{ .Name }}, {{ .Zone }}, {{ .Class }}, {{ .Type }}, \
{{ .Remote }}, {{ index .Match N }}, {{ .Group.NAME }}, {{ .Meta \"KEY\" }}, \
{{ .Question.Name }}, {{ .Question.Qtype }}, {{ .Question.Qclass }}, {{ .Message.Id }}, \
{{/* comment */}}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the offending `{{` in the source text.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn field(expr: &str) -> Option<Field> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    Some(match words.as_slice() {
        [".Name"] => Field::Name,
        [".Zone"] => Field::Zone,
        [".Class"] => Field::Class,
        [".Type"] => Field::Type,
        [".Remote"] => Field::Remote,
        [".Question.Name"] => Field::QuestionName,
        [".Question.Qtype"] => Field::QuestionQtype,
        [".Question.Qclass"] => Field::QuestionQclass,
        [".Message.Id"] => Field::MessageId,
        ["index", ".Match", n] => Field::Match(n.parse().ok()?),
        [".Meta", key] => {
            let key = key.strip_prefix('"')?.strip_suffix('"')?;
            Field::Meta(key.to_string())
        }
        [g] => {
            let name = g.strip_prefix(".Group.")?;
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return None;
            }
            Field::Group(name.to_string())
        }
        _ => return None,
    })
}

/// Parses a record template. Trim markers (`{{- ` and ` -}}`) trim the whitespace next to
/// them, as in Go.
pub fn parse(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out: Vec<Piece> = Vec::new();
    let mut rest = text;
    let mut base = 0;
    let mut trim_next = false;
    while let Some(i) = rest.find("{{") {
        let mut lit = &rest[..i];
        if trim_next {
            lit = lit.trim_start();
        }
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Err(TemplateError {
                offset: base + i,
                message: format!("unclosed action '{}' (no '}}}}')", &rest[i..]),
            });
        };
        let raw = &after[..j];
        let mut expr = raw;
        // Go: a trim marker is '-' next to the delimiter followed (preceded) by a space.
        if let Some(e) = expr
            .strip_prefix('-')
            .filter(|e| e.starts_with(char::is_whitespace))
        {
            lit = lit.trim_end();
            expr = e;
        }
        trim_next = false;
        if let Some(e) = expr
            .strip_suffix('-')
            .filter(|e| e.ends_with(char::is_whitespace))
        {
            trim_next = true;
            expr = e;
        }
        if !lit.is_empty() {
            out.push(Piece::Text(lit.to_string()));
        }
        let expr = expr.trim();
        if !(expr.starts_with("/*") && expr.ends_with("*/") && expr.len() >= 4) {
            let f = field(expr).ok_or_else(|| TemplateError {
                offset: base + i,
                message: format!(
                    "unsupported template action '{{{{{raw}}}}}' (supported: {SUPPORTED})"
                ),
            })?;
            out.push(Piece::Field(f));
        }
        let consumed = i + 2 + j + 2;
        base += consumed;
        rest = &rest[consumed..];
    }
    let lit = if trim_next { rest.trim_start() } else { rest };
    if !lit.is_empty() {
        out.push(Piece::Text(lit.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_actions() {
        let p = parse("{{.Name}} 60 IN A {{ index .Match 1 }}.{{ .Group.x }}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Field(Field::Name),
                Piece::Text(" 60 IN A ".into()),
                Piece::Field(Field::Match(1)),
                Piece::Text(".".into()),
                Piece::Field(Field::Group("x".into())),
            ]
        );
        assert_eq!(
            parse("a {{- /* c */ -}} b {{ .Meta \"k/v\" }}").unwrap(),
            vec![
                Piece::Text("a".into()),
                Piece::Text("b ".into()),
                Piece::Field(Field::Meta("k/v".into())),
            ]
        );
        assert_eq!(parse("plain").unwrap(), vec![Piece::Text("plain".into())]);
    }

    #[test]
    fn rejects_what_it_cannot_render() {
        for (text, offset) in [
            ("x {{ .Foo }}", 2),
            ("{{ .Name | printf \"%s\" }}", 0),
            ("{{ index .Match x }}", 0),
            ("{{ .Name }} {{ .Name", 12),
            ("{{ .Group. }}", 0),
            ("{{ .Meta key }}", 0),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}");
        }
        let e = parse("{{ .Foo }}").unwrap_err();
        assert!(e.message.contains("'{{ .Foo }}'"), "{}", e.message);
        assert!(e.message.contains("{{ .Name }}"), "{}", e.message);
    }
}
