//! The explainer: one optimized tract pass for A and the logits, the head's reverse pass for
//! G, a method for the map.

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::error::bad_input;
use crate::graph::ElemType;
pub use crate::head::{Head, HeadError};
use crate::methods;
pub use crate::methods::Method;
use crate::model::{ancestors, Model, OutputKind, Plan};
use crate::tensor::{argmax, Tensor, Value};

/// A tensor that can serve as a CAM target layer.
#[derive(Clone, Debug)]
pub struct LayerCandidate {
    pub name: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub op: String,
    pub node: String,
}

/// Candidate target layers in graph order: float `[1, C, H, W]` tensors with H·W > 1 that feed
/// the output. The last one is the `auto` choice.
pub fn layer_candidates(model: &Model) -> Vec<LayerCandidate> {
    let feeds_output = ancestors(&model.graph, &model.output.name);
    let mut out = vec![];
    for node in &model.graph.nodes {
        for o in &node.outputs {
            let Some(info) = model.tensor_info(o) else {
                continue;
            };
            let s = &info.shape;
            if info.elem == ElemType::Float
                && s.len() == 4
                && s[0] == 1
                && s[2] * s[3] > 1
                && feeds_output.contains(o)
            {
                out.push(LayerCandidate {
                    name: o.clone(),
                    shape: [s[1], s[2], s[3]],
                    op: node.op_type.clone(),
                    node: node.display_name().to_string(),
                });
            }
        }
    }
    out
}

/// Resolves `auto` / a sidecar default / an explicit tensor name to a target layer.
pub fn resolve_layer(model: &Model, requested: Option<&str>) -> Result<LayerCandidate> {
    let requested = requested
        .filter(|l| *l != "auto")
        .or(model.default_layer.as_deref().filter(|l| *l != "auto"));
    let candidates = layer_candidates(model);
    match requested {
        None => candidates.last().cloned().ok_or_else(|| {
            bad_input(format!(
                "model {}: no 4-D feature map [1,C,H,W] with H·W > 1 feeds the output; \
                 this model cannot be explained with a CAM",
                model.path.display()
            ))
        }),
        Some(name) => {
            if let Some(c) = candidates.iter().find(|c| c.name == name) {
                return Ok(c.clone());
            }
            let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
            let why = match model.tensor_info(name) {
                None => "no tensor of that name".to_string(),
                Some(i) if i.elem != ElemType::Float => {
                    format!("it is a quantized/integer tensor {:?}; pick the float tensor after its DequantizeLinear", i.shape)
                }
                Some(i) => format!(
                    "its shape {:?} is not a [1,C,H,W] feature map feeding the output",
                    i.shape
                ),
            };
            Err(bad_input(format!(
                "layer {name:?} in model {}: {why}; candidates: {}",
                model.path.display(),
                tail(&names, 12)
            )))
        }
    }
}

fn tail(names: &[&str], n: usize) -> String {
    if names.len() <= n {
        names.join(", ")
    } else {
        format!("…, {}", names[names.len() - n..].join(", "))
    }
}

/// Which class to explain.
#[derive(Clone, Debug, Default)]
pub enum ClassChoice {
    #[default]
    Top1,
    Index(usize),
}

impl ClassChoice {
    /// Parses `--class`: an index or a label of the model.
    pub fn parse(s: &str, labels: &[String]) -> Result<ClassChoice> {
        if let Some(i) = labels.iter().position(|l| l == s) {
            return Ok(ClassChoice::Index(i));
        }
        match s.parse::<usize>() {
            Ok(i) if i < labels.len() => Ok(ClassChoice::Index(i)),
            Ok(i) => Err(bad_input(format!(
                "class {i} is out of range: the model has {} classes (0..{})",
                labels.len(),
                labels.len().saturating_sub(1)
            ))),
            Err(_) => Err(bad_input(format!(
                "class {s:?} is neither an index nor a label ({})",
                labels.join(", ")
            ))),
        }
    }
}

/// Stage timings of one explanation, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Timing {
    pub forward: f64,
    pub cam: f64,
}

/// One explained prediction.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub method: Method,
    pub class: usize,
    pub logits: Vec<f32>,
    /// Probabilities (softmax / sigmoid of the logits, or the output itself).
    pub scores: Vec<f32>,
    /// Normalized map `[H, W]` in 0..1 at feature resolution.
    pub map: Tensor,
    /// Largest value of the ReLU'd raw map (evidence strength before normalization).
    pub raw_max: f32,
    /// The signed raw map `[H, W]` before ReLU and normalization.
    pub raw: Tensor,
    pub timing: Timing,
}

