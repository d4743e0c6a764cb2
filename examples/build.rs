//! Compiles the example services' protos with protox (no `protoc` needed),
//! and writes their descriptor set: the gateway transcodes REST calls by
//! its `google.api.http` rules (the quick start hands it to the gateway).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/user.proto"];
    let includes = ["proto", "../proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=../proto/google");
    let fds = protox::compile(protos, includes)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // Encoded by protox itself: the prost-types structs above drop the
    // options' extensions, and the rules with them.
    let mut compiler = protox::Compiler::new(includes)?;
    compiler.include_imports(true).open_files(protos)?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("restaurant.binpb");
    std::fs::write(out, compiler.encode_file_descriptor_set())?;
    Ok(())
}
