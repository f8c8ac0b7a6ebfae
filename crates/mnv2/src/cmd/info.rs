use std::path::PathBuf;

use anyhow::Result;
use mobilenetv2::accounting::{account, memory, multi_scale};
use mobilenetv2::detect::heads::{self, DetectorCost, HeadCost, HeadKind};
use mobilenetv2::plan::{ConvKind, Op, Plan};
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::Spec;
use serde_json::{json, Value};

use super::args::{BottleneckArg, PaddingArg, ShortcutArg};
use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Width multiplier (0.35 .. 1.4 in the paper)
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Input resolution, N or HxW [default: 224; 300 for the SSD heads]
    #[arg(long)]
    resolution: Option<String>,
    /// Number of classes [default: 1000; for the SSD heads 80 foreground classes (COCO, the
    /// paper's Table 6), plus the background logit]
    #[arg(long)]
    classes: Option<usize>,
    /// Expansion rate for every expanding block (Table 2 uses 6)
    #[arg(long)]
    expansion: Option<usize>,
    /// Activation after each block's projection
    #[arg(long, value_enum, default_value_t = BottleneckArg::Linear)]
    bottleneck: BottleneckArg,
    /// Residual connections
    #[arg(long, value_enum, default_value_t = ShortcutArg::Bottleneck)]
    shortcut: ShortcutArg,
    /// Padding convention [default: torch; tf for the SSD heads, as the TF Object Detection API]
    #[arg(long, value_enum)]
    padding: Option<PaddingArg>,
    /// Output stride: 32 (classification), 16 or 8 (dilated, for segmentation)
    #[arg(long, default_value_t = 32)]
    output_stride: usize,
    /// Head: classifier; deeplab (Mobile DeepLabv3, the paper's Table 7; needs
    /// --output-stride 16 or 8); ssdlite or ssd (the detectors of Tables 5 and 6: TF padding,
    /// BatchNorm epsilon 1e-3, --classes foreground classes plus background)
    #[arg(long, default_value = "classifier")]
    head: String,
    /// Account for the network of a weights file instead of a spec: any file the project loads
    /// (safetensors, .pth, ONNX, Keras, TFLite) or a detector (a TF Object Detection API SSD
    /// frozen graph .pb, or one converted to safetensors)
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "width", "resolution", "classes", "expansion", "bottleneck", "shortcut", "padding",
        "output_stride", "head", "aspp", "multi_scale",
    ])]
    weights: Option<PathBuf>,
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
    let ssd = match a.head.as_str() {
        "ssdlite" => Some(HeadKind::SsdLite),
        "ssd" => Some(HeadKind::Ssd),
        _ => None,
    };
    let default_res = if ssd.is_some() { "300" } else { "224" };
    let (height, width_px) = Spec::parse_resolution(a.resolution.as_deref().unwrap_or(default_res))?;
    if a.aspp && a.head != "deeplab" {
        anyhow::bail!("--aspp needs --head deeplab");
    }
    if a.multi_scale && a.head != "deeplab" {
        anyhow::bail!("--multi-scale needs --head deeplab");
    }
    let head = match a.head.as_str() {
        "classifier" => HeadSpec::Classifier,
        "deeplab" => HeadSpec::DeepLab { aspp: a.aspp },
        _ if ssd.is_some() => HeadSpec::Classifier, // replaced below
        o => anyhow::bail!("--head `{o}`: expected classifier, deeplab, ssdlite or ssd"),
    };
    // The detectors' conventions (TF padding, BatchNorm epsilon 1e-3, background logit) are
    // detect::heads::spec's; the flags given override the rest.
    let base = match ssd {
        Some(kind) => {
            let foreground = a.classes.unwrap_or(80);
            if foreground == 0 {
                anyhow::bail!("--classes must be at least 1 for a detector");
            }
            heads::spec(kind, foreground + 1, a.width, height)
        }
        None => Spec { head, classes: a.classes.unwrap_or(1000), ..Spec::default() },
    };
    let padding = a.padding.map(Into::into).unwrap_or(base.padding);
    Ok(Spec {
        width: a.width,
        height,
        width_px,
        expansion: a.expansion,
        bottleneck: a.bottleneck.into(),
        shortcut: a.shortcut.into(),
        padding,
        output_stride: a.output_stride,
        ..base
    })
}

/// A detector's cost split as JSON: each part with both parameter readings.
fn cost_json(c: &HeadCost) -> Value {
    json!({
        "params": c.params(), "params_no_bn": c.params_no_bn(), "madds": c.madds,
        "weights": c.weights, "biases": c.biases, "bn": c.bn, "bn_stats": c.bn_stats,
    })
}

fn detector_json(d: &DetectorCost) -> Value {
    json!({
        "backbone": cost_json(&d.backbone), "extra": cost_json(&d.extra),
        "predictors": cost_json(&d.predictors), "head": cost_json(&d.head()), "total": cost_json(&d.total()),
    })
}

/// The plan of a weights file: a TF Object Detection API graph through the detector's import,
/// anything else through `Model::load`.
fn plan_of_file(path: &std::path::Path) -> Result<Plan> {
    if mobilenetv2::detect::is_graph(path)? {
        let det = mobilenetv2::detect::Detector::load(path, Default::default())?;
        return Ok(det.model().plan.clone());
    }
    Ok(mobilenetv2::Model::load(path)?.plan)
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
    let plan = match &a.weights {
        Some(path) => plan_of_file(path)?,
        None => Plan::new(&spec_from(&a)?)?,
    };
    let spec = plan.spec.clone();
    let acc = account(&plan);
    let det = plan.ssd("").is_ok().then(|| DetectorCost::of(&plan)).transpose()?;
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
        if let Some(path) = &a.weights {
            v["weights"] = json!(path.display().to_string());
        }
        if let Some(d) = &det {
            v["detector"] = detector_json(d);
        }
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
        // Columns as wide as the longest name (the SSD head's are TF scopes).
        let nw = plan.layers.iter().map(|l| l.name.len()).max().unwrap_or(0).max(22);
        s += &format!(
            "{:<nw$} {:<22} {:>14} {:>14} {:>11} {:>13}\n",
            "layer", "operator", "input", "output", "params", "madds"
        );
        for (l, c) in plan.layers.iter().zip(&acc.layers) {
            s += &format!(
                "{:<nw$} {:<22} {:>14} {:>14} {:>11} {:>13}\n",
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
        if let Some(d) = &det {
            for (part, c) in [("backbone", d.backbone), ("extra layers", d.extra), ("predictors", d.predictors)] {
                s += &format!(
                    "  {part:<13} {:>11} parameters ({:>11} without BatchNorm), {:>13} multiply-adds\n",
                    thousands(c.params()),
                    thousands(c.params_no_bn()),
                    thousands(c.madds)
                );
            }
        }
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
