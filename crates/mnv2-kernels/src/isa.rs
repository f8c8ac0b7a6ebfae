//! Instruction sets: detected once per process, chosen once per engine or training net, and
//! held as a proof value.
//!
//! [`Isa`] names a tier for display and configuration (`--isa`, `MNV2_ISA`). A [`Tier`] is
//! the resolved choice: it holds a zero-sized token ([`Avx2`], [`Avx512`]) that only the
//! detection code of this module can construct, so a function taking a `Tier` knows the CPU
//! runs it without checking again. The int8 kernels also need [`Avx512Vnni`], which
//! [`Tier::vnni`] grants on an AVX-512 tier whose CPU has it; the bf16 kernels need
//! [`Avx512Bf16`] ([`Tier::bf16`]); the AMX kernels [`AmxBf16`] ([`Tier::amx`]) and
//! [`AmxInt8`] ([`Tier::amx_int8`]).
//!
//! `MNV2_ISA=scalar|avx2|avx512|avx512bf16|amx` may only lower the tier that the CPU supports
//! ([`best`]; blank is unset); the bf16 extension is used only when `MNV2_ISA` is unset or
//! names it (or `amx`) ([`bf16_enabled`]), so `MNV2_ISA=avx512` lowers a bf16 engine to its
//! scalar twin. The AMX kernels are opt-in for now: only `MNV2_ISA=amx` turns them on
//! ([`amx_enabled`], [`amx_int8_enabled`]), as no machine of this project has run them yet.
//! Every kernel family lists its kernels in a registry (e.g. [`crate::gemm::KERNELS`]) whose
//! entries say what they need ([`Needs`]); selection takes the first entry that
//! [`Needs::selectable`] allows (one policy for every family). The tests run every entry the
//! host can run and print `SKIPPED <kernel> (host lacks <isa>)` for the others
//! (`MNV2_REQUIRE_ISA=<isa>` makes such a skip fail).

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
    /// The tier's name as `--isa` and `MNV2_ISA` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The tier named `s` (case-insensitive; `generic`, `fma` and `avx512f` are aliases;
    /// `avx512bf16` is the AVX-512 tier with the bf16 extension allowed, see [`bf16_enabled`],
    /// and `amx` that tier with the AMX tiles allowed too, see [`amx_enabled`]).
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "generic" => Some(Isa::Scalar),
            "avx2" | "fma" => Some(Isa::Avx2),
            "avx512" | "avx512f" | "avx512bf16" | "amx" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the tier (ignores `MNV2_ISA`).
    pub fn supported(self) -> bool {
        Tier::new(self).is_some()
    }
}

/// Proof that the CPU has AVX2 and FMA; only [`Avx2::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx2(());

/// Proof that the CPU has AVX-512 F/BW/VL/DQ (and AVX2); only [`Avx512::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx512(());

/// Proof that the CPU has AVX-512 VNNI on top of [`Avx512`]; only [`Avx512Vnni::detect`]
/// makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx512Vnni(());

/// Proof that the CPU has AVX-512 BF16 (`vdpbf16ps`, `vcvtne2ps2bf16` on zmm) on top of
/// [`Avx512`]; only [`Avx512Bf16::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Avx512Bf16(());

impl Avx512Bf16 {
    /// The token, if this CPU has AVX-512 BF16 on top of [`Avx512`] (ignores `MNV2_ISA`).
    pub fn detect() -> Option<Avx512Bf16> {
        #[cfg(target_arch = "x86_64")]
        if Avx512::detect().is_some() && is_x86_feature_detected!("avx512bf16") {
            return Some(Avx512Bf16(()));
        }
        None
    }
}

/// Proof that the CPU has AMX-TILE and AMX-BF16 (`tdpbf16ps`) on top of [`Avx512Bf16`] (the
/// AMX kernels' epilogues are AVX-512), and that Linux granted this process the tile data
/// state; only [`AmxBf16::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AmxBf16(());

