//! `errors`: every SERVFAIL answer is logged at ERROR as
//! `ID NAME TYPE: plugin/PLUGIN answered SERVFAIL`. `consolidate DUR REGEXP` rules count
//! matching messages instead and log `N errors like 'REGEXP' occurred in last DUR` once per
//! period (on the first error after the period ends: no timer task per rule).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;

use super::lower_fqdn;
use crate::corefile::{Consolidate, ErrorLevel, ErrorsConfig};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

struct Window {
    start: Instant,
    count: u64,
}

struct Rule {
    cfg: Consolidate,
    window: Mutex<Option<Window>>,
}

pub struct Errors {
    rules: std::sync::Arc<Vec<Rule>>,
}

fn emit(level: ErrorLevel, msg: &str) {
    match level {
        ErrorLevel::Debug => tracing::debug!(target: "clusterdns::errors", "{msg}"),
        ErrorLevel::Info => tracing::info!(target: "clusterdns::errors", "{msg}"),
        ErrorLevel::Warning => tracing::warn!(target: "clusterdns::errors", "{msg}"),
        ErrorLevel::Error => tracing::error!(target: "clusterdns::errors", "{msg}"),
    }
}

fn report(rules: &[Rule], msg: &str, now: Instant) {
    let Some(rule) = rules.iter().find(|r| r.cfg.pattern.0.is_match(msg)) else {
        emit(ErrorLevel::Error, msg);
        return;
    };
    // A poisoned lock only means another query panicked mid-count; the count is still usable.
    let mut w = rule.window.lock().unwrap_or_else(|e| e.into_inner());
    match w.as_mut() {
        Some(win) if now.duration_since(win.start) < rule.cfg.period => win.count += 1,
        _ => {
            if let Some(old) = w.take() {
                emit(rule.cfg.level, &summary(&rule.cfg, old.count));
            }
            if rule.cfg.show_first {
                emit(rule.cfg.level, msg);
            }
            *w = Some(Window {
                start: now,
                count: 1,
            });
        }
    }
}

fn summary(c: &Consolidate, count: u64) -> String {
    format!(
        "{count} errors like '{}' occurred in last {}",
        c.pattern.as_str(),
        fmt_duration(c.period)
    )
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

impl Errors {
    pub fn new(cfg: &ErrorsConfig) -> Errors {
        Errors {
            rules: std::sync::Arc::new(
                cfg.consolidate
                    .iter()
                    .map(|c| Rule {
                        cfg: c.clone(),
                        window: Mutex::new(None),
                    })
                    .collect(),
            ),
        }
    }
}

impl Handler for Errors {
    fn name(&self) -> &'static str {
        "errors"
    }

    fn pure(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request) -> Flow {
        let id = req.message.metadata.id;
        let name = lower_fqdn(&req.qname);
        let qtype = req.qtype;
        let rules = self.rules.clone();
        Flow::Then(Box::new(move |a: Answer| {
            if a.rcode == ResponseCode::ServFail {
                let msg = if a.plugin.is_empty() {
                    format!("{id} {name} {qtype}: no next plugin found")
                } else {
                    format!("{id} {name} {qtype}: plugin/{} answered SERVFAIL", a.plugin)
                };
                report(&rules, &msg, Instant::now());
            }
            a
        }))
    }
}
