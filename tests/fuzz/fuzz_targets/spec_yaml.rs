//! Spec files as YAML (`baton submit` reads both): the leading comment keeps the YAML path.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| baton_fuzz::spec(&format!("# spec\n{text}")));
