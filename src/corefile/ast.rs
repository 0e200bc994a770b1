//! Generic Corefile syntax tree and its parser (Caddy v1 `caddyfile` semantics).
//!
//! The parser walks a flat token list and splices `import` targets into it in place, as
//! Caddy does, so an import may stand wherever a server block or a directive line may. Each
//! spliced token remembers the chain of imports that produced it, which is how cycles are
//! detected (Caddy v1 itself recurses forever on them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lexer::{lex, Token};
use super::{CorefileError, Pos};

/// A word of the Corefile after `{$ENV}` substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub pos: Pos,
}

/// A directive line: a name, its arguments, and an optional `{ ... }` block of sub-directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: Word,
    pub args: Vec<Word>,
    pub block: Option<Block>,
}

/// A `{ ... }` block and the directive lines inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub open: Pos,
    pub directives: Vec<Directive>,
}

/// A server block: its keys (`ZONE[:PORT]` words) and its plugin directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlockAst {
    pub keys: Vec<Word>,
    pub directives: Vec<Directive>,
    /// False for Caddy's brace-less single-block form (`.:53` followed by bare directives).
    pub braced: bool,
}

/// Environment lookup used for `{$NAME}` and `{%NAME%}`.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Limits that keep hostile input (snippets importing snippets twice, deep nesting) from
/// exhausting memory or stack.
const MAX_TOKENS: usize = 200_000;
const MAX_IMPORT_DEPTH: usize = 32;
const MAX_NESTING: usize = 16;

/// One link in the chain of imports a token came through.
#[derive(Debug)]
struct Origin {
    /// What was imported: `file /abs/path` or `snippet name`; equal keys mean a cycle.
    key: String,
    /// How to show it in a cycle error.
    label: String,
    parent: Option<Arc<Origin>>,
    depth: usize,
}

impl Origin {
    fn contains(&self, key: &str) -> bool {
        let mut cur = Some(self);
        while let Some(o) = cur {
            if o.key == key {
                return true;
            }
            cur = o.parent.as_deref();
        }
        false
    }

    fn labels(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = Some(self);
        while let Some(o) = cur {
            out.push(o.label.clone());
            cur = o.parent.as_deref();
        }
        out.reverse();
        out
    }
}

#[derive(Debug, Clone)]
struct Tok {
    t: Token,
    origin: Arc<Origin>,
}

