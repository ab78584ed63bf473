//! Lets this crate's test and example binaries find libtorch without
//! LD_LIBRARY_PATH (torch-sys's own rpath does not reach them), records the
//! libtorch version built against for the run configuration in reports, and builds
//! cpp/libtorch.cpp (what tch does not expose: the CUDA allocator's statistics, CUDA
//! events, fused AdamW) against libtorch's headers.
use std::{env, fs, path::Path};

fn main() {
    // torch-sys declares `links = "tch"` and prints `cargo:libtorch_lib=...`.
    if let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        let version = fs::read_to_string(Path::new(&lib).join("..").join("version.py"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim().trim_matches('\'').to_string()))
            })
            .unwrap_or_else(|| "unknown".to_string());
        println!("cargo:rustc-env=BATON_LIBTORCH_VERSION={version}");
        let include = Path::new(&lib).join("..").join("include");
        cc::Build::new()
            .cpp(true)
            .file("cpp/libtorch.cpp")
            .include(&include)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .warnings(false)
            .compile("baton_libtorch");
        println!("cargo:rerun-if-changed=cpp/libtorch.cpp");
    } else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
