//! From the generic syntax tree to typed plugin configs, with CoreDNS's defaults and checks.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RecordType};

use super::ast::{Directive, ServerBlockAst, Word};
use super::config::*;
use super::values::{
    looks_like_address, normalize_name, normalize_zones, parse_go_duration, parse_host_port,
    parse_int, parse_ip_port, parse_key, parse_net, split_upstream_transport,
};
use super::{gotemplate, CorefileError, Pos};

type Result<T, E = CorefileError> = std::result::Result<T, E>;

pub(crate) fn build(blocks: &[ServerBlockAst], path: &Path) -> Result<Config> {
    if blocks.is_empty() {
        return Err(CorefileError::at(
            &Pos::new(Arc::from(path), 1, 1),
            "expected at least one server block, e.g. '.:53 { forward . /etc/resolv.conf }'",
        ));
    }
    let mut served: HashMap<(Transport, String, u16), Pos> = HashMap::new();
    let mut servers = Vec::with_capacity(blocks.len());
    for b in blocks {
        let mut zones: Vec<ZoneKey> = Vec::new();
        for key in &b.keys {
            let parsed = parse_key(&key.text).map_err(|m| {
                CorefileError::at(
                    &key.pos,
                    format!("invalid server address '{}': {m}", key.text),
                )
            })?;
            for z in parsed {
                let id = (z.transport, z.zone.clone(), z.port);
                if let Some(first) = served.get(&id) {
                    return Err(CorefileError::at(
                        &key.pos,
                        format!(
                            "zone '{}' on port {} is already served by the block at {}:{}",
                            z.zone, z.port, first.line, first.col
                        ),
                    ));
                }
                served.insert(id, key.pos.clone());
                zones.push(z);
            }
        }
        let block_zones = dedup(zones.iter().map(|z| z.zone.clone()).collect());
        let (plugins, plugin_pos) = build_plugins(&b.directives, &block_zones)?;
        let pos = b
            .keys
            .first()
            .map(|k| k.pos.clone())
            .unwrap_or_else(|| Pos::new(Arc::from(path), 1, 1));
        servers.push(ServerBlock {
            zones,
            plugins,
            pos,
            plugin_pos,
        });
    }
    Ok(Config { servers })
}

type Plugins = (Vec<PluginConfig>, HashMap<PluginKind, Pos>);

fn build_plugins(directives: &[Directive], block_zones: &[String]) -> Result<Plugins> {
    let mut first_use: HashMap<PluginKind, Pos> = HashMap::new();
    let mut out: Vec<PluginConfig> = Vec::new();
    for d in directives {
        let Some(kind) = PluginKind::from_name(&d.name.text) else {
            let names: Vec<&str> = PluginKind::ORDER.iter().map(|k| k.name()).collect();
            return Err(CorefileError::at(
                &d.name.pos,
                format!(
                    "unknown plugin '{}' (supported: {})",
                    d.name.text,
                    names.join(", ")
                ),
            ));
        };
        if let Some(first) = first_use.get(&kind) {
            if !kind.repeatable() {
                return Err(CorefileError::at(
                    &d.name.pos,
                    format!(
                        "plugin '{}' may be used only once per server block; first used at {}:{}",
                        kind.name(),
                        first.line,
                        first.col
                    ),
                ));
            }
        } else {
            first_use.insert(kind, d.name.pos.clone());
        }
        let existing = out.iter_mut().find(|p| p.kind() == kind);
        match (kind, existing) {
            (PluginKind::Log, Some(PluginConfig::Log(c))) => c.rules.extend(log(d)?),
            (PluginKind::Log, _) => out.push(PluginConfig::Log(LogConfig { rules: log(d)? })),
            (PluginKind::Rewrite, Some(PluginConfig::Rewrite(c))) => c.rules.push(rewrite(d)?),
            (PluginKind::Rewrite, _) => out.push(PluginConfig::Rewrite(RewriteConfig {
                rules: vec![rewrite(d)?],
            })),
            (PluginKind::Acl, Some(PluginConfig::Acl(c))) => c.policies.push(acl(d, block_zones)?),
            (PluginKind::Acl, _) => out.push(PluginConfig::Acl(AclConfig {
                policies: vec![acl(d, block_zones)?],
            })),
            (PluginKind::Bind, Some(PluginConfig::Bind(c))) => bind(d, c)?,
            (PluginKind::Bind, _) => {
                let mut c = BindConfig::default();
                bind(d, &mut c)?;
                out.push(PluginConfig::Bind(c));
            }
            (PluginKind::Template, Some(PluginConfig::Template(c))) => {
                c.templates.push(template(d, block_zones)?)
            }
            (PluginKind::Template, _) => out.push(PluginConfig::Template(TemplateConfig {
                templates: vec![template(d, block_zones)?],
            })),
            (PluginKind::Timeouts, _) => out.push(PluginConfig::Timeouts(timeouts(d)?)),
            (PluginKind::Reload, _) => out.push(PluginConfig::Reload(reload(d)?)),
            (PluginKind::Ready, _) => out.push(PluginConfig::Ready(ReadyConfig {
                addr: listen_addr(d, "ready [ADDR]", ReadyConfig::default().addr)?,
            })),
            (PluginKind::Health, _) => out.push(PluginConfig::Health(health(d)?)),
            (PluginKind::Prometheus, _) => out.push(PluginConfig::Prometheus(PrometheusConfig {
                addr: listen_addr(d, "prometheus [ADDR]", PrometheusConfig::default().addr)?,
            })),
            (PluginKind::Errors, _) => out.push(PluginConfig::Errors(errors(d)?)),
            (PluginKind::Loadbalance, _) => out.push(PluginConfig::Loadbalance(loadbalance(d)?)),
            (PluginKind::Autopath, _) => {
                out.push(PluginConfig::Autopath(autopath(d, block_zones)?))
            }
            (PluginKind::Cache, _) => out.push(PluginConfig::Cache(cache(d, block_zones)?)),
            (PluginKind::Hosts, _) => out.push(PluginConfig::Hosts(hosts(d, block_zones)?)),
            (PluginKind::Kubernetes, _) => {
                out.push(PluginConfig::Kubernetes(kubernetes(d, block_zones)?))
            }
            (PluginKind::Loop, _) => {
                let a = Args::new(d, "loop", "loop");
                a.done()?;
                options(d, "loop", &[])?;
                out.push(PluginConfig::Loop(LoopConfig {}));
            }
            (PluginKind::Forward, _) => out.push(PluginConfig::Forward(forward(d)?)),
        }
    }
    // The execution order is fixed by the plugin, not by the line (PluginKind's Ord is ORDER).
    out.sort_by_key(|p| p.kind());
    Ok((out, first_use))
}

