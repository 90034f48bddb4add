//! Parsing `--device` and `--dtype`, and making sure a CUDA request really gets CUDA.
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::{ModelError, Result};

/// Loads LibTorch's CUDA backend into the process, when the LibTorch this crate was built against has one;
/// true when it is loaded. Call it before asking LibTorch about CUDA (every function here does).
///
/// The backend registers itself from `libtorch_cuda.so`'s static constructors, and nothing in Rust code
/// references one of its symbols, so a linker with `--as-needed` (the default) drops it and LibTorch reports
/// no GPU. This workspace's own binaries link it with `--no-as-needed`, but that link argument does not reach
/// a program that depends on these crates from elsewhere; opening the library at run time works for both.
pub fn load_cuda_backend() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let Some(lib) = option_env!("EMO_LIBTORCH_LIB") else { return false };
        let path = std::path::Path::new(lib).join("libtorch_cuda.so");
        if !path.is_file() {
            return false;
        }
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
        // SAFETY: dlopen with a NUL-terminated path; the handle is kept open for the life of the process.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null()
    })
}

/// CUDA device 0 when LibTorch sees one, else the CPU.
pub fn auto() -> Device {
    load_cuda_backend();
    Device::cuda_if_available()
}

/// Parses `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(auto()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(ModelError::InvalidArgument(format!("unknown device `{s}` (auto, cpu, cuda, cuda:N)"))),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
    load_cuda_backend();
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        return Err(ModelError::InvalidArgument(format!("CUDA device {n} requested, but {count} CUDA device(s) are available to LibTorch")));
    }
    Ok(Device::Cuda(n))
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" => Ok(Kind::Half),
        _ => Err(ModelError::InvalidArgument(format!("unknown dtype `{s}` (f32, bf16, f16)"))),
    }
}

/// The name [`parse_kind`] reads for `kind` (`f32`, `bf16`, `f16`; others as LibTorch names them).
pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Half => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Bytes of `t`'s elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Gives the pages of freed C-heap memory back to the system. LibTorch's CPU allocator is malloc, and glibc
/// keeps freed blocks resident for reuse; after a large, one-off release (a model's loading temporaries, a
/// key-value cache regrouped a layer at a time) those pages would otherwise count in the process's memory
/// for good. A no-op outside glibc.
pub(crate) fn return_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it touches no caller data.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A short name for a device, for reports.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