/// The outputs of one forward pass: `[model output, target layer, head side inputs...]`.
pub struct Forward {
    pub logits: Vec<f32>,
    outs: Vec<Value>,
    /// Wall time of the pass in milliseconds.
    pub ms: f64,
}

/// Options for building an [`Explainer`].
#[derive(Clone, Debug, Default)]
pub struct ExplainerOptions {
    /// Target layer: `None`/`auto` = sidecar default or the last feature map.
    pub layer: Option<String>,
    /// Score-CAM: score only the `topk` channels with the most activation mass.
    pub topk: Option<usize>,
    /// Build the gradient head even if the first method asked is gradient-free.
    pub gradients: bool,
}

/// Runs a model and explains its predictions.
pub struct Explainer {
    pub model: Model,
    pub layer: LayerCandidate,
    plan: Plan,
    head: Option<Head>,
    head_error: Option<String>,
    batch_plan: OnceLock<Plan>,
    topk: Option<usize>,
}

/// Score-CAM batch size (the library's default).
const SCORECAM_BATCH: usize = 16;

impl Explainer {
    pub fn new(model: Model, opts: &ExplainerOptions) -> Result<Explainer> {
        let layer = resolve_layer(&model, opts.layer.as_deref())?;
        // A head that cannot be differentiated only matters for gradient methods: keep the
        // error and report it when one is asked for.
        let (head, head_error) = match Head::extract(&model.graph, &layer.name, &model.output.name)
        {
            Ok(h) => (Some(h), None),
            Err(e @ HeadError::NotOnPath { .. }) => return Err(bad_input(e)),
            Err(e) if opts.gradients => {
                return Err(bad_input(format!("model {}: {e}", model.path.display())))
            }
            Err(e) => (None, Some(e.to_string())),
        };
        let mut extra = vec![layer.name.clone()];
        if let Some(h) = &head {
            extra.extend(h.sides.iter().cloned());
        }
        let plan = model
            .plan(&extra, 1)
            .with_context(|| format!("building the tract plan for {}", model.path.display()))?;
        Ok(Explainer {
            model,
            layer,
            plan,
            head,
            head_error,
            batch_plan: OnceLock::new(),
            topk: opts.topk,
        })
    }

    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Scores from raw outputs, by the model's output kind.
    pub fn scores(&self, logits: &[f32]) -> Vec<f32> {
        match self.model.output.kind {
            OutputKind::Softmax => methods::softmax(logits),
            OutputKind::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            OutputKind::Probabilities => logits.to_vec(),
        }
    }

