//! Building small ONNX models in tests with the generated message types.
#![allow(dead_code)]

use std::path::Path;

use advex::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use advex::onnx::{import_onnx_bytes, ImportOptions, Imported};
use prost::Message;

/// A dimension of a graph input or output: fixed or named (dynamic).
#[derive(Clone, Copy)]
pub enum D {
    Fixed(i64),
    Named(&'static str),
}

pub fn vi(name: &str, dims: &[D]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            denotation: None,
                            value: Some(match d {
                                D::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                                D::Named(p) => {
                                    tensor_shape_proto::dimension::Value::DimParam(p.to_string())
                                }
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

/// `[N, C, H, W]` with a dynamic batch.
pub fn image_input(name: &str, c: i64, h: i64, w: i64) -> ValueInfoProto {
    vi(
        name,
        &[D::Named("batch"), D::Fixed(c), D::Fixed(h), D::Fixed(w)],
    )
}

/// f32 tensor in raw_data.
pub fn tf(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// f32 tensor in float_data.
pub fn tf_fields(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// i64 tensor in int64_data.
pub fn ti(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Int64 as i32),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

pub fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn a_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

/// A node named `name`.
pub fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A model under construction.
pub struct G {
    pub opset: i64,
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
}

impl G {
    /// Input `x` of `[N, c, h, w]`, output `y`.
    pub fn new(opset: i64, c: i64, h: i64, w: i64) -> G {
        G {
            opset,
            nodes: Vec::new(),
            inits: Vec::new(),
            inputs: vec![image_input("x", c, h, w)],
            outputs: vec![vi("y", &[])],
        }
    }

    pub fn n(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> &mut Self {
        self.nodes.push(node(name, op, inputs, outputs, attrs));
        self
    }

    pub fn init(&mut self, t: TensorProto) -> &mut Self {
        self.inits.push(t);
        self
    }

    pub fn model(&self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("advex-tests".into()),
            producer_version: Some("1".into()),
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.model().encode_to_vec()
    }

    pub fn import(&self) -> advex::Result<Imported> {
        self.import_with(&ImportOptions::default())
    }

    pub fn import_with(&self, o: &ImportOptions) -> advex::Result<Imported> {
        import_onnx_bytes(Path::new("test.onnx"), &self.bytes(), o)
    }
}

/// The error message of a failed import (panics on success).
pub fn err_of<T>(r: advex::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

pub fn meta(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

/// Deterministic values in [-1, 1).
pub fn vals(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}
