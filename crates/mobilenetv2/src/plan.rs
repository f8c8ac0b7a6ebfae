//! The spec expanded into layers with shapes: the only description of the network.
//!
//! Accounting, the inference engines, weight import and export, training and the heads all
//! read a [`Plan`]. Layer names are torchvision's module paths (`features.2.conv.0.0`), so the
//! plan also says which tensors a weight file must hold.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::spec::{BottleneckActivation, HeadSpec, Padding, Shortcut, Spec};

/// Spatial size and channels of one image's activation (stored NHWC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Height in pixels (rows).
    pub h: usize,
    /// Width in pixels (columns).
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Shape {
    /// A shape of `h` rows, `w` columns and `c` channels.
    pub fn new(h: usize, w: usize, c: usize) -> Self {
        Shape { h, w, c }
    }
    /// Number of values.
    pub fn len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Whether the shape holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Shape> for [usize; 3] {
    /// `[h, w, c]`.
    fn from(s: Shape) -> [usize; 3] {
        [s.h, s.w, s.c]
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.h, self.w, self.c)
    }
}

/// Zeros added around the input of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pad {
    /// Rows of zeros above.
    pub top: usize,
    /// Rows of zeros below.
    pub bottom: usize,
    /// Columns of zeros on the left.
    pub left: usize,
    /// Columns of zeros on the right.
    pub right: usize,
}

/// The three kinds of convolution MobileNetV2 uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvKind {
    /// Dense 3x3 convolution (the stem, DeepLab's atrous ASPP branches).
    Full,
    /// 1x1 convolution: a matrix product over channels.
    Pointwise,
    /// 3x3 convolution with one filter per channel.
    Depthwise,
}

/// The activation after a convolution's BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// None: the linear bottleneck (projection) layers.
    None,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Plain ReLU (DeepLab's head).
    Relu,
}

impl Activation {
    /// The clamp range that implements the activation in a kernel epilogue.
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
            Activation::Relu => (0.0, f32::INFINITY),
        }
    }
}

/// A convolution followed by BatchNorm (folded at inference) or its own bias, an optional
/// activation and an optional residual add of the enclosing block's input, in that order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conv {
    /// Full, pointwise or depthwise.
    pub kind: ConvKind,
    /// Kernel size (square): 3, or 1 for pointwise.
    pub kernel: usize,
    /// Stride along both axes.
    pub stride: usize,
    /// Dilation along both axes (above 1 only with an output stride below 32).
    pub dilation: usize,
    /// Zeros around the input, from [`conv_pad`] under the spec's padding.
    pub pad: Pad,
    /// Channel groups: the input channels for depthwise, 1 otherwise.
    pub groups: usize,
    /// The activation after BatchNorm.
    pub activation: Activation,
    /// Whether the block's input is added after the activation (projection layers of blocks
    /// with a shortcut).
    pub residual: bool,
    /// torchvision name of the BatchNorm module after the convolution; `None` for a
    /// convolution with its own bias (`<name>.bias`) and no BatchNorm (DeepLab's logits, SSD's
    /// predictors).
    pub bn: Option<String>,
}

/// What a layer computes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Op {
    /// A convolution with BatchNorm and activation.
    Conv(Conv),
    /// Mean over the spatial extent.
    GlobalAvgPool,
    /// Identity at inference.
    Dropout {
        /// Probability of zeroing a value in training.
        p: f32,
    },
    /// Fully connected layer with bias.
    Linear,
    /// Channel concatenation of the outputs of these plan layers, in order (DeepLab's
    /// branches). The layer's own [`Layer::source`] is unused.
    Concat {
        /// Indices into [`Plan::layers`] of the concatenated outputs.
        sources: Vec<usize>,
    },
    /// Bilinear resize of the input to the layer's output size. `align_corners: true` is TF
    /// DeepLab's convention (`tf.image.resize_bilinear(..., align_corners=True)`, PyTorch's
    /// `F.interpolate(..., mode="bilinear", align_corners=True)`): corner pixels map onto
    /// corner pixels, source = destination * (in - 1) / (out - 1). `false` is half-pixel
    /// centres (PyTorch's default, TF2's `tf.image.resize`).
    Upsample {
        /// Corner-aligned (TF DeepLab) rather than half-pixel sampling.
        align_corners: bool,
    },
}

