//! The cluster model: Kubernetes objects in, an immutable indexed snapshot out.

pub mod objects;
