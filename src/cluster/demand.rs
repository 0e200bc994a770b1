//! What a pod asks for (CPU and memory over its containers), from the quantities in its spec,
//! and the annotation in which Fargate reports the size it chose. Read when a pod is stripped
//! (`model::Pod` keeps only these) and by Fargate sizing, which builds on them: it lives here,
//! with the objects, so `fargate` depends on `cluster` and not the other way.
//!
//! Quantities are parsed exactly (no floats) as Kubernetes does, and rounded up to whole
//! millicores and bytes as `MilliValue()`/`Value()` round them.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The pod annotation in which Fargate reports the size it chose, e.g. `0.25vCPU 0.5GB`.
pub const CAPACITY_ANNOTATION: &str = "CapacityProvisioned";

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

/// A container resource that is not a valid quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container {container}: {resource}: {source}")]
pub struct DemandError {
    pub container: String,
    pub resource: &'static str,
    pub source: QuantityError,
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
pub(crate) enum Scale {
    Unit,
    /// x 1000: cores to millicores, vCPU to thousandths.
    Milli,
    /// x 1024: GB to MiB in the annotation.
    Kibi,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Rounding {
    Up,
    Exact,
}

/// `mantissa * 10^exp10 * 2^exp2`, the value of a Kubernetes quantity.
#[derive(Debug)]
pub(crate) struct ParsedQuantity {
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl ParsedQuantity {
    /// The grammar of Kubernetes' `resource.ParseQuantity`: a signed decimal number (`1`,
    /// `1.5`, `1.`, `.5`), then a binary suffix (`Ki`..`Ei`), a decimal suffix (`n` `u` `m`
    /// `k` `M` `G` `T` `P` `E`) or an exponent (`e3`, `E-2`).
    pub(crate) fn parse(text: &str) -> Result<ParsedQuantity, QuantityError> {
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
    pub(crate) fn scaled(&self, scale: Scale, rounding: Rounding) -> Option<u128> {
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
) -> Result<u64, DemandError> {
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
        Some(q) => convert(q).map_err(|source| DemandError {
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
) -> Result<u64, DemandError> {
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
pub fn pod_demand(spec: &PodSpec) -> Result<Demand, DemandError> {
    Ok(Demand {
        cpu_millis: resource_demand(spec, "cpu", cpu_millis)?,
        memory_bytes: resource_demand(spec, "memory", bytes)?,
    })
}
