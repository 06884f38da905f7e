//! Loading ONNX models with tract: the input contract (sidecar), tensor shapes for layer
//! selection, and runnable plans whose outputs are the logits plus any tensors `cam` asks for.
//! tract's types never leave this module.

mod onnx;
pub mod preprocess;
pub mod sidecar;
pub mod variant;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::{
    tvec, DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    OutletId, Tensor as TractTensor, TypedRunnableModel,
};
use tract_onnx::tract_hir::infer::Factoid;

use crate::bail_input;
use crate::error::bad_input;
use crate::graph::{ElemType, Graph};
use crate::tensor::{ITensor, Tensor, Value};
pub use sidecar::{ColorOrder, Layout, OutputKind, ResizeMode, Sidecar};

/// ImageNet statistics, the default when neither sidecar nor CLI gives mean/std.
pub(crate) const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub(crate) const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How frames become the model's input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub color: ColorOrder,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: ResizeMode,
}

impl InputSpec {
    /// Shape of the input tensor for a batch of `n`.
    pub fn shape(&self, n: usize) -> Vec<usize> {
        let (h, w) = (self.height as usize, self.width as usize);
        match self.layout {
            Layout::NCHW => vec![n, 3, h, w],
            Layout::NHWC => vec![n, h, w, 3],
        }
    }
}

/// What the output tensor means.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
    pub labels: Vec<String>,
    pub ok_label: Option<String>,
}

/// Overrides from the command line; they win over the sidecar.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub sidecar: Option<PathBuf>,
}

/// Shape and element type of one tensor of the graph, as inferred for a batch of one.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub elem: ElemType,
}

/// A loaded model: its graph, contract, inferred tensor shapes, and the means to build plans.
pub struct Model {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub default_layer: Option<String>,
    pub default_method: Option<String>,
    pub graph: Graph,
    /// Which of the sidecar's `[variants]` this is and why it runs (`None`: no variants).
    pub variant: Option<variant::Selection>,
    infos: HashMap<String, TensorInfo>,
    proto: tract_onnx::pb::ModelProto,
    dir: Option<String>,
}

/// A runnable tract plan: input of a fixed batch size, outputs `[logits, extras...]`.
pub struct Plan {
    runnable: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    pub outputs: Vec<String>,
}

