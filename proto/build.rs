fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // RegistryAuth's Debug (in lib.rs) hides the password, so no log can show it.
    tonic_prost_build::configure().skip_debug([".shoal.v1.RegistryAuth"]).compile_with_config(
        config,
        &["proto/shoal.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}
