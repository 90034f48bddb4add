//! Parsing `--device` (one device or a list) and `--dtype`, making sure a CUDA request really gets CUDA, and
//! reading a device's free memory for placement.
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

/// Checks that every device of a list exists (each `cuda:N` below LibTorch's device count), naming the
/// first that does not.
pub fn check_devices(devices: &[Device]) -> Result<()> {
    for &d in devices {
        if let Device::Cuda(n) = d {
            cuda(n)?;
        }
    }
    Ok(())
}

fn cuda(n: usize) -> Result<Device> {
    load_cuda_backend();
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        return Err(ModelError::InvalidArgument(format!("CUDA device {n} requested, but {count} CUDA device(s) are available to LibTorch")));
    }
    Ok(Device::Cuda(n))
}

/// Parses a device list for one model placed across devices ([`crate::placement`]): a comma-separated list
/// of [`parse_device`]'s names (`cuda:0,cuda:1`, `cpu,cpu`), or `auto` alone: every CUDA device LibTorch
/// sees, else the CPU. A single name gives a list of one. The error names the bad entry.
pub fn parse_devices(s: &str) -> Result<Vec<Device>> {
    let s = s.trim();
    if s == "auto" {
        load_cuda_backend();
        let n = tch::Cuda::device_count().max(0) as usize;
        return Ok(if n == 0 { vec![Device::Cpu] } else { (0..n).map(Device::Cuda).collect() });
    }
    let mut devices = Vec::new();
    for (i, part) in s.split(',').map(str::trim).enumerate() {
        let d = match part {
            "" => Err(ModelError::InvalidArgument(format!("device list `{s}`: entry {} is empty", i + 1))),
            "auto" => Err(ModelError::InvalidArgument(format!("device list `{s}`: `auto` stands alone (every visible GPU), not in a list"))),
            _ => parse_device(part).map_err(|e| ModelError::InvalidArgument(format!("device list `{s}`: {}", error_text(e)))),
        }?;
        devices.push(d);
    }
    Ok(devices)
}

fn error_text(e: ModelError) -> String {
    match e {
        ModelError::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

/// Free bytes on `device`, for placing a model ([`crate::placement`]): for the CPU the machine's
/// `MemAvailable` (from `/proc/meminfo`; 0 where it cannot be read); for a CUDA device the free memory that
/// `cudaMemGetInfo` reports, read through the CUDA runtime that LibTorch's CUDA backend has already loaded
/// (0 where it is not loaded or the call fails: such devices then share equally with each other).
pub fn free_bytes(device: Device) -> u64 {
    match device {
        Device::Cpu => available_memory().unwrap_or(0),
        Device::Cuda(n) => {
            load_cuda_backend();
            cuda_free(n).unwrap_or(0)
        }
        _ => 0,
    }
}

fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `cudaMemGetInfo` on device `n`, the caller's current device restored after. The runtime is looked up
/// among libraries already loaded (`RTLD_NOLOAD`): LibTorch's CUDA backend brings it, and this never loads a
/// second copy.
fn cuda_free(n: usize) -> Option<u64> {
    type GetDevice = unsafe extern "C" fn(*mut libc::c_int) -> libc::c_int;
    type SetDevice = unsafe extern "C" fn(libc::c_int) -> libc::c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut libc::size_t, *mut libc::size_t) -> libc::c_int;
    let handle = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"].iter().find_map(|name| {
        let c = std::ffi::CString::new(*name).ok()?;
        // SAFETY: dlopen with a NUL-terminated name and RTLD_NOLOAD only returns a library already loaded.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        (!h.is_null()).then_some(h)
    })?;
    let sym = |name: &str| -> Option<*mut libc::c_void> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: dlsym on a live handle with a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (get, set, info) = (sym("cudaGetDevice")?, sym("cudaSetDevice")?, sym("cudaMemGetInfo")?);
    // SAFETY: the symbols are the CUDA runtime's functions of these C signatures (cuda_runtime_api.h); every
    // pointer passed points to a live local.
    unsafe {
        let get = std::mem::transmute::<*mut libc::c_void, GetDevice>(get);
        let set = std::mem::transmute::<*mut libc::c_void, SetDevice>(set);
        let info = std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info);
        let mut current: libc::c_int = 0;
        if get(&mut current) != 0 || set(n as libc::c_int) != 0 {
            return None;
        }
        let (mut free, mut total): (libc::size_t, libc::size_t) = (0, 0);
        let ok = info(&mut free, &mut total) == 0;
        set(current);
        ok.then_some(free as u64)
    }
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

/// Parses a dtype for `device`: what [`parse_kind`] reads, or `auto`, which is [`auto_kind`]'s choice.
pub fn parse_kind_on(s: &str, device: Device) -> Result<Kind> {
    match s {
        "auto" => Ok(auto_kind(device)),
        _ => parse_kind(s).map_err(|_| ModelError::InvalidArgument(format!("unknown dtype `{s}` (auto, f32, bf16, f16)"))),
    }
}

/// The faster dtype on `device`: bf16 on CUDA and on a CPU with native bf16 dot products (`avx512_bf16`,
/// which every CPU with AMX also has), f32 on other CPUs. Without those instructions LibTorch's bf16
/// matrix products are emulated: on a 2-core AVX2 EPYC the 1.5B model generated 3.2-3.6x slower in bf16
/// than in f32, and its prefill ran 6x slower (docs/performance.md).
pub fn auto_kind(device: Device) -> Kind {
    match device {
        Device::Cuda(_) => Kind::BFloat16,
        _ if cpu_has_native_bf16() => Kind::BFloat16,
        _ => Kind::Float,
    }
}

fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
