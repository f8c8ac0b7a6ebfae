//! int8 pointwise GEMM (u8 x s8, requantised to u8) on MobileNetV2's 1x1 layer shapes.
//! `cargo bench -p mnv2-kernels --bench qgemm`; throughput is multiply-adds per second.

mod common;

use common::POINTWISE_SHAPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::qgemm::{qgemm, qisa, PackedQGemm, QOut, QParams};
use mnv2_kernels::{isa, MinMax};

fn bench(c: &mut Criterion) {
    let mut isas: Vec<_> = isa::available().into_iter().map(qisa).collect();
    isas.dedup();
    for isa in isas {
        let mut g = c.benchmark_group(format!("qgemm_{}", isa.name()));
        for (m, k, n) in POINTWISE_SHAPES {
            let w: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
            let p = PackedQGemm::new(isa, &w, k, n, &vec![0.1; n], QParams { scale: 0.02, zero: 128 });
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
