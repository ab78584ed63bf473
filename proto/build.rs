//! Generates the baton.v1 types (prost), services (tonic), proto3 JSON (pbjson) and the
//! descriptor set that server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("baton_descriptor.bin");
    let protos = ["baton/v1/job.proto", "baton/v1/agent.proto", "baton/v1/gpt2.proto", "baton/v1/browser.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &["."])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new().register_descriptors(&set)?.build(&[".baton"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
