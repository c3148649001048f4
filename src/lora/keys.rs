//! Adapter tensor names → (component, layer, role), for the three naming schemes in use.
//!
//! - **kohya** (sd-scripts, most of Civitai): `lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`,
//!   `lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight`, `….alpha`. Dots in the
//!   layer path became underscores, so the layer can only be found by comparing against the
//!   model's own layer names with the same substitution (done in `stack`).
//! - **diffusers / peft** (diffusers ≥ 0.22): `unet.<layer>.lora_A.weight`, `….lora_B.weight`,
//!   `text_encoder.<layer>.…`; alpha lives in the header's `lora_adapter_metadata`.
//! - **diffusers before peft** (0.14–0.21): `unet.<block>.attn1.processor.to_q_lora.down.weight`,
//!   `<layer>.lora.down.weight` on convolutions, `text_encoder.<layer>.lora_linear_layer.down.weight`.
//!
//! SDXL adapters add `lora_te2_…` / `text_encoder_2.…` for the second text encoder, and kohya
//! names SDXL's UNet layers by the original (SGM) blocks: `lora_unet_input_blocks_4_1_…`; those
//! are matched through the UNet's own LDM names (see `adapter`).
//!
//! Keys that are not plain LoRA (LoHa, LoKr, DoRA, DiT models) are classified with the reason, so the user is told why an adapter does not load instead of it
//! silently doing less than it should.

use std::collections::BTreeMap;

/// The model part a layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP bigG).
    TextEncoder2,
}

impl Component {
    pub const ALL: [Component; 3] = [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ];

    pub fn is_text(self) -> bool {
        self != Component::Unet
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Component::Unet => "UNet",
            Component::TextEncoder => "text encoder",
            Component::TextEncoder2 => "second text encoder",
        })
    }
}

/// The naming scheme of a file, as far as its keys tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Kohya,
    /// diffusers with peft (`lora_A` / `lora_B`).
    Diffusers,
    /// diffusers before peft (`to_q_lora.down`, `lora_linear_layer`).
    DiffusersOld,
    /// Keys of more than one scheme.
    Mixed,
    /// No LoRA keys at all.
    Unknown,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Kohya => "kohya",
            Format::Diffusers => "diffusers/peft",
            Format::DiffusersOld => "diffusers (pre-peft)",
            Format::Mixed => "mixed",
            Format::Unknown => "unknown",
        })
    }
}

/// How the file names a layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKey {
    /// kohya: the layer path with `.` → `_`, component prefix and `text_model_` removed.
    Underscored(String),
    /// The dotted layer path, component prefix and `text_model.` removed.
    Dotted(String),
}

impl std::fmt::Display for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerKey::Underscored(s) | LayerKey::Dotted(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// The keys of one adapted layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerKeys {
    pub component: Component,
    pub layer: LayerKey,
    pub down: Option<String>,
    pub up: Option<String>,
    pub alpha: Option<String>,
}

impl LayerKeys {
    /// Every key of this layer present in the file.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.down.iter().chain(&self.up).chain(&self.alpha)
    }
}

/// A file's keys, grouped by layer.
#[derive(Debug, Clone)]
pub struct ParsedKeys {
    pub format: Format,
    /// Layers in key order.
    pub layers: Vec<LayerKeys>,
    /// Keys that are not part of a plain LoRA Easel can apply, with the reason.
    pub unrecognised: Vec<(String, String)>,
}