impl Model {
    /// Loads `path` and its sidecar (`<stem>.toml` beside it, or `opts.sidecar`).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        tract_setup();
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| bad_input(format!("model {shown}: cannot read: {e}")))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let fw = tract_onnx::onnx();
        let proto = fw
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| bad_input(format!("model {shown}: not an ONNX file ({e})")))?;
        let dir = path.parent().and_then(|p| p.to_str()).map(str::to_string);
        let graph = onnx::graph_from_proto(&proto, dir.as_deref())
            .map_err(|e| bad_input(format!("model {shown}: {e:#}")))?;
        if graph.nodes.is_empty() || graph.outputs.is_empty() {
            bail_input!("model {shown}: not an ONNX model (no graph nodes or outputs)");
        }

        let sidecar = read_sidecar(path, opts)?.0;

        let input = resolve_input(&graph, &sidecar, opts)
            .map_err(|e| bad_input(format!("model {shown}: {e}")))?;

        let mut model = Model {
            path: path.to_path_buf(),
            name: sidecar.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            version: sidecar
                .version
                .clone()
                .unwrap_or_else(|| "unversioned".into()),
            sha256,
            input,
            output: OutputSpec {
                name: graph.outputs[0].name.clone(),
                kind: OutputKind::Softmax,
                labels: vec![],
                ok_label: None,
            },
            default_layer: sidecar.cam.layer.clone(),
            default_method: sidecar.cam.method.clone(),
            graph,
            variant: None,
            infos: HashMap::new(),
            proto,
            dir,
        };
        model.infos = model
            .infer_tensor_infos()
            .map_err(|e| bad_input(format!("model {shown}: tract cannot analyse it: {e:#}")))?;
        model.output = model
            .resolve_output(&sidecar)
            .map_err(|e| bad_input(format!("model {shown}: {e}")))?;
        Ok(model)
    }

    /// The sidecar's `[variants]` of the model at `path` as candidates (files read and hashed),
    /// or `None` when its sidecar lists none. `path` itself must be one of them.
    pub fn variants(path: &Path, opts: &LoadOptions) -> Result<Option<Vec<variant::Candidate>>> {
        let (sidecar, sidecar_path) = read_sidecar(path, opts)?;
        let listed = sidecar.variants.listed();
        if listed.is_empty() {
            return Ok(None);
        }
        let shown = sidecar_path.display();
        let dir = sidecar_path.parent().unwrap_or(Path::new("."));
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        let mut cands = vec![];
        for (name, file) in listed {
            let p = dir.join(file);
            let bytes = std::fs::read(&p).map_err(|e| {
                bad_input(format!(
                    "sidecar {shown}: variant {name} = {file:?}: cannot read {}: {e}",
                    p.display()
                ))
            })?;
            cands.push(variant::Candidate {
                name,
                path: p,
                sha256: hex(&Sha256::digest(&bytes)),
            });
        }
        if !cands.iter().any(|c| same(&c.path, path)) {
            bail_input!(
                "sidecar {shown}: [variants] does not list the model {} itself",
                path.display()
            );
        }
        Ok(Some(cands))
    }

    /// Loads one variant: with its own sidecar when it has one, else the sidecar of the model
    /// that listed it (the variants share the input/output contract).
    pub fn load_variant(
        c: &variant::Candidate,
        listed_by: &Path,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let own = c.path.with_extension("toml");
        let sidecar = if own.exists() {
            Some(own)
        } else {
            Some(read_sidecar(listed_by, opts)?.1)
        };
        Model::load(
            &c.path,
            &LoadOptions {
                sidecar,
                ..opts.clone()
            },
        )
    }

    fn parse(&self) -> Result<InferenceModel> {
        let fw = tract_onnx::onnx();
        let parsed = fw.parse(&self.proto, self.dir.as_deref())?;
        if !parsed.unresolved_inputs.is_empty() {
            anyhow::bail!("unresolved inputs {:?}", parsed.unresolved_inputs);
        }
        Ok(parsed.model)
    }

    /// Runs tract's shape inference for a batch of one and records every named tensor.
    fn infer_tensor_infos(&self) -> Result<HashMap<String, TensorInfo>> {
        let fw = tract_onnx::onnx();
        let parsed = fw.parse(&self.proto, self.dir.as_deref())?;
        let mut m = parsed.model;
        m.set_input_fact(0, input_fact(&self.input.shape(1)))?;
        m.analyse(false)?;
        let mut infos = HashMap::new();
        for (name, outlet) in &parsed.outlets_by_name {
            let fact = m.outlet_fact(*outlet)?;
            let Some(dims) = fact.shape.concretize() else {
                continue;
            };
            let shape: Option<Vec<usize>> = dims
                .iter()
                .map(|d| d.to_i64().ok().map(|v| v as usize))
                .collect();
            let Some(shape) = shape else { continue };
            let elem = match fact.datum_type.concretize() {
                Some(dt) if dt.is_float() => ElemType::Float,
                Some(dt) if dt.is_quantized() => ElemType::Other,
                Some(dt) if dt.is_integer() => ElemType::Int,
                _ => ElemType::Other,
            };
            infos.insert(name.clone(), TensorInfo { shape, elem });
        }
        Ok(infos)
    }

    fn resolve_output(&self, sidecar: &Sidecar) -> Result<OutputSpec, String> {
        let name = self.graph.outputs[0].name.clone();
        let n = self
            .infos
            .get(&name)
            .map(|i| i.shape.iter().skip(1).product::<usize>())
            .ok_or_else(|| format!("the shape of output {name:?} cannot be inferred"))?;
        let kind = sidecar.output.kind.unwrap_or_else(|| {
            let producer = self.graph.producers().get(name.as_str()).copied();
            match producer.map(|i| self.graph.nodes[i].op_type.as_str()) {
                Some("Softmax") => OutputKind::Probabilities,
                _ if n == 1 => OutputKind::Sigmoid,
                _ => OutputKind::Softmax,
            }
        });
        let labels = match &sidecar.output.labels {
            Some(l) if l.len() == n => l.clone(),
            Some(l) => {
                return Err(format!(
                    "sidecar lists {} labels but output {name:?} has {n} values",
                    l.len()
                ))
            }
            None => (0..n).map(|i| format!("class_{i}")).collect(),
        };
        if let Some(ok) = &sidecar.output.ok_label {
            if !labels.contains(ok) {
                return Err(format!(
                    "sidecar ok_label {ok:?} is not one of the labels {labels:?}"
                ));
            }
        }
        Ok(OutputSpec {
            name,
            kind,
            labels,
            ok_label: sidecar.output.ok_label.clone(),
        })
    }

    /// Shape and type of a named tensor (batch of one), if tract could infer it.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.infos.get(name)
    }

    /// A plan for batches of `batch` whose outputs are the model output then `extra` tensors.
    pub fn plan(&self, extra: &[String], batch: usize) -> Result<Plan> {
        let mut m = self.parse()?;
        let outlets = outlet_map(&m);
        let mut outputs = vec![self.output.name.clone()];
        outputs.extend(extra.iter().cloned());
        let ids: Vec<OutletId> = outputs
            .iter()
            .map(|n| {
                outlets
                    .get(n.as_str())
                    .copied()
                    .ok_or_else(|| bad_input(format!("no tensor {n:?}")))
            })
            .collect::<Result<_>>()?;
        m.select_output_outlets(&ids)?;
        let input_shape = self.input.shape(batch);
        m.set_input_fact(0, input_fact(&input_shape))?;
        for ix in 0..ids.len() {
            m.set_output_fact(ix, InferenceFact::default())?;
        }
        let runnable = m
            .into_optimized()
            .with_context(|| format!("optimizing {} for tract", self.path.display()))?
            .into_runnable()?;
        Ok(Plan {
            runnable,
            input_shape,
            outputs,
        })
    }
}