/// Walks the arguments of one directive line, naming it and its usage in errors.
struct Args<'a> {
    d: &'a Directive,
    ctx: String,
    usage: &'static str,
    /// A Cell so that `a.int(a.req(..)?)` borrows `a` only immutably.
    i: Cell<usize>,
}

impl<'a> Args<'a> {
    fn new(d: &'a Directive, ctx: &str, usage: &'static str) -> Self {
        Self {
            d,
            ctx: ctx.to_string(),
            usage,
            i: Cell::new(0),
        }
    }

    /// For an option inside a plugin's block: errors read `plugin: option: ...`.
    fn opt(d: &'a Directive, plugin: &str, usage: &'static str) -> Self {
        Self::new(d, &format!("{plugin}: {}", d.name.text), usage)
    }

    fn next(&self) -> Option<&'a Word> {
        let w = self.d.args.get(self.i.get())?;
        self.i.set(self.i.get() + 1);
        Some(w)
    }

    fn peek(&self) -> Option<&'a Word> {
        self.d.args.get(self.i.get())
    }

    fn req(&self, what: &str) -> Result<&'a Word> {
        self.next().ok_or_else(|| {
            CorefileError::at(
                &self.d.name.pos,
                format!("{}: missing {what} (usage: {})", self.ctx, self.usage),
            )
        })
    }

    fn rest(&self) -> &'a [Word] {
        let r = self.d.args.get(self.i.get()..).unwrap_or_default();
        self.i.set(self.d.args.len());
        r
    }

    /// Like `rest` but at least one.
    fn rest1(&self, what: &str) -> Result<&'a [Word]> {
        if self.peek().is_none() {
            self.req(what)?;
        }
        Ok(self.rest())
    }

    fn done(&self) -> Result<()> {
        match self.d.args.get(self.i.get()) {
            None => Ok(()),
            Some(w) => Err(CorefileError::at(
                &w.pos,
                format!(
                    "{}: unexpected argument '{}' (usage: {})",
                    self.ctx, w.text, self.usage
                ),
            )),
        }
    }

    fn err(&self, w: &Word, msg: impl std::fmt::Display) -> CorefileError {
        CorefileError::at(&w.pos, format!("{}: {msg}", self.ctx))
    }

    fn duration(&self, w: &Word) -> Result<Duration> {
        parse_go_duration(&w.text).map_err(|m| self.err(w, m))
    }

    fn int<T: TryFrom<i64>>(&self, w: &Word, min: i64, max: i64) -> Result<T> {
        parse_int(&w.text, min, max).map_err(|m| self.err(w, m))
    }

    fn zones(&self, words: &[Word]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for w in words {
            out.extend(normalize_zones(&w.text).map_err(|m| self.err(w, m))?);
        }
        Ok(dedup(out))
    }

    /// Zone arguments, or the server block's zones when there are none.
    fn zones_or(&self, words: &[Word], block_zones: &[String]) -> Result<Vec<String>> {
        if words.is_empty() {
            Ok(block_zones.to_vec())
        } else {
            self.zones(words)
        }
    }

    fn name(&self, w: &Word) -> Result<String> {
        normalize_name(&w.text).map_err(|m| self.err(w, m))
    }

    fn pattern(&self, w: &Word) -> Result<Pattern> {
        compile(&w.text).map(Pattern).map_err(|m| self.err(w, m))
    }

    fn fallthrough(&self, words: &[Word]) -> Result<Fallthrough> {
        if words.is_empty() {
            return Ok(Fallthrough::Zones(vec![".".to_string()]));
        }
        Ok(Fallthrough::Zones(self.zones(words)?))
    }

    /// One of `choices`, by exact (lowercase) name.
    fn choice<T: Copy>(&self, w: &Word, choices: &[(&str, T)]) -> Result<T> {
        choices
            .iter()
            .find(|(n, _)| *n == w.text)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.err(
                    w,
                    format!(
                        "invalid value '{}' (expected {})",
                        w.text,
                        names.join(" | ")
                    ),
                )
            })
    }
}

fn compile(src: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(src)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // regex's syntax errors are multi-line diagrams; keep the one-line cause.
            let text = e.to_string();
            let cause = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(text.lines().last().unwrap_or_default())
                .to_string();
            format!("invalid regular expression '{src}': {cause}")
        })
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The options in a plugin's block; `supported` is for the unknown-option error of plugins
/// whose options are all handled by the caller's `match`. Options never take blocks.
fn options<'a>(d: &'a Directive, plugin: &str, supported: &[&str]) -> Result<&'a [Directive]> {
    let Some(block) = &d.block else {
        return Ok(&[]);
    };
    for o in &block.directives {
        if supported.is_empty() {
            return Err(unknown_option(o, plugin, supported));
        }
        if let Some(inner) = &o.block {
            return Err(CorefileError::at(
                &inner.open,
                format!(
                    "{plugin}: {}: unexpected '{{': this option takes no block",
                    o.name.text
                ),
            ));
        }
    }
    Ok(&block.directives)
}

fn unknown_option(o: &Directive, plugin: &str, supported: &[&str]) -> CorefileError {
    let msg = if supported.is_empty() {
        format!(
            "{plugin}: unknown option '{}' ({plugin} takes no options)",
            o.name.text
        )
    } else {
        format!(
            "{plugin}: unknown option '{}' (supported: {})",
            o.name.text,
            supported.join(", ")
        )
    };
    CorefileError::at(&o.name.pos, msg)
}

fn flag(o: &Directive, plugin: &str, usage: &'static str) -> Result<bool> {
    Args::opt(o, plugin, usage).done()?;
    Ok(true)
}

fn listen_addr(d: &Directive, usage: &'static str, default: HostPort) -> Result<HostPort> {
    let name = d.name.text.as_str();
    let a = Args::new(d, name, usage);
    let addr = match a.next() {
        Some(w) => parse_host_port(&w.text).map_err(|m| a.err(w, m))?,
        None => default,
    };
    a.done()?;
    options(d, name, &[])?;
    Ok(addr)
}