impl AmxBf16 {
    /// The token, if this CPU has AMX-TILE and AMX-BF16 on top of [`Avx512Bf16`] and the
    /// kernel lets this process use the tiles ([`tile_permission`]; ignores `MNV2_ISA`). With
    /// the `amx-model` feature, on any CPU with [`Avx512Bf16`] (the kernels then run the model).
    pub fn detect() -> Option<AmxBf16> {
        let model = cfg!(feature = "amx-model");
        let tiles = model || (amx_bf16_cpuid() && tile_permission());
        (tiles && Avx512Bf16::detect().is_some()).then_some(AmxBf16(()))
    }
}

/// Proof that the CPU has AMX-TILE and AMX-INT8 (`tdpbusd`) on top of [`Avx512Vnni`] (the
/// epilogue of the int8 AMX kernel is the VNNI kernel's), and that Linux granted this process
/// the tile state; only [`AmxInt8::detect`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AmxInt8(());

impl AmxInt8 {
    /// The token, if this CPU has AMX-TILE and AMX-INT8 on top of [`Avx512Vnni`] and the
    /// kernel lets this process use the tiles ([`tile_permission`]; ignores `MNV2_ISA`). With
    /// the `amx-model` feature, on any CPU with [`Avx512Vnni`] (the kernels then run the model).
    pub fn detect() -> Option<AmxInt8> {
        let model = cfg!(feature = "amx-model");
        let tiles = model || (amx_cpuid(1 << 25) && tile_permission());
        (tiles && Avx512Vnni::detect().is_some()).then_some(AmxInt8(()))
    }
}

/// Whether CPUID leaf 7 says AMX-TILE (EDX bit 24) and AMX-BF16 (EDX bit 22).
fn amx_bf16_cpuid() -> bool {
    amx_cpuid(1 << 22)
}

/// Whether CPUID leaf 7 says AMX-TILE (EDX bit 24) and every EDX bit of `also` (AMX-BF16:
/// bit 22, AMX-INT8: bit 25; 0 for the tiles alone). The leaf is read once per process: the
/// registries ask for every kernel they filter, and CPUID is slow (a hypervisor exit in a VM).
fn amx_cpuid(also: u32) -> bool {
    static EDX: OnceLock<u32> = OnceLock::new();
    let edx = *EDX.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid, __cpuid_count};
            // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0
            // lists it.
            #[allow(unused_unsafe)]
            unsafe {
                if __cpuid(0).eax >= 7 {
                    __cpuid_count(7, 0).edx
                } else {
                    0
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    });
    edx & (1 << 24) != 0 && edx & also == also
}

/// Asks Linux, once per process, for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`): without it the first tile instruction of any thread faults. `false`
/// where the kernel refuses (a CPU without AMX, a kernel before 5.16) or on other systems.
pub fn tile_permission() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            const ARCH_PRCTL: usize = 158;
            const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
            const XFEATURE_XTILEDATA: usize = 18;
            let ret: isize;
            // SAFETY: the arch_prctl system call with two integer arguments; it reads and
            // writes no memory of this process, and the syscall instruction clobbers only
            // rcx and r11 besides its result in rax.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    inlateout("rax") ARCH_PRCTL as isize => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub fn detect() -> Option<Avx2> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Avx2(()));
        }
        None
    }
}

impl Avx512 {
    /// The token, if this CPU has AVX-512 F, BW, VL and DQ (and AVX2).
    pub fn detect() -> Option<Avx512> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && Avx2::detect().is_some()
        {
            return Some(Avx512(()));
        }
        None
    }
}

impl Avx512Vnni {
    /// The token, if this CPU has AVX-512 VNNI (`vpdpbusd` on zmm) on top of [`Avx512`].
    pub fn detect() -> Option<Avx512Vnni> {
        #[cfg(target_arch = "x86_64")]
        if Avx512::detect().is_some() && is_x86_feature_detected!("avx512vnni") {
            return Some(Avx512Vnni(()));
        }
        None
    }
}

/// A tier the CPU runs, held as proof: what an engine or a training net resolves once and
/// passes to every kernel it calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Portable code.
    Scalar,
    /// AVX2 + FMA.
    Avx2(Avx2),
    /// AVX-512 F/BW/VL/DQ.
    Avx512(Avx512),
}

