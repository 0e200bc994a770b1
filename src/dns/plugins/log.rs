//! `log`: one line per query in CoreDNS's format (by default the `{common}` format:
//! `127.0.0.1:52310 - 4242 "A IN nginx.demo.svc.cluster.local. udp 58 false 1232" NOERROR
//! qr,aa,rd 100 0.000127s`), emitted through tracing at INFO with target `clusterdns::query`.
//! tracing prints the level, so the line carries no `[INFO]` prefix of its own.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;

use super::lower_fqdn;
use crate::corefile::{name_in_zone, LogClasses, LogConfig, LogRule};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Proto, Request};
use crate::dns::wire;

pub struct Log {
    rules: Vec<LogRule>,
}

/// CoreDNS's response classes.
fn class_allowed(classes: LogClasses, a: &Answer) -> bool {
    match a.rcode {
        ResponseCode::NoError if a.answers.is_empty() => classes.denial,
        ResponseCode::NoError => classes.success,
        ResponseCode::NXDomain => classes.denial,
        _ => classes.error,
    }
}

/// The rcode as dig and CoreDNS print it.
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// Everything a log line can mention, measured once per query.
pub struct Facts<'a> {
    pub req: &'a Request,
    pub answer: &'a Answer,
    pub size: usize,
    pub rsize: usize,
    pub truncated: bool,
    pub duration: Duration,
}

fn rflags(f: &Facts) -> String {
    let m = &f.req.message.metadata;
    let mut flags = vec!["qr"];
    if f.answer.authoritative {
        flags.push("aa");
    }
    if f.truncated {
        flags.push("tc");
    }
    if m.recursion_desired {
        flags.push("rd");
    }
    if f.answer.recursion_available {
        flags.push("ra");
    }
    if m.checking_disabled {
        flags.push("cd");
    }
    flags.join(",")
}

fn placeholder(key: &str, f: &Facts) -> Option<String> {
    let req = f.req;
    let edns = req.message.edns.as_ref();
    Some(match key {
        "remote" => req.src.ip().to_string(),
        "port" => req.src.port().to_string(),
        ">id" | "id" => req.message.metadata.id.to_string(),
        "type" => req.qtype.to_string(),
        "class" => req
            .message
            .queries
            .first()
            .map(|q| q.query_class().to_string())
            .unwrap_or_else(|| "IN".into()),
        "name" => lower_fqdn(&req.qname),
        "proto" => req.proto.as_str().to_string(),
        "size" => f.size.to_string(),
        ">do" => edns.is_some_and(|e| e.flags().dnssec_ok).to_string(),
        ">bufsize" => edns
            .map(|e| e.max_payload() as usize)
            .unwrap_or(wire::MIN_UDP_PAYLOAD)
            .to_string(),
        "rcode" | ">rcode" => rcode_name(f.answer.rcode),
        ">rflags" => rflags(f),
        "rsize" => f.rsize.to_string(),
        "duration" => format!("{}s", f.duration.as_secs_f64()),
        ">opcode" => req.message.metadata.op_code.to_string(),
        _ => return None,
    })
}

/// Expands CoreDNS placeholders in `format`; unknown ones print as `-`, as CoreDNS does.
pub fn format_line(format: &str, f: &Facts) -> String {
    let mut out = String::with_capacity(format.len() + 64);
    let mut rest = format;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        out.push_str(&placeholder(&after[..j], f).unwrap_or_else(|| "-".into()));
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

impl Log {
    pub fn new(cfg: &LogConfig) -> Log {
        Log {
            rules: cfg.rules.clone(),
        }
    }
}

impl Handler for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn handle(&self, req: &Request) -> Flow {
        let qname = lower_fqdn(&req.qname);
        let Some(rule) = self
            .rules
            .iter()
            .filter(|r| name_in_zone(&qname, &r.name))
            .max_by_key(|r| r.name.len())
            .cloned()
        else {
            return Flow::Next;
        };
        let start = Instant::now();
        let req = req.clone();
        Flow::Then(Box::new(move |answer: Answer| {
            if answer.no_reply || !class_allowed(rule.classes, &answer) {
                return answer;
            }
            let duration = start.elapsed();
            // The sizes the client sees: re-encoding costs only when logging is on.
            let max = match req.proto {
                Proto::Udp => Some(wire::max_udp_size(&req.message)),
                Proto::Tcp => None,
            };
            let out = wire::encode(&req.message, &answer, max);
            let truncated = out.len() > 2 && out[2] & 0x02 != 0;
            let size = req.message.to_vec().map(|v| v.len()).unwrap_or(0);
            let facts = Facts {
                req: &req,
                answer: &answer,
                size,
                rsize: out.len(),
                truncated,
                duration,
            };
            tracing::info!(target: "clusterdns::query", "{}", format_line(&rule.format, &facts));
            answer
        }))
    }
}
