//! Allocator trial (issue 17), feature `alloc-trial` only: glibc, mimalloc or jemalloc in one
//! binary, chosen by `CLUSTERDNS_ALLOC` (`glibc`, `mimalloc`, `jemalloc`) when the first
//! allocation is made, so `benches/memory.rs` can compare them in one run. jemalloc reads its
//! options from `_RJEM_MALLOC_CONF`, mimalloc from `MIMALLOC_*`, glibc from `MALLOC_ARENA_MAX`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

struct Trial;

#[global_allocator]
static ALLOC: Trial = Trial;

const UNSET: u8 = 0;
const GLIBC: u8 = 1;
const MIMALLOC: u8 = 2;
const JEMALLOC: u8 = 3;
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

/// Fixed by the first allocation (made on the main thread before any other thread exists),
/// so a block is always freed by the allocator that made it.
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNSET {
        return c;
    }
    // SAFETY: getenv reads the environment libc set up before main; it does not allocate.
    let v = unsafe { libc::getenv(c"CLUSTERDNS_ALLOC".as_ptr()) };
    let c = if v.is_null() {
        GLIBC
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        match unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() {
            b"mimalloc" => MIMALLOC,
            b"jemalloc" => JEMALLOC,
            _ => GLIBC,
        }
    };
    CHOICE.store(c, Ordering::Relaxed);
    c
}

// SAFETY: each call forwards to one allocator, the same for the whole process.
unsafe impl GlobalAlloc for Trial {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        match choice() {
            MIMALLOC => mimalloc::MiMalloc.alloc(l),
            JEMALLOC => tikv_jemallocator::Jemalloc.alloc(l),
            _ => System.alloc(l),
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        match choice() {
            MIMALLOC => mimalloc::MiMalloc.alloc_zeroed(l),
            JEMALLOC => tikv_jemallocator::Jemalloc.alloc_zeroed(l),
            _ => System.alloc_zeroed(l),
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        match choice() {
            MIMALLOC => mimalloc::MiMalloc.dealloc(p, l),
            JEMALLOC => tikv_jemallocator::Jemalloc.dealloc(p, l),
            _ => System.dealloc(p, l),
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        match choice() {
            MIMALLOC => mimalloc::MiMalloc.realloc(p, l, new),
            JEMALLOC => tikv_jemallocator::Jemalloc.realloc(p, l, new),
            _ => System.realloc(p, l, new),
        }
    }
}
