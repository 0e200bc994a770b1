//! Parsers for the value types Corefiles use: Go durations, zones, server keys, addresses.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::config::{HostPort, Transport, ZoneKey};

/// Parses a duration the way Go's `time.ParseDuration` does (`300ms`, `1m30s`, `1.5h`, `0`).
/// Units: ns, us, µs, μs, ms, s, m, h. Negative durations are rejected: no Corefile option
/// accepts one.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s;
    let negative = rest.starts_with('-');
    if let Some(r) = rest.strip_prefix(['-', '+']) {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration '{s}'"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!("invalid duration '{s}': expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration '{s}': missing unit (ns, us, ms, s, m, h)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration '{s}': unknown unit '{other}' (ns, us, ms, s, m, h)"
                ))
            }
        };
        let too_big = || format!("invalid duration '{s}': too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_big())?
        };
        let mut value = int.checked_mul(nanos_per).ok_or_else(too_big)?;
        // Fractions past nanosecond precision are dropped, as in Go.
        let mut scale = nanos_per;
        for d in frac_part.chars().take(20) {
            scale /= 10;
            value = value.saturating_add(u128::from(d.to_digit(10).unwrap_or(0)) * scale);
        }
        total = total.checked_add(value).ok_or_else(too_big)?;
        if total > i64::MAX as u128 {
            return Err(too_big());
        }
        rest = after;
    }
    if negative && total > 0 {
        return Err(format!("invalid duration '{s}': must not be negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Go's `strconv.Atoi` with a range check, for counts, TTLs and capacities.
pub(crate) fn parse_int<T: TryFrom<i64>>(s: &str, min: i64, max: i64) -> Result<T, String> {
    let v: i64 = s.parse().map_err(|_| format!("'{s}' is not an integer"))?;
    if v < min || v > max {
        return Err(format!("{v} is out of range ({min}..={max})"));
    }
    T::try_from(v).map_err(|_| format!("{v} is out of range ({min}..={max})"))
}

const TRANSPORTS: &[(&str, Transport)] = &[
    ("dns://", Transport::Dns),
    ("tls://", Transport::Tls),
    ("grpc://", Transport::Grpc),
    ("https://", Transport::Https),
    ("quic://", Transport::Quic),
];

/// Strips a `scheme://` prefix; `None` when there is no scheme.
fn split_transport(s: &str) -> Result<(Option<Transport>, &str), String> {
    for (prefix, t) in TRANSPORTS {
        if let Some(rest) = s.strip_prefix(prefix) {
            return Ok((Some(*t), rest));
        }
    }
    if let Some(i) = s.find("://") {
        let names: Vec<&str> = TRANSPORTS.iter().map(|(p, _)| *p).collect();
        return Err(format!(
            "unknown transport '{}://' (supported: {})",
            &s[..i],
            names.join(", ")
        ));
    }
    Ok((None, s))
}

/// Splits `host[:port]` the CoreDNS way: a port is the digits after the last colon, and for a
/// reverse CIDR (which contains colons when IPv6) only a colon after the `/mask` counts.
fn split_zone_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let Some(colon) = s.rfind(':') else {
        return Ok((s, None));
    };
    if let Some(slash) = s.find('/') {
        if colon < slash {
            return Ok((s, None));
        }
    }
    let port = &s[colon + 1..];
    if port.is_empty() {
        return Err(format!("expected a port number after ':' in '{s}'"));
    }
    let p: u16 = port
        .parse()
        .map_err(|_| format!("invalid port '{port}': expected a number from 0 to 65535"))?;
    Ok((&s[..colon], Some(p)))
}

/// Lowercase FQDN form of a zone or name, checked for label and name lengths.
pub(crate) fn normalize_name(s: &str) -> Result<String, String> {
    let mut z = s.to_ascii_lowercase();
    if !z.ends_with('.') {
        z.push('.');
    }
    if z == "." {
        return Ok(z);
    }
    let labels: Vec<&str> = z[..z.len() - 1].split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(format!("'{s}' is not a valid domain name: empty label"));
    }
    if let Some(l) = labels.iter().find(|l| l.len() > 63) {
        return Err(format!(
            "'{s}' is not a valid domain name: label '{l}' is longer than 63 octets"
        ));
    }
    if z.len() > 254 {
        return Err(format!(
            "'{s}' is not a valid domain name: longer than 255 octets"
        ));
    }
    Ok(z)
}

/// Zones named by a CIDR (`10.0.0.0/8`) are the reverse zones covering it. A mask that is not
/// on an octet (IPv4) or nibble (IPv6) boundary yields every zone at the next boundary, as
/// CoreDNS does.
fn reverse_zones(cidr: &str) -> Result<Vec<String>, String> {
    let net = IpNet::from_str(cidr).map_err(|_| format!("invalid CIDR '{cidr}'"))?;
    let net = net.trunc();
    let (digit, suffix, bytes): (u8, &str, Vec<u8>) = match net.addr() {
        IpAddr::V4(a) => (8, "in-addr.arpa.", a.octets().to_vec()),
        IpAddr::V6(a) => (4, "ip6.arpa.", a.octets().to_vec()),
    };
    let prefix = net.prefix_len();
    let rounded = prefix.div_ceil(digit) * digit;
    let extra = u32::from(rounded - prefix);
    let mut zones = Vec::new();
    for i in 0..(1u32 << extra) {
        // Set the `extra` bits just after the prefix to `i`.
        let mut b = bytes.clone();
        for bit in 0..extra {
            if i & (1 << (extra - 1 - bit)) != 0 {
                let pos = u32::from(prefix) + bit;
                if let Some(byte) = b.get_mut((pos / 8) as usize) {
                    *byte |= 0x80 >> (pos % 8);
                }
            }
        }
        let digits: Vec<String> = if digit == 8 {
            b.iter()
                .take(usize::from(rounded / 8))
                .map(|o| o.to_string())
                .collect()
        } else {
            b.iter()
                .flat_map(|o| [o >> 4, o & 0xf])
                .take(usize::from(rounded / 4))
                .map(|n| format!("{n:x}"))
                .collect()
        };
        let mut z: String = digits.iter().rev().map(|d| format!("{d}.")).collect();
        z.push_str(suffix);
        zones.push(z);
    }
    Ok(zones)
}

/// A zone argument of a plugin: a name or a reverse CIDR, optionally with a transport or port
/// (ignored, as CoreDNS's `NormalizeExact` does).
pub(crate) fn normalize_zones(s: &str) -> Result<Vec<String>, String> {
    let (_, rest) = split_transport(s)?;
    let (host, _) = split_zone_port(rest)?;
    zones_of_host(host)
}

fn zones_of_host(host: &str) -> Result<Vec<String>, String> {
    if host.is_empty() {
        return Err("expected a zone name".to_string());
    }
    if host.contains('/') {
        return reverse_zones(host);
    }
    Ok(vec![normalize_name(host)?])
}

/// A server block key: `[TRANSPORT://]ZONE[:PORT]`.
pub(crate) fn parse_key(s: &str) -> Result<Vec<ZoneKey>, String> {
    let (transport, rest) = split_transport(s)?;
    let transport = transport.unwrap_or(Transport::Dns);
    let (host, port) = split_zone_port(rest)?;
    let zones = zones_of_host(host)?;
    Ok(zones
        .into_iter()
        .map(|zone| ZoneKey {
            zone,
            port: port.unwrap_or(transport.default_port()),
            port_explicit: port.is_some(),
            transport,
        })
        .collect())
}

/// `HOST:PORT`, `:PORT` or `[IPv6]:PORT` for the HTTP listeners.
pub(crate) fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = || format!("'{s}' is not an address of the form [HOST]:PORT");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(format!("{}; write IPv6 addresses as [ADDR]:PORT", bad()));
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| {
        format!("invalid port '{port}' in '{s}': expected a number from 0 to 65535")
    })?;
    let host_ok = host.parse::<IpAddr>().is_ok()
        || host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok {
        return Err(bad());
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// True when a word can only have been meant as an IP address (or address:port), so that a
/// typo there is reported as a bad address instead of being taken for a file or interface name.
pub(crate) fn looks_like_address(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        && s.chars().any(|c| c.is_ascii_digit() || c == ':')
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`, with `default_port` when none is given.
pub(crate) fn parse_ip_port(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?;
    inner
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// An IP network, or a single address as a host route (`10.0.0.1` is `10.0.0.1/32`).
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = IpNet::from_str(s) {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{s}' is not an IP address or CIDR network"))
}

/// Splits off a transport for upstream addresses (`dns://`, `tls://` only).
pub(crate) fn split_upstream_transport(s: &str) -> Result<(Option<Transport>, &str), String> {
    match split_transport(s)? {
        (Some(t @ (Transport::Dns | Transport::Tls)), rest) => Ok((Some(t), rest)),
        (Some(t), _) => Err(format!(
            "transport '{}' is not supported for upstreams (supported: dns://, tls://)",
            t.scheme()
        )),
        (None, rest) => Ok((None, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("0.5s"), Duration::from_millis(500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+2us"), Duration::from_micros(2));
        assert_eq!(ok("3µs"), Duration::from_micros(3));
        assert_eq!(ok("-0s"), Duration::ZERO);
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "1.2.3s",
            "-1s",
            ".s",
            "99999999999h",
            "5s5",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn keys() {
        let k = parse_key("Example.ORG:1053").unwrap();
        assert_eq!(k[0].zone, "example.org.");
        assert_eq!((k[0].port, k[0].port_explicit), (1053, true));
        let k = parse_key("tls://.").unwrap();
        assert_eq!(
            (k[0].zone.as_str(), k[0].port, k[0].port_explicit),
            (".", 853, false)
        );
        assert!(parse_key(".:99999").is_err());
        assert!(parse_key(".:").is_err());
        assert!(parse_key("http://x").is_err());
        assert!(parse_key("a..b").is_err());
    }

    #[test]
    fn reverse_cidrs() {
        assert_eq!(normalize_zones("10.0.0.0/8").unwrap(), ["10.in-addr.arpa."]);
        assert_eq!(
            normalize_zones("10.0.0.0/15").unwrap(),
            ["0.10.in-addr.arpa.", "1.10.in-addr.arpa."]
        );
        assert_eq!(normalize_zones("0.0.0.0/0").unwrap(), ["in-addr.arpa."]);
        assert_eq!(normalize_zones("fd00::/8").unwrap(), ["d.f.ip6.arpa."]);
        let k = parse_key("192.168.0.0/16:5353").unwrap();
        assert_eq!(
            (k[0].zone.as_str(), k[0].port),
            ("168.192.in-addr.arpa.", 5353)
        );
    }

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_port(":8080").unwrap().to_string(), ":8080");
        assert_eq!(parse_host_port("[::1]:53").unwrap().to_string(), "[::1]:53");
        assert_eq!(parse_host_port("localhost:9153").unwrap().host, "localhost");
        assert!(parse_host_port("8080").is_err());
        assert!(parse_host_port("::1:53").is_err());
        assert!(parse_host_port(":http").is_err());
    }
}