/// Groups `keys` by layer.
pub fn parse_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> ParsedKeys {
    let mut layers: BTreeMap<(Component, LayerKey), LayerKeys> = BTreeMap::new();
    let mut unrecognised = Vec::new();
    let (mut kohya, mut diffusers, mut old) = (false, false, false);
    for key in keys {
        let (component, layer, role, format) = match classify(key) {
            Ok(c) => c,
            Err(why) => {
                unrecognised.push((key.to_string(), why));
                continue;
            }
        };
        match format {
            Some(Format::Kohya) => kohya = true,
            Some(Format::Diffusers) => diffusers = true,
            Some(Format::DiffusersOld) => old = true,
            _ => {}
        }
        let entry = layers
            .entry((component, layer.clone()))
            .or_insert_with(|| LayerKeys {
                component,
                layer,
                down: None,
                up: None,
                alpha: None,
            });
        let slot = match role {
            Role::Down => &mut entry.down,
            Role::Up => &mut entry.up,
            Role::Alpha => &mut entry.alpha,
        };
        if slot.is_some() {
            unrecognised.push((
                key.to_string(),
                "a second tensor for the same layer under another naming scheme".into(),
            ));
        } else {
            *slot = Some(key.to_string());
        }
    }
    let format = match (kohya, diffusers, old) {
        (true, false, false) => Format::Kohya,
        (false, true, false) => Format::Diffusers,
        (false, false, true) => Format::DiffusersOld,
        (false, false, false) => Format::Unknown,
        _ => Format::Mixed,
    };
    ParsedKeys {
        format,
        layers: layers.into_values().collect(),
        unrecognised,
    }
}

type Classified = (Component, LayerKey, Role, Option<Format>);

fn classify(key: &str) -> Result<Classified, String> {
    if key.starts_with("lora_") {
        return classify_kohya(key);
    }
    classify_dotted(key)
}

fn classify_kohya(key: &str) -> Result<Classified, String> {
    let (base, suffix) = key
        .split_once('.')
        .ok_or_else(|| "a kohya-style name without a tensor suffix".to_string())?;
    let (component, rest) = if let Some(r) = base.strip_prefix("lora_unet_") {
        (Component::Unet, r)
    } else if let Some(r) = base
        .strip_prefix("lora_te_")
        .or_else(|| base.strip_prefix("lora_te1_"))
    {
        let r = r.strip_prefix("text_model_").unwrap_or(r);
        (Component::TextEncoder, r)
    } else if let Some(r) = base.strip_prefix("lora_te2_") {
        let r = r.strip_prefix("text_model_").unwrap_or(r);
        (Component::TextEncoder2, r)
    } else {
        return Err("a layer of a model family Easel does not run (SD3, Flux, …)".into());
    };
    let role = match suffix {
        "lora_down.weight" => Role::Down,
        "lora_up.weight" => Role::Up,
        "alpha" => Role::Alpha,
        other => return Err(unsupported_suffix(other)),
    };
    let format = (role != Role::Alpha).then_some(Format::Kohya);
    Ok((
        component,
        LayerKey::Underscored(rest.to_string()),
        role,
        format,
    ))
}

fn unsupported_suffix(suffix: &str) -> String {
    if suffix.starts_with("hada_") {
        "LoHa (LyCORIS) weights are not supported, only LoRA/LoCon".into()
    } else if suffix.starts_with("lokr_") {
        "LoKr (LyCORIS) weights are not supported, only LoRA/LoCon".into()
    } else if suffix.contains("dora_scale") || suffix.contains("magnitude") {
        "DoRA magnitudes are not supported".into()
    } else if suffix.starts_with("lora_mid") {
        "LoCon's Tucker factor (lora_mid) is not supported".into()
    } else if suffix == "diff" || suffix == "diff_b" {
        "full weight differences (LyCORIS) are not supported".into()
    } else if suffix.ends_with("bias") {
        "LoRA bias terms are not supported".into()
    } else {
        format!("an unknown tensor kind ({suffix})")
    }
}

/// The old attention-processor names and the layer each one adapts, in the UNet and in CLIP.
const PROCESSOR_LAYERS: [(&str, &str, &str); 4] = [
    ("to_q_lora", "to_q", "q_proj"),
    ("to_k_lora", "to_k", "k_proj"),
    ("to_v_lora", "to_v", "v_proj"),
    ("to_out_lora", "to_out.0", "out_proj"),
];

