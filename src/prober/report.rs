//! Findings out: a JSON list for machines, a table grouped by path (blocked first) for people,
//! and the exit status (0 nothing blocked, 1 something blocked, 2 bad input).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::analysis::{Addr, Groups, Party, PartyKind, Verdict};
use super::aws::{self, protocol_name};
use super::paths::{judge_all, Finding, PATHS};
use super::ProbeError;
use crate::cluster::objects::ObjectSet;

#[derive(Debug, Serialize)]
pub struct PartyJson {
    pub name: String,
    pub kind: PartyKind,
    /// The address of the flow: an IP, or a CIDR for a representative of pods not running.
    pub ip: String,
    pub compute: String,
    pub subnet: Option<String>,
    /// `None` when they are unknown (see `security_groups_source`).
    pub security_groups: Option<Vec<String>>,
    /// How the groups were found, or why they are unknown.
    pub security_groups_source: String,
}

#[derive(Debug, Serialize)]
pub struct FindingJson {
    pub path: &'static str,
    pub from: PartyJson,
    pub to: PartyJson,
    pub protocol: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn party_json(p: &Party, addr: &Addr) -> PartyJson {
    let (security_groups, security_groups_source) = match &p.groups {
        Groups::Known { ids, source } => (Some(ids.clone()), source.clone()),
        Groups::Unknown(why) => (None, why.clone()),
        Groups::NotEni => (None, "not an ENI: security groups do not apply".into()),
    };
    PartyJson {
        name: p.name.clone(),
        kind: p.kind,
        ip: addr.to_string(),
        compute: p.compute.clone(),
        subnet: p.subnet.clone(),
        security_groups,
        security_groups_source,
    }
}

pub fn finding_json(f: &Finding) -> FindingJson {
    FindingJson {
        path: f.path,
        from: party_json(&f.from, &f.from_addr),
        to: party_json(&f.to, &f.to_addr),
        protocol: protocol_name(f.protocol),
        port: f.port,
        service: f.service.clone(),
        verdict: f.judgement.verdict,
        reason: f.judgement.reason.clone(),
        fix: f.judgement.fix.clone(),
    }
}

pub fn render_json(findings: &[Finding]) -> String {
    let list: Vec<FindingJson> = findings.iter().map(finding_json).collect();
    // Serialising plain strings and numbers cannot fail; an empty list is the safe fallback.
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
}

fn party_cell(p: &Party, addr: &Addr) -> String {
    let groups = match &p.groups {
        Groups::Known { ids, .. } => ids.join(","),
        Groups::Unknown(_) => "groups unknown".into(),
        Groups::NotEni => "no SG".into(),
    };
    let subnet = p.subnet.as_deref().unwrap_or("subnet ?");
    if p.kind == PartyKind::VpcResolver {
        return p.name.clone();
    }
    format!("{} {addr} [{subnet}; {groups}]", p.name)
}

/// The table for people: paths with something blocked first, blocked rows first in each.
pub fn render_table(findings: &[Finding], notes: &[String]) -> String {
    let mut out = String::new();
    let mut paths: Vec<(&str, &str, Verdict)> = PATHS
        .iter()
        .filter_map(|(id, title)| {
            let worst = findings
                .iter()
                .filter(|f| f.path == *id)
                .map(|f| f.judgement.verdict)
                .min()?;
            Some((*id, *title, worst))
        })
        .collect();
    paths.sort_by_key(|(_, _, worst)| *worst);
    for (id, title, _) in paths {
        let rows: Vec<&Finding> = findings.iter().filter(|f| f.path == id).collect();
        let count = |v: Verdict| rows.iter().filter(|f| f.judgement.verdict == v).count();
        let _ = writeln!(
            out,
            "== {title} ({id}): {} blocked, {} unknown, {} allowed",
            count(Verdict::Blocked),
            count(Verdict::Unknown),
            count(Verdict::Allowed)
        );
        // Findings arrive sorted by verdict within a path (blocked, unknown, allowed).
        for f in rows {
            let _ = writeln!(
                out,
                "{:<8} {} -> {} {}/{}",
                f.judgement.verdict.to_string().to_uppercase(),
                party_cell(&f.from, &f.from_addr),
                party_cell(&f.to, &f.to_addr),
                protocol_name(f.protocol),
                f.port
            );
            let _ = writeln!(out, "         {}", f.judgement.reason);
            if let Some(fix) = &f.judgement.fix {
                for line in fix.lines() {
                    let _ = writeln!(out, "         fix: {line}");
                }
            }
        }
        out.push('\n');
    }
    if findings.is_empty() {
        out.push_str("no paths to judge: the cluster input has no micro-VM pods, DNS endpoints or services across the two worlds\n");
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// 0 when nothing is blocked, 1 when a path is blocked. `unknown` findings do not fail: they
/// are undecidable from the input (e.g. prefix lists) and are listed for a person to check.
pub fn exit_code(findings: &[Finding]) -> u8 {
    if findings
        .iter()
        .any(|f| f.judgement.verdict == Verdict::Blocked)
    {
        1
    } else {
        0
    }
}

/// `clusterdns probe` without `--active`: loads the AWS CLI files, judges every path for the
/// given cluster objects, and renders JSON or the table. Bad input is an `Err` (exit 2, see
/// [`ProbeError::exit_code`]).
pub fn run_static(
    aws_dir: &Path,
    objects: &ObjectSet,
    json: bool,
) -> Result<(String, u8), ProbeError> {
    let model = aws::load(aws_dir)?;
    Ok(run_model(&model, objects, json))
}

/// `run_static` with the AWS side already read (from a directory or the AWS APIs).
pub fn run_model(model: &aws::VpcModel, objects: &ObjectSet, json: bool) -> (String, u8) {
    let (findings, notes) = judge_all(model, objects);
    let text = if json {
        render_json(&findings)
    } else {
        render_table(&findings, &notes)
    };
    (text, exit_code(&findings))
}
