//! The micro-VM size Fargate gives a pod (../shared/reference/fargate.md, "Sizing"):
//!
//! ```text
//! per resource:  max(sum of long-running containers, largest init container)
//! memory:        + 256 MiB (kubelet, kube-proxy, containerd)
//! then:          smallest supported (vCPU, memory) configuration holding both
//! ```
//!
//! Quantities are parsed exactly (no floats) as Kubernetes does, and rounded up to whole
//! millicores and bytes as `MilliValue()`/`Value()` round them.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Serialize, Serializer};

/// The pod annotation in which Fargate reports the size it chose, e.g. `0.25vCPU 0.5GB`.
pub const CAPACITY_ANNOTATION: &str = "CapacityProvisioned";

const MIB: u64 = 1024 * 1024;

/// What Fargate adds to the pod's memory for kubelet, kube-proxy and containerd.
pub const MEMORY_OVERHEAD_BYTES: u64 = 256 * MIB;

/// A micro-VM size: vCPU in thousandths and memory in MiB, so that both are exact integers
/// (0.25 vCPU = 250, 0.5 GB = 512 MiB; GB in Fargate's sizes are binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size {
    pub millicpu: u32,
    pub memory_mib: u32,
}

/// What a pod asks for, before the overhead is added and the size is rounded up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("{0:?}: not a number")]
    NotANumber(String),
    #[error("{0:?}: negative")]
    Negative(String),
    #[error("{0:?}: unknown suffix {1:?}")]
    BadSuffix(String, String),
    #[error("{0:?}: out of range")]
    OutOfRange(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    #[error("container {container}: {resource}: {source}")]
    BadQuantity {
        container: String,
        resource: &'static str,
        source: QuantityError,
    },
    #[error(
        "needs {} vCPU and {} MiB with overhead: more than the largest size (16vCPU 120GB)",
        millis_str(.0.cpu_millis), .0.memory_bytes.div_ceil(MIB)
    )]
    TooLarge(Demand),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not a capacity like \"0.25vCPU 0.5GB\"")]
pub struct CapacityParseError(pub String);

/// The supported configurations per vCPU: (millicpu, min GB, max GB, step GB), from AWS's
/// table; the 0.25 vCPU row is irregular (0.5, 1, 2 GB) and listed apart.
const ROWS: [(u32, u32, u32, u32); 6] = [
    (500, 1, 4, 1),
    (1000, 2, 8, 1),
    (2000, 4, 16, 1),
    (4000, 8, 30, 1),
    (8000, 16, 60, 4),
    (16000, 32, 120, 8),
];

/// Every supported size, smallest first (by vCPU, then memory).
pub fn supported_sizes() -> Vec<Size> {
    let mut sizes: Vec<Size> = [512, 1024, 2048]
        .into_iter()
        .map(|memory_mib| Size {
            millicpu: 250,
            memory_mib,
        })
        .collect();
    for (millicpu, min, max, step) in ROWS {
        sizes.extend((min..=max).step_by(step as usize).map(|gb| Size {
            millicpu,
            memory_mib: gb * 1024,
        }));
    }
    sizes
}

impl Size {
    /// The smallest supported size that holds `demand` plus the memory overhead.
    pub fn fit(demand: Demand) -> Result<Size, SizingError> {
        let memory = demand.memory_bytes.saturating_add(MEMORY_OVERHEAD_BYTES);
        supported_sizes()
            .into_iter()
            .find(|s| {
                u64::from(s.millicpu) >= demand.cpu_millis
                    && u64::from(s.memory_mib) * MIB >= memory
            })
            .ok_or(SizingError::TooLarge(Demand {
                memory_bytes: memory,
                ..demand
            }))
    }
}