impl Tier {
    /// Exactly tier `isa`, if this CPU runs it (ignores `MNV2_ISA`).
    pub fn new(isa: Isa) -> Option<Tier> {
        match isa {
            Isa::Scalar => Some(Tier::Scalar),
            Isa::Avx2 => Avx2::detect().map(Tier::Avx2),
            Isa::Avx512 => Avx512::detect().map(Tier::Avx512),
        }
    }

    /// The best tier this process may use ([`best`], capped by `MNV2_ISA`).
    pub fn best() -> Tier {
        Tier::new(best()).unwrap_or(Tier::Scalar)
    }

    /// Every tier this CPU runs, lowest first (ignores `MNV2_ISA`).
    pub fn host() -> Vec<Tier> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter_map(Tier::new).collect()
    }

    /// The tier's name.
    pub fn isa(self) -> Isa {
        match self {
            Tier::Scalar => Isa::Scalar,
            Tier::Avx2(_) => Isa::Avx2,
            Tier::Avx512(_) => Isa::Avx512,
        }
    }

    /// The VNNI token, on an AVX-512 tier whose CPU has VNNI.
    pub fn vnni(self) -> Option<Avx512Vnni> {
        match self {
            Tier::Avx512(_) => Avx512Vnni::detect(),
            _ => None,
        }
    }

    /// The BF16 token, on an AVX-512 tier whose CPU has AVX-512 BF16 (ignores `MNV2_ISA`:
    /// selection checks [`bf16_enabled`]).
    pub fn bf16(self) -> Option<Avx512Bf16> {
        match self {
            Tier::Avx512(_) => Avx512Bf16::detect(),
            _ => None,
        }
    }

    /// The AMX-INT8 token, on an AVX-512 tier whose CPU has AMX-INT8 and VNNI and whose
    /// process may use the tiles (ignores `MNV2_ISA`: selection checks [`amx_int8_enabled`]).
    pub fn amx_int8(self) -> Option<AmxInt8> {
        match self {
            Tier::Avx512(_) => AmxInt8::detect(),
            _ => None,
        }
    }

    /// The AMX-BF16 token, on an AVX-512 tier whose CPU has AMX-BF16 and whose process may
    /// use the tiles (ignores `MNV2_ISA`: selection checks [`amx_enabled`]).
    pub fn amx(self) -> Option<AmxBf16> {
        match self {
            Tier::Avx512(_) => AmxBf16::detect(),
            _ => None,
        }
    }
}

/// What a kernel needs from the CPU: the entry of a kernel registry that says when the kernel
/// may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Needs {
    /// Any CPU.
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/BW/VL/DQ.
    Avx512,
    /// AVX-512 with VNNI.
    Avx512Vnni,
    /// AVX-512 with BF16.
    Avx512Bf16,
    /// AMX-TILE and AMX-BF16, with AVX-512 BF16 (and the tiles granted by the kernel).
    AmxBf16,
    /// AMX-TILE and AMX-INT8, with AVX-512 VNNI (and the tiles granted by the kernel).
    AmxInt8,
}

