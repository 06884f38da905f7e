//! inspectd's own view of an ONNX graph: nodes, attributes and constant tensors, as plain Rust
//! data. `model` builds it from the protobuf; `cam` walks it to slice and differentiate the head.

use std::collections::HashMap;

use crate::tensor::Value;

/// One attribute of an ONNX node.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(Value),
    /// Graph-valued and other attributes inspectd never needs; kept so errors can name them.
    Other,
}

/// One ONNX node.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// Input tensor names; an empty string is an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, Attr>,
    /// ONNX element type code of each input where known from an initializer or Constant
    /// (1 float, 2 uint8, 3 int8, 6 int32, 7 int64, ...): quantized ops need the integer range.
    pub input_elem: Vec<Option<i32>>,
}

impl Node {
    /// A name for error messages: the node name, or its first output when unnamed.
    pub fn display_name(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else {
            self.outputs.first().map(String::as_str).unwrap_or("?")
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Attr::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn float(&self, key: &str) -> Option<f32> {
        match self.attrs.get(key) {
            Some(Attr::Float(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn ints(&self, key: &str) -> Option<&[i64]> {
        match self.attrs.get(key) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }

    pub fn floats(&self, key: &str) -> Option<&[f32]> {
        match self.attrs.get(key) {
            Some(Attr::Floats(v)) => Some(v),
            _ => None,
        }
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Attr::Str(v)) => Some(v),
            _ => None,
        }
    }

    /// The `i`-th input name if present and not omitted.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Element type of a graph input or output, reduced to what inspectd distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    Float,
    Int,
    Other,
}

/// A graph input or output: name, element type, and dimensions (`None` = symbolic).
#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Option<Vec<Option<i64>>>,
}

/// An ONNX graph with nodes in the file's (topological) order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: HashMap<String, Value>,
    /// Real inputs (initializer-backed inputs removed).
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub opset: i64,
}

impl Graph {
    /// Map from tensor name to the index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                if !o.is_empty() {
                    m.insert(o.as_str(), i);
                }
            }
        }
        m
    }
}
