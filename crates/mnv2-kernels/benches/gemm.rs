//! Pointwise GEMM micro-benchmarks: every kernel of the registry the host runs, on synthetic
//! shapes around its tile. `cargo bench -p mnv2-kernels --bench gemm`.

mod common;

use common::GEMM_SHAPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::gemm::{gemm, PackedGemm, KERNELS};
use mnv2_kernels::MinMax;

fn bench(c: &mut Criterion) {
    let tier = common::host_tier();
    for kern in KERNELS.iter().filter(|k| common::runs(k.name, k.needs)) {
        let mut g = c.benchmark_group(kern.name);
        for (m, k, n) in GEMM_SHAPES {
            let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
            let p = PackedGemm::for_kernel(tier, kern, &w, k, n, &vec![0.1; n]);
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
