//! Compiles our OpenShell 0.1 `.proto` files with the vendored `protoc`, so a
//! fresh machine needs nothing installed.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        Path::new("proto/datamodel.proto"),
        Path::new("proto/sandbox.proto"),
        Path::new("proto/openshell.proto"),
        Path::new("proto/google/rpc/status.proto"),
    ];
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The simulator implements the control-plane surface; every other RPC
        // answers UNIMPLEMENTED by default, as a gateway without it would.
        .generate_default_stubs(true)
        .file_descriptor_set_path(out_dir.join("openshell_descriptor.bin"))
        .compile_with_config(config, &files, &[Path::new("proto"), include.as_path()])?;
    Ok(())
}
