fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // RegistryAuth's Debug (in lib.rs) hides the password, so no log can show it.
    tonic_prost_build::configure()
        .skip_debug([".shoal.v1.RegistryAuth"])
        .compile_protos(&["proto/shoal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}
