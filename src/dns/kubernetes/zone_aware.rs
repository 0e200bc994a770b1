//! Zone-aware headless answers (issue 14), kept apart from the answer builders they hook
//! into (one call in `service`, one match arm in `svc`):
//!
//! ```text
//!  <svc>.<ns>.svc, _p._t.<svc>.<ns>.svc (headless)
//!    PreferClose / topology-mode Auto ─> client zone (pod -> node label, else subnet)
//!         endpoints serving it (hints.forZones, else zone) ─ none, or zone unknown ─> all ready
//!    other, with `zone_first` ─> all ready, the client's zone first
//!  <az>.pin._zone.<svc>.<ns>.svc     ─> endpoints whose slice zone is <az>, else NODATA
//!  <az>.prefer._zone.<svc>.<ns>.svc  ─> those, else all ready   (with `zonal`, as CoreDNS)
//! ```
//!
//! The client's zone is looked up only for services whose answer depends on it, so every
//! other answer costs what it did.

use super::*;
use crate::dns::zonal::{ClientZone, ZonalResult, ZonalTag};

/// Whether `e` serves clients of `zone`: its `hints.forZones` when the slice gives hints,
/// else its own zone. Zone names are compared ignoring case, as DNS names are.
fn serves(e: &EndpointEntry, zone: &str) -> bool {
    match e.for_zones() {
        Some(z) if !z.is_empty() => z.iter().any(|z| z.eq_ignore_ascii_case(zone)),
        _ => in_zone(e, zone),
    }
}

fn in_zone(e: &EndpointEntry, zone: &str) -> bool {
    e.zone().is_some_and(|z| z.eq_ignore_ascii_case(zone))
}

impl Kubernetes {
    /// The zone-aware answer of a headless service for the client in `ctx`, or None for the
    /// plain one (not zone-aware, no client, or a fallback to every endpoint, which is the
    /// plain answer). Records what it decided in `ctx.zonal`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn zone_aware(
        &self,
        ctx: &Ctx,
        entry: &ServiceEntry,
        ready: &[&EndpointEntry],
        svc: &str,
        ns: &str,
        port: &str,
        proto: &str,
    ) -> Option<Outcome> {
        let prefer_close = entry.service.prefer_close;
        if !prefer_close && !self.cfg.zone_first {
            return None;
        }
        let client = ctx.client?;
        let zone = self.view.client_zone(ctx.snap, &client);
        let mut tag = ZonalTag {
            client_zone: Some(ClientZone::of(zone.clone())),
            ..Default::default()
        };
        let Some(zone) = zone else {
            tag.result = Some(ZonalResult::UnknownClient);
            ctx.zonal.set(tag);
            return None;
        };
        let explicit_port = !(wildcard(port) && wildcard(proto));
        // Only endpoints that can be in this answer count as in-zone: an in-zone endpoint
        // without the asked port or address family must not hide the others.
        let usable = |e: &EndpointEntry| {
            (!explicit_port || e.ports().iter().any(|p| port_matches(port, proto, p)))
                && (ctx.qtype == RecordType::SRV || family_matches(ctx.qtype, &e.address()))
        };
        let (near, far): (Vec<&EndpointEntry>, Vec<&EndpointEntry>) = ready
            .iter()
            .copied()
            .partition(|e| serves(e, &zone) && usable(e));
        if near.is_empty() {
            tag.result = Some(ZonalResult::Fallback);
            ctx.zonal.set(tag);
            return None;
        }
        tag.result = Some(ZonalResult::InZone);
        let outcome = if prefer_close {
            self.endpoint_records(ctx, &near, svc, ns, port, proto, explicit_port)
        } else {
            let ordered: Vec<&EndpointEntry> = near.iter().chain(far.iter()).copied().collect();
            if ctx.qtype != RecordType::SRV {
                // One address record per usable endpoint, in order: the first group is
                // exactly the in-zone endpoints.
                tag.first_group = u16::try_from(near.len()).ok();
            }
            self.endpoint_records(ctx, &ordered, svc, ns, port, proto, explicit_port)
        };
        ctx.zonal.set(tag);
        Some(outcome)
    }

    /// CoreDNS's zone-scoped names (option `zonal`): `az` holds the labels left of the
    /// directive (a zone value may contain dots).
    pub(super) fn zonal_name(
        &self,
        ctx: &Ctx,
        entry: &ServiceEntry,
        svc: &str,
        ns: &str,
        az: &[&str],
        directive: &str,
    ) -> Outcome {
        let prefer = match directive {
            "pin" => false,
            "prefer" => true,
            // Unknown directives keep the too-long NXDOMAIN, as CoreDNS.
            _ => return Outcome::NxDomain,
        };
        // Defined for headless services only (ClusterIP ones have trafficDistribution).
        if az.is_empty() || entry.service.kind != ServiceKind::Headless {
            return Outcome::NxDomain;
        }
        let ready: Vec<&EndpointEntry> = entry.ready_endpoints().collect();
        if ready.is_empty() {
            return Outcome::NxDomain;
        }
        if !matches!(
            ctx.qtype,
            RecordType::A | RecordType::AAAA | RecordType::SRV | RecordType::ANY
        ) {
            return Outcome::NoData;
        }
        let zone = az.join(".");
        let near: Vec<&EndpointEntry> = ready
            .iter()
            .copied()
            .filter(|e| in_zone(e, &zone))
            .collect();
        let (selected, result) = if !near.is_empty() {
            (near, ZonalResult::InZone)
        } else if prefer {
            (ready, ZonalResult::Fallback)
        } else {
            // pin: "no endpoint carries that zone", the same for a drained zone and a typo.
            return Outcome::NoData;
        };
        ctx.zonal.set(ZonalTag {
            result: Some(result),
            ..Default::default()
        });
        self.endpoint_records(ctx, &selected, svc, ns, "*", "*", false)
    }
}
