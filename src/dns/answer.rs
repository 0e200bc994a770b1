//! What a handler produces: the sections of a response, before it meets the wire.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;

#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub recursion_available: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The handler that wrote the reply (the `plugin` label of response metrics); empty when
    /// the server itself answered.
    pub plugin: &'static str,
    /// Send nothing at all (acl `drop`): the client times out, as with CoreDNS.
    pub no_reply: bool,
    /// The server block zone that handled the query (the `zone` metric label); None when no
    /// block took it.
    pub zone: Option<std::sync::Arc<str>>,
    /// May be stored in the server's response cache: it depends only on the question and
    /// the cluster snapshot (set by the pipeline; cleared by hooks that vary answers).
    pub cacheable: bool,
    /// `loadbalance` shuffles this answer: a stored copy must be shuffled on every replay.
    pub shuffled: bool,
    /// A cache hit that the server's response cache may replay while the lender's entry
    /// lives, with its TTLs counted down (dns::fastpath::Lease).
    pub lease: Option<std::sync::Arc<dyn super::fastpath::Lease>>,
    /// Zone-aware answers: the client zone it was made for, how it went, its groups.
    pub zonal: super::zonal::ZonalTag,
}

impl Answer {
    pub fn rcode(rcode: ResponseCode, plugin: &'static str) -> Answer {
        Answer {
            rcode,
            plugin,
            ..Default::default()
        }
    }

    /// The answer that makes the server stay silent.
    pub fn no_reply(plugin: &'static str) -> Answer {
        Answer {
            no_reply: true,
            plugin,
            ..Default::default()
        }
    }

    /// NXDOMAIN, or NOERROR with no answer (NODATA).
    pub fn is_negative(&self) -> bool {
        self.rcode == ResponseCode::NXDomain
            || (self.rcode == ResponseCode::NoError && self.answers.is_empty())
    }
}
