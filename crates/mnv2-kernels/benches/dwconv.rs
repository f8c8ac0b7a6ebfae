//! Depthwise 3x3 row micro-benchmarks: every f32 and u8 kernel of the registries the host
//! runs, on synthetic rows around the channel tile. `cargo bench -p mnv2-kernels --bench dwconv`;
//! throughput is multiply-adds per second.

mod common;

use common::DW_SHAPES;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::dwconv::{dwconv_row, dwconv_row_u8, DwRow, PackedDw, KERNELS, KERNELS_U8};
use mnv2_kernels::qgemm::QParams;
use mnv2_kernels::MinMax;

fn bench(c: &mut Criterion) {
    let tier = common::host_tier();
    for kern in KERNELS.iter().filter(|k| common::runs(k.name, k.needs)) {
        let mut g = c.benchmark_group(kern.name);
        for (w_in, ch, s) in DW_SHAPES {
            let w_out = (w_in - 1) / s + 1;
            let p = PackedDw::for_kernel(tier, kern, &vec![0.1; 9 * ch], ch, &vec![0.0; ch]);
            let rows: Vec<Vec<f32>> =
                (0..3).map(|r| (0..w_in * ch).map(|i| ((i + r) % 13) as f32 * 0.1).collect()).collect();
            let mut out = vec![0f32; w_out * ch];
            let geom = DwRow { w_in, w_out, stride: s, dilation: 1, pad_left: 1 };
            g.throughput(Throughput::Elements((9 * w_out * ch) as u64));
            g.bench_function(format!("w{w_in}c{ch}s{s}"), |b| {
                b.iter(|| {
                    dwconv_row(&p, [Some(&rows[0]), Some(&rows[1]), Some(&rows[2])], geom, MinMax::RELU6, &mut out)
                })
            });
        }
        g.finish();
    }
    let q = QParams { scale: 6.0 / 255.0, zero: 0 };
    for kern in KERNELS_U8.iter().filter(|k| common::runs(k.name, k.needs)) {
        let mut g = c.benchmark_group(kern.name);
        for (w_in, ch, s) in DW_SHAPES {
            let w_out = (w_in - 1) / s + 1;
            let p = PackedDw::quantized_for(tier, kern, &vec![0.1; 9 * ch], ch, &vec![0.0; ch], q);
            let rows: Vec<Vec<u8>> = (0..3).map(|r| (0..w_in * ch).map(|i| ((i + r) % 251) as u8).collect()).collect();
            let mut out = vec![0u8; w_out * ch];
            let geom = DwRow { w_in, w_out, stride: s, dilation: 1, pad_left: 1 };
            g.throughput(Throughput::Elements((9 * w_out * ch) as u64));
            g.bench_function(format!("w{w_in}c{ch}s{s}"), |b| {
                b.iter(|| {
                    let rows3 = [Some(rows[0].as_slice()), Some(rows[1].as_slice()), Some(rows[2].as_slice())];
                    dwconv_row_u8(&p, rows3, geom, MinMax::RELU6, &mut out, q)
                })
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
