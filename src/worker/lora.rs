//! The worker's side of the LoRA manager: before each job, make the model's adapters exactly
//! the ones the job's recipe asks for.
//!
//! The stack lives as long as the loaded model, so an adapter file is read once and every
//! later toggle or weight change is an in-memory apply (see [`crate::lora`]); a live re-render
//! after a slider move therefore starts its first step at once.

use std::path::PathBuf;

use crate::gallery::png_meta::LoraUse;
use crate::lora::library::find_by_name;
use crate::lora::{AdapterSettings, LoraChoice, LoraStack};
use crate::models::StableDiffusion;
use crate::prompt::lora_tags::{prompt_loras, LoraSpec};

/// The adapters a job uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraRecipe {
    /// The LoRA panel's adapters (disabled ones included: they cost nothing and keep the
    /// panel's state in the recipe).
    pub choices: Vec<LoraChoice>,
    /// Where `<lora:name:w>` tags in the prompt are looked up.
    pub dirs: Vec<PathBuf>,
}

/// What a job's adapters mean for its PNG.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedLoras {
    pub uses: Vec<LoraUse>,
    /// The prompt plus an A1111 tag for each active panel adapter the prompt does not name,
    /// so the saved prompt alone reproduces the image, here and in A1111.
    pub recorded_prompt: String,
}

/// Applies `recipe` (and the prompt's tags, which win over the panel for the same file) to
/// `model`. All-or-nothing: on error nothing changed, and the message names the adapter.
pub fn apply(
    stack: &mut LoraStack,
    model: &StableDiffusion,
    recipe: &LoraRecipe,
    prompt: &str,
) -> Result<AppliedLoras, String> {
    let mut wanted: Vec<(PathBuf, AdapterSettings)> = Vec::new();
    for spec in prompt_loras(prompt)? {
        let path = find_by_name(&recipe.dirs, &spec.name).map_err(|e| e.to_string())?;
        let settings = AdapterSettings {
            enabled: true,
            weight: spec.weight,
            te_weight: spec.te_weight,
        };
        if !wanted.iter().any(|(p, _)| *p == path) {
            wanted.push((path, settings));
        }
    }
    let mut recorded = prompt.to_string();
    for c in &recipe.choices {
        let settings = c.settings();
        if !settings.is_active() || wanted.iter().any(|(p, _)| *p == c.path) {
            continue;
        }
        let tag = LoraSpec {
            name: crate::lora::adapter::file_stem(&c.path),
            weight: c.weight,
            te_weight: c.te_weight,
        }
        .to_tag();
        if !recorded.is_empty() && !recorded.ends_with(' ') {
            recorded.push(' ');
        }
        recorded.push_str(&tag);
        wanted.push((c.path.clone(), settings));
    }
    stack.sync(model, &wanted).map_err(|e| e.to_string())?;
    Ok(AppliedLoras {
        uses: stack.uses(),
        recorded_prompt: recorded,
    })
}
