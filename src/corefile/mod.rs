//! Corefile front end: CoreDNS configuration text to a typed [`Config`]. Pure parsing; the
//! only I/O is reading the Corefile and the files it imports.
//!
//! ```text
//!  text ──lexer──> tokens ──ast::parse──> server blocks ──plugins──> Config
//!         (Caddy     (import/snippets      (generic           (typed options,
//!          quoting)   spliced, {$ENV})      directives)        fixed plugin order)
//! ```
//!
//! The syntax follows Caddy v1's `caddyfile` package, which CoreDNS embeds; the plugin options
//! follow the CoreDNS plugin READMEs. Every error is `FILE:LINE:COL: message`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub mod ast;
mod config;
pub mod gotemplate;
mod lexer;
mod plugins;
pub mod rr;
mod values;

pub use config::*;
pub use values::parse_go_duration;

/// Whether text spliced into generated Corefile text stays one plain word (no spaces, braces,
/// comments, quotes or `{$ENV}` substitution).
pub(crate) fn one_corefile_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || "{}#\"'`$".contains(c))
}

/// A position in a Corefile or in a file it imports. Lines and columns count from 1;
/// columns count characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pos {
    pub file: Arc<Path>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(file: Arc<Path>, line: u32, col: u32) -> Self {
        Self { file, line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A Corefile that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct CorefileError {
    /// The file as it was named (the Corefile's path, or the importing directory joined with
    /// the import argument).
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl CorefileError {
    pub(crate) fn at(pos: &Pos, message: impl Into<String>) -> Self {
        Self {
            file: pos.file.display().to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }
}

/// Parses Corefile `text` as if read from `path` (imports resolve relative to its directory);
/// `env` answers `{$NAME}` and `{%NAME%}` references.
pub fn parse_str(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, CorefileError> {
    let blocks = ast::parse(text, path, env)?;
    plugins::build(&blocks, path)
}

/// Reads and parses the Corefile at `path`, with the process environment.
pub fn load(path: &Path) -> Result<Config, CorefileError> {
    let file: Arc<Path> = Arc::from(path);
    let bytes = std::fs::read(path).map_err(|e| {
        // No position inside a file that cannot be read.
        CorefileError::at(
            &Pos::new(file.clone(), 0, 0),
            format!("cannot read the Corefile: {e}"),
        )
    })?;
    let text = ast::utf8(&bytes, &file)?;
    parse_str(text, path, &|name| std::env::var(name).ok())
}

/// Parses to the generic syntax tree only (no plugin validation), e.g. for tooling.
pub fn parse_ast(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ast::ServerBlockAst>, CorefileError> {
    ast::parse(text, path, env)
}
