//! `autopath @kubernetes`: walks a pod's DNS search path on the server, CoreDNS style
//! (plugin/autopath). A query from a pod IP for a name under that pod's first search domain
//! (`<base>.<pod-ns>.svc.<zone>`) is tried as `<base>.<ns>.svc.<zone>`, `<base>.svc.<zone>`,
//! `<base>.<zone>` and `<base>` through the handlers after autopath; the first answer that
//! is not NXDOMAIN (or a failure) is returned with a CNAME from the asked name to the found
//! one. When every candidate fails, the reply for the asked name itself (the first
//! candidate) is returned as is, and the client walks its search path as usual.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};

use crate::cluster::ClusterView;
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Pipeline, Request};

pub const PLUGIN: &str = "autopath";

pub struct Autopath {
    /// Names autopath acts on (lowercase FQDNs).
    zones: Vec<Name>,
    /// The `kubernetes` zones: the search path is built from the one holding the name.
    cluster_zones: Vec<Name>,
    view: Arc<ClusterView>,
    /// The handlers after autopath, set once they are built.
    next: OnceLock<Pipeline>,
}

impl Autopath {
    pub fn new(zones: Vec<Name>, cluster_zones: Vec<Name>, view: Arc<ClusterView>) -> Autopath {
        Autopath {
            zones,
            cluster_zones,
            view,
            next: OnceLock::new(),
        }
    }

    pub fn set_next(&self, next: Pipeline) {
        let _ = self.next.set(next);
    }

    /// The search path of the pod at `ip` for `qname` (as CoreDNS's kubernetes AutoPath):
    /// `<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`, then the root (the bare name).
    fn search_path(&self, qname: &Name, ip: IpAddr) -> Option<Vec<Name>> {
        if !self.zones.iter().any(|z| z.zone_of(qname)) {
            return None;
        }
        let zone = self
            .cluster_zones
            .iter()
            .filter(|z| z.zone_of(qname))
            .max_by_key(|z| z.num_labels())?;
        let snap = self.view.snapshot();
        let ns = snap.namespace_of_pod_ip(&ip.to_canonical())?;
        let svc = Name::from_labels([&b"svc"[..]])
            .ok()?
            .append_name(zone)
            .ok()?;
        let first = Name::from_labels([ns.as_bytes()])
            .ok()?
            .append_name(&svc)
            .ok()?;
        let mut search = vec![first, svc, zone.clone(), Name::root()];
        // A root cluster zone would try the bare name twice.
        search.dedup();
        Some(search)
    }
}

/// Whether a candidate's answer ends the walk (CoreDNS: a written reply that is not NXDOMAIN).
fn found(a: &Answer) -> bool {
    !a.no_reply
        && !matches!(
            a.rcode,
            ResponseCode::NXDomain
                | ResponseCode::ServFail
                | ResponseCode::Refused
                | ResponseCode::FormErr
                | ResponseCode::NotImp
        )
}

/// CoreDNS's `cnamer`: a CNAME from the asked name to the owner of the first answer record
/// that has another name, in front of the answer (with that record's TTL).
fn cnamer(a: &mut Answer, original: &Name) {
    let asked = original.to_lowercase();
    let Some(target) = a.answers.iter().find(|r| r.name.to_lowercase() != asked) else {
        return;
    };
    let cname = Record::from_rdata(
        original.clone(),
        target.ttl,
        RData::CNAME(CNAME(target.name.clone())),
    );
    a.answers.insert(0, cname);
}

impl Handler for Autopath {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    // Answers depend on the client address: never for the response cache. (`pure` is
    // already false by default; spelled out because it matters.)
    fn pure(&self) -> bool {
        false
    }

    fn handle(&self, req: &Request) -> Flow {
        let Some(next) = self.next.get() else {
            return Flow::Next;
        };
        let mut lower = req.qname.to_lowercase();
        lower.set_fqdn(true);
        let Some(search) = self.search_path(&lower, req.src.ip()) else {
            return Flow::Next;
        };
        // The name must lie strictly under the first search domain.
        if !search[0].zone_of(&lower) || lower.num_labels() <= search[0].num_labels() {
            return Flow::Next;
        }
        let mut original = req.qname.clone();
        original.set_fqdn(true);
        let keep = (original.num_labels() - search[0].num_labels()) as usize;
        let Ok(base) = Name::from_labels(original.iter().take(keep)) else {
            return Flow::Next;
        };
        let next = next.clone();
        let req = req.clone();
        Flow::Pending(Box::pin(async move {
            let mut first = None;
            for suffix in &search {
                let Ok(mut candidate) = base.clone().append_name(suffix) else {
                    continue;
                };
                candidate.set_fqdn(true);
                let mut ask = req.clone();
                ask.qname = candidate.clone();
                if let Some(q) = ask.message.queries.first_mut() {
                    q.set_name(candidate);
                }
                let mut answer = next.resolve(&ask).await;
                answer.cacheable = false;
                if found(&answer) {
                    cnamer(&mut answer, &original);
                    answer.plugin = PLUGIN;
                    return Some(answer);
                }
                first.get_or_insert(answer);
            }
            // Nothing found: the reply for the name as asked (the first candidate).
            first
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(owner: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A::new(10, 0, 0, 1)))
    }

    #[test]
    fn cname_to_the_found_name_with_its_ttl() {
        let mut ans = Answer {
            answers: vec![a("nginx.demo.svc.cluster.local.", 5)],
            ..Default::default()
        };
        let asked = name("Nginx.Demo.default.svc.cluster.local.");
        cnamer(&mut ans, &asked);
        assert_eq!(ans.answers.len(), 2);
        assert_eq!(ans.answers[0].name, asked);
        assert_eq!(ans.answers[0].ttl, 5);
        assert_eq!(
            ans.answers[0].data,
            RData::CNAME(CNAME(name("nginx.demo.svc.cluster.local.")))
        );
    }

    #[test]
    fn no_cname_when_found_as_asked_or_empty() {
        // Found at the first search domain: the name as asked, in any case.
        let mut ans = Answer {
            answers: vec![a("nginx.default.svc.cluster.local.", 5)],
            ..Default::default()
        };
        cnamer(&mut ans, &name("NGINX.default.svc.cluster.local."));
        assert_eq!(ans.answers.len(), 1);
        // NODATA: nothing to point at (CoreDNS's cnamer adds nothing either).
        let mut ans = Answer::default();
        cnamer(&mut ans, &name("x.default.svc.cluster.local."));
        assert!(ans.answers.is_empty());
    }

    #[test]
    fn what_ends_the_walk() {
        assert!(found(&Answer::rcode(ResponseCode::NoError, "kubernetes")));
        for rcode in [
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
            ResponseCode::Refused,
        ] {
            assert!(!found(&Answer::rcode(rcode, "kubernetes")), "{rcode:?}");
        }
        assert!(!found(&Answer::no_reply("acl")));
    }
}