impl Needs {
    /// The name `MNV2_REQUIRE_ISA` and the `SKIPPED` lines of the tests use.
    pub fn name(self) -> &'static str {
        match self {
            Needs::Scalar => "scalar",
            Needs::Avx2 => "avx2",
            Needs::Avx512 => "avx512",
            Needs::Avx512Vnni => "avx512vnni",
            Needs::Avx512Bf16 => "avx512bf16",
            Needs::AmxBf16 => "amxbf16",
            Needs::AmxInt8 => "amxint8",
        }
    }

    /// What a kernel of tier `isa` needs (no extension).
    pub fn of(isa: Isa) -> Needs {
        match isa {
            Isa::Scalar => Needs::Scalar,
            Isa::Avx2 => Needs::Avx2,
            Isa::Avx512 => Needs::Avx512,
        }
    }

    /// The tier a kernel with these needs belongs to.
    pub fn tier(self) -> Isa {
        match self {
            Needs::Scalar => Isa::Scalar,
            Needs::Avx2 => Isa::Avx2,
            Needs::Avx512 | Needs::Avx512Vnni | Needs::Avx512Bf16 | Needs::AmxBf16 | Needs::AmxInt8 => Isa::Avx512,
        }
    }

    /// Panics, naming `kernel`, unless [`Needs::granted`]: packing a kernel for a tier that
    /// may not run it is a bug of the caller, caught before any instruction runs.
    pub fn assert_granted(self, kernel: &str, tier: Tier) {
        assert!(self.granted(tier), "{kernel} needs {}, the caller holds {tier:?}", self.name());
    }

    /// Whether a caller that resolved `tier` may run a kernel with these needs: the kernel's
    /// tier is at most `tier`, and the CPU has any extension it needs.
    pub fn granted(self, tier: Tier) -> bool {
        match self {
            Needs::Scalar => true,
            Needs::Avx2 => tier.isa() >= Isa::Avx2,
            Needs::Avx512 => tier.isa() >= Isa::Avx512,
            Needs::Avx512Vnni => tier.vnni().is_some(),
            Needs::Avx512Bf16 => tier.bf16().is_some(),
            Needs::AmxBf16 => tier.amx().is_some(),
            Needs::AmxInt8 => tier.amx_int8().is_some(),
        }
    }

    /// Whether kernel selection may choose a kernel with these needs for a caller holding
    /// `tier`: [`Needs::granted`], and its extension not turned off by `MNV2_ISA` (bf16 unless
    /// lowered, [`bf16_enabled`]; the AMX tiles only when asked for, [`amx_enabled`] and
    /// [`amx_int8_enabled`]). Every registry's selection asks this, so the policy lives here.
    pub fn selectable(self, tier: Tier) -> bool {
        self.granted(tier)
            && match self {
                Needs::Scalar | Needs::Avx2 | Needs::Avx512 | Needs::Avx512Vnni => true,
                Needs::Avx512Bf16 => bf16_enabled(),
                Needs::AmxBf16 => amx_enabled(),
                Needs::AmxInt8 => amx_int8_enabled(),
            }
    }

    /// Whether this CPU has what the kernel needs (ignores `MNV2_ISA`).
    pub fn on_host(self) -> bool {
        Tier::host().into_iter().any(|t| self.granted(t))
    }
}

/// Every tier this process may use, lowest first (capped by `MNV2_ISA`).
pub fn available() -> Vec<Isa> {
    let best = best();
    [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| *i <= best && i.supported()).collect()
}

/// The best tier this process may use: detected once, capped by `MNV2_ISA`.
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        let detected = [Isa::Avx512, Isa::Avx2, Isa::Scalar].into_iter().find(|i| i.supported()).unwrap_or(Isa::Scalar);
        match isa_env().as_deref().map(Isa::parse) {
            Some(Some(cap)) => cap.min(detected),
            Some(None) => {
                eprintln!(
                    "warning: MNV2_ISA is not one of scalar, avx2, avx512, avx512bf16, amx; using {}",
                    detected.name()
                );
                detected
            }
            None => detected,
        }
    })
}

/// `MNV2_ISA`, if set to something other than blanks (`MNV2_ISA=` is unset).
fn isa_env() -> Option<String> {
    nonblank(std::env::var("MNV2_ISA").ok())
}

/// `v` unless it is only blanks.
fn nonblank(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.trim().is_empty())
}

/// Whether this CPU runs a 512-bit vector instruction as two 256-bit halves, as AMD Zen 4
/// (family 0x19) does. There a padded lane of a 512-bit FMA costs as much as a real one and a
/// 256-bit FMA half as much, so a GEMM panel whose real columns fit in 24 of its 32 runs three
/// ymm per row (the GEMMs' `panel_tile`). Zen 5 (family 0x1a) and Intel's AVX-512 cores
/// issue 512-bit FMAs as fast as 256-bit ones, and there two rows' 48 outputs run in three zmm
/// (`lanes::PAIRS24`; measured in BENCHMARKS.md, stops 16 and 17). Detected once; `MNV2_SPLIT_512=1` or `=0`
/// overrides it (for A/B timing: every tile gives the same bits).
pub fn split_512() -> bool {
    static SPLIT: OnceLock<bool> = OnceLock::new();
    *SPLIT.get_or_init(|| match std::env::var("MNV2_SPLIT_512").ok().as_deref().map(str::trim) {
        Some("1") => true,
        Some("0") => false,
        _ => amd_family() == Some(0x19) && Avx512::detect().is_some(),
    })
}

