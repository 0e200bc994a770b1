//! `loop`: at start the server sends itself `HINFO <random>.<random>.<zone>`; a healthy
//! forwarder sends it upstream and it never comes back. Seeing it arrive more than twice means
//! the upstream forwards to us (typically 127.0.0.53 in the node's resolv.conf): the server
//! stops with `Loop detected for zone ...` naming the upstream, as CoreDNS does.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio_util::sync::CancellationToken;

use super::lower_fqdn;
use crate::dns::pipeline::{Flow, Handler, Request};

/// A reason to stop the whole server, raised by a handler (loop detected).
#[derive(Debug, Default)]
pub struct Fatal {
    pub token: CancellationToken,
    message: Mutex<Option<String>>,
}

impl Fatal {
    pub fn raise(&self, msg: String) {
        tracing::error!("{msg}");
        let mut m = self.message.lock().unwrap_or_else(|e| e.into_inner());
        m.get_or_insert(msg);
        self.token.cancel();
    }

    pub fn message(&self) -> Option<String> {
        self.message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct LoopDetect {
    /// Lowercase FQDN of the probe.
    probe: String,
    probe_name: Name,
    zone: String,
    upstreams: String,
    seen: AtomicU32,
    /// Set once the probe got an answer: later HINFO queries for the name are not ours.
    done: AtomicBool,
    fatal: Arc<Fatal>,
}

impl LoopDetect {
    /// `zone` is the server block's first zone; `upstreams` names where forward sends to.
    pub fn new(zone: &str, upstreams: String, fatal: Arc<Fatal>) -> LoopDetect {
        let zone = if zone.ends_with('.') {
            zone.to_string()
        } else {
            format!("{zone}.")
        };
        let probe = format!(
            "{}.{}.{}",
            rand::random::<u32>() % 1_000_000_000,
            rand::random::<u32>() % 1_000_000_000,
            if zone == "." { "" } else { zone.as_str() }
        );
        let probe_name = Name::from_ascii(&probe).unwrap_or_else(|_| Name::root());
        LoopDetect {
            probe,
            probe_name,
            zone,
            upstreams,
            seen: AtomicU32::new(0),
            done: AtomicBool::new(false),
            fatal,
        }
    }

    pub fn probe(&self) -> &Name {
        &self.probe_name
    }

    /// The probe was answered (by anyone): no loop, stop counting.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    pub fn seen(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Handler for LoopDetect {
    fn name(&self) -> &'static str {
        "loop"
    }

    fn pure(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request) -> Flow {
        if req.qtype != RecordType::HINFO
            || self.done.load(Ordering::Relaxed)
            || lower_fqdn(&req.qname) != self.probe
        {
            return Flow::Next;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n > 2 {
            self.fatal.raise(format!(
                "Loop ({} -> this server) detected for zone \"{}\": upstream {} sends our queries back to us; see https://coredns.io/plugins/loop#troubleshooting. Query: \"HINFO {}\"",
                req.src, self.zone, self.upstreams, self.probe
            ));
        }
        Flow::Next
    }
}

/// Sends the `loop` probe to our own listener until something answers (then stops counting).
pub async fn send_probes(l: Arc<LoopDetect>, target: SocketAddr, cancel: CancellationToken) {
    let target = match target.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], target.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, target.port())),
        _ => target,
    };
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(l.probe().clone(), RecordType::HINFO));
    let Ok(bytes) = msg.to_vec() else { return };
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(target)
    } else {
        "[::]:0".parse().unwrap_or(target)
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return;
    };
    // CoreDNS tries for about 30 s; a loop shows up within the first round trips.
    for _ in 0..15 {
        if sock.send_to(&bytes, target).await.is_err() {
            return;
        }
        let mut buf = [0u8; 512];
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)) => {
                if let Ok(Ok(_)) = r {
                    l.finish();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::pipeline::Proto;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};

    fn req(name: &Name) -> Request {
        let mut message = Message::new(1, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(name.clone(), RecordType::HINFO));
        Request {
            message,
            qname: name.clone(),
            qtype: RecordType::HINFO,
            src: "127.0.0.1:53".parse().unwrap(),
            proto: Proto::Udp,
        }
    }

    #[test]
    fn a_probe_seen_three_times_is_a_loop_naming_the_upstream() {
        let fatal = Arc::new(Fatal::default());
        let l = LoopDetect::new(".", "/etc/resolv.conf (127.0.0.53)".into(), fatal.clone());
        let r = req(l.probe());
        for _ in 0..2 {
            assert!(matches!(l.handle(&r), Flow::Next));
        }
        assert!(fatal.message().is_none());
        let _ = l.handle(&r);
        let msg = fatal.message().expect("loop detected");
        assert!(
            msg.contains("Loop") && msg.contains("detected for zone \".\""),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.53"), "{msg}");
        assert!(fatal.token.is_cancelled());
    }

    #[test]
    fn an_answered_probe_stops_counting() {
        let fatal = Arc::new(Fatal::default());
        let l = LoopDetect::new("cluster.local", "x".into(), fatal.clone());
        l.finish();
        let r = req(l.probe());
        for _ in 0..5 {
            let _ = l.handle(&r);
        }
        assert!(fatal.message().is_none());
        assert_eq!(l.seen(), 0);
    }
}
