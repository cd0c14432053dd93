#![forbid(unsafe_code)]
//! The `pillion-proxy` binary; all of it lives in [`pillion_proxy::cli`]. The global
//! allocator is picked here by cargo feature: jemalloc (the default feature `jemalloc`,
//! background purging on), mimalloc (`mimalloc`), or the system's with neither;
//! benches/RESULTS.md ("Floods and allocators") has the figures behind the default.

/// mimalloc, when the `mimalloc` feature is on.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc with background purging, when only the `jemalloc` feature is on.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    pillion_proxy::main_with_args(std::env::args_os().collect())
}
