//! Compiles the eBPF programs (dataplane-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker; `cargo xtask setup` installs both.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [Package {
            name: "dataplane-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane-ebpf"),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
