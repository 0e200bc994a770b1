#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterdns_fuzz::harness::dns_tcp(data));