/// What a layer is in the network, for reports and for finding taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The first 3x3 stride-2 convolution (`features.0`).
    Stem,
    /// A block's 1x1 expansion to `t` times its input channels.
    Expand,
    /// A block's 3x3 depthwise convolution.
    Depthwise,
    /// A block's 1x1 linear projection (the bottleneck).
    Project,
    /// The 1x1 convolution to 1280 (times the width multiplier, if above 1) channels.
    LastConv,
    /// Global average pooling.
    Pool,
    /// Dropout before the classifier.
    Dropout,
    /// The fully connected layer that produces the logits.
    Classifier,
    /// DeepLab: the image-pooling branch's 1x1 convolution.
    ImagePool,
    /// DeepLab: an ASPP branch (the 1x1 `aspp0` or a 3x3 atrous one).
    Aspp,
    /// DeepLab: the concatenation of the branches.
    Concat,
    /// DeepLab: the 1x1 projection of the concatenation.
    Projection,
    /// DeepLab: the 1x1 convolution with bias to the per-pixel logits.
    Logits,
    /// DeepLab: a bilinear upsampling.
    Upsample,
    /// SSD: a layer of the extra feature maps (`layer_19_*`).
    Extra,
    /// SSD: a layer of a box or class predictor (`BoxPredictor_k/*`).
    Predictor,
}

/// One layer of the network: what it computes, where it sits, its input and output shapes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layer {
    /// torchvision module path of the layer's weights (`features.2.conv.0.0`, `classifier.1`).
    pub name: String,
    /// What the layer is in the network.
    pub role: Role,
    /// torchvision `features` index of the inverted residual block holding the layer.
    pub block: Option<usize>,
    /// The layer whose output this layer reads; `None` for the layer before it (the image for
    /// the first). Heads that read several feature maps (detection, segmentation) set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<usize>,
    /// The computation.
    pub op: Op,
    /// Shape of one image's input.
    pub input: Shape,
    /// Shape of one image's output.
    pub output: Shape,
}

impl Layer {
    /// The convolution, if the layer is one.
    pub fn conv(&self) -> Option<&Conv> {
        match &self.op {
            Op::Conv(c) => Some(c),
            _ => None,
        }
    }
}

/// One inverted residual block: indices into [`Plan::layers`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Block {
    /// torchvision `features` index (1 for the first block).
    pub index: usize,
    /// The 1x1 expansion layer; `None` when the expansion factor is 1 (the first block).
    pub expand: Option<usize>,
    /// The 3x3 depthwise layer.
    pub depthwise: usize,
    /// The 1x1 linear projection layer.
    pub project: usize,
    /// Shape of one image's input to the block.
    pub input: Shape,
    /// Channels of the expanded tensor.
    pub hidden: usize,
    /// Shape of one image's output of the block.
    pub output: Shape,
    /// Stride of the depthwise layer.
    pub stride: usize,
    /// Dilation of the depthwise layer.
    pub dilation: usize,
    /// Whether the block adds its input to its output (stride 1, same channels).
    pub residual: bool,
}

impl Block {
    /// Index of the first layer of the block.
    pub fn first_layer(&self) -> usize {
        self.expand.unwrap_or(self.depthwise)
    }
}

/// A place in the network whose feature map a head can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// Output of the stem convolution (`features.0`).
    Stem,
    /// Output of the block with this torchvision `features` index.
    Block(usize),
    /// The expanded tensor (after ReLU6) of a block, as SSDLite reads block 15
    /// (`features.14`, slim's `layer_15/expansion_output`).
    Expansion(usize),
    /// Output of the last 1x1 convolution (`features.18` for Table 2).
    LastConv,
}

/// The classification head: torchvision's `avgpool` and `classifier` (dropout, linear), as
/// indices into [`Plan::layers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClassifierHead {
    /// Global average pooling of the last conv's output.
    pub pool: usize,
    /// Dropout (identity at inference).
    pub dropout: usize,
    /// The fully connected layer with bias: the logits.
    pub classifier: usize,
}