/// Parses a whole Corefile into server blocks, expanding snippets and imports.
pub fn parse(
    text: &str,
    path: &Path,
    env: EnvLookup,
) -> Result<Vec<ServerBlockAst>, CorefileError> {
    let file: Arc<Path> = Arc::from(path);
    let origin = Arc::new(Origin {
        key: file_key(path),
        label: path.display().to_string(),
        parent: None,
        depth: 0,
    });
    let tokens = lex(text, &file)?
        .into_iter()
        .map(|t| Tok {
            t,
            origin: origin.clone(),
        })
        .collect();
    let mut p = Parser {
        tokens,
        cursor: 0,
        env,
        snippets: HashMap::new(),
        last: None,
        root: file,
    };
    p.parse_all()
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    cursor: usize,
    env: EnvLookup<'a>,
    snippets: HashMap<String, (Pos, Vec<Token>)>,
    /// The last token consumed, for errors at the end of the input.
    last: Option<Token>,
    root: Arc<Path>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.cursor).map(|t| &t.t)
    }

    fn advance(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.cursor)?.t.clone();
        self.cursor += 1;
        self.last = Some(tok.clone());
        Some(tok)
    }

    /// Where the input ended: just after the last token read.
    fn end_pos(&self) -> Pos {
        match &self.last {
            Some(t) => t.end_pos(),
            None => Pos::new(self.root.clone(), 1, 1),
        }
    }

    fn word(&self, t: &Token) -> Word {
        Word {
            text: substitute_env(&t.text, self.env),
            pos: t.pos.clone(),
        }
    }

    fn parse_all(&mut self) -> Result<Vec<ServerBlockAst>, CorefileError> {
        let mut blocks = Vec::new();
        while self.peek().is_some() {
            if let Some(b) = self.server_block()? {
                blocks.push(b);
            }
        }
        Ok(blocks)
    }

    fn server_block(&mut self) -> Result<Option<ServerBlockAst>, CorefileError> {
        let mut keys: Vec<Word> = Vec::new();
        let mut consumed_any = false;
        let mut expecting_another = false;
        loop {
            let Some(tok) = self.peek() else {
                if expecting_another {
                    return Err(CorefileError::at(
                        &self.end_pos(),
                        "expected another server address after the trailing ','",
                    ));
                }
                // A Corefile may consist of nothing but a line of addresses.
                return Ok((!keys.is_empty()).then(|| ServerBlockAst {
                    keys,
                    directives: Vec::new(),
                    braced: false,
                }));
            };
            if tok.is_bare("import") && (tok.line_start || !consumed_any) {
                self.import()?;
                continue;
            }
            if consumed_any && !expecting_another && tok.line_start {
                break;
            }
            if tok.is_bare("{") {
                if expecting_another {
                    return Err(CorefileError::at(
                        &tok.pos,
                        "expected another server address after the trailing ',' but found '{'",
                    ));
                }
                if keys.is_empty() {
                    return Err(CorefileError::at(
                        &tok.pos,
                        "expected a server address (ZONE[:PORT]) before '{'",
                    ));
                }
                break;
            }
            if tok.is_bare("}") {
                return Err(CorefileError::at(
                    &tok.pos,
                    "unexpected '}': no block is open here",
                ));
            }
            let tok = self.advance().unwrap_or_else(unreachable_token);
            consumed_any = true;
            let mut w = self.word(&tok);
            // Caddy: a trailing comma means another address follows, perhaps on the next line.
            expecting_another = w.text.ends_with(',');
            if expecting_another {
                w.text.pop();
            }
            if !w.text.is_empty() {
                keys.push(w);
            }
        }

        if keys.len() == 1
            && keys[0].text.len() > 2
            && keys[0].text.starts_with('(')
            && keys[0].text.ends_with(')')
        {
            self.snippet(&keys[0])?;
            return Ok(None);
        }
        if keys.is_empty() {
            let pos = self
                .peek()
                .map(|t| t.pos.clone())
                .unwrap_or_else(|| self.end_pos());
            return Err(CorefileError::at(
                &pos,
                "expected a server address (ZONE[:PORT])",
            ));
        }

        let braced = self.peek().is_some_and(|t| t.is_bare("{"));
        let directives = if braced {
            let open = self
                .advance()
                .map(|t| t.pos)
                .unwrap_or_else(|| self.end_pos());
            self.directives(Some(&open), 0)?
        } else {
            // Caddy allows a single server block without braces: everything to the end.
            self.directives(None, 0)?
        };
        Ok(Some(ServerBlockAst {
            keys,
            directives,
            braced,
        }))
    }

    /// Records `(name) { ... }`; its raw tokens are spliced in by `import name`.
    fn snippet(&mut self, key: &Word) -> Result<(), CorefileError> {
        let name = key.text[1..key.text.len() - 1].to_string();
        let open = match self.peek() {
            Some(t) if t.is_bare("{") => t.pos.clone(),
            Some(t) => {
                return Err(CorefileError::at(
                    &t.pos,
                    format!("expected '{{' to open snippet '{name}', found '{}'", t.text),
                ))
            }
            None => {
                return Err(CorefileError::at(
                    &self.end_pos(),
                    format!("expected '{{' to open snippet '{name}'"),
                ))
            }
        };
        self.advance();
        if let Some((first, _)) = self.snippets.get(&name) {
            return Err(CorefileError::at(
                &key.pos,
                format!(
                    "snippet '{name}' is already defined at {}:{}",
                    first.line, first.col
                ),
            ));
        }
        let mut depth = 0usize;
        let mut body = Vec::new();
        loop {
            let Some(t) = self.advance() else {
                return Err(CorefileError::at(
                    &self.end_pos(),
                    format!(
                        "expected '}}' to close snippet '{name}' opened at {}:{}",
                        open.line, open.col
                    ),
                ));
            };
            if t.is_bare("{") {
                depth += 1;
            } else if t.is_bare("}") {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            body.push(t);
        }
        self.snippets.insert(name, (key.pos.clone(), body));
        Ok(())
    }

    /// Directive lines until the `}` closing the block opened at `open`, or until the end of
    /// the input for a brace-less server block.
    fn directives(
        &mut self,
        open: Option<&Pos>,
        depth: usize,
    ) -> Result<Vec<Directive>, CorefileError> {
        if depth > MAX_NESTING {
            let pos = open.cloned().unwrap_or_else(|| self.end_pos());
            return Err(CorefileError::at(
                &pos,
                format!("blocks are nested too deeply (more than {MAX_NESTING} levels)"),
            ));
        }
        let mut out = Vec::new();
        loop {
            let Some(tok) = self.peek() else {
                return match open {
                    Some(o) => Err(CorefileError::at(
                        &self.end_pos(),
                        format!(
                            "expected '}}' to close the block opened at {}:{}",
                            o.line, o.col
                        ),
                    )),
                    None => Ok(out),
                };
            };
            if tok.is_bare("}") {
                if open.is_some() {
                    self.advance();
                    return Ok(out);
                }
                return Err(CorefileError::at(
                    &tok.pos,
                    "unexpected '}': no block is open here",
                ));
            }
            if tok.is_bare("import") {
                self.import()?;
                continue;
            }
            if tok.is_bare("{") {
                let what = if depth == 0 {
                    "a plugin name"
                } else {
                    "an option name"
                };
                return Err(CorefileError::at(
                    &tok.pos,
                    format!("unexpected '{{': expected {what}; a block must open on the line it belongs to"),
                ));
            }
            out.push(self.line(depth)?);
        }
    }

    /// One directive: its name, the arguments on the same line, and an optional block.
    fn line(&mut self, depth: usize) -> Result<Directive, CorefileError> {
        let name_tok = self.advance().unwrap_or_else(unreachable_token);
        // Caddy does not substitute environment variables in plugin names.
        let name = if depth == 0 {
            Word {
                text: name_tok.text.clone(),
                pos: name_tok.pos.clone(),
            }
        } else {
            self.word(&name_tok)
        };
        let mut args = Vec::new();
        let mut block = None;
        while let Some(t) = self.peek() {
            if t.line_start || t.is_bare("}") {
                break;
            }
            if t.is_bare("{") {
                let open = t.pos.clone();
                self.advance();
                let directives = self.directives(Some(&open), depth + 1)?;
                block = Some(Block { open, directives });
                if let Some(next) = self.peek() {
                    if !next.line_start && !next.is_bare("}") {
                        return Err(CorefileError::at(
                            &next.pos,
                            format!(
                                "unexpected '{}' after '}}': expected the end of the line",
                                next.text
                            ),
                        ));
                    }
                }
                break;
            }
            let t = self.advance().unwrap_or_else(unreachable_token);
            args.push(self.word(&t));
        }
        Ok(Directive { name, args, block })
    }

    /// Replaces `import ARG` at the cursor by the snippet's or the files' tokens.
    fn import(&mut self) -> Result<(), CorefileError> {
        let at = self.cursor;
        let Some(imp) = self.tokens.get(at).cloned() else {
            return Ok(());
        };
        let arg = match self.tokens.get(at + 1) {
            Some(a) if !a.t.line_start => a.t.clone(),
            _ => {
                return Err(CorefileError::at(
                    &imp.t.pos,
                    "import needs one argument: a snippet name, a file or a glob",
                ))
            }
        };
        if let Some(extra) = self.tokens.get(at + 2) {
            if !extra.t.line_start {
                return Err(CorefileError::at(
                    &extra.t.pos,
                    format!(
                        "unexpected '{}': import takes exactly one argument (a snippet name, a file or a glob)",
                        extra.t.text
                    ),
                ));
            }
        }
        let pattern = substitute_env(&arg.text, self.env);
        if pattern.is_empty() {
            return Err(CorefileError::at(
                &arg.pos,
                "import needs a non-empty snippet name, file or glob",
            ));
        }
        if imp.origin.depth >= MAX_IMPORT_DEPTH {
            return Err(CorefileError::at(
                &imp.t.pos,
                format!("imports are nested too deeply (more than {MAX_IMPORT_DEPTH} levels)"),
            ));
        }

        let mut spliced: Vec<Tok> = Vec::new();
        if let Some((_, body)) = self.snippets.get(&pattern) {
            let key = format!("snippet {pattern}");
            let origin = self.child_origin(&imp, &arg, key, format!("snippet '{pattern}'"))?;
            spliced.extend(body.iter().cloned().map(|t| Tok {
                t,
                origin: origin.clone(),
            }));
        } else {
            for file in self.import_files(&imp.t, &arg, &pattern)? {
                let origin =
                    self.child_origin(&imp, &arg, file_key(&file), file.display().to_string())?;
                let bytes = std::fs::read(&file).map_err(|e| {
                    CorefileError::at(&arg.pos, format!("cannot import '{}': {e}", file.display()))
                })?;
                let fpath: Arc<Path> = Arc::from(file.as_path());
                let text = utf8(&bytes, &fpath)?;
                spliced.extend(lex(text, &fpath)?.into_iter().map(|t| Tok {
                    t,
                    origin: origin.clone(),
                }));
            }
        }
        if self.tokens.len() + spliced.len() > MAX_TOKENS {
            return Err(CorefileError::at(
                &imp.t.pos,
                format!("imports expand to more than {MAX_TOKENS} tokens"),
            ));
        }
        // The imported text starts a line of its own wherever it is spliced.
        if let Some(first) = spliced.first_mut() {
            first.t.line_start = true;
        }
        self.tokens.splice(at..at + 2, spliced);
        Ok(())
    }

    fn child_origin(
        &self,
        imp: &Tok,
        arg: &Token,
        key: String,
        label: String,
    ) -> Result<Arc<Origin>, CorefileError> {
        if imp.origin.contains(&key) {
            let mut chain = imp.origin.labels();
            chain.push(label);
            return Err(CorefileError::at(
                &arg.pos,
                format!("import cycle: {}", chain.join(" -> ")),
            ));
        }
        Ok(Arc::new(Origin {
            key,
            label,
            parent: Some(imp.origin.clone()),
            depth: imp.origin.depth + 1,
        }))
    }

    /// The files an import pattern names, relative to the importing file's directory.
    fn import_files(
        &self,
        imp: &Token,
        arg: &Token,
        pattern: &str,
    ) -> Result<Vec<PathBuf>, CorefileError> {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            imp.pos
                .file
                .parent()
                .map(|d| d.join(pattern))
                .unwrap_or_else(|| PathBuf::from(pattern))
        };
        let full_str = full.to_string_lossy();
        let stars = full_str.matches('*').count();
        let qmarks = full_str.matches('?').count();
        // Same limit as Caddy (issue #2096): patterns with many wildcards can take very long.
        if stars > 1 || qmarks > 1 || (full_str.contains('[') && full_str.contains(']')) {
            return Err(CorefileError::at(
                &arg.pos,
                format!(
                    "import glob may contain at most one '*' and one '?' and no '[...]': {}",
                    full.display()
                ),
            ));
        }
        if stars + qmarks == 0 {
            if !full.exists() {
                return Err(CorefileError::at(
                    &arg.pos,
                    format!(
                        "cannot import '{pattern}': no snippet of that name is defined above and no file {} exists",
                        full.display()
                    ),
                ));
            }
            if full.is_dir() {
                return Err(CorefileError::at(
                    &arg.pos,
                    format!("cannot import '{}': it is a directory", full.display()),
                ));
            }
            return Ok(vec![full]);
        }
        // No match is fine, as in Caddy (which only logs a warning).
        Ok(glob(&full).into_iter().filter(|p| p.is_file()).collect())
    }
}

