//! The DNS side: wire handling, the handler pipeline and the handlers.
//!
//! ```text
//!  UDP/TCP socket ─> wire::parse ─> Pipeline (handlers in CoreDNS's fixed order:
//!                                    ... cache, kubernetes, forward) ─> wire::encode ─> socket
//!                                              │
//!                                   reads ClusterView (ArcSwap<Snapshot>), lock-free
//! ```

pub mod answer;
pub mod build;
pub mod cache;
pub mod dot;
pub mod fastpath;
pub mod forward;
pub mod interfaces;
pub mod kubernetes;
pub mod pipeline;
pub mod plugins;
pub mod server;
pub mod tcp;
pub mod wire;
pub mod zonal;
pub mod zone;

pub use answer::Answer;
pub use cache::Cache;
pub use forward::Forward;
pub use kubernetes::{Kubernetes, KubernetesConfig, PodMode};
pub use pipeline::{Flow, Handler, Pipeline, Request, Responder};
