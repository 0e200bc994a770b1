//! The cluster model: Kubernetes objects in, an immutable indexed snapshot out.
//!
//! ```text
//!  files (kubectl -o yaml)  ─┐
//!                            ├─> Store (stripped objects) ─> Snapshot (indexes) ─> ClusterView
//!  API server (list/watch) ──┘                                 (ArcSwap, read by every query)
//! ```

pub mod demand;
pub mod file_source;
pub mod http_client;
pub mod kube_source;
pub mod labels;
pub mod model;
pub mod objects;
pub mod one_shot;
pub mod rebuild;
pub mod snapshot;
pub mod status;
pub mod view;
pub mod wire;
pub mod zones;

pub use snapshot::{Snapshot, Store};
pub use view::ClusterView;
