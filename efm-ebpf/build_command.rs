// The one way the XDP object is built. Included (`include!`) by efm-agent's build script, which
// embeds the result, and by `cargo xtask build-ebpf`, so both always produce the same object.

/// Cargo command that builds `efm-ebpf` (release, BTF) into `<root>/target/ebpf`.
///
/// It runs under `rustup run nightly` (build-std and bpf-linker need the nightly toolchain and its
/// libLLVM) and scrubs the variables an outer cargo sets for build scripts, which would otherwise
/// point the inner build at the stable compiler.
#[allow(dead_code)]
fn ebpf_build_command(root: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", "efm-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(ebpf_target_dir(root))
        .current_dir(root);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    // bpf-linker emits BTF with --btf; debuginfo is what it derives BTF from.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\u{1f}-Clink-arg=--btf");
    cmd
}

#[allow(dead_code)]
fn ebpf_target_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join("target").join("ebpf")
}

/// Where [`ebpf_build_command`] leaves the object.
#[allow(dead_code)]
fn ebpf_object_path(root: &std::path::Path) -> std::path::PathBuf {
    ebpf_target_dir(root).join("bpfel-unknown-none").join("release").join("efm")
}