fn reload(d: &Directive) -> Result<ReloadConfig> {
    const USAGE: &str = "reload [INTERVAL] [JITTER]";
    let a = Args::new(d, "reload", USAGE);
    let mut c = ReloadConfig::default();
    if let Some(w) = a.next() {
        c.interval = a.duration(w)?;
        if c.interval < Duration::from_secs(2) {
            return Err(a.err(w, format!("interval '{}' must be at least 2s", w.text)));
        }
    }
    if let Some(w) = a.next() {
        c.jitter = a.duration(w)?;
        if c.jitter < Duration::from_secs(1) {
            return Err(a.err(w, format!("jitter '{}' must be at least 1s", w.text)));
        }
    }
    a.done()?;
    options(d, "reload", &[])?;
    // CoreDNS caps the jitter at half the interval (with a warning).
    c.jitter = c.jitter.min(c.interval / 2);
    Ok(c)
}

fn bind_addr(a: &Args, w: &Word) -> Result<BindAddr> {
    if let Ok(ip) = w.text.parse() {
        return Ok(BindAddr::Ip(ip));
    }
    let iface_ok = w.text.len() <= 15
        && w.text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if looks_like_address(&w.text) || !iface_ok {
        return Err(a.err(
            w,
            format!(
                "'{}' is not an IP address or a network interface name",
                w.text
            ),
        ));
    }
    Ok(BindAddr::Interface(w.text.clone()))
}

fn bind(d: &Directive, c: &mut BindConfig) -> Result<()> {
    let a = Args::new(d, "bind", "bind ADDR... { except ADDR... }");
    for w in a.rest1("ADDR")? {
        c.addrs.push(bind_addr(&a, w)?);
    }
    for o in options(d, "bind", &["except"])? {
        match o.name.text.as_str() {
            "except" => {
                let oa = Args::opt(o, "bind", "except ADDR...");
                for w in oa.rest1("ADDR")? {
                    c.except.push(bind_addr(&oa, w)?);
                }
            }
            _ => return Err(unknown_option(o, "bind", &["except"])),
        }
    }
    Ok(())
}

/// CoreDNS's `timeouts`: at least one of read, write, idle, each from 1 s to 24 h.
fn timeouts(d: &Directive) -> Result<TimeoutsConfig> {
    const SUPPORTED: &[&str] = &["read", "write", "idle"];
    let a = Args::new(
        d,
        "timeouts",
        "timeouts { read DURATION write DURATION idle DURATION }",
    );
    a.done()?;
    let mut c = TimeoutsConfig::default();
    let opts = options(d, "timeouts", SUPPORTED)?;
    if opts.is_empty() {
        return Err(CorefileError::at(
            &d.name.pos,
            "timeouts: give at least one of read, write, idle (or leave the plugin out)",
        ));
    }
    for o in opts {
        let name = o.name.text.as_str();
        let slot = match name {
            "read" => &mut c.read,
            "write" => &mut c.write,
            "idle" => &mut c.idle,
            _ => return Err(unknown_option(o, "timeouts", SUPPORTED)),
        };
        let oa = Args::opt(o, "timeouts", "read|write|idle DURATION");
        let w = oa.req("DURATION")?;
        let dur = oa.duration(w)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&dur) {
            return Err(oa.err(w, format!("{name} {}: must be between 1s and 24h", w.text)));
        }
        oa.done()?;
        *slot = Some(dur);
    }
    Ok(c)
}

fn health(d: &Directive) -> Result<HealthConfig> {
    const SUPPORTED: &[&str] = &["lameduck"];
    let a = Args::new(d, "health", "health [ADDR] { lameduck DURATION }");
    let mut c = HealthConfig::default();
    if let Some(w) = a.next() {
        c.addr = parse_host_port(&w.text).map_err(|m| a.err(w, m))?;
    }
    a.done()?;
    for o in options(d, "health", SUPPORTED)? {
        match o.name.text.as_str() {
            "lameduck" => {
                let oa = Args::opt(o, "health", "lameduck DURATION");
                c.lameduck = oa.duration(oa.req("DURATION")?)?;
                oa.done()?;
            }
            _ => return Err(unknown_option(o, "health", SUPPORTED)),
        }
    }
    Ok(c)
}

fn errors(d: &Directive) -> Result<ErrorsConfig> {
    const SUPPORTED: &[&str] = &["consolidate"];
    const USAGE: &str = "consolidate DURATION REGEXP [debug|info|warning|error] [show_first]";
    let a = Args::new(d, "errors", "errors { consolidate DURATION REGEXP }");
    // `errors stdout` is the old spelling of the default.
    if a.peek().is_some_and(|w| w.text == "stdout") {
        a.next();
    }
    a.done()?;
    let mut c = ErrorsConfig::default();
    for o in options(d, "errors", SUPPORTED)? {
        match o.name.text.as_str() {
            "consolidate" => {
                let oa = Args::opt(o, "errors", USAGE);
                let period = oa.duration(oa.req("DURATION")?)?;
                let pattern = oa.pattern(oa.req("REGEXP")?)?;
                let mut level = ErrorLevel::Error;
                let mut show_first = false;
                while let Some(w) = oa.next() {
                    match w.text.as_str() {
                        "show_first" if !show_first => show_first = true,
                        _ => {
                            level = oa.choice(
                                w,
                                &[
                                    ("debug", ErrorLevel::Debug),
                                    ("info", ErrorLevel::Info),
                                    ("warning", ErrorLevel::Warning),
                                    ("error", ErrorLevel::Error),
                                ],
                            )?
                        }
                    }
                }
                c.consolidate.push(Consolidate {
                    period,
                    pattern,
                    level,
                    show_first,
                });
            }
            _ => return Err(unknown_option(o, "errors", SUPPORTED)),
        }
    }
    Ok(c)
}

