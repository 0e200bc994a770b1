//! What zone-aware answers tell the rest of the server: which zone an answer was made for
//! (the response cache keys it by that, dns::fastpath) and how it went (metrics).
//!
//! The answers themselves are built by the kubernetes handler (dns/kubernetes/zone_aware.rs):
//! headless Services with `trafficDistribution: PreferClose` (or topology-mode `Auto`) get
//! the endpoints of the client's zone, the others (with `zone_first`) every endpoint with the
//! client's zone first, and CoreDNS's `zonal` names (`<az>.pin._zone.<svc>...`,
//! `<az>.prefer._zone.<svc>...`) those of the zone in the name.

use std::sync::Arc;

/// How a zone-aware answer went: the `result` label of `clusterdns_zonal_answers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZonalResult {
    /// Endpoints of the client's (or the named) zone only, or first.
    InZone,
    /// The zone is known but no endpoint is in it: every ready endpoint.
    Fallback,
    /// The client's zone is unknown (no pod, node label or subnet says): every endpoint.
    UnknownClient,
}

impl ZonalResult {
    pub const ALL: [ZonalResult; 3] = [
        ZonalResult::InZone,
        ZonalResult::Fallback,
        ZonalResult::UnknownClient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ZonalResult::InZone => "in_zone",
            ZonalResult::Fallback => "fallback",
            ZonalResult::UnknownClient => "unknown_client",
        }
    }
}

/// The client zone a zone-dependent answer was made for. Every client of one zone gets the
/// same answer, so the response cache keeps one entry per zone, not per client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientZone {
    Unknown,
    Known(Arc<str>),
}

impl ClientZone {
    pub fn of(zone: Option<Arc<str>>) -> ClientZone {
        match zone {
            Some(z) => ClientZone::Known(z),
            None => ClientZone::Unknown,
        }
    }

    /// What the response cache hashes into the key.
    pub fn key_bytes(&self) -> &[u8] {
        match self {
            ClientZone::Unknown => b"",
            ClientZone::Known(z) => z.as_bytes(),
        }
    }
}

/// What a zone-aware lookup adds to its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonalTag {
    /// Set when the answer depends on the client's zone.
    pub client_zone: Option<ClientZone>,
    pub result: Option<ZonalResult>,
    /// The answer's first this-many records are the in-zone group (zone-first ordering):
    /// `loadbalance` shuffles within each group, never across.
    pub first_group: Option<u16>,
}
