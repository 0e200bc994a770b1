//! `template CLASS TYPE [ZONES] { match REGEX; answer RR; rcode CODE; fallthrough }`:
//! synthesised answers. Records are written in the Go-template subset of
//! [`gotemplate`](crate::corefile::gotemplate), checked when the Corefile loads; a rendered
//! record that does not parse (e.g. a group that captured text where an address belongs) is a
//! SERVFAIL, as in CoreDNS.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Record, RecordType};
use regex::Captures;
use tracing::warn;

use super::lower_fqdn;
use crate::corefile::gotemplate::{self, Field, Piece};
use crate::corefile::rr::parse_rr;
use crate::corefile::{name_in_zone, Template, TemplateConfig};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

const PLUGIN: &str = "template";

pub struct Templates {
    templates: Vec<Compiled>,
}

struct Compiled {
    t: Template,
    answers: Vec<Record_>,
    additional: Vec<Record_>,
    authority: Vec<Record_>,
}

/// A record's source and its parsed pieces; None when it does not parse (only a Config built
/// without the Corefile checks), which renders as a SERVFAIL.
type Record_ = (String, Option<Vec<Piece>>);

struct Data<'a> {
    name: &'a str,
    zone: &'a str,
    class: &'a str,
    qtype: String,
    remote: String,
    question_name: String,
    question_type: u16,
    question_class: u16,
    id: u16,
    caps: &'a Captures<'a>,
}

fn field(f: &Field, d: &Data, out: &mut String) {
    use std::fmt::Write;
    match f {
        Field::Name => out.push_str(d.name),
        Field::Zone => out.push_str(d.zone),
        Field::Class => out.push_str(d.class),
        Field::Type => out.push_str(&d.qtype),
        Field::Remote => out.push_str(&d.remote),
        Field::QuestionName => out.push_str(&d.question_name),
        Field::QuestionQtype => {
            let _ = write!(out, "{}", d.question_type);
        }
        Field::QuestionQclass => {
            let _ = write!(out, "{}", d.question_class);
        }
        Field::MessageId => {
            let _ = write!(out, "{}", d.id);
        }
        // An unmatched or non-participating group renders empty, as FindStringSubmatch gives.
        Field::Match(i) => out.push_str(d.caps.get(*i).map_or("", |m| m.as_str())),
        Field::Group(g) => out.push_str(d.caps.name(g).map_or("", |m| m.as_str())),
        // No metadata plugin: CoreDNS's `.Meta` then renders "".
        Field::Meta(_) => {}
    }
}

fn render(pieces: &[Piece], d: &Data) -> String {
    let mut out = String::with_capacity(64);
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(f) => field(f, d, &mut out),
        }
    }
    out
}

impl Templates {
    pub fn new(cfg: &TemplateConfig) -> Templates {
        let compile = |sources: &[String]| -> Vec<Record_> {
            sources
                .iter()
                .map(|s| (s.clone(), gotemplate::parse(s).ok()))
                .collect()
        };
        Templates {
            templates: cfg
                .templates
                .iter()
                .map(|t| Compiled {
                    answers: compile(&t.answers),
                    additional: compile(&t.additional),
                    authority: compile(&t.authority),
                    t: t.clone(),
                })
                .collect(),
        }
    }

    fn records(&self, sources: &[Record_], d: &Data) -> Option<Vec<Record>> {
        let mut out = Vec::with_capacity(sources.len());
        for (src, pieces) in sources {
            let Some(pieces) = pieces else {
                warn!("template: cannot render {src:?}");
                return None;
            };
            let text = render(pieces, d);
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
        let question = req.message.queries.first();
        let class = question.map(|q| q.query_class()).unwrap_or(DNSClass::IN);
        for c in &self.templates {
            let t = &c.t;
            let Some(zone) = t
                .zones
                .iter()
                .filter(|z| name_in_zone(&qname, z))
                .max_by_key(|z| z.len())
            else {
                continue;
            };
            // As CoreDNS: a template of class/type ANY takes every query, and a query of class
            // or type ANY is taken by every template.
            if (t.class != DNSClass::ANY && class != DNSClass::ANY && t.class != class)
                || (t.qtype != RecordType::ANY
                    && req.qtype != RecordType::ANY
                    && t.qtype != req.qtype)
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
                question_name: req.qname.to_string(),
                question_type: u16::from(req.qtype),
                question_class: u16::from(class),
                id: req.message.id,
                caps: &caps,
            };
            let (Some(answers), Some(additionals), Some(authorities)) = (
                self.records(&c.answers, &d),
                self.records(&c.additional, &d),
                self.records(&c.authority, &d),
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
            question_name: "IP-10-0-0-1.example.".into(),
            question_type: 1,
            question_class: 1,
            id: 7,
            caps: &caps,
        };
        let pieces = gotemplate::parse(
            "{{ .Name }} 60 {{ .Class }} {{ .Type }} {{ index .Match 1 }}.{{ index .Match 2 }}.{{ index .Match 3 }}.{{ index .Match 4 }}",
        )
        .unwrap();
        let text = render(&pieces, &d);
        assert_eq!(text, "ip-10-0-0-1.example. 60 IN A 10.0.0.1");
        let r = parse_rr(&text).unwrap();
        assert_eq!(r.ttl, 60);
        assert_eq!(r.record_type(), RecordType::A);
        assert!(parse_rr("x. 60 IN A not-an-ip").is_err());
    }
}