/// Mobile DeepLabv3 (the paper's section 6.3) as indices into [`Plan::layers`]. Layer names
/// follow TF DeepLab's scopes under `head.` (torchvision-style `.0` conv / `.1` BatchNorm):
///
/// | layer | name | op |
/// |---|---|---|
/// | `pool` | `head.pool` | global average pool of the features |
/// | `image_pool` | `head.image_pooling.0` (BN `.1`) | 1x1 conv 256 + BN + ReLU |
/// | `image_pool_upsample` | `head.image_pooling_upsample` | bilinear (a broadcast) to the features' size |
/// | `aspp[0]` | `head.aspp0.0` (BN `.1`) | 1x1 conv 256 + BN + ReLU on the features |
/// | `aspp[1..4]` | `head.aspp1.0` .. `head.aspp3.0` | 3x3 conv 256, dilation 6/12/18 at OS 16 (x2 at OS 8) + BN + ReLU (ASPP only) |
/// | `concat` | `head.concat` | channels: image pooling, aspp0, aspp1.. (TF DeepLab's order) |
/// | `projection` | `head.concat_projection.0` (BN `.1`) | 1x1 conv 256 + BN + ReLU |
/// | `dropout` | `head.dropout` | p = 0.1 (TF DeepLab's keep_prob 0.9); identity at inference |
/// | `logits` | `head.logits` | 1x1 conv with bias to [`Spec::classes`] |
/// | `upsample` | `head.upsample` | bilinear, align_corners (TF DeepLab), to the input size |
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeepLabHead {
    /// The backbone layer whose output the head reads: the last block's projection (the
    /// 320-channel "second last feature map", TF's `layer_18`).
    pub features: usize,
    /// Global average pooling of the features (the image-pooling branch).
    pub pool: usize,
    /// The image-pooling branch's 1x1 conv (on the pooled features).
    pub image_pool: usize,
    /// The pooled branch broadcast back to the feature map's size.
    pub image_pool_upsample: usize,
    /// `aspp0` (1x1), then the atrous 3x3 branches if any.
    pub aspp: Vec<usize>,
    /// Concatenation of the branches along channels.
    pub concat: usize,
    /// The 1x1 projection of the concatenation.
    pub projection: usize,
    /// Dropout (identity at inference).
    pub dropout: usize,
    /// The 1x1 conv to per-pixel logits.
    pub logits: usize,
    /// Bilinear upsampling of the logits to the input size.
    pub upsample: usize,
}

/// DeepLab's dropout before the logits (TF DeepLab: `keep_prob=0.9`).
pub const DEEPLAB_DROPOUT: f32 = 0.1;
/// Channels of every DeepLab branch and of the projection.
pub const DEEPLAB_DEPTH: usize = 256;

/// SSDLite / SSD (the paper's section 6.2) as the TF Object Detection API builds it, as indices
/// into [`Plan::layers`]. Six feature maps: block 14's expansion output ([`Tap::Expansion`],
/// TF's `layer_15/expansion_output`, output stride 16), the last conv (`layer_19`, stride 32)
/// and four extra layers on it; each extra layer is a 1x1 conv to `d/2`, then a 3x3 stride-2
/// layer to `d` (SSDLite: a depthwise 3x3 and a 1x1 to `d`; SSD: a regular 3x3), `d` = 512,
/// 256, 256, 128 times the width multiplier (at least 16), BatchNorm and ReLU6 after each.
/// Per map a box predictor (4 numbers per anchor) and a class predictor ([`Spec::classes`]
/// logits per anchor): SSDLite: a 3x3 depthwise + BatchNorm + ReLU6 then a 1x1 conv with bias;
/// SSD: a 3x3 conv with bias. Anchors per location: [`SSD_ANCHORS`].
///
/// Layer names are the TF scopes under `head.` with `/` as `.`, convs `.0` and their BatchNorm
/// `.1` (`head.layer_19_1_Conv2d_2_1x1_256.0`, `head.BoxPredictor_0.ClassPredictor_depthwise.0`),
/// a predictor's last conv without suffix (`head.BoxPredictor_0.ClassPredictor`, bias `.bias`).
/// The predictors' outputs in map order, each read as `[h * w * anchors, 4 | classes]`, are
/// TF's raw `box_encodings` and class logits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SsdHead {
    /// The layers whose outputs are the six feature maps.
    pub maps: Vec<usize>,
    /// The extra layers, in order.
    pub extra: Vec<usize>,
    /// Per map, the box predictor's last layer (`[h, w, 4 * anchors]`).
    pub boxes: Vec<usize>,
    /// Per map, the class predictor's last layer (`[h, w, classes * anchors]`).
    pub classes: Vec<usize>,
    /// Anchors per location of each map.
    pub anchors: Vec<usize>,
}

/// The TF Object Detection API's anchors per location of SSD's six maps
/// (`reduce_boxes_in_lowest_layer`: 3 on the first, 6 on the others).
pub const SSD_ANCHORS: [usize; 6] = [3, 6, 6, 6, 6, 6];
/// Depths of SSD's four extra layers before the width multiplier.
pub const SSD_EXTRA_DEPTHS: [usize; 4] = [512, 256, 256, 128];
/// Minimum depth of an extra layer (the TF Object Detection API's `min_depth`).
pub const SSD_MIN_DEPTH: usize = 16;

/// What the network computes on top of the backbone, as indices into [`Plan::layers`]. Which
/// head a plan has is chosen by [`Spec::head`]; a head's layers follow the backbone's in
/// [`Plan::layers`] and read it through [`Layer::source`] where they do not simply follow.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Head {
    /// ImageNet-style classification.
    Classifier(ClassifierHead),
    /// Semantic segmentation: per-pixel logits at the input size.
    DeepLab(DeepLabHead),
    /// Object detection: SSDLite's (or SSD's) raw box encodings and class logits.
    #[serde(rename = "ssdlite")]
    SsdLite(SsdHead),
}

