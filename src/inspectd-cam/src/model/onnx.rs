//! Protobuf → [`Graph`]: the only place that reads ONNX protobuf structures.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tract_onnx::pb;
use tract_onnx::pb::type_proto::Value as TypeValue;

use super::value_from_tract;
use crate::graph::{Attr, ElemType, Graph, Node, ValueInfo};
use crate::tensor::{ITensor, Value};

fn tensor_value(t: &pb::TensorProto, dir: Option<&str>) -> Result<Value> {
    let provider = tract_onnx::data_resolver::MmapDataResolver;
    let tt = tract_onnx::tensor::load_tensor(&provider, t, dir)
        .with_context(|| format!("reading tensor {:?}", t.name))?;
    if tt.datum_type() == tract_onnx::prelude::DatumType::Bool {
        let b = tt.cast_to::<i64>()?;
        return Ok(Value::I(ITensor::new(
            b.shape().to_vec(),
            b.try_as_plain_ram()?.as_slice::<i64>()?.to_vec(),
        )));
    }
    value_from_tract(&tt)
}

fn attr(a: &pb::AttributeProto, dir: Option<&str>) -> Result<Attr> {
    use pb::attribute_proto::AttributeType as T;
    Ok(match T::try_from(a.r#type).unwrap_or(T::Undefined) {
        T::Int => Attr::Int(a.i),
        T::Float => Attr::Float(a.f),
        T::Ints => Attr::Ints(a.ints.clone()),
        T::Floats => Attr::Floats(a.floats.clone()),
        T::String => Attr::Str(String::from_utf8_lossy(&a.s).into_owned()),
        T::Tensor => match &a.t {
            Some(t) => Attr::Tensor(tensor_value(t, dir)?),
            None => Attr::Other,
        },
        _ => Attr::Other,
    })
}

fn value_info(v: &pb::ValueInfoProto) -> ValueInfo {
    let mut elem = ElemType::Other;
    let mut dims = None;
    if let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        elem = match t.elem_type {
            1 | 10 | 11 | 16 => ElemType::Float,
            2..=7 | 12 | 13 => ElemType::Int,
            _ => ElemType::Other,
        };
        dims = t.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        });
    }
    ValueInfo {
        name: v.name.clone(),
        elem,
        dims,
    }
}

pub fn graph_from_proto(proto: &pb::ModelProto, dir: Option<&str>) -> Result<Graph> {
    let g = proto.graph.as_ref().context("no graph in the model")?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    let mut initializers = HashMap::new();
    for t in &g.initializer {
        initializers.insert(t.name.clone(), tensor_value(t, dir)?);
    }
    let inputs = g
        .input
        .iter()
        .filter(|i| !initializers.contains_key(&i.name))
        .map(value_info)
        .collect();
    let outputs = g.output.iter().map(value_info).collect();
    let mut elem: HashMap<&str, i32> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.data_type))
        .collect();
    for n in &g.node {
        if n.op_type == "Constant" {
            if let Some(t) = n.attribute.iter().find_map(|a| a.t.as_ref()) {
                if let Some(o) = n.output.first() {
                    elem.insert(o.as_str(), t.data_type);
                }
            }
        }
    }
    let mut nodes = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let mut attrs = HashMap::new();
        for a in &n.attribute {
            attrs.insert(
                a.name.clone(),
                attr(a, dir).with_context(|| format!("node {:?}", n.name))?,
            );
        }
        nodes.push(Node {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
            input_elem: n
                .input
                .iter()
                .map(|i| elem.get(i.as_str()).copied())
                .collect(),
        });
    }
    Ok(Graph {
        nodes,
        initializers,
        inputs,
        outputs,
        opset,
    })
}
