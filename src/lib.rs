//! clusterdns: a CoreDNS-compatible cluster DNS server for Kubernetes clusters whose pods run
//! partly on worker nodes and partly in micro-VMs (EKS Fargate).

pub mod admin;
#[cfg(feature = "alloc-trial")]
mod alloc_trial;
pub mod app;
pub mod cluster;
pub mod corefile;
pub mod defaults;
pub mod dns;
pub mod export;
pub mod fargate;
pub mod gen;
pub mod insight;
pub mod malloc;
pub mod metrics;
pub mod output;
pub mod placement;
pub mod prober;
pub mod report;
pub mod sidecar;
pub mod webhook;