/// The network expanded into layers with shapes: a backbone (stem, [`Plan::blocks`], last
/// conv) plus a [`Head`]. Shapes are per image, NHWC; layer names are torchvision's.
///
/// ```
/// use mobilenetv2::plan::{Head, Op, Role, Shape, Tap};
/// use mobilenetv2::{Plan, Spec};
///
/// let plan = Plan::new(&Spec::new(1.0, 224))?;
/// assert_eq!(plan.input(), Shape::new(224, 224, 3));
/// assert_eq!(plan.output(), Shape::new(1, 1, 1000));
/// assert_eq!(plan.blocks.len(), 17);
///
/// // Blocks are addressed by torchvision `features` index; taps resolve to layers.
/// let b14 = plan.block(14).unwrap();
/// assert_eq!((b14.input.c, b14.hidden, b14.output.c), (96, 576, 160));
/// let l = plan.tap_layer(Tap::Expansion(14))?;
/// assert_eq!(plan.layers[l].name, "features.14.conv.0.0");
/// assert_eq!(plan.layers[l].role, Role::Expand);
/// assert_eq!(plan.layers[l].output, Shape::new(14, 14, 576));
///
/// // The head: `plan.head` is data; `classifier` hands out the classification head's layers.
/// assert!(matches!(plan.head, Head::Classifier(_)));
/// let head = plan.classifier("this example")?;
/// assert!(matches!(plan.layers[head.pool].op, Op::GlobalAvgPool));
/// assert_eq!(plan.layers[head.classifier].name, "classifier.1");
/// assert_eq!(plan.layers[plan.last_conv].output, Shape::new(7, 7, 1280));
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// The spec this plan expands.
    pub spec: Spec,
    /// Every layer, in execution order: stem, blocks, last conv, then the head's.
    pub layers: Vec<Layer>,
    /// The inverted residual blocks, in order.
    pub blocks: Vec<Block>,
    /// The last layer of the backbone: the last 1x1 convolution (`features.18` for Table 2),
    /// or, for DeepLab, which reads the second last feature map and has no last conv, the
    /// last block's projection (its role says which; [`Tap::LastConv`] exists only for the
    /// former).
    pub last_conv: usize,
    /// The layers on top of the backbone.
    pub head: Head,
}

/// Zeros before and after one spatial axis of a convolution's input under `padding`: the one
/// place the project computes PyTorch's symmetric and TensorFlow's 'SAME' padding (every
/// importer and the plan call it).
pub fn conv_pad(padding: Padding, size: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let eff = dilation * (kernel - 1) + 1;
    match padding {
        Padding::Torch => (dilation * (kernel - 1) / 2, dilation * (kernel - 1) / 2),
        Padding::Tf => {
            let out = size.div_ceil(stride);
            let total = ((out - 1) * stride + eff).saturating_sub(size);
            (total / 2, total - total / 2)
        }
    }
}

fn conv_out(size: usize, before: usize, after: usize, kernel: usize, stride: usize, dilation: usize) -> usize {
    let eff = dilation * (kernel - 1) + 1;
    (size + before + after - eff) / stride + 1
}

struct Builder<'a> {
    spec: &'a Spec,
    layers: Vec<Layer>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: String,
        bn: Option<String>,
        role: Role,
        block: Option<usize>,
        kind: ConvKind,
        input: Shape,
        out_c: usize,
        stride: usize,
        dilation: usize,
        activation: Activation,
        residual: bool,
    ) -> Shape {
        self.conv_k(name, bn, role, block, kind, input, out_c, stride, dilation, activation, residual, None)
    }

    /// [`Builder::conv`] reading the output of plan layer `source` when given.
    #[allow(clippy::too_many_arguments)]
    fn conv_k(
        &mut self,
        name: String,
        bn: Option<String>,
        role: Role,
        block: Option<usize>,
        kind: ConvKind,
        input: Shape,
        out_c: usize,
        stride: usize,
        dilation: usize,
        activation: Activation,
        residual: bool,
        source: Option<usize>,
    ) -> Shape {
        let kernel = if kind == ConvKind::Pointwise { 1 } else { 3 };
        let (top, bottom) = conv_pad(self.spec.padding, input.h, kernel, stride, dilation);
        let (left, right) = conv_pad(self.spec.padding, input.w, kernel, stride, dilation);
        let output = Shape::new(
            conv_out(input.h, top, bottom, kernel, stride, dilation),
            conv_out(input.w, left, right, kernel, stride, dilation),
            out_c,
        );
        let groups = if kind == ConvKind::Depthwise { input.c } else { 1 };
        self.layers.push(Layer {
            name,
            role,
            block,
            source,
            op: Op::Conv(Conv {
                kind,
                kernel,
                stride,
                dilation,
                pad: Pad { top, bottom, left, right },
                groups,
                activation,
                residual,
                bn,
            }),
            input,
            output,
        });
        output
    }
}