/// `0.25vCPU 0.5GB`, as the `CapacityProvisioned` annotation writes it.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpu = millis_str(self.millicpu.into());
        let thousandths_gb = u64::from(self.memory_mib) * 1000;
        if thousandths_gb % 1024 == 0 {
            write!(f, "{cpu}vCPU {}GB", millis_str(thousandths_gb / 1024))
        } else {
            // Not a size Fargate uses; MiB rather than a rounded GB figure.
            write!(f, "{cpu}vCPU {}MiB", self.memory_mib)
        }
    }
}

impl FromStr for Size {
    type Err = CapacityParseError;

    /// Parses the annotation: `<n>vCPU <n>GB`, decimal numbers, GB binary.
    fn from_str(s: &str) -> Result<Size, CapacityParseError> {
        let err = || CapacityParseError(s.to_owned());
        let mut words = s.split_whitespace();
        let (Some(cpu), Some(mem), None) = (words.next(), words.next(), words.next()) else {
            return Err(err());
        };
        let cpu = strip_suffix_ignore_case(cpu, "vcpu").ok_or_else(err)?;
        let mem = strip_suffix_ignore_case(mem, "gb").ok_or_else(err)?;
        let plain = |n: &str| {
            // Only plain decimals here: a suffix like `m` or `Gi` is not the annotation's form.
            n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && n.bytes().any(|b| b.is_ascii_digit())
        };
        if !plain(cpu) || !plain(mem) {
            return Err(err());
        }
        let exact = |n: &str, scale: Scale| -> Option<u32> {
            let q = ParsedQuantity::parse(n).ok()?;
            let v = q.scaled(scale, Rounding::Exact)?;
            u32::try_from(v).ok()
        };
        Ok(Size {
            millicpu: exact(cpu, Scale::Milli).ok_or_else(err)?,
            memory_mib: exact(mem, Scale::Kibi).ok_or_else(err)?,
        })
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let (head, tail) = (s.get(..cut)?, s.get(cut..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

/// Thousandths as a short decimal: 250 -> `0.25`, 2000 -> `2`.
fn millis_str(millis: u64) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// CPU in millicores, rounded up as Kubernetes' `MilliValue()` does.
pub fn cpu_millis(q: &Quantity) -> Result<u64, QuantityError> {
    to_u64(q, Scale::Milli)
}

/// Memory (or any plain count) in units, rounded up as Kubernetes' `Value()` does.
pub fn bytes(q: &Quantity) -> Result<u64, QuantityError> {
    to_u64(q, Scale::Unit)
}

fn to_u64(q: &Quantity, scale: Scale) -> Result<u64, QuantityError> {
    let text = q.0.trim();
    let out_of_range = || QuantityError::OutOfRange(text.to_owned());
    let v = ParsedQuantity::parse(text)?
        .scaled(scale, Rounding::Up)
        .ok_or_else(out_of_range)?;
    u64::try_from(v).map_err(|_| out_of_range())
}

#[derive(Clone, Copy)]
enum Scale {
    Unit,
    /// x 1000: cores to millicores, vCPU to thousandths.
    Milli,
    /// x 1024: GB to MiB in the annotation.
    Kibi,
}

#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    Up,
    Exact,
}

/// `mantissa * 10^exp10 * 2^exp2`, the value of a Kubernetes quantity.
#[derive(Debug)]
struct ParsedQuantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl ParsedQuantity {
    /// The grammar of Kubernetes' `resource.ParseQuantity`: a signed decimal number (`1`,
    /// `1.5`, `1.`, `.5`), then a binary suffix (`Ki`..`Ei`), a decimal suffix (`n` `u` `m`
    /// `k` `M` `G` `T` `P` `E`) or an exponent (`e3`, `E-2`).
    fn parse(text: &str) -> Result<ParsedQuantity, QuantityError> {
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let not_a_number = || QuantityError::NotANumber(text.to_owned());
        let (negative, rest) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b == b'.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(not_a_number());
        }
        let mut mantissa: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(b - b'0')))
                .ok_or_else(|| QuantityError::OutOfRange(text.to_owned()))?;
        }
        if negative && mantissa != 0 {
            return Err(QuantityError::Negative(text.to_owned()));
        }
        let frac_digits = i32::try_from(frac.len()).map_err(|_| not_a_number())?;
        let (exp10, exp2) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            s if s.starts_with(['e', 'E']) => {
                let exp = &s[1..];
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QuantityError::BadSuffix(text.to_owned(), s.to_owned()));
                }
                // Bounded so the arithmetic below cannot overflow; anything this far out is
                // either zero-ish (rounded up) or far beyond any size.
                let exp: i32 = exp
                    .parse()
                    .ok()
                    .filter(|e: &i32| e.abs() <= 1000)
                    .ok_or_else(|| QuantityError::OutOfRange(text.to_owned()))?;
                (exp, 0)
            }
            s => return Err(QuantityError::BadSuffix(text.to_owned(), s.to_owned())),
        };
        Ok(ParsedQuantity {
            mantissa,
            exp10: exp10 - frac_digits,
            exp2,
        })
    }

    /// The value times the scale as an integer, rounded up or required exact; None when out of
    /// range (or inexact).
    fn scaled(&self, scale: Scale, rounding: Rounding) -> Option<u128> {
        let (exp10, extra2) = match scale {
            Scale::Unit => (self.exp10, 0),
            Scale::Milli => (self.exp10 + 3, 0),
            Scale::Kibi => (self.exp10, 10),
        };
        let n = self.mantissa.checked_mul(1u128 << (self.exp2 + extra2))?;
        if exp10 >= 0 {
            return n.checked_mul(10u128.checked_pow(exp10.unsigned_abs())?);
        }
        let Some(div) = 10u128.checked_pow(exp10.unsigned_abs()) else {
            // Divisor beyond u128: any non-zero value is a sliver above zero.
            return match rounding {
                Rounding::Up => Some(u128::from(n != 0)),
                Rounding::Exact => (n == 0).then_some(0),
            };
        };
        match rounding {
            Rounding::Up => Some(n.div_ceil(div)),
            Rounding::Exact => (n % div == 0).then_some(n / div),
        }
    }
}

