//! `hosts`: /etc/hosts-style entries (a file, re-read when it changes, plus inline lines),
//! answered authoritatively with PTRs for their addresses unless `no_reverse`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tracing::{info, warn};

use super::{fqdn, lower_fqdn};
use crate::corefile::{name_in_zone, HostsConfig};
use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

const PLUGIN: &str = "hosts";

/// Names to addresses and back, in entry order.
#[derive(Debug, Default)]
pub struct HostsTable {
    by_name: HashMap<String, Vec<IpAddr>>,
    by_addr: HashMap<IpAddr, Vec<String>>,
}

impl HostsTable {
    fn add(&mut self, addr: IpAddr, name: &str) {
        let mut name = name.to_ascii_lowercase();
        if !name.ends_with('.') {
            name.push('.');
        }
        let addrs = self.by_name.entry(name.clone()).or_default();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        let names = self.by_addr.entry(addr).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
    }

    /// Parses hosts-file text; bad lines are skipped, as CoreDNS does.
    pub fn parse(text: &str) -> HostsTable {
        let mut t = HostsTable::default();
        t.add_text(text);
        t
    }

    fn add_text(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(addr) = words.next().and_then(parse_addr) else {
                continue;
            };
            for name in words {
                self.add(addr, name);
            }
        }
    }
}

/// An address as hosts files write it, IPv6 zone suffixes (`fe80::1%lo0`) dropped.
fn parse_addr(s: &str) -> Option<IpAddr> {
    s.split('%').next()?.parse().ok()
}

/// The address a reverse name encodes, if it is a complete in-addr.arpa or ip6.arpa name.
pub fn reverse_addr(name: &str) -> Option<IpAddr> {
    let name = name.trim_end_matches('.');
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = Vec::with_capacity(4);
        for l in rest.split('.').rev() {
            octets.push(l.parse().ok()?);
        }
        let o: [u8; 4] = octets.try_into().ok()?;
        return Some(IpAddr::from(o));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').rev().collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, n) in nibbles.iter().enumerate() {
        let v = u8::from_str_radix(n, 16).ok()?;
        if n.len() != 1 {
            return None;
        }
        bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
    }
    Some(IpAddr::from(bytes))
}

pub struct Hosts {
    cfg: HostsConfig,
    table: Arc<ArcSwap<HostsTable>>,
}

type Stamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

fn load(cfg: &HostsConfig) -> HostsTable {
    let mut t = HostsTable::default();
    match std::fs::read_to_string(&cfg.path) {
        Ok(text) => t.add_text(&text),
        // The default /etc/hosts may be missing in a container; inline entries still work.
        Err(e) => warn!(path = %cfg.path.display(), "hosts: cannot read the file: {e}"),
    }
    for e in &cfg.inline {
        for n in &e.names {
            t.add(e.addr, n);
        }
    }
    t
}

impl Hosts {
    /// Loads the file now and, inside a tokio runtime with `reload` set, re-reads it whenever
    /// its size or mtime changes, for as long as this handler lives.
    pub fn new(cfg: HostsConfig) -> Hosts {
        let table = Arc::new(ArcSwap::from_pointee(load(&cfg)));
        if !cfg.reload.is_zero() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(watch(cfg.clone(), Arc::downgrade(&table)));
            }
        }
        Hosts { cfg, table }
    }

    fn records(&self, req: &Request, qname: &str) -> Option<Answer> {
        let table = self.table.load();
        let ttl = self.cfg.ttl;
        let mut answer = Answer {
            authoritative: true,
            plugin: PLUGIN,
            ..Default::default()
        };
        if req.qtype == RecordType::PTR && !self.cfg.no_reverse {
            if let Some(names) = reverse_addr(qname).and_then(|a| table.by_addr.get(&a)) {
                answer.answers = names
                    .iter()
                    .filter_map(|n| fqdn(n))
                    .map(|n| Record::from_rdata(req.qname.clone(), ttl, RData::PTR(PTR(n))))
                    .collect();
                return Some(answer);
            }
        }
        let addrs = table.by_name.get(qname)?;
        answer.answers = addrs
            .iter()
            .filter_map(|a| match (req.qtype, a) {
                (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => {
                    Some(RData::AAAA(AAAA(*v6)))
                }
                _ => None,
            })
            .map(|rd| Record::from_rdata(req.qname.clone(), ttl, rd))
            .collect();
        // A name with only other records is NODATA: NOERROR and no answer.
        Some(answer)
    }
}

async fn watch(cfg: HostsConfig, table: Weak<ArcSwap<HostsTable>>) {
    let mut last = stamp(&cfg.path);
    let mut ticker = tokio::time::interval(cfg.reload);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        // The handler is gone (a reload replaced it): stop watching.
        let Some(table) = table.upgrade() else { return };
        let now = stamp(&cfg.path);
        if now != last {
            last = now;
            table.store(Arc::new(load(&cfg)));
            info!(path = %cfg.path.display(), "hosts: file changed, reloaded");
        }
    }
}

impl Handler for Hosts {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn handle(&self, req: &Request) -> Flow {
        let qname = lower_fqdn(&req.qname);
        // As CoreDNS: a PTR is looked up by address whatever the zones, and one for an address
        // not listed passes on even without `fallthrough` (so `kubernetes` or `forward` can
        // answer it).
        if req.qtype == RecordType::PTR {
            return match self.records(req, &qname) {
                Some(a) if !a.answers.is_empty() => Flow::Answer(a),
                _ => Flow::Next,
            };
        }
        if !self.cfg.zones.iter().any(|z| name_in_zone(&qname, z)) {
            return Flow::Next;
        }
        if let Some(a) = self.records(req, &qname) {
            return Flow::Answer(a);
        }
        if self.cfg.fallthrough.applies(&qname) {
            return Flow::Next;
        }
        Flow::Answer(Answer {
            authoritative: true,
            ..Answer::rcode(ResponseCode::NXDomain, PLUGIN)
        })
    }
}

/// The name `hosts` would answer a PTR with, for tests and tooling.
pub fn ptr_name(addr: IpAddr) -> Name {
    Name::from(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_addr("1.0.0.10.in-addr.arpa."),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(reverse_addr("0.10.in-addr.arpa."), None);
        let v6 = ptr_name("fd00::1".parse().unwrap()).to_ascii();
        assert_eq!(reverse_addr(&v6), Some("fd00::1".parse().unwrap()));
        assert_eq!(reverse_addr("x.1.0.10.in-addr.arpa."), None);
    }

    #[test]
    fn table_parses_hosts_text() {
        let t = HostsTable::parse("# c\n10.0.0.1 a.example b\nbad line\nfe80::1%lo0 c\n");
        assert_eq!(
            t.by_name["a.example."],
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(t.by_addr[&"10.0.0.1".parse::<IpAddr>().unwrap()].len(), 2);
        assert!(t.by_name.contains_key("c."));
    }
}