/// Pushes DeepLab's layers (see [`DeepLabHead`]) reading `features` (shape `x`).
fn deeplab(b: &mut Builder, features: usize, x: Shape, image: Shape) -> DeepLabHead {
    let spec = b.spec;
    let d = DEEPLAB_DEPTH;
    let relu = Activation::Relu;
    let push = |b: &mut Builder, name: &str, role, source, op, input, output| {
        b.layers.push(Layer { name: name.into(), role, block: None, source, op, input, output });
        b.layers.len() - 1
    };
    let pooled = Shape::new(1, 1, x.c);
    let pool = push(b, "head.pool", Role::Pool, None, Op::GlobalAvgPool, x, pooled);
    let conv = |b: &mut Builder, scope: &str, role, kind, input, out_c, dilation, activation, bn: bool, source| {
        let name = if bn { format!("{scope}.0") } else { scope.to_string() };
        let bn = bn.then(|| format!("{scope}.1"));
        b.conv_k(name, bn, role, None, kind, input, out_c, 1, dilation, activation, false, source);
        b.layers.len() - 1
    };
    let image_pool =
        conv(b, "head.image_pooling", Role::ImagePool, ConvKind::Pointwise, pooled, d, 1, relu, true, None);
    let image_pool_upsample = push(
        b,
        "head.image_pooling_upsample",
        Role::Upsample,
        None,
        Op::Upsample { align_corners: true },
        Shape::new(1, 1, d),
        Shape::new(x.h, x.w, d),
    );
    let mut aspp = vec![conv(b, "head.aspp0", Role::Aspp, ConvKind::Pointwise, x, d, 1, relu, true, Some(features))];
    for (i, rate) in spec.head.atrous_rates(spec.output_stride).into_iter().enumerate() {
        let scope = format!("head.aspp{}", i + 1);
        aspp.push(conv(b, &scope, Role::Aspp, ConvKind::Full, x, d, rate, relu, true, Some(features)));
    }
    let sources: Vec<usize> = std::iter::once(image_pool_upsample).chain(aspp.iter().copied()).collect();
    let cat = Shape::new(x.h, x.w, d * sources.len());
    let concat = push(b, "head.concat", Role::Concat, None, Op::Concat { sources }, cat, cat);
    let projection =
        conv(b, "head.concat_projection", Role::Projection, ConvKind::Pointwise, cat, d, 1, relu, true, None);
    let feat = Shape::new(x.h, x.w, d);
    let dropout = push(b, "head.dropout", Role::Dropout, None, Op::Dropout { p: DEEPLAB_DROPOUT }, feat, feat);
    let logits =
        conv(b, "head.logits", Role::Logits, ConvKind::Pointwise, feat, spec.classes, 1, Activation::None, false, None);
    let upsample = push(
        b,
        "head.upsample",
        Role::Upsample,
        None,
        Op::Upsample { align_corners: true },
        Shape::new(x.h, x.w, spec.classes),
        Shape::new(image.h, image.w, spec.classes),
    );
    DeepLabHead { features, pool, image_pool, image_pool_upsample, aspp, concat, projection, dropout, logits, upsample }
}

