//! `acl`: per zone, the first rule matching the query type and client address decides:
//! allow, block (REFUSED), filter (empty NOERROR) or drop (no reply). No match allows.

use hickory_proto::op::ResponseCode;

use super::lower_fqdn;
use crate::corefile::{name_in_zone, AclAction, AclConfig, AclRule};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

const PLUGIN: &str = "acl";

pub struct Acl {
    cfg: AclConfig,
}

fn rule_matches(rule: &AclRule, req: &Request) -> bool {
    let ip = req.src.ip().to_canonical();
    (rule.qtypes.is_empty() || rule.qtypes.contains(&req.qtype))
        && (rule.nets.is_empty() || rule.nets.iter().any(|n| n.contains(&ip)))
}

impl Acl {
    pub fn new(cfg: &AclConfig) -> Acl {
        Acl { cfg: cfg.clone() }
    }

    /// The action for this request.
    pub fn decide(&self, req: &Request) -> AclAction {
        let qname = lower_fqdn(&req.qname);
        for policy in &self.cfg.policies {
            if !policy.zones.iter().any(|z| name_in_zone(&qname, z)) {
                continue;
            }
            if let Some(rule) = policy.rules.iter().find(|r| rule_matches(r, req)) {
                return rule.action;
            }
        }
        AclAction::Allow
    }
}

impl Handler for Acl {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn handle(&self, req: &Request) -> Flow {
        match self.decide(req) {
            AclAction::Allow => Flow::Next,
            AclAction::Block => Flow::Answer(Answer::rcode(ResponseCode::Refused, PLUGIN)),
            AclAction::Filter => Flow::Answer(Answer::rcode(ResponseCode::NoError, PLUGIN)),
            AclAction::Drop => Flow::Answer(Answer::no_reply(PLUGIN)),
        }
    }
}
