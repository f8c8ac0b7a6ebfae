//! The reference executor: every layer of the plan in order with the scalar kernels, each
//! output materialised. Images of a batch are shared out over threads.

use mnv2_kernels::{reference as k, ConvGeom, MinMax};

use super::Compiled;
use crate::error::Result;
use crate::plan::{Conv, Layer, Op, Plan};
use crate::tensor::Batch;

pub(crate) fn geom(layer: &Layer, c: &Conv) -> ConvGeom {
    ConvGeom {
        in_h: layer.input.h,
        in_w: layer.input.w,
        in_c: layer.input.c,
        out_h: layer.output.h,
        out_w: layer.output.w,
        out_c: layer.output.c,
        kernel: c.kernel,
        stride: c.stride,
        dilation: c.dilation,
        pad_top: c.pad.top,
        pad_left: c.pad.left,
        groups: c.groups,
    }
}

/// Runs one image, returning the outputs of `taps` (plan layer indices).
fn run_image(layers: &[Compiled], plan: &Plan, image: &[f32], taps: &[usize]) -> Vec<Vec<f32>> {
    let mut outs = vec![Vec::new(); taps.len()];
    let mut cur = image.to_vec();
    let mut block_input: Vec<f32> = Vec::new();
    let last_tap = taps.iter().copied().max().unwrap_or(0);
    // Outputs that a later layer reads through `Layer::source` or concatenates (a head's
    // taps and branches) are kept.
    let mut read_later = vec![false; plan.layers.len()];
    for l in &plan.layers {
        l.source.into_iter().for_each(|s| read_later[s] = true);
        if let Op::Concat { sources } = &l.op {
            sources.iter().for_each(|&s| read_later[s] = true);
        }
    }
    let mut kept: Vec<Option<Vec<f32>>> = vec![None; plan.layers.len()];
    for (i, layer) in plan.layers.iter().enumerate().take(last_tap + 1) {
        if let Some(src) = layer.source {
            cur = kept[src].clone().expect("a layer's source runs before it");
        }
        if plan.block_of(i).is_some_and(|b| b.first_layer() == i) {
            block_input = cur.clone();
        }
        let mut out = vec![0f32; layer.output.len()];
        match (&layer.op, &layers[i]) {
            (Op::Conv(c), Compiled::Conv(f)) => {
                let (min, max) = c.activation.bounds();
                let residual = c.residual.then_some(block_input.as_slice());
                k::conv2d_f32(&geom(layer, c), &cur, &f.weights, &f.bias, MinMax { min, max }, residual, &mut out);
            }
            (Op::GlobalAvgPool, _) => {
                k::global_avg_pool_f32(&cur, layer.input.h * layer.input.w, layer.input.c, &mut out)
            }
            (Op::Dropout { .. }, _) => out.copy_from_slice(&cur),
            (Op::Linear, Compiled::Linear(f)) => k::linear_f32(&cur, &f.weights, &f.bias, &mut out),
            (Op::Concat { sources }, _) => {
                // Channels of each source in turn, pixel by pixel (NHWC).
                let mut offset = 0;
                for &s in sources {
                    let src = kept[s].as_deref().expect("a concatenated layer runs before the concat");
                    let c = plan.layers[s].output.c;
                    for (px, o) in src.chunks_exact(c).zip(out.chunks_exact_mut(layer.output.c)) {
                        o[offset..offset + c].copy_from_slice(px);
                    }
                    offset += c;
                }
            }
            (Op::Upsample { align_corners }, _) => {
                let (i, o) = (layer.input, layer.output);
                k::resize_bilinear_f32(&cur, i.h, i.w, i.c, o.h, o.w, *align_corners, &mut out)
            }
            _ => unreachable!("compiled layer {i} does not match the plan"),
        }
        cur = out;
        if read_later[i] {
            kept[i] = Some(cur.clone());
        }
        for (t, o) in taps.iter().zip(outs.iter_mut()) {
            if *t == i {
                *o = cur.clone();
            }
        }
    }
    outs
}

pub(crate) fn run(
    layers: &[Compiled],
    plan: &Plan,
    input: &Batch,
    taps: &[usize],
    threads: usize,
) -> Result<Vec<Batch>> {
    let n = input.n;
    let per_image: Vec<Vec<Vec<f32>>> = if threads <= 1 || n <= 1 {
        (0..n).map(|b| run_image(layers, plan, input.image(b), taps)).collect()
    } else {
        let mut results: Vec<Option<Vec<Vec<f32>>>> = vec![None; n];
        let chunk = n.div_ceil(threads);
        std::thread::scope(|s| {
            for (ci, slot) in results.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (j, r) in slot.iter_mut().enumerate() {
                        *r = Some(run_image(layers, plan, input.image(ci * chunk + j), taps));
                    }
                });
            }
        });
        results.into_iter().map(|r| r.expect("every image ran")).collect()
    };
    Ok(taps
        .iter()
        .enumerate()
        .map(|(ti, &t)| {
            let shape = plan.layers[t].output;
            let data = per_image.iter().flat_map(|im| im[ti].iter().copied()).collect();
            Batch { n, shape, data }
        })
        .collect())
}
