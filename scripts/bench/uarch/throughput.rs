//! Instruction throughput of the operations the kernels are built from, on this CPU: how many
//! of each one core retires per nanosecond with 8 independent chains (so latency hides), each
//! case beside the f32 FMA in the same run (AVX2 instructions only, what every x86 machine
//! of the project has). It says which instruction a kernel's inner loop
//! is bound by (e.g. on Zen 3, `vpmaddwd` issues as often as `vfmadd231ps`, two per cycle,
//! but `vpmovsxbw` competes with both).
//!
//! Built and run by `throughput.sh` (plain rustc: not a workspace crate, so CI never builds it).

use std::arch::asm;
use std::time::Instant;

/// Loop iterations per timing; each iteration runs one case's instruction block once.
const ITERS: u64 = 20_000_000;

/// Runs `$body` (an asm block reading ymm/zmm 12-15, writing 0-11) ITERS times and prints
/// the nanoseconds per instruction (`$n` instructions per block) and the ratio to `fma`.
macro_rules! case {
    ($name:expr, $n:expr, $fma:expr, $body:expr) => {{
        let t = Instant::now();
        let mut n = ITERS;
        // SAFETY: the block only touches the vector registers named as clobbered and `n`.
        unsafe {
            asm!(
                "2:", $body, "dec {n}", "jnz 2b",
                n = inout(reg) n,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _,
                out("ymm15") _, options(nostack),
            );
        }
        let _ = n;
        let ns = t.elapsed().as_secs_f64() * 1e9 / (ITERS as f64 * $n as f64);
        let fma: f64 = $fma;
        println!("{:44} {:6.3} ns/instr   {:5.2}x the FMA's time", $name, ns, ns / if fma > 0.0 { fma } else { ns });
        ns
    }};
}

/// Eight copies of one instruction, destinations 0..8, sources fixed registers.
macro_rules! eight {
    ($op:literal, $srcs:literal) => {
        concat!(
            $op, " ymm0, ", $srcs, "\n", $op, " ymm1, ", $srcs, "\n", $op, " ymm2, ", $srcs, "\n",
            $op, " ymm3, ", $srcs, "\n", $op, " ymm4, ", $srcs, "\n", $op, " ymm5, ", $srcs, "\n",
            $op, " ymm6, ", $srcs, "\n", $op, " ymm7, ", $srcs, "\n"
        )
    };
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.to_string()))
        .unwrap_or_default();
    println!("{cpu}");
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("no AVX2+FMA: nothing to measure");
        return;
    }
    for pass in 0..2 {
        println!("pass {}", pass + 1);
        let fma = case!("vfmadd231ps ymm (8 chains)", 8, 0.0, eight!("vfmadd231ps", "ymm12, ymm13"));
        case!("vpmaddwd ymm", 8, fma, eight!("vpmaddwd", "ymm12, ymm13"));
        case!(
            "vpmaddwd + vpaddd ymm (the int8 GEMM's pair)",
            16,
            fma,
            concat!(
                eight!("vpmaddwd", "ymm12, ymm13"),
                "vpaddd ymm8, ymm8, ymm0\nvpaddd ymm9, ymm9, ymm1\nvpaddd ymm10, ymm10, ymm2\n",
                "vpaddd ymm11, ymm11, ymm3\nvpaddd ymm8, ymm8, ymm4\nvpaddd ymm9, ymm9, ymm5\n",
                "vpaddd ymm10, ymm10, ymm6\nvpaddd ymm11, ymm11, ymm7\n"
            )
        );
        case!("vpmaddubsw ymm", 8, fma, eight!("vpmaddubsw", "ymm12, ymm13"));
        case!("vpmovsxbw ymm, xmm", 8, fma, eight!("vpmovsxbw", "xmm14"));
        case!("vpmovzxbd ymm, xmm", 8, fma, eight!("vpmovzxbd", "xmm14"));
        case!("vcvtdq2ps ymm", 8, fma, eight!("vcvtdq2ps", "ymm12"));
        case!("vpermd ymm", 8, fma, eight!("vpermd", "ymm12, ymm13"));
        case!(
            "8 vfmadd231ps + 4 vpmovsxbw",
            12,
            fma,
            concat!(
                eight!("vfmadd231ps", "ymm12, ymm13"),
                "vpmovsxbw ymm8, xmm14\nvpmovsxbw ymm9, xmm14\nvpmovsxbw ymm10, xmm14\nvpmovsxbw ymm11, xmm14\n"
            )
        );
        case!(
            "8 vpmaddwd + 4 vpmovsxbw",
            12,
            fma,
            concat!(
                eight!("vpmaddwd", "ymm12, ymm13"),
                "vpmovsxbw ymm8, xmm14\nvpmovsxbw ymm9, xmm14\nvpmovsxbw ymm10, xmm14\nvpmovsxbw ymm11, xmm14\n"
            )
        );
    }
}
