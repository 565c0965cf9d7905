//! Builds the switch's XDP programs: every `bpf/*.c` is compiled by clang
//! (`-target bpf`, with BTF from `-g`, which aya needs for the map
//! definitions) into `$OUT_DIR/<name>.o`, where `src/xdp.rs` embeds it.
//!
//! `BPF_CLANG` names another clang (e.g. `clang-16`). Debian keeps
//! `<asm/types.h>` in the multiarch include directory, which `-target bpf`
//! does not search, so that directory is added from `gcc -print-multiarch`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let bpf_dir = Path::new("bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    // The directory (new files) and each file, headers included.
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for header in std::fs::read_dir(bpf_dir).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", header.path().display());
    }

    let multiarch_include = format!("-I/usr/include/{}", multiarch());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(bpf_dir)
        .expect("switch/bpf/ holds the XDP programs")
        .map(|entry| entry.expect("reading switch/bpf/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();
    for source in sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let object = out_dir
            .join(source.file_stem().expect("a .c file has a stem"))
            .with_extension("o");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(&multiarch_include)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!("running {clang}: {e} (scripts/install-deps.sh installs clang, llvm and libbpf-dev)")
            });
        assert!(status.success(), "{clang} failed on {}", source.display());
    }
}

/// The Debian multiarch triplet of the build machine, e.g. `x86_64-linux-gnu`.
fn multiarch() -> String {
    let output = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .expect("running gcc -print-multiarch (gcc finds the multiarch include directory)");
    let triplet = String::from_utf8(output.stdout).expect("gcc prints UTF-8");
    let triplet = triplet.trim();
    assert!(
        output.status.success() && !triplet.is_empty(),
        "gcc -print-multiarch gave no triplet"
    );
    triplet.to_string()
}
