//! Network interfaces and their addresses, for `bind IFACE` (CoreDNS binds every address of a
//! named interface).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of an interface. `scope` is the interface index for link-local IPv6 addresses
/// (`fe80::1%eth0`), which cannot be bound without it; 0 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    pub ip: Option<IpAddr>,
    pub scope: u32,
}

/// Every interface with its IP addresses, from getifaddrs(3). An interface without any IP
/// address is listed once with `ip: None`, so that it is known to exist.
pub fn list() -> std::io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out: Vec<IfAddr> = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; its name is
        // a NUL-terminated string and its address, when not null, a sockaddr of the family
        // it names (sockaddr_in for AF_INET, sockaddr_in6 for AF_INET6).
        let (interface, ip, scope) = unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let sa = ifa.ifa_addr;
            let (ip, scope) = if sa.is_null() {
                (None, 0)
            } else {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        (Some(IpAddr::V4(ip)), 0)
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
                        let scope = if link_local { sin6.sin6_scope_id } else { 0 };
                        (Some(IpAddr::V6(ip)), scope)
                    }
                    _ => (None, 0),
                }
            };
            (name, ip, scope)
        };
        let known = out.iter().any(|a| a.interface == interface);
        if ip.is_some() || !known {
            out.push(IfAddr {
                interface,
                ip,
                scope,
            });
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    // Drop the address-less placeholders of interfaces that do have addresses.
    let with_ip: Vec<String> = out
        .iter()
        .filter(|a| a.ip.is_some())
        .map(|a| a.interface.clone())
        .collect();
    out.retain(|a| a.ip.is_some() || !with_ip.contains(&a.interface));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_127_0_0_1() {
        let all = list().unwrap();
        assert!(
            all.iter().any(|a| a.interface == "lo"
                && a.ip == Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
                && a.scope == 0),
            "{all:?}"
        );
    }
}
