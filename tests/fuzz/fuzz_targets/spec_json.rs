//! Spec files as JSON (what `baton submit` and `grpcurl -d @` send).
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| baton_fuzz::spec(text));
