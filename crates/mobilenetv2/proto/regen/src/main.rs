//! `onnx-proto-regen PROTO OUT_DIR`: Rust types for an onnx.proto with prost-build, compiled by
//! protox (pure Rust, no `protoc`). Comments are left out of the output.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, proto, out] = &args[..] else {
        eprintln!("usage: onnx-proto-regen PROTO OUT_DIR");
        std::process::exit(1);
    };
    let dir = std::path::Path::new(proto).parent().expect("a file path");
    let fds = protox::compile([proto], [dir]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    std::fs::create_dir_all(out).expect("output directory");
    let mut cfg = prost_build::Config::new();
    cfg.out_dir(out);
    cfg.disable_comments(["."]);
    cfg.compile_fds(fds).expect("code generation");
}