impl Plan {
    /// Runs the plan on one input tensor of the plan's input shape.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Value>> {
        anyhow::ensure!(
            input.shape() == self.input_shape.as_slice(),
            "input tensor shape {:?} does not match the plan's {:?}",
            input.shape(),
            self.input_shape
        );
        let t = TractTensor::from_shape(input.shape(), input.data())?;
        let outs = self.runnable.run(tvec!(t.into()))?;
        outs.iter().map(|v| value_from_tract(v)).collect()
    }

    pub fn batch(&self) -> usize {
        self.input_shape[0]
    }
}

/// Process-wide tract settings, applied once before tract probes the CPU.
///
/// tract 0.23's x86-64 AMX int8 matmul kernel crashed (SIGSEGV inside
/// `avx512amx_mmm_i32_16x16`) on the inference thread of this project's test machines, so the
/// int8 path uses the AVX-512/AVX2 kernels unless the operator sets `TRACT_CPU_ISA` explicitly.
pub(crate) fn tract_setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // x86-64 only: the token names an x86 ISA, and tract refuses it on other architectures.
        if cfg!(target_arch = "x86_64") && std::env::var_os("TRACT_CPU_ISA").is_none() {
            if let Err(e) = tract_onnx::prelude::tract_data::knobs::set_config_global(
                "TRACT_CPU_ISA",
                "-amx-int8",
            ) {
                tracing::debug!("TRACT_CPU_ISA: {e}");
            }
        }
    });
}

/// The sidecar for the model at `path` (`opts.sidecar`, else `<stem>.toml` beside it; a missing
/// default sidecar is the default contract) and its path.
fn read_sidecar(path: &Path, opts: &LoadOptions) -> Result<(Sidecar, PathBuf)> {
    let sidecar_path = opts
        .sidecar
        .clone()
        .unwrap_or_else(|| path.with_extension("toml"));
    let sidecar = if sidecar_path.exists() {
        let text = std::fs::read_to_string(&sidecar_path).map_err(|e| {
            bad_input(format!(
                "sidecar {}: cannot read: {e}",
                sidecar_path.display()
            ))
        })?;
        Sidecar::parse(&text)
            .map_err(|e| bad_input(format!("sidecar {}: {e}", sidecar_path.display())))?
    } else if opts.sidecar.is_some() {
        bail_input!("sidecar {}: no such file", sidecar_path.display());
    } else {
        Sidecar::default()
    };
    Ok((sidecar, sidecar_path))
}

fn input_fact(shape: &[usize]) -> InferenceFact {
    InferenceFact::dt_shape(DatumType::F32, shape)
}

fn outlet_map(m: &InferenceModel) -> HashMap<String, OutletId> {
    let mut map = HashMap::new();
    for node in m.nodes() {
        for ix in 0..node.outputs.len() {
            let o = OutletId::new(node.id, ix);
            if let Some(label) = m.outlet_label(o) {
                map.insert(label.to_string(), o);
            }
        }
        // Sources and constants are labelled by their node name.
        map.entry(node.name.clone())
            .or_insert(OutletId::new(node.id, 0));
    }
    map
}

