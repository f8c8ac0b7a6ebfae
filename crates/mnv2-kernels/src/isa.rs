//! Instruction-set detection, once per process.
//!
//! `MNV2_ISA=scalar|avx2|avx512` may only lower the tier that the CPU supports; CI uses it to
//! exercise the portable fallback and AVX2 paths on AVX-512 hosts. Kernels are entered through
//! safe functions that check [`Isa::supported`] before calling `#[target_feature]` code.

use std::sync::OnceLock;

/// A tier of vector instructions, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics (every platform).
    Scalar,
    /// x86-64 AVX2 + FMA (8 floats per vector).
    Avx2,
    /// x86-64 AVX-512 F + BW + VL + DQ (16 floats per vector, mask registers).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "generic" => Some(Isa::Scalar),
            "avx2" | "fma" => Some(Isa::Avx2),
            "avx512" | "avx512f" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the tier (ignores `MNV2_ISA`).
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && Isa::Avx2.supported()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Every tier this process may use, lowest first (capped by `MNV2_ISA`); tests run all of them.
pub fn available() -> Vec<Isa> {
    let best = best();
    [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| *i <= best && i.supported()).collect()
}

/// The best tier this process may use: detected once, capped by `MNV2_ISA`.
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        let detected = [Isa::Avx512, Isa::Avx2, Isa::Scalar].into_iter().find(|i| i.supported()).unwrap_or(Isa::Scalar);
        match std::env::var("MNV2_ISA").ok().as_deref().map(Isa::parse) {
            Some(Some(cap)) => cap.min(detected),
            Some(None) => {
                eprintln!("warning: MNV2_ISA is not one of scalar, avx2, avx512; using {}", detected.name());
                detected
            }
            None => detected,
        }
    })
}