fn classify_dotted(key: &str) -> Result<Classified, String> {
    let (component, rest) = dotted_component(key)?;
    const SUFFIXES: [(&str, Role, Option<Format>); 9] = [
        (".lora_A.weight", Role::Down, Some(Format::Diffusers)),
        (".lora_B.weight", Role::Up, Some(Format::Diffusers)),
        (".lora_down.weight", Role::Down, Some(Format::Diffusers)),
        (".lora_up.weight", Role::Up, Some(Format::Diffusers)),
        (
            ".lora_linear_layer.down.weight",
            Role::Down,
            Some(Format::DiffusersOld),
        ),
        (
            ".lora_linear_layer.up.weight",
            Role::Up,
            Some(Format::DiffusersOld),
        ),
        (".lora.down.weight", Role::Down, Some(Format::DiffusersOld)),
        (".lora.up.weight", Role::Up, Some(Format::DiffusersOld)),
        (".alpha", Role::Alpha, None),
    ];
    for (suffix, role, format) in SUFFIXES {
        if let Some(layer) = rest.strip_suffix(suffix) {
            return Ok((component, dotted_layer(component, layer), role, format));
        }
    }
    for (tag, unet_leaf, te_leaf) in PROCESSOR_LAYERS {
        for (dir, role) in [("down", Role::Down), ("up", Role::Up)] {
            if let Some(parent) = rest.strip_suffix(&format!(".{tag}.{dir}.weight")) {
                let parent = parent.strip_suffix(".processor").unwrap_or(parent);
                let leaf = match component {
                    Component::Unet => unet_leaf,
                    Component::TextEncoder | Component::TextEncoder2 => te_leaf,
                };
                let layer = dotted_layer(component, &format!("{parent}.{leaf}"));
                return Ok((component, layer, role, Some(Format::DiffusersOld)));
            }
        }
    }
    let suffix = rest.rsplit('.').next().unwrap_or(rest);
    Err(unsupported_suffix(
        if rest.contains("lora_magnitude_vector") {
            "magnitude"
        } else {
            suffix
        },
    ))
}

/// Splits the component prefix off a dotted key.
fn dotted_component(key: &str) -> Result<(Component, &str), String> {
    if let Some(r) = key.strip_prefix("unet.") {
        return Ok((Component::Unet, r));
    }
    if let Some(r) = key.strip_prefix("text_encoder.") {
        return Ok((Component::TextEncoder, r));
    }
    if let Some(r) = key.strip_prefix("text_encoder_2.") {
        return Ok((Component::TextEncoder2, r));
    }
    if key.starts_with("transformer.") {
        return Err("a layer of a transformer-based model (SD3, Flux, …)".into());
    }
    // Raw peft dumps and the earliest diffusers files have no component prefix.
    let r = key.strip_prefix("base_model.model.").unwrap_or(key);
    if r.starts_with("text_model.") || r.starts_with("encoder.layers.") {
        return Ok((Component::TextEncoder, r));
    }
    const UNET_ROOTS: [&str; 6] = [
        "down_blocks.",
        "mid_block.",
        "up_blocks.",
        "conv_in.",
        "conv_out.",
        "time_embedding.",
    ];
    if UNET_ROOTS.iter().any(|p| r.starts_with(p)) {
        return Ok((Component::Unet, r));
    }
    if r.starts_with("input_blocks.")
        || r.starts_with("output_blocks.")
        || r.starts_with("middle_block.")
    {
        // Matched through the UNet's LDM names, as kohya's underscored ones are.
        return Ok((Component::Unet, r));
    }
    Err("not a tensor name of any LoRA format Easel knows".into())
}

fn dotted_layer(component: Component, layer: &str) -> LayerKey {
    let layer = match component {
        Component::TextEncoder | Component::TextEncoder2 => {
            layer.strip_prefix("text_model.").unwrap_or(layer)
        }
        Component::Unet => layer,
    };
    LayerKey::Dotted(layer.to_string())
}

