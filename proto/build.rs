fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // RegistryAuth's and ObjectData's Debug (in lib.rs) hide the password and the
    // payload, so no log can show them.
    tonic_prost_build::configure().skip_debug([".shoal.v1.RegistryAuth", ".shoal.v1.ObjectData"]).compile_with_config(
        config,
        &["proto/shoal.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}
