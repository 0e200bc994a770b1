//! The Corefile plugins other than `kubernetes`, `forward` and `cache`, each a [`Handler`]
//! built from its typed config.
//!
//! [`Handler`]: super::Handler

pub mod acl;
pub mod autopath;
pub mod errors;
pub mod hosts;
pub mod loadbalance;
pub mod log;
pub mod loop_detect;
pub mod rewrite;
pub mod template;

use hickory_proto::rr::Name;

/// The query name as CoreDNS compares it: lowercase, with the trailing dot.
pub(crate) fn lower_fqdn(name: &Name) -> String {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n.to_ascii()
}

/// Parses a name typed in configuration or produced by a rewrite, as a FQDN.
pub(crate) fn fqdn(text: &str) -> Option<Name> {
    let mut n = Name::from_ascii(text).ok()?;
    n.set_fqdn(true);
    Some(n)
}