fn log(d: &Directive) -> Result<Vec<LogRule>> {
    const SUPPORTED: &[&str] = &["class"];
    let a = Args::new(d, "log", "log [NAMES...] [FORMAT] { class CLASSES }");
    let mut args = a.rest();
    let mut format = COMMON_LOG_FORMAT.to_string();
    // As in CoreDNS: with two or more arguments, a last one containing '{' is the format.
    if args.len() > 1 {
        if let Some(last) = args.last().filter(|w| w.text.contains('{')) {
            format = last
                .text
                .replace("{common}", COMMON_LOG_FORMAT)
                .replace("{combined}", COMBINED_LOG_FORMAT);
            args = &args[..args.len() - 1];
        }
    }
    let names = if args.is_empty() {
        vec![".".to_string()]
    } else {
        args.iter().map(|w| a.name(w)).collect::<Result<Vec<_>>>()?
    };
    let mut classes = LogClasses::NONE;
    for o in options(d, "log", SUPPORTED)? {
        match o.name.text.as_str() {
            "class" => {
                let oa = Args::opt(o, "log", "class success|denial|error|all...");
                for w in oa.rest1("CLASS")? {
                    match w.text.as_str() {
                        "success" => classes.success = true,
                        "denial" => classes.denial = true,
                        "error" => classes.error = true,
                        "all" => classes = LogClasses::ALL,
                        _ => {
                            return Err(oa.err(
                                w,
                                format!(
                                    "invalid class '{}' (expected success | denial | error | all)",
                                    w.text
                                ),
                            ))
                        }
                    }
                }
            }
            _ => return Err(unknown_option(o, "log", SUPPORTED)),
        }
    }
    if classes == LogClasses::NONE {
        classes = LogClasses::ALL;
    }
    Ok(names
        .into_iter()
        .map(|name| LogRule {
            name,
            format: format.clone(),
            classes,
        })
        .collect())
}

fn loadbalance(d: &Directive) -> Result<LoadbalanceConfig> {
    let a = Args::new(d, "loadbalance", "loadbalance [round_robin]");
    let mut c = LoadbalanceConfig::default();
    if let Some(w) = a.next() {
        c.policy = a.choice(w, &[("round_robin", LoadbalancePolicy::RoundRobin)])?;
    }
    a.done()?;
    options(d, "loadbalance", &[])?;
    Ok(c)
}

fn rewrite(d: &Directive) -> Result<RewriteRule> {
    const USAGE: &str = "rewrite [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO [answer auto | answer name FROM TO | answer value FROM TO]";
    let a = Args::new(d, "rewrite", USAGE);
    let mut flow = RewriteFlow::Stop;
    if let Some(w) = a.peek() {
        match w.text.as_str() {
            "continue" => flow = RewriteFlow::Continue,
            "stop" => flow = RewriteFlow::Stop,
            _ => {}
        }
        if matches!(w.text.as_str(), "continue" | "stop") {
            a.next();
        }
    }
    let kind = a.req("rule type 'name'")?;
    if kind.text != "name" {
        return Err(a.err(
            kind,
            format!("unsupported rule type '{}' (supported: name)", kind.text),
        ));
    }
    let mut match_type = "exact";
    if let Some(w) = a.peek() {
        if matches!(
            w.text.as_str(),
            "exact" | "prefix" | "suffix" | "substring" | "regex"
        ) {
            match_type = w.text.as_str();
            a.next();
        }
    }
    let from = a.req("FROM")?;
    let to = a.req("TO")?;
    let lower = |w: &Word| w.text.to_ascii_lowercase();
    let name = match match_type {
        "exact" => NameRewrite::Exact {
            from: a.name(from)?,
            to: a.name(to)?,
        },
        "prefix" => NameRewrite::Prefix {
            from: lower(from),
            to: lower(to),
        },
        "suffix" => NameRewrite::Suffix {
            from: lower(from),
            to: lower(to),
        },
        "substring" => NameRewrite::Substring {
            from: lower(from),
            to: lower(to),
        },
        _ => NameRewrite::Regex {
            from: a.pattern(from)?,
            to: to.text.clone(),
        },
    };
    let mut answer = Vec::new();
    while let Some(w) = a.next() {
        if w.text != "answer" {
            return Err(a.err(
                w,
                format!(
                    "unexpected '{}': expected 'answer' (usage: {USAGE})",
                    w.text
                ),
            ));
        }
        let what = a.req("'auto', 'name' or 'value' after 'answer'")?;
        match what.text.as_str() {
            "auto" => answer.push(AnswerRewrite::Auto),
            "name" | "value" => {
                let from = a.pattern(a.req("answer FROM")?)?;
                let to = a.req("answer TO")?.text.clone();
                answer.push(if what.text == "name" {
                    AnswerRewrite::Name { from, to }
                } else {
                    AnswerRewrite::Value { from, to }
                });
            }
            _ => {
                return Err(a.err(
                    what,
                    format!(
                        "invalid value '{}' after 'answer' (expected auto | name | value)",
                        what.text
                    ),
                ))
            }
        }
    }
    options(d, "rewrite", &[])?;
    Ok(RewriteRule { flow, name, answer })
}

fn autopath(d: &Directive, block_zones: &[String]) -> Result<AutopathConfig> {
    let a = Args::new(d, "autopath", "autopath [ZONES...] @kubernetes|RESOLV-CONF");
    let args = a.rest1("@kubernetes or RESOLV-CONF")?;
    let (src, zone_args) = match args.split_last() {
        Some(x) => x,
        None => return Err(a.err(&d.name, "missing @kubernetes or RESOLV-CONF")),
    };
    let source = if let Some(plugin) = src.text.strip_prefix('@') {
        if plugin != "kubernetes" {
            return Err(a.err(
                src,
                format!("unsupported plugin '{}' (supported: @kubernetes)", src.text),
            ));
        }
        AutopathSource::Kubernetes
    } else {
        AutopathSource::ResolvConf(PathBuf::from(&src.text))
    };
    options(d, "autopath", &[])?;
    Ok(AutopathConfig {
        zones: a.zones_or(zone_args, block_zones)?,
        source,
    })
}

