//! The adapters in use, their weights, and applying them to a loaded model from memory.
//!
//! Loading (reading and matching a file) and applying (pointing the model's layers at the
//! enabled adapters' terms with the current weights) are separate, so that moving a weight
//! slider or flipping a toggle costs only an [`LoraStack::apply`]: no file is read, no base
//! weight is touched, and the previous state is reproduced exactly by applying the previous
//! settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::adapter::{Adapter, ModelSlots};
use super::keys::Component;
use super::layers::LowRankTerm;
use super::LoraError;
use crate::gallery::png_meta::LoraUse;
use crate::models::StableDiffusion;

/// How one adapter is used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSettings {
    pub enabled: bool,
    /// The UNet's weight (and the text encoder's, unless `te_weight` is set). Negative allowed.
    pub weight: f64,
    /// A separate text-encoder weight (A1111's `<lora:name:te:unet>`).
    pub te_weight: Option<f64>,
}

impl AdapterSettings {
    /// Enabled, at `weight` for both the UNet and the text encoder.
    pub fn new(weight: f64) -> Self {
        Self {
            enabled: true,
            weight,
            te_weight: None,
        }
    }

    pub fn text_weight(&self) -> f64 {
        self.te_weight.unwrap_or(self.weight)
    }

    fn weight_for(&self, c: Component) -> f64 {
        if !self.enabled {
            return 0.0;
        }
        match c {
            Component::Unet => self.weight,
            Component::TextEncoder | Component::TextEncoder2 => self.text_weight(),
        }
    }

    /// False when the adapter changes nothing (disabled, or both weights 0).
    pub fn is_active(&self) -> bool {
        self.enabled && (self.weight != 0.0 || self.text_weight() != 0.0)
    }
}

/// An adapter chosen by path, with its settings, in a form that can be saved (the studio keeps
/// its LoRA panel's toggles and weights between runs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraChoice {
    pub path: PathBuf,
    pub enabled: bool,
    pub weight: f64,
    #[serde(default)]
    pub te_weight: Option<f64>,
}

impl LoraChoice {
    pub fn settings(&self) -> AdapterSettings {
        AdapterSettings {
            enabled: self.enabled,
            weight: self.weight,
            te_weight: self.te_weight,
        }
    }
}

/// What an [`LoraStack::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApplyReport {
    /// Layers that now carry at least one adapter term.
    pub layers: usize,
    /// Terms in all (one per active adapter per layer it touches).
    pub terms: usize,
    pub elapsed: Duration,
}

/// The adapters chosen for generation, in order, plus every adapter read so far (so turning one
/// back on never reads its file again).
#[derive(Default)]
pub struct LoraStack {
    entries: Vec<(Arc<Adapter>, AdapterSettings)>,
    /// By path, remembering the file's length and modification time so that a file replaced
    /// on disk (a re-download, a new training epoch) is read again.
    cache: HashMap<PathBuf, (FileStamp, Arc<Adapter>)>,
}

type FileStamp = Option<(u64, std::time::SystemTime)>;

