//! The head: the ONNX subgraph from the target activation A to the model output. It is sliced
//! out of the graph once, its constants folded, and its ops built; per frame it is run forward
//! from A (plus any side tensors tract computed) and backward to give G = ∂y_c/∂A.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::ops::{self, BuildError, Op};
use crate::graph::Graph;
use crate::tensor::{Tensor, Value};

/// Why a head cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("layer {layer:?} does not feed the model output {output:?}")]
    NotOnPath { layer: String, output: String },
    #[error(
        "op {op} (node {node:?}) between layer {layer:?} and the output is not supported for \
         gradients; choose a later layer with --layer (see `inspectd layers`) or a gradient-free \
         method (eigencam, scorecam)"
    )]
    Unsupported {
        op: String,
        node: String,
        layer: String,
    },
    #[error("node {node:?} ({op}) in the head: {msg}")]
    Invalid {
        op: String,
        node: String,
        msg: String,
    },
    #[error("node {node:?} ({op}) failed while computing gradients: {msg}")]
    Runtime {
        op: String,
        node: String,
        msg: String,
    },
}

struct Step {
    name: String,
    op_type: String,
    op: Box<dyn Op>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// The differentiable head of a model for one target layer.
pub struct Head {
    pub layer: String,
    pub output: String,
    steps: Vec<Step>,
    consts: HashMap<String, Value>,
    /// Tensors the head reads that depend on the image but not on A: tract computes them.
    pub sides: Vec<String>,
    /// Tensors that depend on A (the ones gradients flow through).
    diff: HashSet<String>,
}

/// Result of one forward + backward pass through the head.
pub struct HeadPass {
    /// The model output recomputed by the head, flattened.
    pub output: Vec<f32>,
    /// ∂ output[class] / ∂A, shaped like A.
    pub grad: Tensor,
}

impl Head {
    /// Slices the head of `graph` between `layer` and `output`.
    pub fn extract(graph: &Graph, layer: &str, output: &str) -> Result<Head, HeadError> {
        let producers = graph.producers();

        // Tensors downstream of A, and tensors downstream of any graph input (image-dependent).
        let diff = forward_closure(graph, [layer.to_string()]);
        let dynamic = forward_closure(graph, graph.inputs.iter().map(|i| i.name.clone()));
        if !diff.contains(output) {
            return Err(HeadError::NotOnPath {
                layer: layer.into(),
                output: output.into(),
            });
        }

        // Walk back from the output: head nodes, constant-foldable nodes, side tensors.
        let mut head_nodes = HashSet::new();
        let mut const_nodes = HashSet::new();
        let mut sides = vec![];
        let mut seen = HashSet::new();
        let mut stack = vec![output.to_string()];
        while let Some(t) = stack.pop() {
            if t.is_empty() || t == layer || !seen.insert(t.clone()) {
                continue;
            }
            if graph.initializers.contains_key(&t) {
                continue;
            }
            match producers.get(t.as_str()) {
                Some(&p) => {
                    if diff.contains(&t) {
                        head_nodes.insert(p);
                    } else if !dynamic.contains(&t) {
                        const_nodes.insert(p);
                    } else {
                        sides.push(t);
                        continue;
                    }
                    stack.extend(graph.nodes[p].inputs.iter().cloned());
                }
                None => sides.push(t),
            }
        }
        sides.sort();

        let mut consts: HashMap<String, Value> = HashMap::new();
        let build =
            |idx: usize, consts: &HashMap<String, Value>| -> Result<Box<dyn Op>, HeadError> {
                let node = &graph.nodes[idx];
                let ci: Vec<Option<&Value>> = node
                    .inputs
                    .iter()
                    .map(|i| consts.get(i).or_else(|| graph.initializers.get(i)))
                    .collect();
                ops::build(node, &ci, graph.opset).map_err(|e| match e {
                    BuildError::Unsupported { op } => HeadError::Unsupported {
                        op,
                        node: node.display_name().into(),
                        layer: layer.into(),
                    },
                    BuildError::Invalid(msg) => HeadError::Invalid {
                        op: node.op_type.clone(),
                        node: node.display_name().into(),
                        msg,
                    },
                })
            };

        // Fold constants in graph order (ONNX nodes are topologically sorted).
        for (idx, node) in graph.nodes.iter().enumerate() {
            if !const_nodes.contains(&idx) {
                continue;
            }
            let op = build(idx, &consts)?;
            let vals: Vec<Option<Value>> = node
                .inputs
                .iter()
                .map(|i| consts.get(i).or_else(|| graph.initializers.get(i)).cloned())
                .collect();
            let refs: Vec<Option<&Value>> = vals.iter().map(Option::as_ref).collect();
            let outs = op.forward(&refs).map_err(|e| HeadError::Invalid {
                op: node.op_type.clone(),
                node: node.display_name().into(),
                msg: format!("{e:#}"),
            })?;
            for (name, v) in node.outputs.iter().zip(outs) {
                consts.insert(name.clone(), v);
            }
        }
        // Keep only the initializers the head reads.
        for &idx in &head_nodes {
            for i in &graph.nodes[idx].inputs {
                if let Some(v) = graph.initializers.get(i) {
                    consts.insert(i.clone(), v.clone());
                }
            }
        }

        let mut steps = vec![];
        for (idx, node) in graph.nodes.iter().enumerate() {
            if head_nodes.contains(&idx) {
                steps.push(Step {
                    name: node.display_name().to_string(),
                    op_type: node.op_type.clone(),
                    op: build(idx, &consts)?,
                    inputs: node.inputs.clone(),
                    outputs: node.outputs.clone(),
                });
            }
        }
        Ok(Head {
            layer: layer.into(),
            output: output.into(),
            steps,
            consts,
            sides,
            diff,
        })
    }

