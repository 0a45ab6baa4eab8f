//! Builds the C++ guard (`csrc/ffi_guard.cpp`) and has the linker send our calls of the
//! llama.cpp functions that can throw through it.
use std::path::PathBuf;

/// llama.cpp entry points that can let a C++ exception out (each has a `__wrap_` in the guard).
const GUARDED: &[&str] = &[
    "llama_sampler_sample",
    "llama_decode",
    "llama_tokenize",
    "llama_token_to_piece",
];

fn main() {
    println!("cargo:rerun-if-changed=csrc/ffi_guard.cpp");
    // llama-cpp-sys-2 installs llama.cpp (headers included) under the prefix whose cmake
    // package folder it announces.
    let cmake_dir = std::env::var("DEP_LLAMA_GGML_CMAKE_DIR")
        .expect("llama-cpp-sys-2 announces where it installed llama.cpp");
    let prefix = PathBuf::from(cmake_dir)
        .ancestors()
        .nth(2)
        .expect("the cmake folder sits two levels under the install prefix")
        .to_path_buf();
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(prefix.join("include"))
        .file("csrc/ffi_guard.cpp")
        .compile("ffi_guard");
    for name in GUARDED {
        println!("cargo:rustc-link-arg=-Wl,--wrap={name}");
    }
}
