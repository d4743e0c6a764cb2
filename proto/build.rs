//! Compiles the mesh API with protox (pure Rust), so no machine needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["weft/v1/mesh.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
