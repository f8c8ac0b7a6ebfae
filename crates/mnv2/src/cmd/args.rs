//! Option values shared by several subcommands: clap `ValueEnum`s (clap validates them and
//! lists them in `--help`), each mapping onto the library's type, and the value parsers that
//! an enum cannot express (`--method percentile:99.9`, `--threads`).

use clap::ValueEnum;
use mobilenetv2::data::augment::Augment;
use mobilenetv2::engine::{Engine, Isa, Mode, Precision};
use mobilenetv2::quant::Method;
use mobilenetv2::spec::{BottleneckActivation, Padding, Shortcut};
use mobilenetv2::weights::safetensors_io::FloatStore;

/// The name clap accepts for a value (its first spelling), for messages and JSON.
pub fn name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

/// `--mode`: how the engine executes the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Fused blocks with SIMD kernels
    Fast,
    /// Fast, with the high-resolution blocks chained row by row (least activation memory)
    Streaming,
    /// Layer by layer with the scalar reference kernels (the oracle; slow)
    Reference,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Fast => Mode::Fast,
            ModeArg::Streaming => Mode::Streaming,
            ModeArg::Reference => Mode::Reference,
        }
    }
}

/// `--precision`: the number format of the fast engine's convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 everywhere
    Fp32,
    /// bf16 products with f32 sums in the 1x1 convolutions (AVX512-BF16; other CPUs run a slow
    /// scalar twin, with a warning)
    Bf16,
    /// The int8 kernels (needs an int8 weights file from `mnv2 quantize`)
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

/// Warns on stderr when a bf16 engine runs its 1x1 convolutions on the scalar twin (the CPU
/// lacks AVX512-BF16, or `MNV2_ISA` lowered the choice): the same numbers, far slower. And when
/// `MNV2_ISA=amx` asked for the AMX kernels but a bf16 or int8 engine got none (the CPU lacks
/// AMX, or Linux refused the tile state): the AVX-512 kernels run instead.
pub fn warn_slow_bf16(engine: &Engine) {
    let kernels = engine.kernels().1;
    let slow = kernels.iter().any(|k| k.starts_with("gemm_bf16") && k.ends_with("_scalar"));
    if engine.precision() == Some(Precision::Bf16) && slow {
        eprintln!(
            "warning: bf16 runs on the slow scalar twin kernels (this CPU lacks AVX512-BF16, or MNV2_ISA lowered it): \
             fp32 (the default) or int8 are many times faster here"
        );
    }
    let tiles = matches!(engine.precision(), Some(Precision::Bf16 | Precision::Int8));
    if mobilenetv2::engine::amx_requested() && tiles && !kernels.iter().any(|k| k.ends_with("_amx")) {
        eprintln!(
            "warning: MNV2_ISA=amx, but this CPU has no AMX (or Linux refused the tile state): the AVX-512 kernels run"
        );
    }
}

/// `--isa`: the kernels' instruction set (the old spellings stay accepted as aliases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IsaArg {
    /// Portable Rust, no intrinsics
    #[value(alias = "generic")]
    Scalar,
    /// x86-64 AVX2 + FMA
    #[value(alias = "fma")]
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL, DQ)
    #[value(alias = "avx512f")]
    Avx512,
}

impl From<IsaArg> for Isa {
    fn from(i: IsaArg) -> Isa {
        match i {
            IsaArg::Scalar => Isa::Scalar,
            IsaArg::Avx2 => Isa::Avx2,
            IsaArg::Avx512 => Isa::Avx512,
        }
    }
}

/// `--augment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AugmentArg {
    /// Random resized crop + flip when training; resize + center crop when evaluating (ImageNet)
    Standard,
    /// Resize, pad, random crop + flip when training; resize to the input when evaluating
    CropFlip,
    /// Resize to the input size
    None,
}