fn acl(d: &Directive, block_zones: &[String]) -> Result<AclPolicy> {
    const USAGE: &str = "allow|block|filter|drop [type QTYPE...] [net SOURCE...]";
    let a = Args::new(
        d,
        "acl",
        "acl [ZONES...] { allow|block|filter|drop [type QTYPE...] [net SOURCE...] }",
    );
    let zones = a.zones_or(a.rest(), block_zones)?;
    let mut rules = Vec::new();
    let Some(block) = &d.block else {
        return Ok(AclPolicy { zones, rules });
    };
    for o in &block.directives {
        let action = match o.name.text.to_ascii_lowercase().as_str() {
            "allow" => AclAction::Allow,
            "block" => AclAction::Block,
            "filter" => AclAction::Filter,
            "drop" => AclAction::Drop,
            _ => {
                return Err(unknown_option(
                    o,
                    "acl",
                    &["allow", "block", "filter", "drop"],
                ))
            }
        };
        if let Some(inner) = &o.block {
            return Err(CorefileError::at(
                &inner.open,
                format!(
                    "acl: {}: unexpected '{{': this option takes no block",
                    o.name.text
                ),
            ));
        }
        let oa = Args::opt(o, "acl", USAGE);
        let mut rule = AclRule {
            action,
            qtypes: Vec::new(),
            nets: Vec::new(),
        };
        let mut words = o.args.iter().peekable();
        while let Some(section) = words.next() {
            let sect = section.text.to_ascii_lowercase();
            if sect != "type" && sect != "net" {
                return Err(oa.err(
                    section,
                    format!("unexpected '{}': expected 'type' or 'net'", section.text),
                ));
            }
            let mut values = Vec::new();
            while let Some(w) =
                words.next_if(|w| !matches!(w.text.to_ascii_lowercase().as_str(), "type" | "net"))
            {
                values.push(w);
            }
            if values.is_empty() {
                return Err(oa.err(section, format!("no values after '{sect}'")));
            }
            let mut all = false;
            for w in values {
                if w.text == "*" {
                    all = true;
                } else if sect == "type" {
                    let t = w
                        .text
                        .to_ascii_uppercase()
                        .parse::<RecordType>()
                        .map_err(|_| oa.err(w, format!("'{}' is not a DNS record type", w.text)))?;
                    rule.qtypes.push(t);
                } else {
                    rule.nets
                        .push(parse_net(&w.text).map_err(|m| oa.err(w, m))?);
                }
            }
            // `*` means every type or every source: an empty list.
            if all && sect == "type" {
                rule.qtypes.clear();
            } else if all {
                rule.nets.clear();
            }
        }
        rules.push(rule);
    }
    Ok(AclPolicy { zones, rules })
}

fn cache_bucket(o: &Directive, bucket: &mut CacheBucket) -> Result<()> {
    let oa = Args::opt(o, "cache", "success|denial CAPACITY [TTL [MINTTL]]");
    bucket.capacity = oa.int(oa.req("CAPACITY")?, 0, i64::from(u32::MAX))?;
    if let Some(w) = oa.next() {
        bucket.max_ttl = oa.int(w, 1, i64::from(u32::MAX))?;
    }
    if let Some(w) = oa.next() {
        bucket.min_ttl = oa.int(w, 0, i64::from(u32::MAX))?;
    }
    oa.done()
}

fn cache(d: &Directive, block_zones: &[String]) -> Result<CacheConfig> {
    const SUPPORTED: &[&str] = &[
        "success",
        "denial",
        "prefetch",
        "serve_stale",
        "servfail",
        "disable",
        "keepttl",
    ];
    let a = Args::new(d, "cache", "cache [TTL] [ZONES...] { ... }");
    let mut args = a.rest();
    let mut ttl = None;
    // A leading integer is the maximum TTL for both buckets, as in CoreDNS.
    if let Some(first) = args.first() {
        if first.text.parse::<i64>().is_ok() {
            let t = parse_int::<u32>(&first.text, 1, i64::from(u32::MAX))
                .map_err(|m| a.err(first, format!("TTL {m}")))?;
            ttl = Some(t);
            args = &args[1..];
        }
    }
    let mut c = CacheConfig::with_zones(a.zones_or(args, block_zones)?);
    if let Some(t) = ttl {
        c.success.max_ttl = t;
        c.denial.max_ttl = t;
    }
    for o in options(d, "cache", SUPPORTED)? {
        match o.name.text.as_str() {
            "success" => cache_bucket(o, &mut c.success)?,
            "denial" => cache_bucket(o, &mut c.denial)?,
            "prefetch" => {
                let oa = Args::opt(o, "cache", "prefetch AMOUNT [DURATION] [PERCENTAGE%]");
                let mut p = Prefetch {
                    amount: oa.int(oa.req("AMOUNT")?, 1, i64::from(u32::MAX))?,
                    duration: Duration::from_secs(60),
                    percentage: 10,
                };
                if let Some(w) = oa.next() {
                    p.duration = oa.duration(w)?;
                }
                if let Some(w) = oa.next() {
                    let Some(num) = w.text.strip_suffix('%') else {
                        return Err(oa.err(w, format!("percentage '{}' must end with '%'", w.text)));
                    };
                    // CoreDNS accepts 10% to 90%.
                    p.percentage = parse_int(num, 10, 90)
                        .map_err(|m| oa.err(w, format!("percentage: {m}")))?;
                }
                oa.done()?;
                c.prefetch = Some(p);
            }
            "serve_stale" => {
                let oa = Args::opt(o, "cache", "serve_stale [DURATION] [immediate|verify]");
                let mut s = ServeStale {
                    duration: Duration::from_secs(3600),
                    mode: StaleMode::Immediate,
                };
                if let Some(w) = oa.next() {
                    s.duration = oa.duration(w)?;
                }
                if let Some(w) = oa.next() {
                    s.mode = oa.choice(
                        w,
                        &[
                            ("immediate", StaleMode::Immediate),
                            ("verify", StaleMode::Verify),
                        ],
                    )?;
                }
                oa.done()?;
                c.serve_stale = Some(s);
            }
            "servfail" => {
                let oa = Args::opt(o, "cache", "servfail DURATION");
                let w = oa.req("DURATION")?;
                c.servfail = oa.duration(w)?;
                if c.servfail > Duration::from_secs(300) {
                    return Err(oa.err(w, "caching SERVFAIL for more than 5m is not permitted"));
                }
                oa.done()?;
            }
            "disable" => {
                let oa = Args::opt(o, "cache", "disable success|denial [ZONES...]");
                let which = oa.req("success or denial")?;
                let success = oa.choice(which, &[("success", true), ("denial", false)])?;
                let zones = oa.zones_or(oa.rest(), &c.zones)?;
                let list = if success {
                    &mut c.disable_success
                } else {
                    &mut c.disable_denial
                };
                list.extend(zones);
                *list = dedup(std::mem::take(list));
            }
            "keepttl" => c.keepttl = flag(o, "cache", "keepttl")?,
            _ => return Err(unknown_option(o, "cache", SUPPORTED)),
        }
    }
    Ok(c)
}