pub(crate) fn value_from_tract(t: &TractTensor) -> Result<Value> {
    let dt = t.datum_type();
    if dt.is_float() || dt.is_quantized() {
        let f = t.cast_to::<f32>()?;
        Ok(Value::F(Tensor::new(
            f.shape().to_vec(),
            f.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        )))
    } else {
        let i = t.cast_to::<i64>()?;
        Ok(Value::I(ITensor::new(
            i.shape().to_vec(),
            i.try_as_plain_ram()?.as_slice::<i64>()?.to_vec(),
        )))
    }
}

fn resolve_input(
    graph: &Graph,
    sidecar: &Sidecar,
    opts: &LoadOptions,
) -> Result<InputSpec, String> {
    let Some(info) = graph.inputs.first() else {
        return Err("the graph has no input".into());
    };
    if graph.inputs.len() > 1 {
        let names: Vec<&str> = graph.inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(format!(
            "expected one image input, found {}: {names:?}",
            names.len()
        ));
    }
    let s = &sidecar.input;
    let layout = s.layout.unwrap_or_else(|| match &info.dims {
        Some(d) if d.len() == 4 && d[3] == Some(3) && d[1] != Some(3) => Layout::NHWC,
        _ => Layout::NCHW,
    });
    let dims = info.dims.clone().unwrap_or_default();
    let (hd, wd) = match (layout, dims.len()) {
        (Layout::NCHW, 4) => (dims[2], dims[3]),
        (Layout::NHWC, 4) => (dims[1], dims[2]),
        _ => (None, None),
    };
    if dims.len() == 4 {
        let c = if layout == Layout::NCHW {
            dims[1]
        } else {
            dims[3]
        };
        if let Some(c) = c {
            if c != 3 {
                return Err(format!(
                    "input {:?} has {c} channels; only 3-channel images are supported",
                    info.name
                ));
            }
        }
    } else if !dims.is_empty() {
        return Err(format!(
            "input {:?} is {}-D; an image input [N,C,H,W] is expected",
            info.name,
            dims.len()
        ));
    }
    let pick = |side: Option<u32>, onnx: Option<i64>, what: &str| -> Result<u32, String> {
        match (side, onnx) {
            (Some(v), _) if v > 0 => Ok(v),
            (Some(_), _) => Err(format!("sidecar input {what} must be positive")),
            (None, Some(v)) if v > 0 => Ok(v as u32),
            _ => Err(format!(
                "input {:?} has a dynamic {what}; give [input] {what} in the sidecar",
                info.name
            )),
        }
    };
    let width = pick(s.width, wd, "width")?;
    let height = pick(s.height, hd, "height")?;
    let std = opts.std.or(s.std).unwrap_or(IMAGENET_STD);
    if std.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
        return Err(format!("std {std:?} must be positive"));
    }
    Ok(InputSpec {
        name: info.name.clone(),
        width,
        height,
        layout,
        color: s.color.unwrap_or(ColorOrder::RGB),
        mean: opts.mean.or(s.mean).unwrap_or(IMAGENET_MEAN),
        std,
        resize: s.resize.unwrap_or(ResizeMode::Stretch),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of tensors reachable backwards from `target` (its ancestors, itself included).
pub fn ancestors(graph: &Graph, target: &str) -> HashSet<String> {
    let producers = graph.producers();
    let mut seen = HashSet::new();
    let mut stack = vec![target.to_string()];
    while let Some(t) = stack.pop() {
        if !seen.insert(t.clone()) {
            continue;
        }
        if let Some(&p) = producers.get(t.as_str()) {
            for i in &graph.nodes[p].inputs {
                if !i.is_empty() {
                    stack.push(i.clone());
                }
            }
        }
    }
    seen
}

/// ONNX bytes → our graph → the head from each tensor that feeds the first output (at most 64,
/// in a fixed order). The `head` fuzz target: any bytes give a count or an error, never a panic.
pub fn heads_from_bytes(bytes: &[u8]) -> Result<usize> {
    let proto = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..])?;
    let graph = onnx::graph_from_proto(&proto, None)?;
    let Some(out) = graph.outputs.first() else {
        return Ok(0);
    };
    let mut feeds: Vec<String> = ancestors(&graph, &out.name).into_iter().collect();
    feeds.sort();
    Ok(feeds
        .iter()
        .take(64)
        .filter(|t| crate::head::Head::extract(&graph, t, &out.name).is_ok())
        .count())
}
