//! Builds the XDP object with clang, generates the Rust view of the ABI
//! header with bindgen, and compiles the host copy of the name hash that the
//! Rust list compiler is tested against.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let include = PathBuf::from("include");
    let clang = env::var("GUARD_CLANG").unwrap_or_else(|_| "clang".into());
    let multiarch_include = multiarch_include();

    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=GUARD_CLANG");

    // -g keeps BTF, which aya needs for the map-in-map and ring buffer
    // definitions. -mcpu=v3 gives 32-bit jumps and atomics (kernel >= 5.1).
    let object = out.join("guard.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&multiarch_include)
        .args(["-c", "src/guard.bpf.c", "-o"])
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}; install clang (scripts/setup.sh)"));
    assert!(status.success(), "clang failed to build src/guard.bpf.c");

    // The benchmark's floor: an XDP program that only returns XDP_PASS.
    let pass_object = out.join("xdp_pass.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .arg("-I")
        .arg(&multiarch_include)
        .args(["-c", "src/xdp_pass.bpf.c", "-o"])
        .arg(&pass_object)
        .status()
        .expect("running clang");
    assert!(status.success(), "clang failed to build src/xdp_pass.bpf.c");

    // The ABI header compiled for the BPF target alone: tests/abi.rs reads
    // its BTF to check the kernel's layout against the Rust one.
    let abi_object = out.join("abi_check.bpf.o");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-I"])
        .arg(&include)
        .arg("-I")
        .arg(&multiarch_include)
        .args(["-c", "src/abi_check.bpf.c", "-o"])
        .arg(&abi_object)
        .status()
        .expect("running clang");
    assert!(status.success(), "clang failed to build src/abi_check.bpf.c");
    println!("cargo:rustc-env=GUARD_ABI_CHECK_OBJECT={}", abi_object.display());

    let bindings = bindgen::Builder::default()
        .header("include/guard_abi.h")
        .use_core()
        .derive_default(true)
        .derive_debug(true)
        .prepend_enum_name(false)
        .rustified_enum("guard_.*")
        .allowlist_type("guard_.*")
        .allowlist_var("GUARD_.*")
        .generate()
        .expect("bindgen failed on include/guard_abi.h");
    bindings
        .write_to_file(out.join("abi.rs"))
        .expect("writing abi.rs");

    cc::Build::new()
        .file("src/hash_host.c")
        .include(&include)
        .warnings_into_errors(true)
        .compile("guard_hash_host");
}

/// Debian keeps `asm/types.h` (linux-libc-dev) under a multiarch directory,
/// which `-target bpf` does not search: /usr/include/x86_64-linux-gnu on
/// amd64, /usr/include/aarch64-linux-gnu on arm64. The BPF object only needs
/// the kernel's UAPI types, the same on every architecture, so the first of
/// these that has them will do: the target's, then the host's (gcc's
/// `-print-multiarch`).
fn multiarch_include() -> PathBuf {
    let debian = |arch: &str| match arch {
        "x86" => "i386-linux-gnu".to_owned(),
        "arm" => "arm-linux-gnueabihf".to_owned(),
        "powerpc64" => "powerpc64le-linux-gnu".to_owned(),
        other => format!("{other}-linux-gnu"),
    };
    let mut candidates = Vec::new();
    if let Ok(arch) = env::var("CARGO_CFG_TARGET_ARCH") {
        candidates.push(debian(&arch));
    }
    if let Some(host) = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
    {
        candidates.push(host);
    }
    candidates.push(debian(env::consts::ARCH));
    let dirs: Vec<PathBuf> = candidates.iter().map(|c| PathBuf::from("/usr/include").join(c)).collect();
    dirs.iter()
        .find(|d| d.join("asm/types.h").exists())
        .cloned()
        .unwrap_or_else(|| dirs[0].clone())
}