/// A layer's name as a kohya key spells it (dots → underscores), for matching.
pub fn underscored(layer: &str) -> String {
    layer.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str) -> Classified {
        classify(key).unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    #[test]
    fn kohya_keys() {
        let (c, l, r, _) = one(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        );
        assert_eq!(c, Component::Unet);
        assert_eq!(
            l,
            LayerKey::Underscored(
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q".into()
            )
        );
        assert_eq!(r, Role::Down);
        let (c, l, r, _) = one("lora_te_text_model_encoder_layers_3_mlp_fc1.alpha");
        assert_eq!(c, Component::TextEncoder);
        assert_eq!(l, LayerKey::Underscored("encoder_layers_3_mlp_fc1".into()));
        assert_eq!(r, Role::Alpha);
    }

    #[test]
    fn diffusers_and_peft_keys() {
        let (c, l, r, f) =
            one("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_B.weight");
        assert_eq!(
            (c, r, f),
            (Component::Unet, Role::Up, Some(Format::Diffusers))
        );
        assert_eq!(
            l,
            LayerKey::Dotted("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0".into())
        );
        // transformers 5 saves the text encoder without `text_model.`; both spellings match.
        for key in [
            "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
        ] {
            assert_eq!(
                one(key).1,
                LayerKey::Dotted("encoder.layers.0.self_attn.q_proj".into())
            );
        }
    }

    #[test]
    fn pre_peft_diffusers_keys() {
        let (_, l, r, f) =
            one("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight");
        assert_eq!((r, f), (Role::Up, Some(Format::DiffusersOld)));
        assert_eq!(
            l,
            LayerKey::Dotted(
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0".into()
            )
        );
        let (c, l, _, _) =
            one("text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight");
        assert_eq!(c, Component::TextEncoder);
        assert_eq!(
            l,
            LayerKey::Dotted("encoder.layers.0.self_attn.k_proj".into())
        );
        let (_, l, _, _) = one("unet.down_blocks.0.resnets.0.conv1.lora.down.weight");
        assert_eq!(l, LayerKey::Dotted("down_blocks.0.resnets.0.conv1".into()));
        // The earliest files have no `unet.` prefix.
        let (c, _, _, _) = one(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
        );
        assert_eq!(c, Component::Unet);
    }

    #[test]
    fn unsupported_kinds_say_why() {
        for (key, why) in [
            ("lora_unet_conv_in.hada_w1_a", "LoHa"),
            ("lora_unet_conv_in.lokr_w1", "LoKr"),
            ("lora_unet_conv_in.dora_scale", "DoRA"),
            (
                "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
                "transformer",
            ),
            (
                "unet.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector",
                "DoRA",
            ),
        ] {
            let e = classify(key).unwrap_err();
            assert!(e.contains(why), "{key}: {e}");
        }
    }

    /// SDXL: the second text encoder in both schemes, and kohya's SGM block names.
    #[test]
    fn sdxl_keys_are_classified() {
        for (key, component, layer) in [
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                Component::TextEncoder2,
                "encoder_layers_0_mlp_fc1",
            ),
            (
                "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                Component::TextEncoder2,
                "encoder.layers.0.mlp.fc1",
            ),
            (
                "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                Component::TextEncoder,
                "encoder_layers_0_mlp_fc1",
            ),
            (
                "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
                Component::Unet,
                "input_blocks_4_1_proj_in",
            ),
        ] {
            let (c, l, _, _) = classify(key).unwrap();
            assert_eq!((c, l.to_string().as_str()), (component, layer), "{key}");
        }
    }

    #[test]
    fn grouping_and_format() {
        let p = parse_keys([
            "lora_unet_a_b.lora_down.weight",
            "lora_unet_a_b.lora_up.weight",
            "lora_unet_a_b.alpha",
            "lora_unet_c.lora_down.weight",
        ]);
        assert_eq!(p.format, Format::Kohya);
        assert_eq!(p.layers.len(), 2);
        assert!(p.layers[0].alpha.is_some() && p.layers[1].up.is_none());
        let p = parse_keys(["lora_unet_a.lora_down.weight", "unet.a.lora_A.weight"]);
        assert_eq!(p.format, Format::Mixed);
    }
}
