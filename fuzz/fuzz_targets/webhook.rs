#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterdns_fuzz::harness::webhook(data));
