//! `autopath`: walks a client's DNS search path on the server, CoreDNS style
//! (plugin/autopath). A query for a name under the first search domain (`<base>.<first>`) is
//! tried with each search domain in turn, then as `<base>`, through the handlers after
//! autopath; the first answer that is not NXDOMAIN (or a failure) is returned with a CNAME
//! from the asked name to the found one. When every candidate fails, the reply for the asked
//! name itself (the first candidate) is returned as is, and the client walks its search path
//! as usual.
//!
//! The search path comes from one of two places:
//! - `@kubernetes`: the client pod's, by its IP: `<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`;
//! - a resolv.conf file: its `search` (or `domain`) list, read when the Corefile is loaded,
//!   the same for every client.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};

use crate::cluster::labels::Selector;
use crate::cluster::ClusterView;
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Pipeline, Request};

pub const PLUGIN: &str = "autopath";

pub struct Autopath {
    /// Names autopath acts on (lowercase FQDNs).
    zones: Vec<Name>,
    source: Source,
    /// The handlers after autopath, set once they are built.
    next: OnceLock<Pipeline>,
}

enum Source {
    Kubernetes {
        /// The `kubernetes` zones: the search path is built from the one holding the name.
        cluster_zones: Vec<Name>,
        view: Arc<ClusterView>,
        /// The `kubernetes` plugin's `labels`: CoreDNS finds the client among the pods it
        /// lists, which that selector filters.
        labels: Option<Selector>,
    },
    /// A resolv.conf's search domains, then the root.
    Fixed(Arc<[Name]>),
}

impl Autopath {
    /// `autopath @kubernetes`.
    pub fn new(
        zones: Vec<Name>,
        cluster_zones: Vec<Name>,
        view: Arc<ClusterView>,
        labels: Option<Selector>,
    ) -> Autopath {
        Autopath {
            zones,
            source: Source::Kubernetes {
                cluster_zones,
                view,
                labels,
            },
            next: OnceLock::new(),
        }
    }

    /// `autopath RESOLV-CONF`: `search` are its search domains (see [`resolv_conf_search`]).
    pub fn with_search(zones: Vec<Name>, search: Vec<Name>) -> Autopath {
        let mut path: Vec<Name> = search
            .into_iter()
            .map(|mut n| {
                n.set_fqdn(true);
                n.to_lowercase()
            })
            .collect();
        // The bare name last (CoreDNS's "" sentinel).
        path.push(Name::root());
        path.dedup();
        Autopath {
            zones,
            source: Source::Fixed(path.into()),
            next: OnceLock::new(),
        }
    }

    pub fn set_next(&self, next: Pipeline) {
        let _ = self.next.set(next);
    }

    /// The search path for `qname` asked from `ip`, ending with the root (the bare name).
    fn search_path(&self, qname: &Name, ip: IpAddr) -> Option<Arc<[Name]>> {
        if !self.zones.iter().any(|z| z.zone_of(qname)) {
            return None;
        }
        match &self.source {
            Source::Fixed(path) => Some(path.clone()),
            Source::Kubernetes {
                cluster_zones,
                view,
                labels,
            } => pod_search_path(cluster_zones, view, labels.as_ref(), qname, ip).map(Into::into),
        }
    }
}

/// The search path of the pod at `ip` for `qname` (as CoreDNS's kubernetes AutoPath):
/// `<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`, then the root.
fn pod_search_path(
    cluster_zones: &[Name],
    view: &ClusterView,
    labels: Option<&Selector>,
    qname: &Name,
    ip: IpAddr,
) -> Option<Vec<Name>> {
    let zone = cluster_zones
        .iter()
        .filter(|z| z.zone_of(qname))
        .max_by_key(|z| z.num_labels())?;
    let snap = view.snapshot();
    // The first pod with the address (several share a host-network one) that the selector
    // lets through.
    let ns = snap
        .pods_at(&ip.to_canonical())
        .iter()
        .find(|p| labels.is_none_or(|s| s.matches(&p.labels)))?
        .namespace
        .to_ascii_lowercase();
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

/// The search domains of a resolv.conf, as CoreDNS reads them (miekg/dns): the last `search`
/// or `domain` line wins. Errors say which file and what is wrong.
pub fn resolv_conf_search(path: &Path) -> Result<Vec<Name>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut search: Vec<&str> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") => search = words.collect(),
            Some("domain") => search = words.take(1).collect(),
            _ => {}
        }
    }
    if search.is_empty() {
        return Err(format!(
            "{}: no 'search' or 'domain' line, so no search path to walk",
            path.display()
        ));
    }
    search
        .iter()
        .map(|d| {
            Name::from_ascii(d)
                .map(|mut n| {
                    n.set_fqdn(true);
                    n
                })
                .map_err(|e| format!("{}: bad search domain '{d}': {e}", path.display()))
        })
        .collect()
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
            for suffix in search.iter() {
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
    fn resolv_conf_search_lines() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            let p = dir.path().join("resolv.conf");
            std::fs::write(&p, text).unwrap();
            resolv_conf_search(&p)
        };
        let names = |v: Vec<Name>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(read("search a.b c\nnameserver 10.0.0.1\n").unwrap()),
            ["a.b.", "c."]
        );
        // The last of search/domain wins; domain takes one name.
        assert_eq!(
            names(read("search a.b c\ndomain d.e f\n").unwrap()),
            ["d.e."]
        );
        assert!(read("nameserver 10.0.0.1\n")
            .unwrap_err()
            .contains("no 'search' or 'domain' line"));
        let e = read("search ok.example bad..name\n").unwrap_err();
        assert!(e.contains("bad search domain 'bad..name'"), "{e}");
        let ap = Autopath::with_search(vec![Name::root()], vec![name("A.b")]);
        let path = ap.search_path(&name("x.a.b."), "127.0.0.1".parse().unwrap());
        assert_eq!(path.as_deref(), Some(&[name("a.b."), Name::root()][..]));
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
