//! Process memory set-up for the daemon, done before any other thread exists: what RSS holds
//! at READY is the folders plus a fixed cost, the same at every start.
//!
//! ## Performance
//! What each step bought is measured in BENCHMARKS.md (RSS at READY, its spread between starts,
//! RSS per folder); the comments here say why, not how much.

/// One malloc arena. glibc gives every thread that allocates its own arena and never trims a
/// thread arena's top (malloc_trim gives back only the main arena's): the start-up walk's
/// thread kept what it had touched for the daemon's life. The daemon's threads allocate
/// little and rarely; one arena costs them no measurable time.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt has no memory-safety preconditions; called first in main.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Maps the code of the executable and of libc at once (MADV_POPULATE_READ, Linux 5.14+; a
/// no-op before). Left to page faults, which code pages end up mapped depends on how the
/// start-up threads' faults interleave: the kernel's fault-around skips a page another thread
/// is faulting in, so RSS moved from one start to the next. Mapped up front it is the same every
/// time, for a little more RSS (pages already in the page cache, shared with every other
/// process), and the first marker's path takes no page faults for code.
pub fn map_code() {
    #[cfg(target_os = "linux")]
    // SAFETY: dl_iterate_phdr passes valid program headers of loaded objects; madvise only
    // reads the mapped ranges those headers describe.
    unsafe {
        libc::dl_iterate_phdr(Some(populate_code), std::ptr::null_mut());
    }
}

#[cfg(target_os = "linux")]
unsafe extern "C" fn populate_code(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr hands a valid info for the duration of the call.
    let info = unsafe { &*info };
    // The executable has an empty name; libc is the one library whose code varies with timing
    // (malloc, futex and pthread paths). libm and libgcc_s are mostly code the daemon never
    // runs: mapping them would cost more than their variation.
    let name = if info.dlpi_name.is_null() {
        &b""[..]
    } else {
        // SAFETY: a NUL-terminated string owned by the dynamic loader.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    if !(name.is_empty() || name.rsplit(|&b| b == b'/').next() == Some(b"libc.so.6")) {
        return 0;
    }
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    // The page size is 4 KiB on x86_64 but may be 16 or 64 KiB on aarch64 (RHEL's kernels):
    // madvise wants a page-aligned start.
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    for ph in phdrs {
        if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_X == 0 {
            continue;
        }
        let start = (info.dlpi_addr as usize + ph.p_vaddr as usize) & !(page - 1);
        let end = info.dlpi_addr as usize + (ph.p_vaddr + ph.p_memsz) as usize;
        // SAFETY: a range of this object's own mapped code segment; errors are ignored (an
        // older kernel answers EINVAL and the pages are faulted in as before).
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_READ,
            )
        };
    }
    0
}
