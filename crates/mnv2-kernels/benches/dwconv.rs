//! Depthwise 3x3 rows on MobileNetV2's layer shapes (width 1.0, 224), per ISA.
//! `cargo bench -p mnv2-kernels --bench dwconv`; throughput is multiply-adds per second.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::dwconv::{dwconv_row, dwconv_row_u8, DwRow, PackedDw};
use mnv2_kernels::qgemm::QParams;
use mnv2_kernels::{isa, MinMax};

/// (input width, channels, stride) of the distinct depthwise layers.
const SHAPES: [(usize, usize, usize); 8] =
    [(112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 144, 2), (28, 192, 1), (28, 192, 2), (14, 576, 1), (7, 960, 1)];

fn bench(c: &mut Criterion) {
    for isa in isa::available() {
        let mut g = c.benchmark_group(format!("dwconv_{}", isa.name()));
        for (w_in, ch, s) in SHAPES {
            let w_out = (w_in - 1) / s + 1;
            let p = PackedDw::new(isa, &vec![0.1; 9 * ch], ch, &vec![0.0; ch]);
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
        let mut g = c.benchmark_group(format!("dwconv_u8_{}", isa.name()));
        let q = QParams { scale: 6.0 / 255.0, zero: 0 };
        for (w_in, ch, s) in SHAPES {
            let w_out = (w_in - 1) / s + 1;
            let p = PackedDw::quantized(isa, &vec![0.1; 9 * ch], ch, &vec![0.0; ch], q);
            let rows: Vec<Vec<u8>> = (0..3).map(|r| (0..w_in * ch).map(|i| ((i + r) % 251) as u8).collect()).collect();
            let mut out = vec![0u8; w_out * ch];
            let geom = DwRow { w_in, w_out, stride: s, dilation: 1, pad_left: 1 };
            g.throughput(Throughput::Elements((9 * w_out * ch) as u64));
            g.bench_function(format!("w{w_in}c{ch}s{s}"), |b| {
                b.iter(|| {
                    dwconv_row_u8(
                        &p,
                        [Some(&rows[0]), Some(&rows[1]), Some(&rows[2])],
                        geom,
                        MinMax::RELU6,
                        &mut out,
                        q,
                    )
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