fn unreachable_token() -> Token {
    // Callers peek before they advance; this keeps a logic slip from becoming a panic.
    Token {
        text: String::new(),
        pos: Pos::new(Arc::from(Path::new("")), 0, 0),
        end: (0, 0),
        quoted: true,
        line_start: true,
    }
}

fn file_key(path: &Path) -> String {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file {}", canon.display())
}

/// Decodes file content, reporting the position of the first invalid byte.
pub(crate) fn utf8<'b>(bytes: &'b [u8], file: &Arc<Path>) -> Result<&'b str, CorefileError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let line = valid.matches('\n').count() as u32 + 1;
        let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        CorefileError::at(
            &Pos::new(file.clone(), line, col),
            "the file is not valid UTF-8",
        )
    })
}

/// Replaces `{%NAME%}` and then `{$NAME}` references with environment values, as Caddy does
/// (an unset variable becomes empty). Unlike Caddy, a substituted value is not scanned again,
/// so a value containing a reference cannot loop.
pub(crate) fn substitute_env(s: &str, env: EnvLookup) -> String {
    if !s.contains('{') {
        return s.to_string();
    }
    let s = substitute_refs(s, "{%", "%}", env);
    substitute_refs(&s, "{$", "}", env)
}

fn substitute_refs(s: &str, start: &str, end: &str, env: EnvLookup) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(start) {
        let after = &rest[i + start.len()..];
        match after.find(end) {
            Some(j) if j > 0 => {
                out.push_str(&rest[..i]);
                out.push_str(&env(&after[..j]).unwrap_or_default());
                rest = &after[j + end.len()..];
            }
            _ => {
                out.push_str(&rest[..i + start.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Expands a path pattern with `*` and `?` in any component, sorted per directory like Go's
/// `filepath.Glob`.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        let wild = part.contains('*') || part.contains('?');
        let mut next = Vec::new();
        for base in &found {
            if !wild {
                next.push(base.join(comp.as_os_str()));
                continue;
            }
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| wildcard_match(&part, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    found.into_iter().filter(|p| p.exists()).collect()
}

/// `*` matches any run of characters, `?` exactly one; everything else is literal.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if let Some((bp, bn)) = backtrack {
            pi = bp + 1;
            ni = bn + 1;
            backtrack = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn ast(s: &str) -> Vec<ServerBlockAst> {
        parse(s, Path::new("Corefile"), &no_env).unwrap()
    }

    fn err(s: &str) -> String {
        parse(s, Path::new("Corefile"), &no_env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn blocks_keys_and_nesting() {
        let b = ast("a.org:53 b.org,\n  dns://c.org {\n forward . 1.1.1.1 {\n  tls a b c\n }\n log\n}\n. {\n}");
        assert_eq!(b.len(), 2);
        let keys: Vec<&str> = b[0].keys.iter().map(|k| k.text.as_str()).collect();
        assert_eq!(keys, ["a.org:53", "b.org", "dns://c.org"]);
        let fwd = &b[0].directives[0];
        assert_eq!(fwd.name.text, "forward");
        assert_eq!(fwd.args.len(), 2);
        let inner = &fwd.block.as_ref().unwrap().directives[0];
        assert_eq!(inner.name.text, "tls");
        assert_eq!(inner.args.len(), 3);
        assert_eq!(b[0].directives[1].name.text, "log");
        assert!(b[1].directives.is_empty());
    }

    #[test]
    fn braceless_single_block() {
        let b = ast(".:53\nerrors\nlog\n");
        assert_eq!(b.len(), 1);
        assert!(!b[0].braced);
        assert_eq!(b[0].directives.len(), 2);
        let only_keys = ast("example.org");
        assert_eq!(only_keys[0].keys[0].text, "example.org");
    }

    #[test]
    fn one_line_blocks() {
        let b = ast(". { health { lameduck 5s } }\n");
        let h = &b[0].directives[0];
        assert_eq!(h.block.as_ref().unwrap().directives[0].args[0].text, "5s");
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            err(".:53 {\n  errors\n  health {\n    lameduck 5s\n  }\n"),
            "Corefile:5:4: expected '}' to close the block opened at 1:6"
        );
        assert_eq!(
            err(". {\n}\n}\n"),
            "Corefile:3:1: unexpected '}': no block is open here"
        );
        assert_eq!(
            err(". {\n health { } ready\n}"),
            "Corefile:2:13: unexpected 'ready' after '}': expected the end of the line"
        );
        assert_eq!(
            err("a,\n"),
            "Corefile:1:3: expected another server address after the trailing ','"
        );
    }

    #[test]
    fn env_substitution() {
        let env = |k: &str| match k {
            "ZONE" => Some("cluster.local".to_string()),
            "W" => Some("{$ZONE}".to_string()),
            _ => None,
        };
        assert_eq!(substitute_env("{$ZONE}:53", &env), "cluster.local:53");
        assert_eq!(
            substitute_env("a{%ZONE%}b{$NOPE}c", &env),
            "acluster.localbc"
        );
        assert_eq!(substitute_env("{$W}", &env), "{$ZONE}");
        assert_eq!(substitute_env("{$}x{$", &env), "{$}x{$");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "a.conf"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("*.conf", "a.conf.bak"));
        assert!(wildcard_match("*", ""));
    }
}
