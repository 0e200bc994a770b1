//! Zone membership on hickory names without allocating (the cache checks it on every hit).

use hickory_proto::rr::Name;

/// Whether `name` is `zone` or below it, ignoring ASCII case. The root zone holds every name.
pub fn in_zone(name: &Name, zone: &Name) -> bool {
    let (n, z) = (name.iter(), zone.iter());
    if z.len() > n.len() {
        return false;
    }
    n.rev().zip(z.rev()).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// Whether `name` is in any of `zones`.
pub fn in_any(name: &Name, zones: &[Name]) -> bool {
    zones.iter().any(|z| in_zone(name, z))
}

/// Parses zone strings as the Corefile config holds them (lowercase FQDNs).
pub fn parse(zones: &[String]) -> Result<Vec<Name>, String> {
    zones
        .iter()
        .map(|z| {
            let mut n = Name::from_ascii(z).map_err(|e| format!("bad zone {z:?}: {e}"))?;
            n.set_fqdn(true);
            Ok(n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn membership() {
        assert!(in_zone(&n("a.Example.org."), &n("example.ORG.")));
        assert!(in_zone(&n("example.org."), &n("example.org.")));
        assert!(in_zone(&n("anything."), &n(".")));
        assert!(!in_zone(&n("badexample.org."), &n("example.org.")));
        assert!(!in_zone(&n("org."), &n("example.org.")));
    }
}
