//! What llama.cpp can run on here: its ggml devices and the host's memory, read at run
//! time as [`DeviceFacts`] for the settings.
//!
//! A GPU is there when ggml lists a device of GPU type, however this binary was built: a
//! build linked dynamically against a CUDA libllama has no `cuda` cargo feature, yet has a
//! CUDA device. So nothing here asks `cfg!(feature = ...)`.

use llama_cpp_2::{LlamaBackendDevice, LlamaBackendDeviceType};
use pensieve_engine::settings::{DeviceFacts, Gpu, KvAllocation};

/// The machine as it is now; llama.cpp's backend must be initialised. Free memory
/// changes as models load, so call it again to measure.
pub fn facts() -> DeviceFacts {
    DeviceFacts {
        gpu: offload_target(&llama_cpp_2::list_llama_ggml_backend_devices()),
        host_available_bytes: available_memory(),
        physical_cores: num_cpus::get_physical(),
        kv: KvAllocation::UpFront,
    }
}

/// The devices llama.cpp offloads layers to, as one (it splits layers across them): the
/// discrete GPUs, else the integrated ones of the first such backend, as llama.cpp's
/// own device selection does. RPC servers are not local memory and are left out.
fn offload_target(devices: &[LlamaBackendDevice]) -> Option<Gpu> {
    let discrete: Vec<&LlamaBackendDevice> = devices
        .iter()
        .filter(|d| d.device_type == LlamaBackendDeviceType::Gpu && d.backend != "RPC")
        .collect();
    let chosen = if discrete.is_empty() {
        let integrated = devices
            .iter()
            .filter(|d| d.device_type == LlamaBackendDeviceType::IntegratedGpu);
        let backend = integrated.clone().next()?.backend.clone();
        integrated.filter(|d| d.backend == backend).collect()
    } else {
        discrete
    };
    let first = chosen.first()?;
    let mut description = first.description.clone();
    if chosen.len() > 1 {
        description = format!("{} x {description}", chosen.len());
    }
    Some(Gpu {
        description,
        backend: first.backend.clone(),
        free_bytes: chosen.iter().map(|d| d.memory_free as u64).sum(),
        total_bytes: chosen.iter().map(|d| d.memory_total as u64).sum(),
    })
}

/// `MemAvailable` on Linux; None elsewhere.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(
        name: &str,
        backend: &str,
        kind: LlamaBackendDeviceType,
        free: usize,
    ) -> LlamaBackendDevice {
        LlamaBackendDevice {
            index: 0,
            name: name.into(),
            description: format!("{name} card"),
            backend: backend.into(),
            memory_total: free * 2,
            memory_free: free,
            device_type: kind,
        }
    }

    #[test]
    fn a_cpu_build_has_no_gpu() {
        let cpu = device("CPU", "CPU", LlamaBackendDeviceType::Cpu, 1 << 30);
        let blas = device("BLAS", "BLAS", LlamaBackendDeviceType::Accelerator, 0);
        assert_eq!(offload_target(&[cpu, blas]), None);
        assert_eq!(offload_target(&[]), None);
    }

    #[test]
    fn discrete_gpus_are_summed_and_integrated_ones_are_a_fallback() {
        use LlamaBackendDeviceType::{Cpu, Gpu as Discrete, IntegratedGpu};
        let cuda0 = device("CUDA0", "CUDA", Discrete, 100);
        let cuda1 = device("CUDA1", "CUDA", Discrete, 50);
        let igpu = device("Vulkan0", "Vulkan", IntegratedGpu, 10);
        let cpu = device("CPU", "CPU", Cpu, 1000);
        let gpu = offload_target(&[cpu.clone(), igpu.clone(), cuda0.clone()]).unwrap();
        assert_eq!(
            (
                gpu.description.as_str(),
                gpu.backend.as_str(),
                gpu.free_bytes,
                gpu.total_bytes
            ),
            ("CUDA0 card", "CUDA", 100, 200)
        );
        let two = offload_target(&[cuda0, cuda1]).unwrap();
        assert_eq!(
            (two.description.as_str(), two.free_bytes),
            ("2 x CUDA0 card", 150)
        );
        let integrated = offload_target(&[cpu, igpu]).unwrap();
        assert_eq!(
            (integrated.backend.as_str(), integrated.free_bytes),
            ("Vulkan", 10)
        );
        let rpc = device("RPC0", "RPC", Discrete, 100);
        assert_eq!(offload_target(&[rpc]), None);
    }
}
