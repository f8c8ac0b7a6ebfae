use anyhow::Result;
use mobilenetv2::accounting::{account, memory, multi_scale};
use mobilenetv2::plan::{ConvKind, Op, Plan};
use mobilenetv2::spec::HeadSpec;
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
    /// Head: classifier, or deeplab (Mobile DeepLabv3, the paper's Table 7; needs
    /// --output-stride 16 or 8)
    #[arg(long, default_value = "classifier")]
    head: String,
    /// DeepLab with ASPP (three 3x3 atrous branches)
    #[arg(long)]
    aspp: bool,
    /// Also count TF DeepLab's multi-scale (0.5..1.75) + left-right-flip inference (Table 7's MF)
    #[arg(long)]
    multi_scale: bool,
    /// Show the activation memory report (the paper's Table 3)
    #[arg(long)]
    memory: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn spec_from(a: &Args) -> Result<Spec> {
    let (height, width_px) = Spec::parse_resolution(&a.resolution)?;
    let head = match (a.head.as_str(), a.aspp) {
        ("classifier", false) => HeadSpec::Classifier,
        ("deeplab", aspp) => HeadSpec::DeepLab { aspp },
        ("classifier", true) => anyhow::bail!("--aspp needs --head deeplab"),
        (o, _) => anyhow::bail!("--head `{o}`: expected classifier or deeplab"),
    };
    if a.multi_scale && head.is_classifier() {
        anyhow::bail!("--multi-scale needs --head deeplab");
    }
    Ok(Spec {
        head,
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
            if c.kernel == 3 && c.kind == ConvKind::Full && c.stride == 1 {
                s = s.replace("conv3x3", "atrous3x3");
            }
            match c.activation {
                mobilenetv2::plan::Activation::Relu6 => s += " relu6",
                mobilenetv2::plan::Activation::Relu => s += " relu",
                mobilenetv2::plan::Activation::None => {}
            }
            if c.bn.is_none() {
                s += " +bias";
            }
            if c.residual {
                s += " +res";
            }
            s
        }
        Op::GlobalAvgPool => "avgpool".into(),
        Op::Dropout { p } => format!("dropout {p}"),
        Op::Linear => "linear".into(),
        Op::Concat { sources } => format!("concat x{}", sources.len()),
        Op::Upsample { align_corners } => {
            format!("bilinear{}", if *align_corners { " ac" } else { "" })
        }
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
    let ms = if a.multi_scale { Some(multi_scale(&spec)?) } else { None };
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
        if let Some(ms) = &ms {
            v["multi_scale"] = serde_json::to_value(ms)?;
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
        if let Some(ms) = &ms {
            let sizes: Vec<String> = ms.scales.iter().map(|s| format!("{}x{}", s.height, s.width)).collect();
            s += &format!(
                "multi-scale + flips: {} multiply-adds ({:.1}B; {} passes: {} at scales 0.5..1.75, each also flipped)\n",
                thousands(ms.madds),
                ms.madds as f64 / 1e9,
                ms.scales.len() as u64 * ms.passes_per_scale,
                sizes.join(", ")
            );
        }
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
