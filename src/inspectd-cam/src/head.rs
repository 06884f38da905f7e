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

/// Where a step's input comes from, resolved once at extraction.
#[derive(Clone, Copy, Debug)]
enum Src {
    A,
    Side(usize),
    Const(usize),
    /// Output `k` of step `j`.
    Step(usize, usize),
    Omitted,
}

struct Step {
    name: String,
    op_type: String,
    op: Box<dyn Op>,
    wiring: Vec<Src>,
    outputs: Vec<String>,
    /// Whether the step's outputs depend on A.
    differentiable: bool,
}

/// The differentiable head of a model for one target layer.
pub struct Head {
    pub layer: String,
    pub output: String,
    steps: Vec<Step>,
    const_vals: Vec<Value>,
    out_src: Src,
    /// Tensors the head reads that depend on the image but not on A: tract computes them.
    pub sides: Vec<String>,
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

        // Wire every step input to its source.
        let mut where_is: HashMap<&str, Src> = HashMap::new();
        where_is.insert(layer, Src::A);
        for (i, n) in sides.iter().enumerate() {
            where_is.insert(n.as_str(), Src::Side(i));
        }
        let mut const_vals = vec![];
        let mut steps: Vec<Step> = vec![];
        for (idx, node) in graph.nodes.iter().enumerate() {
            if !head_nodes.contains(&idx) {
                continue;
            }
            let op = build(idx, &consts)?;
            let mut wiring = Vec::with_capacity(node.inputs.len());
            for name in &node.inputs {
                let src = if name.is_empty() {
                    Src::Omitted
                } else if let Some(src) = where_is.get(name.as_str()) {
                    *src
                } else if let Some(v) = consts.get(name) {
                    const_vals.push(v.clone());
                    let src = Src::Const(const_vals.len() - 1);
                    where_is.insert(name.as_str(), src);
                    src
                } else {
                    return Err(HeadError::Invalid {
                        op: node.op_type.clone(),
                        node: node.display_name().into(),
                        msg: format!("input {name:?} has no source"),
                    });
                };
                wiring.push(src);
            }
            let j = steps.len();
            for (k, o) in node.outputs.iter().enumerate() {
                if !o.is_empty() {
                    where_is.insert(o.as_str(), Src::Step(j, k));
                }
            }
            steps.push(Step {
                name: node.display_name().to_string(),
                op_type: node.op_type.clone(),
                op,
                wiring,
                outputs: node.outputs.clone(),
                differentiable: node.outputs.iter().any(|o| diff.contains(o)),
            });
        }
        let out_src = *where_is.get(output).ok_or_else(|| HeadError::NotOnPath {
            layer: layer.into(),
            output: output.into(),
        })?;
        Ok(Head {
            layer: layer.into(),
            output: output.into(),
            steps,
            const_vals,
            out_src,
            sides,
        })
    }

    /// Number of ops in the head.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs the head forward from `a` and back from `output[class]`.
    /// `sides` holds the values of [`Head::sides`], in order.
    pub fn pass(&self, a: &Tensor, sides: &[Value], class: usize) -> Result<HeadPass, HeadError> {
        let a_val = Value::F(a.clone());
        let runtime = |s: &Step, e: anyhow::Error| HeadError::Runtime {
            op: s.op_type.clone(),
            node: s.name.clone(),
            msg: format!("{e:#}"),
        };
        // Values by step, resolved through the wiring computed at extraction.
        let mut outs: Vec<Vec<Value>> = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let refs: Vec<Option<&Value>> = s
                .wiring
                .iter()
                .map(|src| self.resolve(*src, &a_val, sides, &outs))
                .collect();
            let o = s.op.forward(&refs).map_err(|e| runtime(s, e))?;
            outs.push(o);
        }
        let out = match self.resolve(self.out_src, &a_val, sides, &outs) {
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

        // Reverse sweep: gradients by (step, output) and for A.
        let mut grads: Vec<Vec<Option<Tensor>>> = self
            .steps
            .iter()
            .map(|s| vec![None; s.outputs.len()])
            .collect();
        let mut grad_a: Option<Tensor> = None;
        let mut seed = Tensor::zeros(out.shape());
        seed.data_mut()[class] = 1.0;
        match self.out_src {
            Src::Step(i, k) => grads[i][k] = Some(seed),
            Src::A => grad_a = Some(seed),
            _ => {}
        }
        for (i, s) in self.steps.iter().enumerate().rev() {
            if grads[i].iter().all(Option::is_none) {
                continue;
            }
            let refs: Vec<Option<&Value>> = s
                .wiring
                .iter()
                .map(|src| self.resolve(*src, &a_val, sides, &outs))
                .collect();
            let need: Vec<bool> = s
                .wiring
                .iter()
                .zip(&refs)
                .map(|(src, v)| {
                    let flows = match src {
                        Src::A => true,
                        Src::Step(j, _) => self.steps[*j].differentiable,
                        _ => false,
                    };
                    flows && matches!(v, Some(Value::F(_)))
                })
                .collect();
            if !need.iter().any(|&b| b) {
                continue;
            }
            let gouts = std::mem::take(&mut grads[i]);
            let gins =
                s.op.backward(&refs, &outs[i], &gouts, &need)
                    .map_err(|e| runtime(s, e))?;
            for ((src, g), &n) in s.wiring.iter().zip(gins).zip(&need) {
                let (Some(g), true) = (g, n) else { continue };
                let slot = match src {
                    Src::A => &mut grad_a,
                    Src::Step(j, k) => &mut grads[*j][*k],
                    _ => continue,
                };
                match slot {
                    Some(acc) => acc.accumulate(&g),
                    None => *slot = Some(g),
                }
            }
        }
        let grad = grad_a.unwrap_or_else(|| Tensor::zeros(a.shape()));
        Ok(HeadPass {
            output: out.into_data(),
            grad,
        })
    }

    fn resolve<'a>(
        &'a self,
        src: Src,
        a: &'a Value,
        sides: &'a [Value],
        outs: &'a [Vec<Value>],
    ) -> Option<&'a Value> {
        match src {
            Src::A => Some(a),
            Src::Side(i) => sides.get(i),
            Src::Const(i) => self.const_vals.get(i),
            Src::Step(j, k) => outs.get(j).and_then(|o| o.get(k)),
            Src::Omitted => None,
        }
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
