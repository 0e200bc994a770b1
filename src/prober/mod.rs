//! The prober: will traffic between micro-VM pods, node-group pods, the cluster DNS and the
//! control plane get through the VPC's security groups and network ACLs?
//!
//! ```text
//!  AWS CLI JSON ──aws::load──> VpcModel ─┐
//!                                         ├─ paths::judge_all ─> [Finding] ─ report ─> JSON | table
//!  kubectl YAML ──cluster::load_path──> ObjectSet ─┘      │
//!                                       analysis::judge (SG egress+ingress, NACL both ways)
//! ```
//!
//! The static part reads what the user already has (`aws ... --output json` files and
//! `kubectl get -o yaml` dumps) and never guesses: what the input cannot decide (a prefix list,
//! a node whose groups are unknown) is reported as `unknown` with the reason.

pub mod active;
pub mod analysis;
pub mod aws;
pub mod aws_api;
pub mod command;
pub mod paths;
pub mod report;

use std::path::PathBuf;

pub use analysis::{
    judge, judge_planned, Addr, FixPlanner, Flow, Groups, Judgement, Party, PartyKind, Verdict,
};
pub use aws::{load, VpcModel};
pub use paths::{judge_all, Finding};
pub use report::{render_json, render_table, run_static};

/// Exit status for bad input (unreadable, malformed or unrecognised files).
pub const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: invalid JSON/YAML: {message}")]
    Syntax { file: PathBuf, message: String },
    /// A field that is missing or of the wrong type, with its JSON path (`$.SecurityGroups[2].GroupId`).
    #[error("{file}: {path}: {problem}")]
    Field {
        file: PathBuf,
        path: String,
        problem: String,
    },
    #[error("{file}: unrecognised top-level key(s) {}: expected AWS CLI output with one of {} (or a vpcresources.k8s.aws SecurityGroupPolicy)", .found.join(", "), aws::KNOWN_KEYS.join(", "))]
    UnknownKind { file: PathBuf, found: Vec<String> },
    #[error("{path}: no .json/.yaml/.yml files (AWS CLI output) in this directory")]
    NoInput { path: PathBuf },
    /// Reading from the AWS APIs failed (unreachable, no region, no such cluster, ...).
    #[error("AWS API: {0}")]
    Api(String),
}

impl ProbeError {
    /// The process exit status this error stands for.
    pub fn exit_code(&self) -> u8 {
        EXIT_BAD_INPUT
    }
}
