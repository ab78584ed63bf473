//! With the `gpt2` feature the agent links libtorch: embed its directory as an rpath so
//! `baton-agent` and its test binaries run without LD_LIBRARY_PATH (torch-sys's own rpath
//! does not reach us).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
