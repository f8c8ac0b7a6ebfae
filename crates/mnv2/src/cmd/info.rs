use anyhow::Result;
use mobilenetv2::accounting::{account, memory};
use mobilenetv2::plan::{ConvKind, Op, Plan};
use mobilenetv2::Spec;
use serde_json::json;

use super::args::{BottleneckArg, PaddingArg, ShortcutArg};
use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Width multiplier (0.35 .. 1.4 in the paper)
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Input resolution, N or HxW
    #[arg(long, default_value = "224")]
    resolution: String,
    /// Number of classes
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Expansion rate for every expanding block (Table 2 uses 6)
    #[arg(long)]
    expansion: Option<usize>,
    /// Activation after each block's projection
    #[arg(long, value_enum, default_value_t = BottleneckArg::Linear)]
    bottleneck: BottleneckArg,
    /// Residual connections
    #[arg(long, value_enum, default_value_t = ShortcutArg::Bottleneck)]
    shortcut: ShortcutArg,
    /// Padding convention
    #[arg(long, value_enum, default_value_t = PaddingArg::Torch)]
    padding: PaddingArg,
    /// Output stride: 32 (classification), 16 or 8 (dilated, for segmentation)
    #[arg(long, default_value_t = 32)]
    output_stride: usize,
    /// Show the activation memory report (the paper's Table 3)
    #[arg(long)]
    memory: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn spec_from(a: &Args) -> Result<Spec> {
    let (height, width_px) = Spec::parse_resolution(&a.resolution)?;
    Ok(Spec {
        width: a.width,
        height,
        width_px,
        classes: a.classes,
        expansion: a.expansion,
        bottleneck: a.bottleneck.into(),
        shortcut: a.shortcut.into(),
        padding: a.padding.into(),
        output_stride: a.output_stride,
        ..Spec::default()
    })
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Conv(c) => {
            let k = match c.kind {
                ConvKind::Full => "conv3x3",
                ConvKind::Pointwise => "conv1x1",
                ConvKind::Depthwise => "dwconv3x3",
            };
            let mut s = k.to_string();
            if c.stride > 1 {
                s += &format!(" s{}", c.stride);
            }
            if c.dilation > 1 {
                s += &format!(" d{}", c.dilation);
            }
            if c.activation == mobilenetv2::plan::Activation::Relu6 {
                s += " relu6";
            }
            if c.residual {
                s += " +res";
            }
            s
        }
        Op::GlobalAvgPool => "avgpool".into(),
        Op::Dropout { p } => format!("dropout {p}"),
        Op::Linear => "linear".into(),
    }
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn main(a: Args) -> Result<()> {
    let spec = spec_from(&a)?;
    let plan = Plan::new(&spec)?;
    let acc = account(&plan);
    let mem = memory(&plan);
    if a.json {
        let layers: Vec<_> = plan
            .layers
            .iter()
            .zip(&acc.layers)
            .map(|(l, c)| {
                json!({
                    "name": l.name, "role": l.role, "block": l.block, "op": op_name(&l.op),
                    "input": [l.input.h, l.input.w, l.input.c],
                    "output": [l.output.h, l.output.w, l.output.c],
                    "params": c.params(), "madds": c.madds,
                })
            })
            .collect();
        let mut v = json!({
            "spec": spec, "params": acc.params, "params_no_bn": acc.params_no_bn,
            "madds": acc.madds, "layers": layers,
        });
        if a.memory {
            v["memory"] = serde_json::to_value(&mem)?;
        }
        return out(&format!("{v}\n"));
    }
    let mut s = String::new();
    if !a.memory {
        s += &format!(
            "{:<22} {:<22} {:>14} {:>14} {:>11} {:>13}\n",
            "layer", "operator", "input", "output", "params", "madds"
        );
        for (l, c) in plan.layers.iter().zip(&acc.layers) {
            s += &format!(
                "{:<22} {:<22} {:>14} {:>14} {:>11} {:>13}\n",
                l.name,
                op_name(&l.op),
                l.input.to_string(),
                l.output.to_string(),
                thousands(c.params()),
                thousands(c.madds)
            );
        }
        s += &format!(
            "total: {} parameters ({} without BatchNorm), {} multiply-adds\n",
            thousands(acc.params),
            thousands(acc.params_no_bn),
            thousands(acc.madds)
        );
    } else {
        s += "Bottleneck tensors that must be materialised (the paper's Table 3, 16-bit activations):\n";
        s += &format!("{:>10} {:>9} {:>12} {:>12}\n", "size", "channels", "bytes f16", "bytes f32");
        for r in &mem.table3 {
            s += &format!(
                "{:>10} {:>9} {:>12} {:>12}\n",
                format!("{}x{}", r.h, r.w),
                r.channels,
                thousands(r.bytes_f16),
                thousands(2 * r.bytes_f16)
            );
        }
        s += &format!(
            "max: {} bytes at 16-bit ({:.0}K; the paper: 400K), {} bytes at fp32\n",
            thousands(mem.table3_max_bytes_f16),
            mem.table3_max_bytes_f16 as f64 / 1000.0,
            thousands(2 * mem.table3_max_bytes_f16)
        );
        s += &format!(
            "each block as one operation (Eq. 2): block {} input + output = {} values ({} bytes fp32)\n",
            mem.eq2_block,
            thousands(mem.eq2_values),
            thousands(4 * mem.eq2_values)
        );
        s += &format!(
            "layer by layer: largest input + output = {} values ({} bytes fp32)\n",
            thousands(mem.layerwise_peak_values),
            thousands(4 * mem.layerwise_peak_values)
        );
    }
    out(&s)
}