/// Pushes SSD's layers (see [`SsdHead`]) on the maps `t16` (layer index, shape) and `t32`.
fn ssd(b: &mut Builder, separable: bool, t16: (usize, Shape), t32: (usize, Shape)) -> SsdHead {
    let (width, classes) = (b.spec.width, b.spec.classes);
    let relu6 = Activation::Relu6;
    // A conv + BN + ReLU6 named after its TF scope, reading `source` (`None`: the layer before).
    let conv = |b: &mut Builder, scope: &str, role, kind, input, out_c, stride, source| {
        let name = format!("head.{}", scope.replace('/', "."));
        b.conv_k(
            format!("{name}.0"),
            Some(format!("{name}.1")),
            role,
            None,
            kind,
            input,
            out_c,
            stride,
            1,
            relu6,
            false,
            source,
        );
        b.layers.len() - 1
    };
    let mut maps = vec![t16, t32];
    let mut extra = Vec::new();
    let (mut prev, mut prev_shape) = t32;
    for (i, &d) in SSD_EXTRA_DEPTHS.iter().enumerate() {
        let idx = i + 2;
        let depth = |d: usize| ((d as f64 * width) as usize).max(SSD_MIN_DEPTH);
        let (half, full) = (depth(d / 2), depth(d));
        let first = conv(
            b,
            &format!("layer_19_1_Conv2d_{idx}_1x1_{half}"),
            Role::Extra,
            ConvKind::Pointwise,
            prev_shape,
            half,
            1,
            Some(prev),
        );
        extra.push(first);
        let mid = b.layers[first].output;
        let scope = format!("layer_19_2_Conv2d_{idx}_3x3_s2_{full}");
        if separable {
            let dw = conv(b, &format!("{scope}_depthwise"), Role::Extra, ConvKind::Depthwise, mid, half, 2, None);
            extra.push(dw);
            let x = b.layers[dw].output;
            extra.push(conv(b, &scope, Role::Extra, ConvKind::Pointwise, x, full, 1, None));
        } else {
            extra.push(conv(b, &scope, Role::Extra, ConvKind::Full, mid, full, 2, None));
        }
        prev = b.layers.len() - 1;
        prev_shape = b.layers[prev].output;
        maps.push((prev, prev_shape));
    }
    let (mut boxes, mut class_layers) = (Vec::new(), Vec::new());
    for (k, (&(src, shape), &a)) in maps.iter().zip(&SSD_ANCHORS).enumerate() {
        for (what, n) in [("BoxEncodingPredictor", 4 * a), ("ClassPredictor", classes * a)] {
            let scope = format!("BoxPredictor_{k}/{what}");
            let name = format!("head.{}", scope.replace('/', "."));
            let (kind, source) = if separable {
                conv(
                    b,
                    &format!("{scope}_depthwise"),
                    Role::Predictor,
                    ConvKind::Depthwise,
                    shape,
                    shape.c,
                    1,
                    Some(src),
                );
                (ConvKind::Pointwise, None)
            } else {
                (ConvKind::Full, Some(src))
            };
            b.conv_k(name, None, Role::Predictor, None, kind, shape, n, 1, 1, Activation::None, false, source);
            let last = b.layers.len() - 1;
            if what == "ClassPredictor" {
                class_layers.push(last)
            } else {
                boxes.push(last)
            }
        }
    }
    SsdHead {
        maps: maps.iter().map(|m| m.0).collect(),
        extra,
        boxes,
        classes: class_layers,
        anchors: SSD_ANCHORS.to_vec(),
    }
}

impl Plan {
    /// Expands a spec into layers. Fails only if the spec is invalid ([`Error::InvalidSpec`]).
    pub fn new(spec: &Spec) -> Result<Plan> {
        spec.validate()?;
        let mut b = Builder { spec, layers: Vec::new() };
        let mut blocks = Vec::new();
        let relu6 = Activation::Relu6;

        let input = Shape::new(spec.height, spec.width_px, 3);
        let mut x = b.conv(
            "features.0.0".into(),
            Some("features.0.1".into()),
            Role::Stem,
            None,
            ConvKind::Full,
            input,
            spec.stem_channels(),
            2,
            1,
            relu6,
            false,
        );
        // Slim's output_stride rule: once the running stride reaches the target, later
        // strides become 1 and multiply the dilation of the layers after them.
        let mut current_stride = 2;
        let mut rate = 1;
        let mut index = 1;
        let project_act = match spec.bottleneck {
            BottleneckActivation::Linear => Activation::None,
            BottleneckActivation::Relu6 => Activation::Relu6,
        };
        for stage in &spec.stages {
            let t = spec.stage_expansion(stage);
            let out_c = spec.stage_channels(stage);
            for r in 0..stage.n {
                let s = if r == 0 { stage.s } else { 1 };
                let (stride, dilation) = if current_stride >= spec.output_stride && s > 1 {
                    let d = rate;
                    rate *= s;
                    (1, d)
                } else {
                    current_stride *= s;
                    (s, rate)
                };
                let block_in = x;
                let hidden = (block_in.c as f64 * t as f64).round() as usize;
                let residual = spec.shortcut == Shortcut::Bottleneck && stride == 1 && block_in.c == out_c;
                let p = format!("features.{index}.conv");
                let mut li = 0;
                let expand = if t != 1 {
                    x = b.conv(
                        format!("{p}.0.0"),
                        Some(format!("{p}.0.1")),
                        Role::Expand,
                        Some(index),
                        ConvKind::Pointwise,
                        x,
                        hidden,
                        1,
                        1,
                        relu6,
                        false,
                    );
                    li = 1;
                    Some(b.layers.len() - 1)
                } else {
                    None
                };
                x = b.conv(
                    format!("{p}.{li}.0"),
                    Some(format!("{p}.{li}.1")),
                    Role::Depthwise,
                    Some(index),
                    ConvKind::Depthwise,
                    x,
                    hidden,
                    stride,
                    dilation,
                    relu6,
                    false,
                );
                let depthwise = b.layers.len() - 1;
                x = b.conv(
                    format!("{p}.{}", li + 1),
                    Some(format!("{p}.{}", li + 2)),
                    Role::Project,
                    Some(index),
                    ConvKind::Pointwise,
                    x,
                    out_c,
                    1,
                    1,
                    project_act,
                    residual,
                );
                blocks.push(Block {
                    index,
                    expand,
                    depthwise,
                    project: b.layers.len() - 1,
                    input: block_in,
                    hidden,
                    output: x,
                    stride,
                    dilation,
                    residual,
                });
                index += 1;
            }
        }
        if !matches!(spec.head, HeadSpec::DeepLab { .. }) {
            x = b.conv(
                format!("features.{index}.0"),
                Some(format!("features.{index}.1")),
                Role::LastConv,
                None,
                ConvKind::Pointwise,
                x,
                spec.last_channels(),
                1,
                1,
                relu6,
                false,
            );
        }
        let last_conv = b.layers.len() - 1;
        let head = match spec.head {
            HeadSpec::Classifier => {
                let pooled = Shape::new(1, 1, x.c);
                let mut push = |name: &str, role, op, input, output| {
                    b.layers.push(Layer { name: name.into(), role, block: None, source: None, op, input, output })
                };
                push("avgpool", Role::Pool, Op::GlobalAvgPool, x, pooled);
                push("classifier.0", Role::Dropout, Op::Dropout { p: spec.dropout }, pooled, pooled);
                push("classifier.1", Role::Classifier, Op::Linear, pooled, Shape::new(1, 1, spec.classes));
                let n = b.layers.len();
                Head::Classifier(ClassifierHead { pool: n - 3, dropout: n - 2, classifier: n - 1 })
            }
            HeadSpec::DeepLab { .. } => Head::DeepLab(deeplab(&mut b, last_conv, x, input)),
            HeadSpec::SsdLite { separable } => {
                let e = blocks.iter().find(|bl| bl.index == 14).and_then(|bl| bl.expand).ok_or_else(|| {
                    Error::InvalidSpec("the SSD head reads block 14's expansion: the stage table has none".into())
                })?;
                let t16 = (e, b.layers[e].output);
                Head::SsdLite(ssd(&mut b, separable, t16, (last_conv, x)))
            }
        };
        Ok(Plan { spec: spec.clone(), layers: b.layers, blocks, last_conv, head })
    }