impl From<AugmentArg> for Augment {
    fn from(a: AugmentArg) -> Augment {
        match a {
            AugmentArg::Standard => Augment::Standard,
            AugmentArg::CropFlip => Augment::CropFlip,
            AugmentArg::None => Augment::None,
        }
    }
}

/// `--bottleneck`: the activation after each block's projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BottleneckArg {
    /// None: the paper's linear bottleneck
    Linear,
    /// ReLU6 (the paper's ablation)
    Relu6,
}

impl From<BottleneckArg> for BottleneckActivation {
    fn from(b: BottleneckArg) -> BottleneckActivation {
        match b {
            BottleneckArg::Linear => BottleneckActivation::Linear,
            BottleneckArg::Relu6 => BottleneckActivation::Relu6,
        }
    }
}

/// `--shortcut`: residual connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShortcutArg {
    /// Between the narrow ends of a block (the paper)
    Bottleneck,
    /// No residual connections (ablation)
    None,
}

impl From<ShortcutArg> for Shortcut {
    fn from(s: ShortcutArg) -> Shortcut {
        match s {
            ShortcutArg::Bottleneck => Shortcut::Bottleneck,
            ShortcutArg::None => Shortcut::None,
        }
    }
}

/// `--padding`: the padding convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PaddingArg {
    /// PyTorch: symmetric
    Torch,
    /// TensorFlow 'SAME': the extra zero after
    Tf,
}

impl From<PaddingArg> for Padding {
    fn from(p: PaddingArg) -> Padding {
        match p {
            PaddingArg::Torch => Padding::Torch,
            PaddingArg::Tf => Padding::Tf,
        }
    }
}

/// `--dtype`: how float tensors are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats
    F32,
    /// Half precision: half the size, widened back at load
    F16,
}

impl From<DtypeArg> for FloatStore {
    fn from(d: DtypeArg) -> FloatStore {
        match d {
            DtypeArg::F32 => FloatStore::F32,
            DtypeArg::F16 => FloatStore::F16,
        }
    }
}

/// `--method`: minmax, mse, or percentile[:P] with P in 50..100 (the library's parser, so the
/// spellings are those the library documents).
pub fn method(s: &str) -> Result<Method, String> {
    s.parse::<Method>().map_err(|e| e.to_string())
}

/// The most threads the engine accepts.
const MAX_THREADS: usize = 256;

/// The default of `--threads`: every core this process may use (at most the engine's 256).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

/// `--threads`: a positive count.
pub fn threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of threads, at least 1 (this machine has {})", cores())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the hand-written parsers accepted is still accepted, with the same meaning.
    #[test]
    fn old_spellings_parse_to_the_same_values() {
        for s in ["fast", "reference", "streaming"] {
            assert_eq!(Mode::from(ModeArg::from_str(s, false).unwrap()), s.parse::<Mode>().unwrap());
        }
        for s in ["scalar", "generic", "avx2", "fma", "avx512", "avx512f", "AVX2", "Scalar"] {
            assert_eq!(Some(Isa::from(IsaArg::from_str(s, true).unwrap())), Isa::parse(s), "{s}");
        }
        for s in ["fp32", "bf16", "int8"] {
            assert_eq!(Precision::from(PrecisionArg::from_str(s, false).unwrap()), s.parse::<Precision>().unwrap());
        }
        for s in ["standard", "crop-flip", "none"] {
            assert_eq!(Augment::from(AugmentArg::from_str(s, false).unwrap()), s.parse::<Augment>().unwrap());
        }
        assert_eq!(method("percentile:99.9"), Ok(Method::Percentile { percent: 99.9 }));
        assert_eq!(method("percentile"), Ok(Method::Percentile { percent: 99.9 }));
        assert_eq!(method("minmax"), Ok(Method::MinMax));
        assert!(method("percentile:20").unwrap_err().contains("percentile[:P]"));
        assert_eq!(threads("3"), Ok(3));
        assert!(threads("0").is_err() && threads("x").is_err());
        assert!(cores() >= 1);
    }
}