fn class_of(a: &Args, w: &Word) -> Result<DNSClass> {
    w.text
        .to_ascii_uppercase()
        .parse::<DNSClass>()
        .map_err(|_| {
            a.err(
                w,
                format!("'{}' is not a DNS class (IN, CH, HS, ANY)", w.text),
            )
        })
}

fn rcode_of(a: &Args, w: &Word) -> Result<ResponseCode> {
    const RCODES: &[(&str, u8)] = &[
        ("NOERROR", 0),
        ("FORMERR", 1),
        ("SERVFAIL", 2),
        ("NXDOMAIN", 3),
        ("NOTIMP", 4),
        ("REFUSED", 5),
        ("YXDOMAIN", 6),
        ("YXRRSET", 7),
        ("NXRRSET", 8),
        ("NOTAUTH", 9),
        ("NOTZONE", 10),
    ];
    let up = w.text.to_ascii_uppercase();
    RCODES
        .iter()
        .find(|(n, _)| *n == up)
        .map(|(_, v)| ResponseCode::from_low(*v))
        .ok_or_else(|| {
            let names: Vec<&str> = RCODES.iter().map(|(n, _)| *n).collect();
            a.err(
                w,
                format!(
                    "unknown rcode '{}' (expected {})",
                    w.text,
                    names.join(" | ")
                ),
            )
        })
}

fn template(d: &Directive, block_zones: &[String]) -> Result<Template> {
    const SUPPORTED: &[&str] = &[
        "match",
        "answer",
        "additional",
        "authority",
        "rcode",
        "fallthrough",
        "upstream",
    ];
    let a = Args::new(d, "template", "template CLASS TYPE [ZONES...] { ... }");
    let class = class_of(&a, a.req("CLASS")?)?;
    let tw = a.req("TYPE")?;
    let qtype = tw
        .text
        .to_ascii_uppercase()
        .parse::<RecordType>()
        .map_err(|_| a.err(tw, format!("'{}' is not a DNS record type", tw.text)))?;
    let mut t = Template {
        class,
        qtype,
        zones: a.zones_or(a.rest(), block_zones)?,
        matches: Vec::new(),
        answers: Vec::new(),
        additional: Vec::new(),
        authority: Vec::new(),
        rcode: ResponseCode::NoError,
        fallthrough: Fallthrough::Off,
    };
    // Checked once every `match` is known: groups refer to the regexes.
    let mut records: Vec<(String, &Word, Vec<gotemplate::Piece>)> = Vec::new();
    for o in options(d, "template", SUPPORTED)? {
        let oa = Args::opt(o, "template", "match REGEX... | answer RR... | additional RR... | authority RR... | rcode CODE | fallthrough [ZONES...]");
        match o.name.text.as_str() {
            "match" => {
                for w in oa.rest1("REGEX")? {
                    t.matches.push(oa.pattern(w)?);
                }
            }
            "answer" | "additional" | "authority" => {
                for w in oa.rest1("RR")? {
                    let pieces = gotemplate::parse(&w.text).map_err(|e| oa.err(w, e))?;
                    records.push((oa.ctx.clone(), w, pieces));
                    match o.name.text.as_str() {
                        "answer" => &mut t.answers,
                        "additional" => &mut t.additional,
                        _ => &mut t.authority,
                    }
                    .push(w.text.clone());
                }
            }
            "rcode" => {
                t.rcode = rcode_of(&oa, oa.req("CODE")?)?;
                oa.done()?;
            }
            "fallthrough" => t.fallthrough = oa.fallthrough(oa.rest())?,
            // Deprecated in CoreDNS and ignored there too.
            "upstream" => {
                oa.rest();
            }
            _ => return Err(unknown_option(o, "template", SUPPORTED)),
        }
    }
    if t.matches.is_empty() {
        t.matches
            .push(Pattern(compile(".*").map_err(|m| a.err(&d.name, m))?));
    }
    for (ctx, w, pieces) in &records {
        check_record(&t.matches, ctx, w, pieces)?;
    }
    Ok(t)
}

/// What can be known of a record template before a query: each `index .Match N` and
/// `.Group.NAME` must exist in some `match` regex (Go's template fails at query time
/// otherwise), and a record without actions must parse.
fn check_record(
    matches: &[Pattern],
    ctx: &str,
    w: &Word,
    pieces: &[gotemplate::Piece],
) -> Result<()> {
    use gotemplate::{Field, Piece};
    let err = |m: String| CorefileError::at(&w.pos, format!("{ctx}: {m}"));
    for p in pieces {
        match p {
            Piece::Field(Field::Match(n)) if !matches.iter().any(|p| *n < p.0.captures_len()) => {
                return Err(err(format!(
                    "'{{{{ index .Match {n} }}}}' in {:?}: no match regex has group {n} \
                     (0 is the whole name)",
                    w.text
                )));
            }
            Piece::Field(Field::Group(g))
                if !matches
                    .iter()
                    .any(|p| p.0.capture_names().any(|c| c == Some(g.as_str()))) =>
            {
                return Err(err(format!(
                    "'{{{{ .Group.{g} }}}}' in {:?}: no match regex has a group named '{g}'",
                    w.text
                )));
            }
            _ => {}
        }
    }
    let literal = match pieces {
        [] => Some(""),
        [Piece::Text(t)] => Some(t.as_str()),
        _ => None,
    };
    if let Some(text) = literal {
        super::rr::parse_rr(text).map_err(|m| err(format!("invalid record {:?}: {m}", w.text)))?;
    }
    Ok(())
}

