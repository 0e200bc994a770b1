//! Fargate awareness: which profile sends a pod to a micro-VM, and (see the submodules) where
//! pods actually run and what size of micro-VM they get.

pub mod profile;

pub use profile::{load_profiles, select_profile, FargateProfile, ProfileError, Selector};