    /// Number of ops in the head.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Op types of the head in evaluation order.
    pub fn op_types(&self) -> Vec<&str> {
        self.steps.iter().map(|s| s.op_type.as_str()).collect()
    }

    /// Runs the head forward from `a` and back from `output[class]`.
    /// `sides` holds the values of [`Head::sides`], in order.
    pub fn pass(&self, a: &Tensor, sides: &[Value], class: usize) -> Result<HeadPass, HeadError> {
        let mut vals: HashMap<&str, Value> = HashMap::new();
        vals.insert(self.layer.as_str(), Value::F(a.clone()));
        for (n, v) in self.sides.iter().zip(sides) {
            vals.insert(n.as_str(), v.clone());
        }
        let runtime = |s: &Step, e: anyhow::Error| HeadError::Runtime {
            op: s.op_type.clone(),
            node: s.name.clone(),
            msg: format!("{e:#}"),
        };
        let lookup = |vals: &HashMap<&str, Value>, s: &Step, name: &str| -> Option<Value> {
            if name.is_empty() {
                return None;
            }
            let _ = s;
            vals.get(name).or_else(|| self.consts.get(name)).cloned()
        };
        for s in &self.steps {
            let ins: Vec<Option<Value>> = s.inputs.iter().map(|n| lookup(&vals, s, n)).collect();
            let refs: Vec<Option<&Value>> = ins.iter().map(Option::as_ref).collect();
            let outs = s.op.forward(&refs).map_err(|e| runtime(s, e))?;
            for (name, v) in s.outputs.iter().zip(outs) {
                if !name.is_empty() {
                    vals.insert(name.as_str(), v);
                }
            }
        }
        let out = match vals.get(self.output.as_str()) {
            Some(Value::F(t)) => t.clone(),
            _ => {
                return Err(HeadError::Runtime {
                    op: "output".into(),
                    node: self.output.clone(),
                    msg: "the head did not produce a float output".into(),
                })
            }
        };
        if class >= out.len() {
            return Err(HeadError::Runtime {
                op: "output".into(),
                node: self.output.clone(),
                msg: format!("class {class} is out of range for {} outputs", out.len()),
            });
        }

        // Reverse sweep.
        let mut grads: HashMap<&str, Tensor> = HashMap::new();
        let mut seed = Tensor::zeros(out.shape());
        seed.data_mut()[class] = 1.0;
        grads.insert(self.output.as_str(), seed);
        for s in self.steps.iter().rev() {
            let gouts: Vec<Option<Tensor>> = s
                .outputs
                .iter()
                .map(|o| grads.get(o.as_str()).cloned())
                .collect();
            if gouts.iter().all(Option::is_none) {
                continue;
            }
            let ins: Vec<Option<Value>> = s.inputs.iter().map(|n| lookup(&vals, s, n)).collect();
            let need: Vec<bool> = s
                .inputs
                .iter()
                .zip(&ins)
                .map(|(n, v)| self.diff.contains(n) && matches!(v, Some(Value::F(_))))
                .collect();
            if !need.iter().any(|&b| b) {
                continue;
            }
            let refs: Vec<Option<&Value>> = ins.iter().map(Option::as_ref).collect();
            let outs: Vec<Value> = s
                .outputs
                .iter()
                .map(|o| {
                    vals.get(o.as_str())
                        .cloned()
                        .unwrap_or(Value::F(Tensor::scalar(0.0)))
                })
                .collect();
            let gins =
                s.op.backward(&refs, &outs, &gouts, &need)
                    .map_err(|e| runtime(s, e))?;
            for ((name, g), &n) in s.inputs.iter().zip(gins).zip(&need) {
                let (Some(g), true) = (g, n) else { continue };
                match grads.get_mut(name.as_str()) {
                    Some(acc) => acc.accumulate(&g),
                    None => {
                        grads.insert(name.as_str(), g);
                    }
                }
            }
        }
        let grad = grads
            .remove(self.layer.as_str())
            .unwrap_or_else(|| Tensor::zeros(a.shape()));
        Ok(HeadPass {
            output: out.into_data(),
            grad,
        })
    }
}

/// Tensor names reachable forward from `roots` (the roots included).
fn forward_closure(graph: &Graph, roots: impl IntoIterator<Item = String>) -> HashSet<String> {
    let mut set: HashSet<String> = roots.into_iter().collect();
    // Nodes are topologically sorted, but iterate to a fixpoint in case a file is not.
    loop {
        let before = set.len();
        for n in &graph.nodes {
            if n.inputs.iter().any(|i| set.contains(i)) {
                for o in &n.outputs {
                    if !o.is_empty() {
                        set.insert(o.clone());
                    }
                }
            }
        }
        if set.len() == before {
            return set;
        }
    }
}