fn hosts(d: &Directive, block_zones: &[String]) -> Result<HostsConfig> {
    const SUPPORTED: &[&str] = &["ttl", "no_reverse", "reload", "fallthrough"];
    let a = Args::new(d, "hosts", "hosts [FILE [ZONES...]] { ... }");
    let path = a
        .next()
        .map_or_else(|| PathBuf::from("/etc/hosts"), |w| PathBuf::from(&w.text));
    let mut c = HostsConfig {
        path,
        zones: a.zones_or(a.rest(), block_zones)?,
        inline: Vec::new(),
        ttl: 3600,
        no_reverse: false,
        reload: Duration::from_secs(5),
        fallthrough: Fallthrough::Off,
    };
    for o in options(d, "hosts", SUPPORTED)? {
        let oa = Args::opt(
            o,
            "hosts",
            "ttl SECONDS | no_reverse | reload DURATION | fallthrough [ZONES...] | IP NAME...",
        );
        match o.name.text.as_str() {
            "ttl" => {
                c.ttl = oa.int(oa.req("SECONDS")?, 1, 65535)?;
                oa.done()?;
            }
            "no_reverse" => c.no_reverse = flag(o, "hosts", "no_reverse")?,
            "reload" => {
                c.reload = oa.duration(oa.req("DURATION")?)?;
                oa.done()?;
            }
            "fallthrough" => c.fallthrough = oa.fallthrough(oa.rest())?,
            _ => {
                // Any other line is an inline hosts entry.
                let Ok(addr) = o.name.text.parse() else {
                    return Err(CorefileError::at(
                        &o.name.pos,
                        format!(
                            "hosts: '{}' is neither an option (supported: {}) nor the IP address of an inline 'IP NAME...' entry",
                            o.name.text,
                            SUPPORTED.join(", ")
                        ),
                    ));
                };
                let names = oa.rest1("NAME")?;
                let names = names
                    .iter()
                    .map(|w| oa.name(w))
                    .collect::<Result<Vec<_>>>()?;
                c.inline.push(HostsEntry { addr, names });
            }
        }
    }
    Ok(c)
}

fn kubernetes(d: &Directive, block_zones: &[String]) -> Result<KubernetesConfig> {
    const SUPPORTED: &[&str] = &[
        "endpoint",
        "tls",
        "kubeconfig",
        "namespaces",
        "namespace_labels",
        "labels",
        "pods",
        "endpoint_pod_names",
        "ttl",
        "noendpoints",
        "fallthrough",
        "ignore",
        "startup_timeout",
        "zonal",
        "zone_first",
    ];
    let a = Args::new(d, "kubernetes", "kubernetes [ZONES...] { ... }");
    let mut k = KubernetesConfig::with_zones(a.zones_or(a.rest(), block_zones)?);
    let mut namespaces_at: Option<&Word> = None;
    let mut labels_at: Option<&Word> = None;
    let (mut zonal_at, mut noendpoints_at): (Option<&Word>, Option<&Word>) = (None, None);
    for o in options(d, "kubernetes", SUPPORTED)? {
        let p = "kubernetes";
        match o.name.text.as_str() {
            "endpoint" => {
                let oa = Args::opt(o, p, "endpoint URL");
                k.endpoint = Some(oa.req("URL")?.text.clone());
                oa.done()?;
            }
            "tls" => {
                let oa = Args::opt(o, p, "tls CERT KEY CACERT");
                k.tls = Some(ApiTls {
                    cert: PathBuf::from(&oa.req("CERT")?.text),
                    key: PathBuf::from(&oa.req("KEY")?.text),
                    ca: PathBuf::from(&oa.req("CACERT")?.text),
                });
                oa.done()?;
            }
            "kubeconfig" => {
                let oa = Args::opt(o, p, "kubeconfig KUBECONFIG [CONTEXT]");
                let path = PathBuf::from(&oa.req("KUBECONFIG")?.text);
                let context = oa.next().map(|w| w.text.clone());
                oa.done()?;
                k.kubeconfig = Some(Kubeconfig { path, context });
            }
            "namespaces" => {
                let oa = Args::opt(o, p, "namespaces NAMESPACE...");
                k.namespaces = oa
                    .rest1("NAMESPACE")?
                    .iter()
                    .map(|w| w.text.clone())
                    .collect();
                namespaces_at = Some(&o.name);
            }
            "namespace_labels" => {
                let oa = Args::opt(o, p, "namespace_labels SELECTOR");
                k.namespace_labels = Some(selector(o, oa.rest1("SELECTOR")?)?);
                labels_at = Some(&o.name);
            }
            "labels" => {
                let oa = Args::opt(o, p, "labels SELECTOR");
                k.labels = Some(selector(o, oa.rest1("SELECTOR")?)?);
            }
            "pods" => {
                let oa = Args::opt(o, p, "pods disabled|insecure|verified");
                k.pods = oa.choice(
                    oa.req("MODE")?,
                    &[
                        ("disabled", PodsMode::Disabled),
                        ("insecure", PodsMode::Insecure),
                        ("verified", PodsMode::Verified),
                    ],
                )?;
                oa.done()?;
            }
            "endpoint_pod_names" => k.endpoint_pod_names = flag(o, p, "endpoint_pod_names")?,
            "ttl" => {
                let oa = Args::opt(o, p, "ttl SECONDS");
                k.ttl = oa.int(oa.req("SECONDS")?, 0, 3600)?;
                oa.done()?;
            }
            "noendpoints" => {
                k.noendpoints = flag(o, p, "noendpoints")?;
                noendpoints_at = Some(&o.name);
            }
            "zonal" => {
                k.zonal = flag(o, p, "zonal")?;
                zonal_at = Some(&o.name);
            }
            "zone_first" => k.zone_first = flag(o, p, "zone_first")?,
            "fallthrough" => {
                let oa = Args::opt(o, p, "fallthrough [ZONES...]");
                k.fallthrough = oa.fallthrough(oa.rest())?;
            }
            "ignore" => {
                let oa = Args::opt(o, p, "ignore empty_service");
                oa.choice(oa.req("empty_service")?, &[("empty_service", ())])?;
                oa.done()?;
                k.ignore_empty_service = true;
            }
            "startup_timeout" => {
                let oa = Args::opt(o, p, "startup_timeout DURATION");
                k.startup_timeout = oa.duration(oa.req("DURATION")?)?;
                oa.done()?;
            }
            _ => return Err(unknown_option(o, p, SUPPORTED)),
        }
    }
    if let (Some(z), Some(n)) = (zonal_at, noendpoints_at) {
        // Zonal names are endpoint answers, which noendpoints turns off.
        let later = if (z.pos.line, z.pos.col) > (n.pos.line, n.pos.col) {
            z
        } else {
            n
        };
        return Err(CorefileError::at(
            &later.pos,
            "kubernetes: zonal and noendpoints cannot both be set (zonal names answer endpoints, which noendpoints turns off)",
        ));
    }
    if let (Some(_), Some(l)) = (namespaces_at, labels_at) {
        return Err(CorefileError::at(
            &l.pos,
            "kubernetes: namespaces and namespace_labels cannot both be set",
        ));
    }
    Ok(k)
}

