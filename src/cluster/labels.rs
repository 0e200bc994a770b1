//! Object labels kept compactly, and Kubernetes label selectors over them: what the
//! `kubernetes` plugin's `labels` and `namespace_labels` options filter by.
//!
//! The selector syntax is apimachinery's `labels.Parse` (what kubectl `-l` takes):
//! `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a` (does not exist),
//! requirements separated by `,` and all required. Keys and values are validated as the API
//! server does. `>`/`<` are rejected, as CoreDNS's `metav1.ParseToLabelSelector` rejects them.

use std::collections::BTreeMap;
use std::fmt;

/// An object's labels in one allocation (`key\0value\0key\0value\0`): a Service keeps its
/// labels for the `labels` selector without a map and two strings per label.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Labels(Box<str>);

impl Labels {
    /// Pairs holding a NUL (which the API server never accepts) are dropped.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let mut s = String::new();
        for (k, v) in pairs {
            if k.contains('\0') || v.contains('\0') {
                continue;
            }
            s.push_str(k);
            s.push('\0');
            s.push_str(v);
            s.push('\0');
        }
        Labels(s.into())
    }

    pub fn from_map(map: Option<&BTreeMap<String, String>>) -> Labels {
        Labels::new(map.into_iter().flatten().map(|(k, v)| (&**k, &**v)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split('\0');
        std::iter::from_fn(move || {
            let k = parts
                .next()
                .filter(|k| !k.is_empty() || parts.clone().next().is_some())?;
            let v = parts.next()?;
            Some((k, v))
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// What a selector reads labels from.
pub trait LabelSource {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl LabelSource for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `=`, `==`, `in`: present with one of the values.
    In,
    /// `!=`, `notin`: absent, or present with none of the values.
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: Box<str>,
    op: Op,
    values: Vec<Box<str>>,
}

impl Requirement {
    fn matches(&self, labels: &(impl LabelSource + ?Sized)) -> bool {
        let v = labels.label(&self.key);
        let listed = |v: &str| self.values.iter().any(|x| &**x == v);
        match self.op {
            Op::In => v.is_some_and(listed),
            Op::NotIn => v.is_none_or(|v| !listed(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, PartialEq, Eq)]
pub struct Selector {
    text: Box<str>,
    requirements: Vec<Requirement>,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({:?})", self.text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where (1-based character column within the selector) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: at character {column}: {message}")]
pub struct SelectorError {
    pub selector: String,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    In,
    NotIn,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    /// As apimachinery's errors quote a token.
    fn text(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::In => "in",
            Tok::NotIn => "notin",
            Tok::Not => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Comma => ",",
            Tok::End => "end of string",
        }
    }

    /// Where a key or value is expected, `in`/`notin` are plain words.
    fn as_word(&self) -> Option<&str> {
        match self {
            Tok::Ident(s) => Some(s),
            Tok::In => Some("in"),
            Tok::NotIn => Some("notin"),
            _ => None,
        }
    }
}

fn special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Tokens with their 1-based character columns; the last is `End`.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if special(c) {
            let next = chars.get(i + 1).copied();
            let (tok, len) = match (c, next) {
                ('!', Some('=')) => (Tok::NotEq, 2),
                ('=', Some('=')) => (Tok::DoubleEq, 2),
                ('!', _) => (Tok::Not, 1),
                ('=', _) => (Tok::Eq, 1),
                ('(', _) => (Tok::Open, 1),
                (')', _) => (Tok::Close, 1),
                (',', _) => (Tok::Comma, 1),
                ('>', _) => (Tok::Gt, 1),
                _ => (Tok::Lt, 1),
            };
            out.push((tok, col));
            i += len;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let tok = match word.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident(word),
        };
        out.push((tok, col));
    }
    out.push((Tok::End, chars.len() + 1));
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters: a label name or value.
fn check_name(s: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok = s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into())
    }
}

/// A DNS-1123 subdomain (a key's prefix): lowercase labels of `[a-z0-9-]`, at most 253.
fn check_prefix(s: &str) -> Result<(), String> {
    let ok = s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err("a key's prefix must be a lowercase DNS subdomain (e.g. example.com)".into())
    }
}

fn check_key(key: &str) -> Result<(), String> {
    let msg = |m: String| format!("invalid label key {key:?}: {m}");
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err(msg("the prefix before '/' must not be empty".into()));
            }
            check_prefix(prefix).map_err(msg)?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(msg("the name part must not be empty".into()));
    }
    if name.contains('/') {
        return Err(msg("a key has at most one '/'".into()));
    }
    check_name(name).map_err(|m| msg(format!("the name part {m}")))
}

fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|m| format!("invalid label value {value:?}: {m}"))
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &(Tok, usize) {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.peek().clone();
        self.at += 1;
        t
    }

    fn err(&self, column: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            selector: self.text.to_string(),
            column,
            message: message.into(),
        }
    }

    fn found(&self, (tok, col): &(Tok, usize), expected: &str) -> SelectorError {
        self.err(
            *col,
            format!("found '{}', expected: {expected}", tok.text()),
        )
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let negated = matches!(self.peek().0, Tok::Not);
        if negated {
            self.next();
        }
        let t = self.next();
        let Some(key) = t.0.as_word() else {
            return Err(self.found(&t, "a label key"));
        };
        check_key(key).map_err(|m| self.err(t.1, m))?;
        let key: Box<str> = key.into();
        let unary = |op| Requirement {
            key: key.clone(),
            op,
            values: Vec::new(),
        };
        if negated {
            // `!key` stands alone; what follows must be ',' or the end (checked by the caller).
            return Ok(unary(Op::DoesNotExist));
        }
        if matches!(self.peek().0, Tok::End | Tok::Comma) {
            return Ok(unary(Op::Exists));
        }
        let op_tok = self.next();
        let (op, values) = match op_tok.0 {
            Tok::Eq | Tok::DoubleEq => (Op::In, self.exact_value()?),
            Tok::NotEq => (Op::NotIn, self.exact_value()?),
            Tok::In => (Op::In, self.value_set()?),
            Tok::NotIn => (Op::NotIn, self.value_set()?),
            Tok::Gt | Tok::Lt => {
                return Err(self.err(
                    op_tok.1,
                    format!("'{}' isn't supported in label selectors", op_tok.0.text()),
                ))
            }
            _ => return Err(self.found(&op_tok, "=, ==, !=, in, notin, ',' or end of string")),
        };
        Ok(Requirement { key, op, values })
    }

    /// The value after `=`, `==` or `!=`; nothing before ',' or the end is the empty value.
    fn exact_value(&mut self) -> Result<Vec<Box<str>>, SelectorError> {
        if matches!(self.peek().0, Tok::End | Tok::Comma) {
            return Ok(vec!["".into()]);
        }
        let t = self.next();
        let Some(v) = t.0.as_word() else {
            return Err(self.found(&t, "a label value"));
        };
        check_value(v).map_err(|m| self.err(t.1, m))?;
        Ok(vec![v.into()])
    }

    /// `( v1, v2 )`; as in apimachinery, an empty slot (`()`, `(a,)`, `(,a)`) is the empty value.
    fn value_set(&mut self) -> Result<Vec<Box<str>>, SelectorError> {
        let open = self.next();
        if open.0 != Tok::Open {
            return Err(self.found(&open, "'('"));
        }
        let mut values: Vec<Box<str>> = Vec::new();
        let mut push = |v: &str| {
            if !values.iter().any(|x| &**x == v) {
                values.push(v.into());
            }
        };
        // Whether the slot before the next ',' or ')' holds a value yet.
        let mut filled = false;
        loop {
            let t = self.next();
            match &t.0 {
                Tok::Close => {
                    if !filled {
                        push("");
                    }
                    return Ok(values);
                }
                Tok::Comma => {
                    if !filled {
                        push("");
                    }
                    filled = false;
                }
                tok => match tok.as_word() {
                    Some(v) if !filled => {
                        check_value(v).map_err(|m| self.err(t.1, m))?;
                        push(v);
                        filled = true;
                    }
                    Some(_) => return Err(self.found(&t, "',' or ')'")),
                    None => return Err(self.found(&t, "',', ')' or a label value")),
                },
            }
        }
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser {
            text,
            toks: lex(text),
            at: 0,
        };
        let mut requirements = Vec::new();
        if p.peek().0 == Tok::End {
            return Err(p.err(1, "the selector is empty"));
        }
        loop {
            requirements.push(p.requirement()?);
            let t = p.next();
            match t.0 {
                Tok::End => break,
                Tok::Comma if !matches!(p.peek().0, Tok::End | Tok::Comma) => {}
                Tok::Comma => {
                    let after = p.peek().clone();
                    return Err(p.found(&after, "a requirement after ','"));
                }
                _ => return Err(p.found(&t, "',' or end of string")),
            }
        }
        Ok(Selector {
            text: text.into(),
            requirements,
        })
    }

    pub fn matches(&self, labels: &(impl LabelSource + ?Sized)) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied())
    }

    #[test]
    fn labels_round_trip_compactly() {
        let l = labels(&[("app", "web"), ("empty", ""), ("example.com/tier", "front")]);
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get("empty"), Some(""));
        assert_eq!(l.get("example.com/tier"), Some("front"));
        assert_eq!(l.get("ap"), None);
        assert_eq!(l.iter().count(), 3);
        assert_eq!(Labels::from_map(Some(&l.to_map())), l);
        let none = Labels::default();
        assert!(none.is_empty());
        assert_eq!(none.iter().count(), 0);
        assert_eq!(none.get(""), None);
        // An empty key is not a label the API accepts, but must not confuse the encoding.
        let odd = labels(&[("", "v"), ("k", "w"), ("nul\0", "x")]);
        assert_eq!(odd.get(""), Some("v"));
        assert_eq!(odd.get("k"), Some("w"));
        assert_eq!(odd.iter().count(), 2);
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("example.com/team", "a")]);
        let db = labels(&[("app", "db"), ("tier", "")]);
        let bare = labels(&[]);
        // (selector, matches web, matches db, matches bare)
        let table: &[(&str, bool, bool, bool)] = &[
            ("app=web", true, false, false),
            ("app==web", true, false, false),
            ("app = web", true, false, false),
            ("app!=web", false, true, true),
            ("app in (web,db)", true, true, false),
            ("app in ( web , x )", true, false, false),
            ("app notin (web)", false, true, true),
            ("app notin (web, db)", false, false, true),
            ("app", true, true, false),
            ("!app", false, false, true),
            ("! app", false, false, true),
            ("app=web,tier=front", true, false, false),
            ("app,!missing", true, true, false),
            ("app=db,tier=", false, true, false),
            ("tier=", false, true, false),
            ("tier in ()", false, true, false),
            ("tier in (x,)", false, true, false),
            ("example.com/team=a", true, false, false),
            ("example.com/team", true, false, false),
            ("in=web", false, false, false),
            ("app=in", false, false, false),
            ("app in (in, notin)", false, false, false),
            ("app=web,app=db", false, false, false),
            ("  app=web  ", true, false, false),
        ];
        for (sel, w, d, b) in table {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&web), *w, "{sel} on web");
            assert_eq!(s.matches(&db), *d, "{sel} on db");
            assert_eq!(s.matches(&bare), *b, "{sel} on no labels");
            assert_eq!(s.matches(&web.to_map()), *w, "{sel} on a map");
        }
    }

    #[test]
    fn any_short_input_parses_or_errors_without_panicking() {
        let alphabet: Vec<char> = "a=!(),<> né/".chars().collect();
        let n = alphabet.len();
        for len in 0..=4u32 {
            for mut i in 0..n.pow(len) {
                let mut text = String::new();
                for _ in 0..len {
                    text.push(alphabet[i % n]);
                    i /= n;
                }
                if let Err(e) = Selector::parse(&text) {
                    assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e}");
                }
            }
        }
    }

    #[test]
    fn invalid_selectors_say_where_and_what() {
        // (selector, column, part of the message)
        let table: &[(&str, usize, &str)] = &[
            ("", 1, "empty"),
            (
                "app=web,",
                9,
                "found 'end of string', expected: a requirement after ','",
            ),
            (",app", 1, "found ',', expected: a label key"),
            (
                "app=web,,x",
                9,
                "found ',', expected: a requirement after ','",
            ),
            ("app in web", 8, "found 'web', expected: '('"),
            (
                "app in (web",
                12,
                "found 'end of string', expected: ',', ')' or a label value",
            ),
            ("app in (a b)", 11, "found 'b', expected: ',' or ')'"),
            (
                "app in (a,=)",
                11,
                "found '=', expected: ',', ')' or a label value",
            ),
            ("app=web=x", 8, "found '=', expected: ',' or end of string"),
            ("app web", 5, "found 'web', expected: =, ==, !=, in, notin"),
            ("!app=web", 5, "found '=', expected: ',' or end of string"),
            ("app>1", 4, "'>' isn't supported in label selectors"),
            ("app<1", 4, "'<' isn't supported"),
            ("app=(x)", 5, "found '(', expected: a label value"),
            ("-app=x", 1, "invalid label key \"-app\""),
            ("a/b/c", 1, "at most one '/'"),
            ("/b", 1, "prefix before '/' must not be empty"),
            ("Example.com/b", 1, "lowercase DNS subdomain"),
            ("example.com/", 1, "name part must not be empty"),
            ("app=web_", 5, "invalid label value \"web_\""),
            ("app in (ok, -bad)", 13, "invalid label value \"-bad\""),
            (
                "app=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                5,
                "no more than 63",
            ),
            ("é=1", 1, "invalid label key"),
            ("app=é", 5, "invalid label value"),
            ("(", 1, "found '(', expected: a label key"),
            ("!", 2, "found 'end of string', expected: a label key"),
        ];
        for (sel, col, msg) in table {
            let e = Selector::parse(sel).expect_err(sel);
            assert_eq!(e.column, *col, "{sel}: {e}");
            assert!(e.to_string().contains(msg), "{sel}: {e}");
            assert!(e.to_string().contains(&format!("{sel:?}")), "{e}");
        }
    }
}
