//! How the `shoal` binary is linked (only its final link: no dependency is rebuilt for it).
//!
//! It is linked as a fixed-address executable, not a position-independent one. The CLI, each
//! container's shim and its supervisor all start this ~200 MB binary, and as a PIE its start
//! costs the dynamic loader ~66,000 relative relocations, each a copy-on-write write into
//! `.data.rel.ro`: ~300 page faults and ~0.6 ms of CPU of every ~1.9 ms start (`shoal
//! --version`: 1.9 -> 1.3 ms, 648 -> 334 page faults). Packing the relocations (`-z
//! pack-relative-relocs`) shrinks their table but keeps the writes, and gains nothing here.
//! The price is ASLR for the executable's own image (its code and data sit at a fixed
//! address; the stack, heap, mmaps and shared libraries stay randomized), as Go builds its
//! binaries by default. `SHOAL_PIE=1` at build time links a PIE instead.
fn main() {
    println!("cargo:rerun-if-env-changed=SHOAL_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("SHOAL_PIE").map_or(true, |v| v.is_empty() || v == "0") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