    /// Shape of one input image (channels last).
    pub fn input(&self) -> Shape {
        self.layers[0].input
    }

    /// Shape of the logits of one image.
    pub fn output(&self) -> Shape {
        self.layers.last().expect("a plan has layers").output
    }

    /// Index of the stem convolution (`features.0`).
    pub fn stem(&self) -> usize {
        0
    }

    /// Whether the first block reads the stem's output on the fly, so that the stem's
    /// activation never has to exist whole: it has no expand conv and no residual (either
    /// would read the stem's output twice). The fused engine and training both ask this.
    pub fn stem_feeds_first_block(&self) -> bool {
        self.blocks.first().is_some_and(|b| b.expand.is_none() && !b.residual)
    }

    /// The classification head, or an error naming `what` needs one (the fast engines, the
    /// int8 scheme and the exporters run classifiers today).
    pub fn classifier(&self, what: &str) -> Result<ClassifierHead> {
        match self.head {
            Head::Classifier(h) => Ok(h),
            _ => Err(Error::Unsupported(format!("{what} needs a classification head"))),
        }
    }

    /// The DeepLab head, or an error naming `what` needs one.
    pub fn deeplab(&self, what: &str) -> Result<&DeepLabHead> {
        match &self.head {
            Head::DeepLab(h) => Ok(h),
            _ => Err(Error::Unsupported(format!("{what} needs a DeepLab head"))),
        }
    }

    /// The SSD head, or an error naming `what` needs one.
    pub fn ssd(&self, what: &str) -> Result<&SsdHead> {
        match &self.head {
            Head::SsdLite(h) => Ok(h),
            _ => Err(Error::Unsupported(format!("{what} needs an SSD head"))),
        }
    }