/// A container's request for a resource; where only a limit is set Kubernetes copies it into
/// the request, so the limit counts.
fn request(
    container: &Container,
    resource: &'static str,
    convert: fn(&Quantity) -> Result<u64, QuantityError>,
) -> Result<u64, SizingError> {
    let resources = container.resources.as_ref();
    let quantity = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get(resource))
        .or_else(|| {
            resources
                .and_then(|r| r.limits.as_ref())
                .and_then(|m| m.get(resource))
        });
    match quantity {
        None => Ok(0),
        Some(q) => convert(q).map_err(|source| SizingError::BadQuantity {
            container: container.name.clone(),
            resource,
            source,
        }),
    }
}

/// An init container with `restartPolicy: Always` is a sidecar: it keeps running beside the
/// regular containers, so it belongs in the long-running sum, not among the init containers.
/// (Kubernetes' own effective request also adds the sidecars started before each later init
/// container to that init container; fargate.md's rule does not, and this follows fargate.md.)
fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

fn resource_demand(
    spec: &PodSpec,
    resource: &'static str,
    convert: fn(&Quantity) -> Result<u64, QuantityError>,
) -> Result<u64, SizingError> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let mut long_running: u64 = 0;
    for c in spec
        .containers
        .iter()
        .chain(init.iter().filter(|c| is_sidecar(c)))
    {
        // Saturating: a sum this large is reported as too large, not wrapped.
        long_running = long_running.saturating_add(request(c, resource, convert)?);
    }
    let mut largest_init = 0;
    for c in init.iter().filter(|c| !is_sidecar(c)) {
        largest_init = largest_init.max(request(c, resource, convert)?);
    }
    Ok(long_running.max(largest_init))
}

/// What the pod asks for: per resource, the larger of the long-running containers' sum and
/// the largest init container.
pub fn pod_demand(spec: &PodSpec) -> Result<Demand, SizingError> {
    Ok(Demand {
        cpu_millis: resource_demand(spec, "cpu", cpu_millis)?,
        memory_bytes: resource_demand(spec, "memory", bytes)?,
    })
}

