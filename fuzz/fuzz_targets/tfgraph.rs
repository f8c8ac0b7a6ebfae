//! Fuzzes the TensorFlow GraphDef reader: any bytes must give a graph or an error, never a
//! panic, a hang or an out-of-memory; a graph's accessors must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = mobilenetv2::weights::tfgraph::TfGraph::read(Path::new("fuzz"), data) {
        for n in &g.nodes {
            let _ = g.resolve(&n.name);
            let _ = g.scalar_f32(&n.name);
            let _ = g.scalar_int(&n.name);
            for i in n.data_inputs() {
                let _ = g.tensor(i);
            }
        }
    }
});
