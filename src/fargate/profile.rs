//! Fargate profiles as `aws eks describe-fargate-profile` prints them, and the selection rules
//! of ../shared/reference/fargate.md: a pod matches a selector when its namespace matches and it
//! carries all of the selector's labels (`*` and `?` wildcards in namespace, keys and values);
//! a profile matches when any selector does; among several matching profiles the pod's
//! `eks.amazonaws.com/fargate-profile` label picks one, else the alphanumerically first name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The label a pod carries to pick one of several matching profiles, and that Fargate sets on
/// the pods it runs.
pub const PROFILE_LABEL: &str = "eks.amazonaws.com/fargate-profile";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FargateProfile {
    pub fargate_profile_name: String,
    #[serde(default)]
    pub pod_execution_role_arn: Option<String>,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub cluster_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Selector {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not a Fargate profile: expected a top-level \"fargateProfile\" object (aws eks describe-fargate-profile) or a list of them")]
    NotAProfile { path: PathBuf },
}

impl Selector {
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        wildcard_match(&self.namespace, namespace)
            && self.labels.iter().all(|(key, value)| {
                labels
                    .iter()
                    .any(|(k, v)| wildcard_match(key, k) && wildcard_match(value, v))
            })
    }
}

impl FargateProfile {
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selectors.iter().any(|s| s.matches(namespace, labels))
    }
}

/// The profile that schedules a pod with this namespace and these labels onto a micro-VM.
pub fn select_profile<'a>(
    profiles: &'a [FargateProfile],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a FargateProfile> {
    let mut matching: Vec<&FargateProfile> = profiles
        .iter()
        .filter(|p| p.matches(namespace, labels))
        .collect();
    if let Some(wanted) = labels.get(PROFILE_LABEL) {
        if let Some(p) = matching.iter().find(|p| &p.fargate_profile_name == wanted) {
            return Some(p);
        }
    }
    matching.sort_by(|a, b| a.fargate_profile_name.cmp(&b.fargate_profile_name));
    matching.first().copied()
}

/// Glob match with `*` (zero or more characters) and `?` (exactly one), as Fargate selectors
/// use them. Iterative with backtracking to the last star: linear in practice, no recursion.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Profiles from JSON text: a `describe-fargate-profile` object, an array of them, or the bare
/// profile object. Other AWS CLI outputs (recognised by their top-level key) yield nothing, so
/// a directory of mixed AWS CLI files can be passed as is.
pub fn parse_profiles(text: &str, path: &Path) -> Result<Vec<FargateProfile>, ProfileError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| ProfileError::Json {
            path: path.to_owned(),
            source,
        })?;
    let json_err = |source| ProfileError::Json {
        path: path.to_owned(),
        source,
    };
    let one = |v: &serde_json::Value| -> Result<Option<FargateProfile>, ProfileError> {
        if let Some(inner) = v.get("fargateProfile") {
            return serde_json::from_value(inner.clone())
                .map(Some)
                .map_err(json_err);
        }
        if v.get("fargateProfileName").is_some() {
            return serde_json::from_value(v.clone())
                .map(Some)
                .map_err(json_err);
        }
        Ok(None)
    };
    match &value {
        serde_json::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match one(item)? {
                    Some(p) => out.push(p),
                    None => {
                        return Err(ProfileError::NotAProfile {
                            path: path.to_owned(),
                        })
                    }
                }
            }
            Ok(out)
        }
        serde_json::Value::Object(_) => Ok(one(&value)?.into_iter().collect()),
        _ => Err(ProfileError::NotAProfile {
            path: path.to_owned(),
        }),
    }
}

/// Profiles from a file, or from every `*.json` file in a directory (sorted by name).
pub fn load_profiles(path: &Path) -> Result<Vec<FargateProfile>, ProfileError> {
    let io = |source| ProfileError::Io {
        path: path.to_owned(),
        source,
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut profiles = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ProfileError::Io {
            path: file.clone(),
            source,
        })?;
        profiles.extend(parse_profiles(&text, &file)?);
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn profile(name: &str, selectors: Vec<Selector>) -> FargateProfile {
        FargateProfile {
            fargate_profile_name: name.into(),
            pod_execution_role_arn: None,
            subnets: vec![],
            selectors,
            status: None,
            cluster_name: None,
        }
    }

    fn sel(ns: &str, l: &[(&str, &str)]) -> Selector {
        Selector {
            namespace: ns.into(),
            labels: labels(l),
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("jobs-*", "jobs-"));
        assert!(wildcard_match("jobs-*", "jobs-nightly"));
        assert!(!wildcard_match("jobs-*", "job"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*a*b", "xxaxxb"));
        assert!(!wildcard_match("*a*b", "xxaxxbc"));
        assert!(wildcard_match("default", "default"));
        assert!(!wildcard_match("default", "Default"));
    }

    #[test]
    fn all_labels_of_a_selector_any_selector_of_a_profile() {
        let p = profile(
            "fp",
            vec![
                sel("web", &[]),
                sel("jobs-*", &[("compute", "fargate"), ("t?er", "*")]),
            ],
        );
        assert!(p.matches("web", &labels(&[])));
        assert!(!p.matches("jobs-a", &labels(&[("compute", "fargate")])));
        assert!(p.matches("jobs-a", &labels(&[("compute", "fargate"), ("tier", "x")])));
        assert!(!p.matches("other", &labels(&[("compute", "fargate"), ("tier", "x")])));
    }

    #[test]
    fn precedence_and_override_label() {
        let profiles = vec![
            profile("zeta", vec![sel("*", &[])]),
            profile("alpha", vec![sel("d*", &[])]),
        ];
        let pick = |l: &[(&str, &str)]| {
            select_profile(&profiles, "default", &labels(l)).map(|p| p.fargate_profile_name.clone())
        };
        assert_eq!(pick(&[]).as_deref(), Some("alpha"));
        assert_eq!(pick(&[(PROFILE_LABEL, "zeta")]).as_deref(), Some("zeta"));
        // An override naming a profile that does not match falls back to the first name.
        assert_eq!(pick(&[(PROFILE_LABEL, "nope")]).as_deref(), Some("alpha"));
        assert!(select_profile(&profiles[1..], "kube-system", &labels(&[])).is_none());
    }

    #[test]
    fn parses_the_aws_cli_shape() {
        let text = r#"{"fargateProfile":{"fargateProfileName":"fp-web","subnets":["subnet-1"],
            "selectors":[{"namespace":"web"},{"namespace":"jobs-*","labels":{"compute":"fargate"}}],
            "status":"ACTIVE","tags":{},"unknownField":1}}"#;
        let p = parse_profiles(text, Path::new("x.json")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].selectors[1].labels["compute"], "fargate");
        assert!(parse_profiles(r#"{"Subnets":[]}"#, Path::new("s.json"))
            .unwrap()
            .is_empty());
        let err = parse_profiles("{", Path::new("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.json: invalid JSON"), "{err}");
    }
}
