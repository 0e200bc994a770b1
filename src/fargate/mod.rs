//! Fargate awareness: which profile sends a pod to a micro-VM, and (see the submodules) where
//! pods actually run and what size of micro-VM they get.

pub mod placement;
pub mod profile;
pub mod sizing;

pub use placement::{place, render_table, run_placement, Compute, Mismatch, Placement};
pub use profile::{load_profiles, select_profile, FargateProfile, ProfileError, Selector};
pub use sizing::{pod_demand, pod_size, Demand, Size, SizingError};
