//! Parsing `--device` and `--dtype`, and making sure a CUDA request really gets CUDA.
use tch::{Device, Kind};

use crate::{ModelError, Result};

/// Parses `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(ModelError::InvalidArgument(format!("unknown device `{s}` (auto, cpu, cuda, cuda:N)"))),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
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

/// A short name for a device, for reports.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
