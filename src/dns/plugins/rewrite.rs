//! `rewrite name ...`: the rest of the pipeline sees another query name; with `answer auto`
//! (or `answer name|value`), names in the response are mapped back so the client sees the
//! name it asked for.

use hickory_proto::rr::rdata::{CNAME, NS, PTR};
use hickory_proto::rr::{Name, RData, Record};
use regex::Regex;

use super::{fqdn, lower_fqdn};
use crate::corefile::{AnswerRewrite, NameRewrite, RewriteConfig, RewriteFlow, RewriteRule};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

const PLUGIN: &str = "rewrite";

pub struct Rewrite {
    rules: Vec<RewriteRule>,
}

/// Applies `from -> to` where the rule compares FQDNs if `from` has the trailing dot and
/// bare names otherwise (users write both `.example.com` and `.example.com.`).
fn affix(name: &str, from: &str, to: &str, prefix: bool) -> Option<String> {
    let subject = if from.ends_with('.') || prefix {
        name.to_string()
    } else {
        name.trim_end_matches('.').to_string()
    };
    let out = if prefix {
        let rest = subject.strip_prefix(from)?;
        format!("{to}{rest}")
    } else {
        let rest = subject.strip_suffix(from)?;
        format!("{rest}{to}")
    };
    Some(out)
}

/// CoreDNS writes capture groups as `{1}`; the regex crate wants `${1}`.
fn regex_replacement(to: &str) -> String {
    let mut out = String::with_capacity(to.len());
    let mut rest = to;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i].replace('$', "$$"));
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j) if !after[..j].is_empty() && after[..j].bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str(&format!("${{{}}}", &after[..j]));
                rest = &after[j + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(&rest.replace('$', "$$"));
    out
}

/// The rewritten lowercase FQDN, if `rule` matches `name` (lowercase FQDN).
fn apply(rule: &NameRewrite, name: &str) -> Option<String> {
    let out = match rule {
        NameRewrite::Exact { from, to } => (name == from).then(|| to.clone())?,
        NameRewrite::Prefix { from, to } => affix(name, from, to, true)?,
        NameRewrite::Suffix { from, to } => affix(name, from, to, false)?,
        NameRewrite::Substring { from, to } => {
            if from.is_empty() || !name.contains(from.as_str()) {
                return None;
            }
            name.replace(from.as_str(), to)
        }
        NameRewrite::Regex { from, to } => {
            if !from.0.is_match(name) {
                return None;
            }
            from.0
                .replace(name, regex_replacement(to).as_str())
                .into_owned()
        }
    };
    let mut out = out.to_ascii_lowercase();
    if !out.ends_with('.') {
        out.push('.');
    }
    Some(out)
}

/// How one applied rule maps response names back.
enum Back {
    /// `answer auto`: names equal to the rewritten name become the asked name.
    Exact {
        rewritten: String,
        original: Name,
    },
    Owner(Regex, String),
    Value(Regex, String),
}

fn map_name(name: &Name, back: &Back, owner: bool) -> Option<Name> {
    let lower = lower_fqdn(name);
    match back {
        Back::Exact {
            rewritten,
            original,
        } => (lower == *rewritten).then(|| original.clone()),
        Back::Owner(re, to) if owner => re
            .is_match(&lower)
            .then(|| fqdn(&re.replace(&lower, regex_replacement(to).as_str())))?,
        Back::Value(re, to) if !owner => re
            .is_match(&lower)
            .then(|| fqdn(&re.replace(&lower, regex_replacement(to).as_str())))?,
        _ => None,
    }
}

fn map_record(r: &mut Record, backs: &[Back]) {
    for b in backs {
        if let Some(n) = map_name(&r.name, b, true) {
            r.name = n;
        }
        let target = match &r.data {
            RData::CNAME(c) => Some(&c.0),
            RData::PTR(p) => Some(&p.0),
            RData::NS(n) => Some(&n.0),
            _ => None,
        };
        // `answer auto` maps owner names only, as CoreDNS does; `answer value` maps targets.
        if let Some(t) = target.and_then(|t| map_name(t, b, false)) {
            r.data = match &r.data {
                RData::CNAME(_) => RData::CNAME(CNAME(t)),
                RData::PTR(_) => RData::PTR(PTR(t)),
                _ => RData::NS(NS(t)),
            };
        }
    }
}

impl Rewrite {
    pub fn new(cfg: &RewriteConfig) -> Rewrite {
        Rewrite {
            rules: cfg.rules.clone(),
        }
    }
}

impl Handler for Rewrite {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn handle(&self, req: &Request) -> Flow {
        let mut name = lower_fqdn(&req.qname);
        let mut backs = Vec::new();
        let mut changed = false;
        for rule in &self.rules {
            let Some(new) = apply(&rule.name, &name) else {
                continue;
            };
            for a in &rule.answer {
                backs.push(match a {
                    AnswerRewrite::Auto => Back::Exact {
                        rewritten: new.clone(),
                        original: req.qname.clone(),
                    },
                    AnswerRewrite::Name { from, to } => Back::Owner(from.0.clone(), to.clone()),
                    AnswerRewrite::Value { from, to } => Back::Value(from.0.clone(), to.clone()),
                });
            }
            name = new;
            changed = true;
            if rule.flow == RewriteFlow::Stop {
                break;
            }
        }
        if !changed {
            return Flow::Next;
        }
        // A rewrite to something that is not a name leaves the query alone.
        let Some(new_name) = fqdn(&name) else {
            return Flow::Next;
        };
        let mut new = req.clone();
        new.qname = new_name.clone();
        if let Some(q) = new.message.queries.first_mut() {
            q.set_name(new_name);
        }
        let hook = (!backs.is_empty()).then(|| -> crate::dns::pipeline::AnswerHook {
            // Later rules were applied last, so they are undone first.
            backs.reverse();
            Box::new(move |mut a: Answer| {
                for r in a
                    .answers
                    .iter_mut()
                    .chain(a.authorities.iter_mut())
                    .chain(a.additionals.iter_mut())
                {
                    map_record(r, &backs);
                }
                a
            })
        });
        Flow::Rewrite(Box::new(new), hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let ex = NameRewrite::Exact {
            from: "a.example.".into(),
            to: "b.example.".into(),
        };
        assert_eq!(apply(&ex, "a.example.").as_deref(), Some("b.example."));
        assert_eq!(apply(&ex, "x.a.example."), None);
        let suf = NameRewrite::Suffix {
            from: ".old.com".into(),
            to: ".new.com".into(),
        };
        assert_eq!(apply(&suf, "x.old.com.").as_deref(), Some("x.new.com."));
        let pre = NameRewrite::Prefix {
            from: "www.".into(),
            to: "web.".into(),
        };
        assert_eq!(apply(&pre, "www.a.com.").as_deref(), Some("web.a.com."));
        let sub = NameRewrite::Substring {
            from: "stage".into(),
            to: "prod".into(),
        };
        assert_eq!(apply(&sub, "db.stage.x.").as_deref(), Some("db.prod.x."));
    }

    #[test]
    fn regex_groups() {
        assert_eq!(regex_replacement("{1}.svc.{2}"), "${1}.svc.${2}");
        assert_eq!(regex_replacement("{x}"), "{x}");
    }
}
