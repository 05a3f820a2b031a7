//! LoRA adapters of one engine: the registry, the CPU cache and the GPU slots.
//!
//! vLLM (`vllm/config/lora.py`, `vllm/lora/worker_manager.py`) keeps up to `max_cpu_loras`
//! adapters in CPU memory (an LRU cache; loading a missing one reads it from disk) and
//! `max_loras` GPU slots, also LRU; a step may only use adapters that hold a slot, which is why
//! the scheduler admits at most `max_loras` distinct adapters per step. Moving an adapter into a
//! slot is a PCIe copy; a CPU-cache miss adds a disk load. Both costs come from
//! `catalog/precisions.toml` (`[lora]`).

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::catalog::LoraCost;

/// One registered adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    pub name: String,
    pub path: String,
    pub rank: u32,
}

/// Registry and caches.
#[derive(Debug, Clone)]
pub struct Adapters {
    known: HashMap<String, Adapter>,
    /// Registration order, for listing.
    order: Vec<String>,
    /// CPU cache, least recently used first.
    cpu: VecDeque<String>,
    /// GPU slots, least recently used first.
    gpu: VecDeque<String>,
    max_loras: usize,
    max_cpu_loras: usize,
    cost: LoraCost,
    /// Adapter loads from disk so far (CPU-cache misses at step time).
    pub disk_loads: u64,
}

impl Adapters {
    pub fn new(max_loras: u32, max_cpu_loras: u32, cost: LoraCost) -> Self {
        Self {
            known: HashMap::new(),
            order: Vec::new(),
            cpu: VecDeque::new(),
            gpu: VecDeque::new(),
            max_loras: max_loras.max(1) as usize,
            max_cpu_loras: max_cpu_loras.max(1) as usize,
            cost,
            disk_loads: 0,
        }
    }

    /// Registers an adapter and loads it into the CPU cache (as vLLM's `add_lora` does).
    /// Returns false if the name is already registered (nothing changes).
    pub fn register(&mut self, a: Adapter) -> bool {
        if self.known.contains_key(&a.name) {
            return false;
        }
        self.order.push(a.name.clone());
        self.touch_cpu(&a.name);
        self.known.insert(a.name.clone(), a);
        true
    }

    /// Removes an adapter from the registry and both caches.
    pub fn unregister(&mut self, name: &str) -> Option<Adapter> {
        let a = self.known.remove(name)?;
        self.order.retain(|n| n != name);
        self.cpu.retain(|n| n != name);
        self.gpu.retain(|n| n != name);
        Some(a)
    }

    pub fn get(&self, name: &str) -> Option<&Adapter> {
        self.known.get(name)
    }

    /// Adapters in registration order.
    pub fn list(&self) -> impl Iterator<Item = &Adapter> {
        self.order.iter().filter_map(|n| self.known.get(n))
    }

    pub fn rank(&self, name: &str) -> u32 {
        self.known
            .get(name)
            .map_or(crate::config::DEFAULT_ADAPTER_RANK, |a| a.rank)
    }

    /// Adapters in GPU slots now.
    pub fn in_gpu(&self) -> impl Iterator<Item = &str> {
        self.gpu.iter().map(String::as_str)
    }

    /// Adapters in the CPU cache now.
    pub fn in_cpu(&self) -> impl Iterator<Item = &str> {
        self.cpu.iter().map(String::as_str)
    }

    fn touch_cpu(&mut self, name: &str) -> bool {
        let hit = if let Some(i) = self.cpu.iter().position(|n| n == name) {
            self.cpu.remove(i);
            true
        } else {
            false
        };
        self.cpu.push_back(name.to_string());
        while self.cpu.len() > self.max_cpu_loras {
            self.cpu.pop_front();
        }
        hit
    }

    /// Brings the step's adapters into GPU slots; returns the milliseconds this costs.
    pub fn prepare_step(&mut self, step: &BTreeSet<String>) -> f64 {
        let mut ms = 0.0;
        for name in step {
            if !self.known.contains_key(name) {
                // Unloaded while requests still ran on it: those finish on the copy in place.
                continue;
            }
            if let Some(i) = self.gpu.iter().position(|n| n == name) {
                self.gpu.remove(i);
                self.gpu.push_back(name.clone());
                self.touch_cpu(name);
                continue;
            }
            if !self.touch_cpu(name) {
                ms += self.cost.disk_load_ms;
                self.disk_loads += 1;
            }
            ms += self.cost.gpu_swap_ms;
            // Evict the least recently used slot that this step does not need.
            if self.gpu.len() >= self.max_loras
                && let Some(i) = self.gpu.iter().position(|n| !step.contains(n))
            {
                self.gpu.remove(i);
            }
            self.gpu.push_back(name.clone());
        }
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost() -> LoraCost {
        LoraCost {
            fixed_frac: 0.1,
            per_rank_frac: 0.01,
            disk_load_ms: 100.0,
            gpu_swap_ms: 2.0,
        }
    }

    fn a(n: &str) -> Adapter {
        Adapter {
            name: n.into(),
            path: format!("/a/{n}"),
            rank: 8,
        }
    }

    #[test]
    fn cpu_cache_is_lru_and_a_miss_costs_a_disk_load() {
        let mut ad = Adapters::new(1, 2, cost());
        for n in ["a0", "a1", "a2"] {
            assert!(ad.register(a(n)));
        }
        assert!(!ad.register(a("a0")));
        // a0 fell out of the 2-entry CPU cache.
        assert_eq!(ad.in_cpu().collect::<Vec<_>>(), vec!["a1", "a2"]);
        let one = |n: &str| BTreeSet::from([n.to_string()]);
        assert_eq!(ad.prepare_step(&one("a1")), 2.0);
        assert_eq!(ad.prepare_step(&one("a1")), 0.0);
        assert_eq!(ad.prepare_step(&one("a0")), 102.0);
        assert_eq!(ad.in_gpu().collect::<Vec<_>>(), vec!["a0"]);
        assert_eq!(ad.disk_loads, 1);
    }
}