/// A `labels`/`namespace_labels` selector: the arguments joined with spaces (as CoreDNS
/// does), checked here so that a bad one is an error at the word and column where it goes
/// wrong.
fn selector(o: &Directive, words: &[Word]) -> Result<String> {
    let parts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    let text = parts.join(" ");
    let Err(e) = crate::cluster::labels::Selector::parse(&text) else {
        return Ok(text);
    };
    // The error's character column in the joined text -> the word holding it.
    let mut pos = o.name.pos.clone();
    let mut start = 1;
    for w in words {
        let len = w.text.chars().count();
        pos = w.pos.clone();
        pos.col += (e.column.saturating_sub(start)).min(len) as u32;
        if e.column <= start + len {
            break;
        }
        start += len + 1;
    }
    Err(CorefileError::at(
        &pos,
        format!("kubernetes: {}: {e}", o.name.text),
    ))
}

fn upstream(a: &Args, w: &Word) -> Result<Upstream> {
    let (transport, rest) = split_upstream_transport(&w.text).map_err(|m| a.err(w, m))?;
    let t = transport.unwrap_or(Transport::Dns);
    if let Some(addr) = parse_ip_port(rest, t.default_port()) {
        return Ok(Upstream::Addr { transport: t, addr });
    }
    if transport.is_some() || looks_like_address(rest) || rest.is_empty() {
        return Err(a.err(
            w,
            format!(
                "'{}' is not an IP address, IP:PORT or resolv.conf file",
                w.text
            ),
        ));
    }
    Ok(Upstream::ResolvConf(PathBuf::from(rest)))
}

fn forward(d: &Directive) -> Result<ForwardConfig> {
    const SUPPORTED: &[&str] = &[
        "except",
        "force_tcp",
        "prefer_udp",
        "expire",
        "max_fails",
        "health_check",
        "policy",
        "max_concurrent",
        "tls",
        "tls_servername",
    ];
    let a = Args::new(d, "forward", "forward FROM TO... { ... }");
    let from_w = a.req("FROM zone")?;
    let from = match a.zones(std::slice::from_ref(from_w))?.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(a.err(
                from_w,
                format!("FROM '{}' must name a single zone", from_w.text),
            ))
        }
    };
    let tos = a.rest1("TO upstream")?;
    if let Some(extra) = tos.get(ForwardConfig::MAX_UPSTREAMS) {
        return Err(a.err(
            extra,
            format!("more than {} upstreams", ForwardConfig::MAX_UPSTREAMS),
        ));
    }
    let to = tos
        .iter()
        .map(|w| upstream(&a, w))
        .collect::<Result<Vec<_>>>()?;
    let mut f = ForwardConfig::new(from, to);
    for o in options(d, "forward", SUPPORTED)? {
        let p = "forward";
        match o.name.text.as_str() {
            "except" => {
                let oa = Args::opt(o, p, "except ZONES...");
                let zones = oa.zones(oa.rest1("ZONE")?)?;
                f.except.extend(zones);
            }
            "force_tcp" => f.force_tcp = flag(o, p, "force_tcp")?,
            "prefer_udp" => f.prefer_udp = flag(o, p, "prefer_udp")?,
            "expire" => {
                let oa = Args::opt(o, p, "expire DURATION");
                f.expire = oa.duration(oa.req("DURATION")?)?;
                oa.done()?;
            }
            "max_fails" => {
                let oa = Args::opt(o, p, "max_fails INTEGER");
                f.max_fails = oa.int(oa.req("INTEGER")?, 0, i64::from(u32::MAX))?;
                oa.done()?;
            }
            "health_check" => {
                let oa = Args::opt(o, p, "health_check DURATION [no_rec] [domain FQDN]");
                f.health_check = oa.duration(oa.req("DURATION")?)?;
                while let Some(w) = oa.next() {
                    match w.text.as_str() {
                        "no_rec" => f.health_check_no_rec = true,
                        "domain" => {
                            f.health_check_domain = oa.name(oa.req("FQDN after 'domain'")?)?
                        }
                        _ => {
                            return Err(oa.err(
                                w,
                                format!(
                                    "unexpected '{}': expected 'no_rec' or 'domain FQDN'",
                                    w.text
                                ),
                            ))
                        }
                    }
                }
            }
            "policy" => {
                let oa = Args::opt(o, p, "policy random|round_robin|sequential");
                f.policy = oa.choice(
                    oa.req("POLICY")?,
                    &[
                        ("random", ForwardPolicy::Random),
                        ("round_robin", ForwardPolicy::RoundRobin),
                        ("sequential", ForwardPolicy::Sequential),
                    ],
                )?;
                oa.done()?;
            }
            "max_concurrent" => {
                let oa = Args::opt(o, p, "max_concurrent INTEGER");
                let n: u32 = oa.int(oa.req("INTEGER")?, 0, i64::from(u32::MAX))?;
                // 0 means no limit, as in CoreDNS.
                f.max_concurrent = (n > 0).then_some(n);
                oa.done()?;
            }
            "tls" => {
                // CoreDNS reads the arguments by count: none = system roots; one = a CA file;
                // two = a client certificate and key; three = certificate, key and CA.
                let oa = Args::opt(o, p, "tls [CERT KEY] [CA]");
                let mut args: Vec<PathBuf> = Vec::new();
                while let Some(w) = oa.next() {
                    if args.len() == 3 {
                        return Err(oa.err(w, "too many arguments: at most CERT KEY CA"));
                    }
                    args.push(PathBuf::from(&w.text));
                }
                let mut args = args.into_iter();
                f.tls = Some(match (args.next(), args.next(), args.next()) {
                    (ca @ Some(_), None, None) => UpstreamTls {
                        cert: None,
                        key: None,
                        ca,
                    },
                    (cert, key, ca) => UpstreamTls { cert, key, ca },
                });
            }
            "tls_servername" => {
                let oa = Args::opt(o, p, "tls_servername NAME");
                f.tls_servername = Some(oa.req("NAME")?.text.clone());
                oa.done()?;
            }
            _ => return Err(unknown_option(o, p, SUPPORTED)),
        }
    }
    Ok(f)
}
