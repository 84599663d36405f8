//! Builds the XDP program (efm-ebpf) and embeds it. Cargo reruns this script whenever a source of
//! the program or of efm-common changes, and the inner cargo build is incremental, so the embedded
//! object is never stale. Packagers may set `EFM_EBPF_OBJECT` to embed an object built elsewhere.

use std::{env, fs, path::PathBuf};

use anyhow::{bail, Context as _};

include!("../efm-ebpf/build_command.rs");

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().context("efm-agent has no parent directory")?.to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?).join("efm.o");
    println!("cargo:rerun-if-env-changed=EFM_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("EFM_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, &out).with_context(|| format!("copying EFM_EBPF_OBJECT {}", prebuilt.display()))?;
        return Ok(());
    }
    for p in
        ["efm-ebpf/src", "efm-ebpf/Cargo.toml", "efm-ebpf/build_command.rs", "efm-common/src", "efm-common/Cargo.toml"]
    {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let status = ebpf_build_command(&root)
        .status()
        .context("running `rustup run nightly cargo build -p efm-ebpf` (run `cargo xtask setup` first)")?;
    if !status.success() {
        bail!(
            "building the XDP program failed ({status}); `cargo xtask setup` installs the nightly \
             rust-src component and bpf-linker it needs"
        );
    }
    let obj = ebpf_object_path(&root);
    fs::copy(&obj, &out).with_context(|| format!("copying {} to {}", obj.display(), out.display()))?;
    Ok(())
}
