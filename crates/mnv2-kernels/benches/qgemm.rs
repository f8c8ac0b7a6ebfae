//! int8 pointwise GEMM (u8 x s8, requantised to u8) on MobileNetV2's 1x1 layer shapes.
//! `cargo bench -p mnv2-kernels --bench qgemm`; throughput is multiply-adds per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::qgemm::{qgemm, qisa, PackedQGemm, QOut, QParams};
use mnv2_kernels::{isa, MinMax};

const SHAPES: [(usize, usize, usize); 12] = [
    (12544, 32, 16),
    (12544, 16, 96),
    (3136, 24, 144),
    (3136, 144, 24),
    (784, 32, 192),
    (784, 192, 32),
    (196, 64, 384),
    (196, 384, 64),
    (196, 96, 576),
    (49, 160, 960),
    (49, 960, 160),
    (49, 320, 1280),
];

fn bench(c: &mut Criterion) {
    let mut isas: Vec<_> = isa::available().into_iter().map(qisa).collect();
    isas.dedup();
    for isa in isas {
        let mut g = c.benchmark_group(format!("qgemm_{}", isa.name()));
        for (m, k, n) in SHAPES {
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
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_millis(700));
    targets = bench
}
criterion_main!(benches);
