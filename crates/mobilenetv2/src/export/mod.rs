//! Writing a [`crate::Model`] in formats other engines run. Exporters walk the plan.

pub mod onnx;
mod qdq;