    /// The index of the layer with this torchvision module name.
    pub fn layer_named(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// The block with a torchvision `features` index.
    pub fn block(&self, index: usize) -> Option<&Block> {
        self.blocks.iter().find(|b| b.index == index)
    }

    /// Index of the layer whose output is the tap; [`Error::InvalidSpec`] if the network has
    /// no such block (or, for [`Tap::Expansion`], the block has no expansion).
    pub fn tap_layer(&self, tap: Tap) -> Result<usize> {
        let missing = |what: String| Error::InvalidSpec(format!("no tap {what} in this network"));
        match tap {
            Tap::Stem => Ok(0),
            Tap::Block(i) => self.block(i).map(|b| b.project).ok_or_else(|| missing(format!("block {i}"))),
            Tap::Expansion(i) => self
                .block(i)
                .ok_or_else(|| missing(format!("block {i}")))?
                .expand
                .ok_or_else(|| missing(format!("expansion of block {i} (t = 1)"))),
            Tap::LastConv if self.layers[self.last_conv].role == Role::LastConv => Ok(self.last_conv),
            Tap::LastConv => Err(missing("last conv (this head reads the last block)".into())),
        }
    }

    /// The block a layer belongs to.
    pub fn block_of(&self, layer: usize) -> Option<&Block> {
        self.layers[layer].block.and_then(|i| self.block(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table2_shapes_at_224() {
        let plan = Plan::new(&Spec::default()).unwrap();
        assert_eq!(plan.blocks.len(), 17);
        assert_eq!(plan.layers[0].output, Shape::new(112, 112, 32));
        let outs: Vec<Shape> = plan.blocks.iter().map(|b| b.output).collect();
        assert_eq!(outs[0], Shape::new(112, 112, 16));
        assert_eq!(outs[1], Shape::new(56, 56, 24));
        assert_eq!(outs[3], Shape::new(28, 28, 32));
        assert_eq!(outs[6], Shape::new(14, 14, 64));
        assert_eq!(outs[10], Shape::new(14, 14, 96));
        assert_eq!(outs[13], Shape::new(7, 7, 160));
        assert_eq!(outs[16], Shape::new(7, 7, 320));
        let residuals: Vec<usize> = plan.blocks.iter().filter(|b| b.residual).map(|b| b.index).collect();
        assert_eq!(residuals, vec![3, 5, 6, 8, 9, 10, 12, 13, 15, 16]);
        assert_eq!(plan.output(), Shape::new(1, 1, 1000));
        assert_eq!(plan.layers[plan.tap_layer(Tap::LastConv).unwrap()].name, "features.18.0");
    }

    #[test]
    fn torchvision_names() {
        let plan = Plan::new(&Spec::default()).unwrap();
        let names: Vec<&str> = plan.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(&names[..4], ["features.0.0", "features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0"]);
        let b2 = plan.block(2).unwrap();
        assert_eq!(plan.layers[b2.project].name, "features.2.conv.2");
        assert_eq!(plan.layers[b2.project].conv().unwrap().bn.as_deref(), Some("features.2.conv.3"));
    }

    #[test]
    fn ssdlite_tap_is_block_15_expansion_at_stride_16() {
        let plan = Plan::new(&Spec::new(1.0, 320)).unwrap();
        let l = &plan.layers[plan.tap_layer(Tap::Expansion(14)).unwrap()];
        assert_eq!(l.output, Shape::new(20, 20, 576));
        assert!(plan.tap_layer(Tap::Expansion(1)).is_err());
    }

    #[test]
    fn tf_padding_is_asymmetric_on_even_stride2() {
        let mut spec = Spec::new(1.0, 224);
        spec.padding = Padding::Tf;
        let plan = Plan::new(&spec).unwrap();
        let stem = plan.layers[0].conv().unwrap();
        assert_eq!(stem.pad, Pad { top: 0, bottom: 1, left: 0, right: 1 });
        let mut odd = spec.clone();
        odd.height = 97;
        let plan = Plan::new(&odd).unwrap();
        let stem = plan.layers[0].conv().unwrap();
        assert_eq!((stem.pad.top, stem.pad.bottom, stem.pad.left), (1, 1, 0));
        assert_eq!(plan.layers[0].output.h, 49);
    }

    #[test]
    fn output_stride_turns_strides_into_dilation() {
        for (os, last_hw, dil) in [(16, 32, 2), (8, 64, 4)] {
            let mut spec = Spec::new(1.0, 512);
            spec.output_stride = os;
            let plan = Plan::new(&spec).unwrap();
            let last = plan.blocks.last().unwrap();
            assert_eq!(last.output.h, last_hw);
            assert_eq!(last.dilation, dil);
            let dw = plan.layers[last.depthwise].conv().unwrap();
            assert_eq!(dw.pad.top, dil);
        }
    }

    #[test]
    fn ablations_change_the_plan() {
        let spec = Spec {
            shortcut: Shortcut::None,
            bottleneck: BottleneckActivation::Relu6,
            expansion: Some(8),
            ..Spec::default()
        };
        let plan = Plan::new(&spec).unwrap();
        assert!(plan.blocks.iter().all(|b| !b.residual));
        assert_eq!(plan.blocks[1].hidden, 16 * 8);
        assert_eq!(plan.blocks[0].hidden, 32);
        let proj = plan.layers[plan.blocks[3].project].conv().unwrap();
        assert_eq!(proj.activation, Activation::Relu6);
    }
}
