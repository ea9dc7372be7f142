//! The `shoal` binary: `shoal daemon`, `shoal netd`, and the client commands.

mod args;
#[cfg(feature = "bench")]
mod bench;
mod client;
mod commands;
mod container;
mod copy;
mod daemon;
mod events;
mod filter;
mod gotemplate;
mod health;
mod image;
mod network;
mod node;
mod output;
mod parse;
mod registry;
mod secret;
mod service;
mod stack;
mod swarm;
mod system;
mod terminal;
mod volume;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The per-container shim must stay single-threaded: dispatch it before
    // any runtime or thread exists.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "shim" {
        let code = shoal_engine::runtime::shim::main(std::path::Path::new(&argv[2]));
        return std::process::ExitCode::from(code as u8);
    }
    if argv.len() == 2 && argv[1] == "shim-zygote" {
        return std::process::ExitCode::from(shoal_engine::runtime::zygote::main() as u8);
    }
    if argv.len() == 3 && argv[1] == "shim-exec" {
        return std::process::ExitCode::from(shoal_engine::runtime::shim::exec_main(&argv[2].to_string_lossy()) as u8);
    }
    if argv.len() == 5 && argv[1] == "shim-cp" {
        return std::process::ExitCode::from(shoal_engine::runtime::copy::main(&argv[2..]) as u8);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = args::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        // As a shell does: the low 8 bits of a container's exit code (-1 is 255).
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("Error: {}", output::error_message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
