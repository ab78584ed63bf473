//! Generates the coordinator's own stored record (baton.coordinator.v1), which refers to
//! the contract's types in baton-proto rather than generating them again.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/baton/coordinator/v1/record.proto";
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".baton.v1", "::baton_proto::v1")
        .compile_protos(&[proto], &["proto", "../proto"])?;
    println!("cargo:rerun-if-changed={proto}");
    Ok(())
}
