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

use k8s_openapi::api::core::v1::Pod;
use serde::{Serialize, Serializer};

pub use crate::cluster::demand::{
    bytes, cpu_millis, pod_demand, Demand, DemandError, QuantityError, CAPACITY_ANNOTATION,
};
use crate::cluster::demand::{ParsedQuantity, Rounding, Scale};

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    #[error(transparent)]
    Demand(#[from] DemandError),
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
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

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