/// The micro-VM size Fargate gives this pod. A pod without a spec asks for nothing.
pub fn pod_size(pod: &Pod) -> Result<Size, SizingError> {
    let demand = match &pod.spec {
        Some(spec) => pod_demand(spec)?,
        None => Demand::default(),
    };
    Size::fit(demand)
}

/// The pod's `CapacityProvisioned` annotation, as written.
pub fn capacity_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CAPACITY_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn quantities() {
        let cpu = [
            ("100m", 100),
            ("0.5", 500),
            ("1", 1000),
            (".25", 250),
            ("2.", 2000),
            ("+1", 1000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("0.1m", 1), // rounded up, as Kubernetes does
            ("1k", 1_000_000),
            ("250000u", 250),
            ("1n", 1),
            ("0", 0),
            ("-0", 0),
            (" 2 ", 2000),
            ("1e-900", 1),
        ];
        for (text, want) in cpu {
            assert_eq!(cpu_millis(&q(text)), Ok(want), "{text}");
        }
        let mem = [
            ("128Mi", 128 * MIB),
            ("1Gi", 1024 * MIB),
            ("1G", 1_000_000_000),
            ("500M", 500_000_000),
            ("1.5Gi", 1536 * MIB),
            ("1Ki", 1024),
            ("1k", 1000),
            ("1e3", 1000),
            ("129e6", 129_000_000),
            ("0.5", 1),
            ("4Ei", 4 << 60),
        ];
        for (text, want) in mem {
            assert_eq!(bytes(&q(text)), Ok(want), "{text}");
        }
        for bad in [
            "", "abc", "1.2.3", ".", "1Mb", "1 Gi", "1e", "1e+", "1ee3", "--1",
        ] {
            assert!(bytes(&q(bad)).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(bytes(&q("-1")), Err(QuantityError::Negative(_))));
        assert!(matches!(
            bytes(&q("16Ei")),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            bytes(&q("1e1001")),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            bytes(&q("99999999999999999999999999999999999999999")),
            Err(QuantityError::OutOfRange(_))
        ));
    }

    #[test]
    fn the_size_table() {
        let sizes = supported_sizes();
        assert_eq!(
            sizes.first().map(ToString::to_string).as_deref(),
            Some("0.25vCPU 0.5GB")
        );
        assert_eq!(
            sizes.last().map(ToString::to_string).as_deref(),
            Some("16vCPU 120GB")
        );
        // 3 + 4 + 7 + 13 + 23 + 12 + 12 configurations.
        assert_eq!(sizes.len(), 74);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn annotation_round_trip() {
        for s in ["0.25vCPU 0.5GB", "0.5vCPU 1GB", "2vCPU 9GB", "16vCPU 120GB"] {
            let size: Size = s.parse().unwrap();
            assert_eq!(size.to_string(), s);
        }
        assert_eq!(
            "0.25vcpu  0.5gb".parse::<Size>(),
            Ok(Size {
                millicpu: 250,
                memory_mib: 512
            })
        );
        for bad in [
            "",
            "0.25vCPU",
            "0.25 0.5",
            "0.25vCPU 0.5GB x",
            "1mvCPU 1GB",
            "0.0001vCPU 1GB",
            "vCPU GB",
            "0.25vCPU 1GiGB",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn odd_sizes_display_without_rounding() {
        let size = |millicpu, memory_mib| Size {
            millicpu,
            memory_mib,
        };
        assert_eq!(size(125, 128).to_string(), "0.125vCPU 0.125GB");
        assert_eq!(size(1000, 100).to_string(), "1vCPU 100MiB");
    }

    #[test]
    fn too_large_is_an_error() {
        let err = Size::fit(Demand {
            cpu_millis: 16_001,
            memory_bytes: 0,
        })
        .unwrap_err();
        assert!(err.to_string().contains("16.001 vCPU"), "{err}");
    }
}
