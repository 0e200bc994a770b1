//! The fuzz targets' bodies, shared with the stable corpus replay (tests/fuzz_corpus.rs
//! includes `harness.rs` by path).
pub mod harness;
