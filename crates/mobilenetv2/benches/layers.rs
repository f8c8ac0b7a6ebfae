//! The kernels on MobileNetV2's own layer shapes (width 1.0, 224x224), taken from the plan:
//! every distinct pointwise shape (f32 and int8 GEMM) and every depthwise layer (f32 and u8
//! rows), each on the kernel the engine picks for the best tier this process may use
//! (`MNV2_ISA` lowers it). Synthetic edge shapes stay in `mnv2-kernels/benches`.
//!
//! `cargo bench -p mobilenetv2 --bench layers`; throughput is multiply-adds per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mnv2_kernels::dwconv::{dwconv_row, dwconv_row_u8, DwRow, PackedDw};
use mnv2_kernels::gemm::{gemm, PackedGemm};
use mnv2_kernels::qgemm::{qgemm, PackedQGemm, QOut, QParams};
use mnv2_kernels::{MinMax, Tier};
use mobilenetv2::plan::{ConvKind, Plan};
use mobilenetv2::Spec;

/// (M, K, N) of every distinct pointwise layer, in network order: pixels, input channels,
/// output channels.
fn pointwise_shapes(plan: &Plan) -> Vec<(usize, usize, usize)> {
    let mut v: Vec<(usize, usize, usize)> = Vec::new();
    for l in &plan.layers {
        if l.conv().is_some_and(|c| c.kind == ConvKind::Pointwise) {
            let s = (l.output.h * l.output.w, l.input.c, l.output.c);
            if !v.contains(&s) {
                v.push(s);
            }
        }
    }
    v
}

/// One depthwise layer: its name and the geometry of one output row.
struct DwLayer {
    name: String,
    c: usize,
    row: DwRow,
}

fn depthwise_layers(plan: &Plan) -> Vec<DwLayer> {
    plan.blocks
        .iter()
        .map(|b| {
            let l = &plan.layers[b.depthwise];
            let conv = l.conv().expect("a depthwise conv");
            let pad_left = conv.pad.left;
            let row =
                DwRow { w_in: l.input.w, w_out: l.output.w, stride: conv.stride, dilation: conv.dilation, pad_left };
            DwLayer { name: l.name.clone(), c: l.input.c, row }
        })
        .collect()
}

fn pointwise(c: &mut Criterion, plan: &Plan, tier: Tier) {
    let shapes = pointwise_shapes(plan);
    let mut g = c.benchmark_group("pointwise_f32");
    for &(m, k, n) in &shapes {
        let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let p = PackedGemm::new(tier, &w, k, n, &vec![0.1; n]);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}/{}", p.kernel_name()), |b| {
            b.iter(|| gemm(m, &a, k, &p, &mut out, n, MinMax::RELU6, None))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("pointwise_int8");
    for &(m, k, n) in &shapes {
        let w: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let p = PackedQGemm::new(tier, &w, k, n, &vec![0.1; n], QParams { scale: 0.02, zero: 128 });
        let a: Vec<u8> = (0..m * k).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; m * n];
        let q = QParams { scale: 0.05, zero: 0 };
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}/{}", p.kernel_name()), |b| {
            b.iter(|| qgemm(m, &a, k, &p, QOut::U8 { c: &mut out, ldc: n, q }, MinMax::RELU6, None))
        });
    }
    g.finish();
}

fn depthwise(c: &mut Criterion, plan: &Plan, tier: Tier) {
    let layers = depthwise_layers(plan);
    let mut g = c.benchmark_group("depthwise_f32");
    for l in &layers {
        let (ch, row) = (l.c, l.row);
        let p = PackedDw::new(tier, &vec![0.1; 9 * ch], ch, &vec![0.0; ch]);
        let rows: Vec<Vec<f32>> =
            (0..3).map(|r| (0..row.w_in * ch).map(|i| ((i + r) % 13) as f32 * 0.1).collect()).collect();
        let mut out = vec![0f32; row.w_out * ch];
        g.throughput(Throughput::Elements((9 * row.w_out * ch) as u64));
        g.bench_function(format!("{}/{}", l.name, p.kernel_name()), |b| {
            b.iter(|| dwconv_row(&p, [Some(&rows[0]), Some(&rows[1]), Some(&rows[2])], row, MinMax::RELU6, &mut out))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("depthwise_u8");
    let q = QParams { scale: 6.0 / 255.0, zero: 0 };
    for l in &layers {
        let (ch, row) = (l.c, l.row);
        let p = PackedDw::quantized(tier, &vec![0.1; 9 * ch], ch, &vec![0.0; ch], q);
        let rows: Vec<Vec<u8>> = (0..3).map(|r| (0..row.w_in * ch).map(|i| ((i + r) % 251) as u8).collect()).collect();
        let mut out = vec![0u8; row.w_out * ch];
        g.throughput(Throughput::Elements((9 * row.w_out * ch) as u64));
        g.bench_function(format!("{}/{}", l.name, p.kernel_name()), |b| {
            b.iter(|| {
                let rows3 = [Some(rows[0].as_slice()), Some(rows[1].as_slice()), Some(rows[2].as_slice())];
                dwconv_row_u8(&p, rows3, row, MinMax::RELU6, &mut out, q)
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let plan = Plan::new(&Spec::default()).expect("the default spec has a plan");
    let tier = Tier::best();
    eprintln!(
        "{} distinct pointwise shapes, {} depthwise layers, tier {}",
        pointwise_shapes(&plan).len(),
        depthwise_layers(&plan).len(),
        tier.isa().name()
    );
    pointwise(c, &plan, tier);
    depthwise(c, &plan, tier);
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(700))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = bench
}
criterion_main!(benches);
