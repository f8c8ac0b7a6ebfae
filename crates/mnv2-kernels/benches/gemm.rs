//! Pointwise GEMM on MobileNetV2's layer shapes (width 1.0, 224), per ISA.
//! `cargo bench -p mnv2-kernels --bench gemm`; prints GMAC/s for each shape.

mod common;

use common::POINTWISE_SHAPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::gemm::{gemm, PackedGemm};
use mnv2_kernels::{isa, MinMax};

fn bench(c: &mut Criterion) {
    for isa in isa::available() {
        let mut g = c.benchmark_group(format!("gemm_{}", isa.name()));
        for (m, k, n) in POINTWISE_SHAPES {
            let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
            let p = PackedGemm::new(isa, &w, k, n, &vec![0.1; n]);
            let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut out = vec![0f32; m * n];
            g.throughput(Throughput::Elements((m * k * n) as u64));
            g.bench_function(format!("{m}x{k}x{n}"), |b| {
                b.iter(|| gemm(m, &a, k, &p, &mut out, n, MinMax::RELU6, None))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::quick(800);
    targets = bench
}
criterion_main!(benches);
