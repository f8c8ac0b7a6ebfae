//! Writing a [`crate::Model`] in formats other engines run. Exporters walk the plan.

pub mod onnx;
mod qdq;

pub(crate) use qdq::relu6_implied;
