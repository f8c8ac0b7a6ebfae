//! int8 pointwise GEMM micro-benchmarks (u8 x s8, requantised to u8): every kernel of the
//! registry the host runs, on synthetic shapes. `cargo bench -p mnv2-kernels --bench qgemm`.

mod common;

use common::GEMM_SHAPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::qgemm::{qgemm, quantize_weights, PackedQGemm, QOut, QParams, KERNELS};
use mnv2_kernels::MinMax;

fn bench(c: &mut Criterion) {
    let tier = common::host_tier();
    for kern in KERNELS.iter().filter(|k| common::runs(k.name, k.needs)) {
        let mut g = c.benchmark_group(kern.name);
        for (m, k, n) in GEMM_SHAPES {
            let w: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            let (qw, s) = quantize_weights(&w, k, n);
            let input = QParams { scale: 0.02, zero: 128 };
            let p = PackedQGemm::from_quantized(kern, tier, &qw, &s, k, n, &vec![0.1; n], input);
            let a: Vec<u8> = (0..m * k).map(|i| (i % 251) as u8).collect();
            let mut out = vec![0u8; m * n];
            let q = QParams { scale: 0.05, zero: 0 };
            g.throughput(Throughput::Elements((m * k * n) as u64));
            g.bench_function(format!("{m}x{k}x{n}"), |b| {
                b.iter(|| qgemm(m, &a, k, &p, QOut::U8 { c: &mut out, ldc: n, q }, MinMax::RELU6, None))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::quick(700);
    targets = bench
}
criterion_main!(benches);