/// The CPU family of an AMD CPU (base plus extended family, as AMD numbers them: 0x19 for
/// Zen 3 and 4, 0x1a for Zen 5); `None` for other vendors.
fn amd_family() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU; leaves 0 and 1 always do.
        #[allow(unused_unsafe)]
        let (v, l1) = unsafe { (__cpuid(0), __cpuid(1)) };
        let vendor: Vec<u8> = [v.ebx, v.edx, v.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
        if vendor != b"AuthenticAMD" {
            return None;
        }
        Some(family(l1.eax))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The family in CPUID leaf 1's EAX: the base family, plus the extended family when the base
/// is 0xf.
fn family(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    }
}

/// Whether the bf16 kernels may be chosen: the CPU has AVX-512 BF16, the tier cap of
/// [`best`] is AVX-512, and `MNV2_ISA` is unset or names `avx512bf16` (any other value lowers
/// bf16 engines to the scalar twin).
pub fn bf16_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let env = isa_env();
        bf16_allowed_by(env.as_deref()) && best() == Isa::Avx512 && Avx512Bf16::detect().is_some()
    })
}

/// Whether an `MNV2_ISA` value (`None`: unset) leaves the bf16 extension on.
fn bf16_allowed_by(env: Option<&str>) -> bool {
    env.is_none_or(|v| v.trim().eq_ignore_ascii_case("avx512bf16") || amx_allowed_by(Some(v)))
}

/// Whether the AMX-BF16 kernels may be chosen: `MNV2_ISA=amx` (opt-in: they have not yet run
/// on an AMX CPU; the tests check their tiling against a model of the tile unit), and the CPU
/// and the kernel grant the tiles ([`AmxBf16::detect`]).
pub fn amx_enabled() -> bool {
    amx_requested() && bf16_enabled() && AmxBf16::detect().is_some()
}

/// Whether the AMX-INT8 kernel may be chosen: `MNV2_ISA=amx` (opt-in, as [`amx_enabled`]),
/// and the CPU and the kernel grant the tiles ([`AmxInt8::detect`]).
pub fn amx_int8_enabled() -> bool {
    amx_requested() && best() == Isa::Avx512 && AmxInt8::detect().is_some()
}

/// Whether `MNV2_ISA=amx` asks for the AMX kernels (read once), whether or not the CPU has
/// them: a front end can warn when it asked and got none.
pub fn amx_requested() -> bool {
    static ASKED: OnceLock<bool> = OnceLock::new();
    *ASKED.get_or_init(|| amx_allowed_by(isa_env().as_deref()))
}

/// Whether an `MNV2_ISA` value (`None`: unset) turns the AMX tiles on.
fn amx_allowed_by(env: Option<&str>) -> bool {
    env.is_some_and(|v| v.trim().eq_ignore_ascii_case("amx"))
}

/// For tests of a kernel registry: whether the host runs a kernel needing `needs`. If not,
/// prints `SKIPPED <name> (host lacks <isa>)`, and panics when `MNV2_REQUIRE_ISA` names that
/// ISA (a comma-separated list; CI sets it on hosts that must run those kernels).
pub fn runs_or_skips(name: &str, needs: Needs) -> bool {
    let require = std::env::var("MNV2_REQUIRE_ISA").ok();
    match skip_verdict(name, needs, needs.on_host(), require.as_deref()) {
        Ok(true) => true,
        Ok(false) => {
            println!("SKIPPED {name} (host lacks {})", needs.name());
            eprintln!("SKIPPED {name} (host lacks {})", needs.name());
            false
        }
        Err(e) => panic!("{e}"),
    }
}

