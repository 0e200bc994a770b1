// Records the compiler version for coredns_build_info's `goversion` label, and relinks when
// the image's code layout changes.
fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLUSTERDNS_RUSTC_VERSION=rust{version}");
    println!("cargo:rerun-if-changed=build.rs");
    // Not read here: the image's linker (build/link-ordered) reads them, and cargo tracks no
    // file a linker reads, so a new code order would not relink an up-to-date binary.
    println!("cargo:rerun-if-changed=build/code-order.txt");
    println!("cargo:rerun-if-changed=build/link-ordered");
}