fn stamp(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl LoraStack {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and matches `path` against `model` (or takes it from the cache). Does not add it.
    pub fn read(
        &mut self,
        model: &StableDiffusion,
        path: &Path,
    ) -> Result<Arc<Adapter>, LoraError> {
        let now = stamp(path);
        if let Some((seen, a)) = self.cache.get(path) {
            if *seen == now && now.is_some() {
                return Ok(a.clone());
            }
        }
        let adapter = Arc::new(Adapter::load(path, model)?);
        self.cache
            .insert(path.to_path_buf(), (now, adapter.clone()));
        Ok(adapter)
    }

    /// Adds `path` with `settings` (or updates its settings when already in the stack) and
    /// returns its index. Nothing is applied until [`Self::apply`].
    pub fn add(
        &mut self,
        model: &StableDiffusion,
        path: &Path,
        settings: AdapterSettings,
    ) -> Result<usize, LoraError> {
        let adapter = self.read(model, path)?;
        if let Some(i) = self
            .entries
            .iter()
            .position(|(a, _)| a.path == adapter.path)
        {
            self.entries[i].1 = settings;
            return Ok(i);
        }
        self.entries.push((adapter, settings));
        Ok(self.entries.len() - 1)
    }

    /// Changes one adapter's settings; false when `index` is out of range.
    pub fn set(&mut self, index: usize, settings: AdapterSettings) -> bool {
        match self.entries.get_mut(index) {
            Some(e) => {
                e.1 = settings;
                true
            }
            None => false,
        }
    }

    /// Takes an adapter out of the stack (it stays cached).
    pub fn remove(&mut self, index: usize) {
        if index < self.entries.len() {
            self.entries.remove(index);
        }
    }

    /// Empties the stack (the cache stays).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops every cached adapter (for example after loading another model, which the cached
    /// matches do not fit).
    pub fn forget_cached(&mut self) {
        self.cache.clear();
        self.entries.clear();
    }

    pub fn entries(&self) -> &[(Arc<Adapter>, AdapterSettings)] {
        &self.entries
    }

    /// Makes the stack exactly `wanted` (path and settings, in order), reading what is not
    /// cached, then applies it. All-or-nothing: on error the model and the stack are unchanged.
    pub fn sync(
        &mut self,
        model: &StableDiffusion,
        wanted: &[(PathBuf, AdapterSettings)],
    ) -> Result<ApplyReport, LoraError> {
        let mut entries = Vec::with_capacity(wanted.len());
        for (path, settings) in wanted {
            entries.push((self.read(model, path)?, *settings));
        }
        let report = apply_entries(&entries, model)?;
        self.entries = entries;
        Ok(report)
    }

    /// Points every adaptable layer of `model` at the enabled adapters' terms with their current
    /// weights. Layers no active adapter touches are cleared, so this also undoes any earlier
    /// apply. Checked before anything changes: on error the model is as it was.
    pub fn apply(&self, model: &StableDiffusion) -> Result<ApplyReport, LoraError> {
        apply_entries(&self.entries, model)
    }

    /// The active adapters as PNG metadata records (name, short hash, UNet weight).
    pub fn uses(&self) -> Vec<LoraUse> {
        self.entries
            .iter()
            .filter(|(_, s)| s.is_active())
            .map(|(a, s)| LoraUse {
                name: a.name.clone(),
                hash: a.hash.clone(),
                weight: s.weight,
            })
            .collect()
    }

    /// Bytes held by cached adapters' factors.
    pub fn cached_bytes(&self) -> usize {
        self.cache.values().map(|(_, a)| a.bytes).sum()
    }
}

fn apply_entries(
    entries: &[(Arc<Adapter>, AdapterSettings)],
    model: &StableDiffusion,
) -> Result<ApplyReport, LoraError> {
    let start = Instant::now();
    let slots = ModelSlots::of(model);
    let mut terms: HashMap<(Component, usize), Vec<LowRankTerm>> = HashMap::new();
    for (adapter, settings) in entries {
        for layer in &adapter.layers {
            // Adapters are matched against one model; refuse them on another.
            slots
                .get(layer.component)
                .get(layer.slot_index)
                .filter(|s| s.name() == layer.slot_name)
                .ok_or_else(|| LoraError::StaleModel {
                    path: adapter.path.clone(),
                    layer: layer.slot_name.clone(),
                })?;
            let w = settings.weight_for(layer.component);
            if w != 0.0 {
                let scaled = layer.term.with_scale(layer.term.scale() * w);
                terms
                    .entry((layer.component, layer.slot_index))
                    .or_default()
                    .push(scaled);
            }
        }
    }
    let mut report = ApplyReport {
        layers: terms.len(),
        terms: terms.values().map(Vec::len).sum(),
        elapsed: Duration::ZERO,
    };
    for c in Component::ALL {
        for (i, slot) in slots.get(c).iter().enumerate() {
            slot.set_terms(terms.remove(&(c, i)).unwrap_or_default());
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}