    /// Runs the model once: the output and the tensors the CAM needs.
    pub fn forward(&self, input: &Tensor) -> Result<Forward> {
        let t0 = Instant::now();
        let outs = self.plan.run(input)?;
        Ok(Forward {
            logits: flat(&outs[0]),
            outs,
            ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Runs the model and explains `class` with `method`.
    pub fn explain(
        &self,
        input: &Tensor,
        class: &ClassChoice,
        method: Method,
    ) -> Result<Explanation> {
        let fwd = self.forward(input)?;
        self.explain_forward(input, &fwd, class, method)
    }

    /// The CAM step alone, from a forward pass of `input`.
    pub fn explain_forward(
        &self,
        input: &Tensor,
        fwd: &Forward,
        class: &ClassChoice,
        method: Method,
    ) -> Result<Explanation> {
        let t1 = Instant::now();
        let logits = fwd.logits.clone();
        let Value::F(a) = &fwd.outs[1] else {
            anyhow::bail!("layer {} is not a float tensor", self.layer.name)
        };
        let class = match class {
            ClassChoice::Top1 => argmax(&logits),
            ClassChoice::Index(i) if *i < logits.len() => *i,
            ClassChoice::Index(i) => {
                return Err(bad_input(format!(
                    "class {i} is out of range: the model has {} outputs",
                    logits.len()
                )))
            }
        };
        let [c, h, w] = self.layer.shape;
        let raw = match method {
            Method::EigenCam => methods::eigencam(a.data(), c, h * w),
            Method::ScoreCam => self.scorecam(input, a, class)?,
            m => {
                let head = self.head_or_err()?;
                let pass = head
                    .pass(a, &fwd.outs[2..], class)
                    .map_err(|e| bad_input(format!("model {}: {e}", self.model.path.display())))?;
                methods::gradient_map(m, a, &pass.grad)
            }
        };
        let map = methods::normalize(&raw);
        let raw_max = raw.iter().copied().fold(0f32, f32::max);
        let cam = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Explanation {
            method,
            class,
            scores: self.scores(&logits),
            logits,
            map: Tensor::new(vec![h, w], map),
            raw_max,
            raw: Tensor::new(vec![h, w], raw),
            timing: Timing {
                forward: fwd.ms,
                cam,
            },
        })
    }

    /// Runs the head forward and backward for `class`; returns (A, G, head logits, tract logits).
    pub fn gradients(
        &self,
        input: &Tensor,
        class: usize,
    ) -> Result<(Tensor, Tensor, Vec<f32>, Vec<f32>)> {
        let fwd = self.forward(input)?;
        let Value::F(a) = &fwd.outs[1] else {
            anyhow::bail!("layer {} is not a float tensor", self.layer.name)
        };
        let pass = self.head_or_err()?.pass(a, &fwd.outs[2..], class)?;
        Ok((a.clone(), pass.grad, pass.output, fwd.logits))
    }

    /// The differentiable head, or the reason there is none (an unsupported op).
    fn head_or_err(&self) -> Result<&Head> {
        self.head.as_ref().ok_or_else(|| {
            bad_input(format!(
                "model {}: {}",
                self.model.path.display(),
                self.head_error
                    .as_deref()
                    .unwrap_or("no differentiable head")
            ))
        })
    }

    fn scorecam(&self, input: &Tensor, a: &Tensor, class: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.layer.shape;
        let hw = h * w;
        let spec = &self.model.input;
        let (ih, iw) = (spec.height as usize, spec.width as usize);
        // Channels to score: all, or the top-k by activation mass.
        let mut channels: Vec<usize> = (0..c).collect();
        if let Some(k) = self.topk.filter(|&k| k < c) {
            let mass: Vec<f32> = a.data().chunks(hw).map(|p| p.iter().sum()).collect();
            channels.sort_by(|&x, &y| mass[y].total_cmp(&mass[x]));
            channels.truncate(k);
            channels.sort_unstable();
        }
        let plan = match self.batch_plan.get() {
            Some(p) => p,
            None => {
                // Models that fold the batch size into a Reshape only run with batch 1.
                let b = SCORECAM_BATCH.min(channels.len()).max(1);
                let p = match self.model.plan(&[], b) {
                    Ok(p) => p,
                    Err(e) if b > 1 => {
                        tracing::info!("Score-CAM runs unbatched: {e:#}");
                        self.model.plan(&[], 1)?
                    }
                    Err(e) => return Err(e),
                };
                let _ = self.batch_plan.set(p);
                self.batch_plan.get().expect("just set")
            }
        };
        let b = plan.batch();
        let per = input.len();
        let nchw = spec.layout == crate::model::Layout::NCHW;
        let mut scores = Vec::with_capacity(channels.len());
        for chunk in channels.chunks(b) {
            let mut batch = vec![0f32; b * per];
            for (slot, &ch) in chunk.iter().enumerate() {
                let mask = methods::scorecam_mask(&a.data()[ch * hw..(ch + 1) * hw], h, w, ih, iw);
                let dst = &mut batch[slot * per..(slot + 1) * per];
                for (k, (d, &x)) in dst.iter_mut().zip(input.data()).enumerate() {
                    let pix = if nchw { k % (ih * iw) } else { k / 3 };
                    *d = x * mask[pix];
                }
            }
            let mut shape = input.shape().to_vec();
            shape[0] = b;
            let outs = plan.run(&Tensor::new(shape, batch))?;
            let logits = flat(&outs[0]);
            let n = logits.len() / b;
            for slot in 0..chunk.len() {
                scores.push(logits[slot * n + class]);
            }
        }
        let soft = methods::softmax(&scores);
        let mut weights = vec![0f32; c];
        for (&ch, &wt) in channels.iter().zip(&soft) {
            weights[ch] = wt;
        }
        Ok(methods::scorecam_from_weights(a.data(), &weights, hw))
    }
}

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::F(t) => t.data().to_vec(),
        Value::I(t) => t.data.iter().map(|&x| x as f32).collect(),
    }
}