/// Whether to run a kernel (`Ok(true)`), skip it (`Ok(false)`), or fail because the host lacks
/// an ISA that `require` (the value of `MNV2_REQUIRE_ISA`) names.
fn skip_verdict(name: &str, needs: Needs, on_host: bool, require: Option<&str>) -> Result<bool, String> {
    if on_host {
        return Ok(true);
    }
    match require {
        Some(req) if req.split(',').any(|r| r.trim().eq_ignore_ascii_case(needs.name())) => {
            Err(format!("MNV2_REQUIRE_ISA={req}, but this host cannot run {name} (it lacks {})", needs.name()))
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_families() {
        // EAX of leaf 1 on Zen 4 (EPYC 9004), Zen 5 (EPYC 9005) and a Sapphire Rapids Xeon.
        assert_eq!(family(0x00a1_0f11), 0x19);
        assert_eq!(family(0x00b0_0f21), 0x1a);
        assert_eq!(family(0x0008_06f8), 6);
        println!("this CPU: AMD family {:?}, split 512-bit: {}", amd_family(), split_512());
    }

    #[test]
    fn a_skip_is_an_error_only_when_required() {
        let k = "qgemm_u8s8s32_requant_14x32_avx512vnni";
        assert_eq!(skip_verdict(k, Needs::Avx512Vnni, true, Some("avx512vnni")), Ok(true));
        assert_eq!(skip_verdict(k, Needs::Avx512Vnni, false, None), Ok(false));
        assert_eq!(skip_verdict(k, Needs::Avx512Vnni, false, Some("avx2")), Ok(false));
        assert!(skip_verdict(k, Needs::Avx512Vnni, false, Some("avx2, AVX512VNNI")).is_err());
    }

    #[test]
    fn tiers_grant_what_they_hold() {
        assert!(Needs::Scalar.granted(Tier::Scalar));
        assert!(!Needs::Avx2.granted(Tier::Scalar));
        for t in Tier::host() {
            assert_eq!(Tier::new(t.isa()), Some(t));
            assert!(Needs::of(t.isa()).granted(t) && Needs::of(t.isa()).on_host());
            assert_eq!(Needs::Avx512Vnni.granted(t), t.isa() == Isa::Avx512 && Avx512Vnni::detect().is_some());
        }
        assert!(Tier::best().isa() <= best());
        for t in Tier::host() {
            assert_eq!(Needs::Avx512Bf16.granted(t), t.isa() == Isa::Avx512 && Avx512Bf16::detect().is_some());
        }
    }

    #[test]
    fn only_an_unset_or_bf16_cap_allows_bf16() {
        assert!(bf16_allowed_by(None) && bf16_allowed_by(Some("AVX512BF16")) && bf16_allowed_by(Some(" amx")));
        assert!(!bf16_allowed_by(Some("avx512")) && !bf16_allowed_by(Some("scalar")));
        assert_eq!(Isa::parse("avx512bf16"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("AMX"), Some(Isa::Avx512));
    }

    #[test]
    fn a_blank_cap_is_no_cap() {
        assert_eq!(nonblank(Some(" \t".into())), None);
        assert_eq!(nonblank(Some(String::new())), None);
        assert_eq!(nonblank(Some(" amx".into())).as_deref(), Some(" amx"));
        assert_eq!(nonblank(None), None);
    }

    #[test]
    fn only_an_amx_cap_allows_amx() {
        assert!(amx_allowed_by(Some("amx")) && amx_allowed_by(Some("AMX ")));
        assert!(!amx_allowed_by(None) && !amx_allowed_by(Some("avx512bf16")) && !amx_allowed_by(Some("avx512")));
    }

    /// The permission request succeeds exactly where CPUID lists the tiles (on Linux 5.16+),
    /// and asking on a CPU without them is refused, not a crash.
    #[test]
    fn tile_permission_follows_cpuid() {
        let (cpuid, granted) = (amx_cpuid(0), tile_permission());
        println!(
            "this CPU: AMX-TILE in CPUID {cpuid} (BF16 {}, INT8 {}), tiles granted {granted}",
            amx_bf16_cpuid(),
            amx_cpuid(1 << 25)
        );
        if !cpuid {
            assert!(!granted, "a CPU without AMX cannot be granted the tiles");
        } else if cfg!(target_os = "linux") {
            assert!(granted, "CPUID lists AMX, but Linux refused the tile state (a kernel before 5.16?)");
        }
        for t in Tier::host() {
            assert_eq!(Needs::AmxBf16.granted(t), t.isa() == Isa::Avx512 && AmxBf16::detect().is_some());
            assert_eq!(Needs::AmxInt8.granted(t), t.isa() == Isa::Avx512 && AmxInt8::detect().is_some());
        }
    }
}
