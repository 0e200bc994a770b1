//! `template CLASS TYPE [ZONES] { match REGEX; answer RR; rcode CODE; fallthrough }`:
//! synthesised answers. The Go-template subset CoreDNS users write is supported:
//! `{{ .Name }} {{ .Zone }} {{ .Class }} {{ .Type }} {{ index .Match N }} {{ .Group.NAME }}
//! {{ .Remote }}`; anything else renders the whole record unusable, which is a SERVFAIL.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use regex::Captures;
use tracing::warn;

use super::{fqdn, lower_fqdn};
use crate::corefile::{name_in_zone, Template, TemplateConfig};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

const PLUGIN: &str = "template";

pub struct Templates {
    templates: Vec<Template>,
}

struct Data<'a> {
    name: &'a str,
    zone: &'a str,
    class: &'a str,
    qtype: String,
    remote: String,
    caps: &'a Captures<'a>,
}

fn field(expr: &str, d: &Data) -> Option<String> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    match words.as_slice() {
        [".Name"] => Some(d.name.to_string()),
        [".Zone"] => Some(d.zone.to_string()),
        [".Class"] => Some(d.class.to_string()),
        [".Type"] => Some(d.qtype.clone()),
        [".Remote"] => Some(d.remote.clone()),
        ["index", ".Match", n] => {
            let i: usize = n.parse().ok()?;
            Some(d.caps.get(i).map(|m| m.as_str()).unwrap_or("").to_string())
        }
        [g] if g.starts_with(".Group.") => {
            let name = &g[".Group.".len()..];
            Some(
                d.caps
                    .name(name)
                    .map(|m| m.as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        }
        _ => None,
    }
}

/// Expands `{{ ... }}` actions; None when one is not understood.
fn render(text: &str, d: &Data) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after.find("}}")?;
        let expr = after[..j]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        out.push_str(&field(expr, d)?);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// Parses one resource record in zone-file form: `NAME [TTL] [CLASS] TYPE RDATA`.
pub fn parse_rr(text: &str) -> Result<Record, String> {
    let mut words = text.split_whitespace();
    let name_word = words.next().ok_or("empty record")?;
    let name = fqdn(name_word).ok_or_else(|| format!("bad owner name {name_word:?}"))?;
    let mut ttl = 3600;
    let mut word = words.next().ok_or("record without a type")?;
    if let Ok(t) = word.parse::<u32>() {
        ttl = t;
        word = words.next().ok_or("record without a type")?;
    }
    if word.eq_ignore_ascii_case("IN") || word.eq_ignore_ascii_case("CH") {
        word = words.next().ok_or("record without a type")?;
    }
    let rtype: RecordType = word
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown record type {word:?}"))?;
    let rdata_text = words.collect::<Vec<_>>().join(" ");
    let rdata =
        RData::try_from_str(rtype, &rdata_text).map_err(|e| format!("bad {rtype} data: {e}"))?;
    Ok(Record::from_rdata(name, ttl, rdata))
}

impl Templates {
    pub fn new(cfg: &TemplateConfig) -> Templates {
        Templates {
            templates: cfg.templates.clone(),
        }
    }

    fn records(&self, sources: &[String], d: &Data) -> Option<Vec<Record>> {
        let mut out = Vec::with_capacity(sources.len());
        for src in sources {
            let text = render(src, d)?;
            match parse_rr(&text) {
                Ok(r) => out.push(r),
                Err(e) => {
                    warn!("template: cannot use the rendered record {text:?}: {e}");
                    return None;
                }
            }
        }
        Some(out)
    }
}

impl Handler for Templates {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn handle(&self, req: &Request) -> Flow {
        let qname = lower_fqdn(&req.qname);
        let class = req
            .message
            .queries
            .first()
            .map(|q| q.query_class())
            .unwrap_or(DNSClass::IN);
        for t in &self.templates {
            let Some(zone) = t
                .zones
                .iter()
                .filter(|z| name_in_zone(&qname, z))
                .max_by_key(|z| z.len())
            else {
                continue;
            };
            if (t.class != DNSClass::ANY && t.class != class)
                || (t.qtype != RecordType::ANY && t.qtype != req.qtype)
            {
                continue;
            }
            let Some(caps) = t.matches.iter().find_map(|p| p.0.captures(&qname)) else {
                if t.fallthrough.applies(&qname) {
                    continue;
                }
                return Flow::Answer(Answer::rcode(ResponseCode::NXDomain, PLUGIN));
            };
            let d = Data {
                name: &qname,
                zone,
                class: &class.to_string(),
                qtype: req.qtype.to_string(),
                remote: req.src.ip().to_string(),
                caps: &caps,
            };
            let (Some(answers), Some(additionals), Some(authorities)) = (
                self.records(&t.answers, &d),
                self.records(&t.additional, &d),
                self.records(&t.authority, &d),
            ) else {
                return Flow::Answer(Answer::rcode(ResponseCode::ServFail, PLUGIN));
            };
            return Flow::Answer(Answer {
                rcode: t.rcode,
                authoritative: true,
                answers,
                additionals,
                authorities,
                plugin: PLUGIN,
                ..Default::default()
            });
        }
        Flow::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses() {
        let re = regex::Regex::new(r"^ip-(\d+)-(\d+)-(\d+)-(\d+)\.example\.$").unwrap();
        let caps = re.captures("ip-10-0-0-1.example.").unwrap();
        let d = Data {
            name: "ip-10-0-0-1.example.",
            zone: "example.",
            class: "IN",
            qtype: "A".into(),
            remote: "127.0.0.1".into(),
            caps: &caps,
        };
        let text = render(
            "{{ .Name }} 60 {{ .Class }} {{ .Type }} {{ index .Match 1 }}.{{ index .Match 2 }}.{{ index .Match 3 }}.{{ index .Match 4 }}",
            &d,
        )
        .unwrap();
        assert_eq!(text, "ip-10-0-0-1.example. 60 IN A 10.0.0.1");
        let r = parse_rr(&text).unwrap();
        assert_eq!(r.ttl, 60);
        assert_eq!(r.record_type(), RecordType::A);
        assert!(render("{{ .Nope }}", &d).is_none());
        assert!(parse_rr("x. 60 IN A not-an-ip").is_err());
    }
}
